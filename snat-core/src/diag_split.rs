//! Splitting one sock_diag dump into disjoint parts, so that the census of a large network
//! namespace can ask the kernel for each part on its own thread.
//!
//! Most of a census's time is the kernel filling one netlink message per socket, which a
//! single dump does on one CPU. Each part here is an `inet_diag` bytecode filter
//! (`INET_DIAG_REQ_BYTECODE`) on the key `max(local port, remote port)`: for an outbound
//! connection that key is its ephemeral local port, for an inbound one the client's
//! ephemeral port. The namespace's ephemeral range (`net.ipv4.ip_local_port_range`) is cut
//! into [`SLICES_PER_PART`] equal slices per part, dealt out in turn: Linux hands out
//! ephemeral ports in runs (one run per destination, from a hashed start), and a run
//! spread over several interleaved slices loads every part about equally, where one
//! contiguous range per part left a run's sockets mostly in one part. The first slice
//! starts at port 0 and the last ends at 65535, so every socket, listeners included, is
//! in exactly one part. Every part still walks the whole hash table (the filter runs per
//! socket), so a split costs CPU: [`parts_for`] splits only namespaces large enough for it
//! to pay, and into two parts by default.

/// Below this many TCP sockets (in use plus TIME_WAIT) a namespace is dumped in one part.
pub(crate) const SPLIT_MIN_SOCKETS: u64 = 4096;
/// Parts used when the caller leaves the choice to [`parts_for`].
pub(crate) const AUTO_PARTS: usize = 2;
/// The most parts a caller may ask for.
pub(crate) const MAX_PARTS: usize = crate::census::MAX_THREADS;
/// Slices of the ephemeral range per part. More balance the parts better against runs of
/// ports, but make the filter longer, and every part runs it on every socket.
pub(crate) const SLICES_PER_PART: usize = 4;
/// Linux's default `net.ipv4.ip_local_port_range`.
pub(crate) const DEFAULT_EPHEMERAL: (u16, u16) = (32768, 60999);

// inet_diag bytecode operations (include/uapi/linux/inet_diag.h).
const BC_JMP: u8 = 1;
const BC_S_LE: u8 = 3;
const BC_D_LE: u8 = 5;
/// `INET_DIAG_REQ_BYTECODE`, the request attribute holding the filter.
const REQ_BYTECODE: u16 = 1;
/// One port comparison: the operation, then a second operation whose `no` holds the port.
const CMP_LEN: usize = 8;
/// A jump: one operation, always taking its `no` offset.
const JMP_LEN: usize = 4;

/// The sockets whose key `max(local port, remote port)` lies in one of `ranges`
/// (inclusive, ascending, disjoint).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PortPart {
    /// The key ranges, `(lo, hi)`.
    pub ranges: Vec<(u16, u16)>,
}

/// Where a comparison goes when it fails (its `yes` always goes on to the next operation,
/// so that the kernel's audit, which follows the `yes` chain, sees every operation).
#[derive(Clone, Copy)]
enum Target {
    /// The first operation of the next range's block (or the final reject).
    NextRange,
    /// The end of the program: accepted.
    Accept,
}

impl PortPart {
    /// Whether a socket with these ports belongs to this part (what the kernel decides
    /// with [`PortPart::attribute`]; the tests check one against the other).
    #[cfg(test)]
    pub(crate) fn contains(&self, sport: u16, dport: u16) -> bool {
        let key = sport.max(dport);
        self.ranges.iter().any(|&(lo, hi)| (lo..=hi).contains(&key))
    }

    /// The filter as a netlink attribute (`nlattr` header, then the operations), ready to
    /// append to a dump request. Empty for a part that holds every key.
    ///
    /// One block per range: `local <= hi`, `remote <= hi` (else try the next range), then
    /// `local <= lo - 1` (else accept) and `remote <= lo - 1` (else accept; if both are
    /// below `lo`, try the next range). A range from 0 accepts once its `hi` tests pass.
    /// After the last block, a jump past the end rejects. Running exactly to the end
    /// accepts, as in the kernel's `inet_diag_bc_run`.
    pub(crate) fn attribute(&self) -> Vec<u8> {
        if self.ranges.contains(&(0, u16::MAX)) {
            return Vec::new();
        }
        // (code, fails to, port); a JMP has no port.
        let mut blocks: Vec<Vec<(u8, Target, u16)>> = Vec::new();
        for &(lo, hi) in &self.ranges {
            let mut b = Vec::new();
            if hi < u16::MAX {
                b.push((BC_S_LE, Target::NextRange, hi));
                b.push((BC_D_LE, Target::NextRange, hi));
            }
            if lo > 0 {
                b.push((BC_S_LE, Target::Accept, lo - 1));
                b.push((BC_D_LE, Target::Accept, lo - 1));
            } else {
                b.push((BC_JMP, Target::Accept, 0));
            }
            blocks.push(b);
        }
        let op_len = |code: u8| if code == BC_JMP { JMP_LEN } else { CMP_LEN };
        let block_len = |b: &Vec<(u8, Target, u16)>| b.iter().map(|op| op_len(op.0)).sum::<usize>();
        let len = blocks.iter().map(block_len).sum::<usize>() + JMP_LEN;
        let mut out = Vec::with_capacity(4 + len);
        out.extend_from_slice(&((4 + len) as u16).to_ne_bytes());
        out.extend_from_slice(&REQ_BYTECODE.to_ne_bytes());
        let mut at = 0;
        for b in &blocks {
            let next_block = at + block_len(b);
            for &(code, target, port) in b {
                let no = match target {
                    Target::NextRange => next_block - at,
                    Target::Accept => len - at,
                };
                out.push(code);
                out.push(op_len(code) as u8);
                out.extend_from_slice(&(no as u16).to_ne_bytes());
                if code != BC_JMP {
                    out.extend_from_slice(&[0, 0]);
                    out.extend_from_slice(&port.to_ne_bytes());
                }
                at += op_len(code);
            }
        }
        // Reject: jump 4 bytes past the end.
        out.push(BC_JMP);
        out.push(JMP_LEN as u8);
        out.extend_from_slice(&((JMP_LEN + 4) as u16).to_ne_bytes());
        out
    }
}

/// `parts` disjoint parts covering every key: the ephemeral range `eph` (`lo..=hi`;
/// Linux's default when `lo >= hi`) cut into [`SLICES_PER_PART`] equal slices per part,
/// slice `j` going to part `j % parts`; the first slice reaches down to 0 and the last up
/// to 65535. One part (no filter) when `parts <= 1`; no more slices than the range has
/// ports, and no more parts than slices.
pub(crate) fn split(parts: usize, eph: (u16, u16)) -> Vec<PortPart> {
    let (lo, hi) = if eph.0 < eph.1 { eph } else { DEFAULT_EPHEMERAL };
    let width = u32::from(hi) - u32::from(lo) + 1;
    let parts = (parts.clamp(1, MAX_PARTS) as u32).min(width);
    if parts == 1 {
        return vec![PortPart {
            ranges: vec![(0, u16::MAX)],
        }];
    }
    let slices = (parts * SLICES_PER_PART as u32).min(width);
    let cut = |k: u32| (u32::from(lo) + width * k / slices) as u16;
    let mut out = vec![PortPart { ranges: Vec::new() }; parts as usize];
    for j in 0..slices {
        let range = (
            if j == 0 { 0 } else { cut(j) },
            if j + 1 == slices { u16::MAX } else { cut(j + 1) - 1 },
        );
        out[(j % parts) as usize].ranges.push(range);
    }
    out
}

/// How many parts to dump a namespace in. `requested` 0 means automatic:
/// [`AUTO_PARTS`] when the namespace holds at least [`SPLIT_MIN_SOCKETS`] TCP sockets
/// (`sockets`, from `sockstat`; unknown counts as small) and the process may use that many
/// CPUs (`cpus`, asked only then: it reads the affinity mask and cgroup quota), else one.
/// Any other value is used as given, up to [`MAX_PARTS`].
pub(crate) fn parts_for(requested: usize, sockets: Option<u64>, cpus: impl FnOnce() -> usize) -> usize {
    match requested {
        0 if sockets.is_some_and(|n| n >= SPLIT_MIN_SOCKETS) => AUTO_PARTS.min(cpus().max(1)),
        0 => 1,
        n => n.min(MAX_PARTS),
    }
}

/// TCP sockets in use plus TIME_WAIT, from the text of `/proc/net/sockstat`
/// (`TCP: inuse 5 orphan 0 tw 2 alloc 9 mem 1`).
pub(crate) fn sockstat_tcp(text: &str) -> Option<u64> {
    let line = text.lines().find_map(|l| l.strip_prefix("TCP:"))?;
    let mut words = line.split_whitespace();
    let (mut inuse, mut tw) = (None, None);
    while let (Some(k), Some(v)) = (words.next(), words.next()) {
        match k {
            "inuse" => inuse = v.parse::<u64>().ok(),
            "tw" => tw = v.parse::<u64>().ok(),
            _ => {}
        }
    }
    Some(inuse? + tw.unwrap_or(0))
}

/// The range in the text of `net.ipv4.ip_local_port_range` (`32768\t60999`).
pub(crate) fn port_range(text: &str) -> Option<(u16, u16)> {
    let mut w = text.split_whitespace();
    let lo = w.next()?.parse().ok()?;
    let hi = w.next()?.parse().ok()?;
    (w.next().is_none() && lo < hi).then_some((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    /// `(code, yes, no)` of the operation at `at`, and its length.
    fn op_at(bc: &[u8], at: usize) -> (u8, i64, i64, usize) {
        let (code, yes, no) = (
            bc[at],
            i64::from(bc[at + 1]),
            i64::from(u16::from_ne_bytes([bc[at + 2], bc[at + 3]])),
        );
        (code, yes, no, if code == BC_JMP { JMP_LEN } else { CMP_LEN })
    }

    /// The kernel's `valid_cc`: walking the `yes` chain from the start reaches `cc` bytes
    /// before the end exactly.
    fn valid_cc(bc: &[u8], cc: i64) -> bool {
        let (mut len, mut at) = (bc.len() as i64, 0usize);
        while len >= 0 {
            if cc > len {
                return false;
            }
            if cc == len {
                return true;
            }
            let yes = i64::from(bc[at + 1]);
            if yes < 4 || yes & 3 != 0 {
                return false;
            }
            len -= yes;
            at += yes as usize;
        }
        false
    }

    /// The kernel's `inet_diag_bc_audit` for the operations the filters use (JMP, S_LE,
    /// D_LE; any other code fails here, though the kernel knows more): each at least its
    /// own length long, jumps multiples of 4 landing at most 4 past the end, a `no` jump
    /// inside the program landing on the `yes` chain; the `yes` walk ends at the end.
    fn audit(bc: &[u8]) -> bool {
        let (mut len, mut at) = (bc.len() as i64, 0usize);
        while len > 0 {
            let (code, yes, no, min_len) = op_at(bc, at);
            let min_len = min_len as i64;
            if !matches!(code, BC_JMP | BC_S_LE | BC_D_LE) || len < min_len {
                return false;
            }
            if no < min_len || no > len + 4 || no & 3 != 0 || (no < len && !valid_cc(bc, len - no)) {
                return false;
            }
            if yes < min_len || yes > len + 4 || yes & 3 != 0 {
                return false;
            }
            at += yes as usize;
            len -= yes;
        }
        len == 0
    }

    /// The kernel's `inet_diag_bc_run` for the same operations: accept when the program runs
    /// exactly to its end.
    fn run(bc: &[u8], sport: u16, dport: u16) -> bool {
        let (mut len, mut at) = (bc.len() as i64, 0usize);
        while len > 0 {
            let (code, yes, no, _) = op_at(bc, at);
            let port = || u16::from_ne_bytes([bc[at + 6], bc[at + 7]]);
            let ok = match code {
                BC_JMP => false,
                BC_S_LE => sport <= port(),
                BC_D_LE => dport <= port(),
                _ => unreachable!("code {code} (the audit admits no other)"),
            };
            let jump = if ok { yes } else { no };
            len -= jump;
            at = at.wrapping_add(jump as usize);
        }
        len == 0
    }

    fn accepts(part: &PortPart, sport: u16, dport: u16) -> bool {
        let attr = part.attribute();
        if attr.is_empty() {
            return true;
        }
        assert_eq!(usize::from(u16::from_ne_bytes([attr[0], attr[1]])), attr.len());
        assert_eq!(u16::from_ne_bytes([attr[2], attr[3]]), REQ_BYTECODE);
        let bc = &attr[4..];
        assert!(audit(bc), "{part:?} fails the kernel's audit: {bc:?}");
        run(bc, sport, dport)
    }

    #[rstest]
    #[case(1, (32768, 60999), vec![vec![(0, 65535)]])]
    #[case(0, (32768, 60999), vec![vec![(0, 65535)]])]
    #[case(2, (32768, 60999), vec![
        vec![(0, 36296), (39826, 43354), (46884, 50412), (53942, 57470)],
        vec![(36297, 39825), (43355, 46883), (50413, 53941), (57471, 65535)],
    ])]
    #[case(2, (1000, 1007), vec![
        vec![(0, 1000), (1002, 1002), (1004, 1004), (1006, 1006)],
        vec![(1001, 1001), (1003, 1003), (1005, 1005), (1007, 65535)],
    ])]
    #[case(3, (1000, 1002), vec![vec![(0, 1000)], vec![(1001, 1001)], vec![(1002, 65535)]])]
    #[case(16, (0, 2), vec![vec![(0, 0)], vec![(1, 1)], vec![(2, 65535)]])]
    #[case(2, (0, 0), split(2, DEFAULT_EPHEMERAL).into_iter().map(|p| p.ranges).collect())]
    fn splits(#[case] parts: usize, #[case] eph: (u16, u16), #[case] want: Vec<Vec<(u16, u16)>>) {
        let got: Vec<Vec<(u16, u16)>> = split(parts, eph).into_iter().map(|p| p.ranges).collect();
        assert_eq!(got, want);
    }

    /// A run of ports, as Linux hands them out to connections to one destination, lands in
    /// both parts about equally, wherever in the range it starts.
    #[test]
    fn a_run_of_ports_is_shared_between_parts() {
        let parts = split(2, DEFAULT_EPHEMERAL);
        for start in (32768u16..60999 - 10_000).step_by(997) {
            let n0 = (start..start + 10_000).filter(|&p| parts[0].contains(p, 443)).count();
            assert!(
                (3_000..=7_000).contains(&n0),
                "run from {start}: {n0} of 10000 in part 0"
            );
        }
    }

    #[rstest]
    #[case(0, Some(100_000), 8, 2)]
    #[case(0, Some(100_000), 1, 1)]
    #[case(0, Some(4095), 8, 1)]
    #[case(0, Some(4096), 2, 2)]
    #[case(0, None, 8, 1)]
    #[case(1, Some(100_000), 8, 1)]
    #[case(4, Some(10), 1, 4)]
    #[case(99, None, 2, MAX_PARTS)]
    fn chooses_parts(#[case] req: usize, #[case] sockets: Option<u64>, #[case] cpus: usize, #[case] want: usize) {
        assert_eq!(parts_for(req, sockets, || cpus), want);
    }

    #[rstest]
    #[case(
        "sockets: used 123\nTCP: inuse 5 orphan 0 tw 2 alloc 9 mem 1\nUDP: inuse 0 mem 0\n",
        Some(7)
    )]
    #[case("TCP: inuse 20802 orphan 0 tw 0 alloc 20803 mem 3\n", Some(20802))]
    #[case("TCP: inuse 5\n", Some(5))]
    #[case("TCP: orphan 0 tw 2\n", None)]
    #[case("UDP: inuse 3\n", None)]
    #[case("", None)]
    fn reads_sockstat(#[case] text: &str, #[case] want: Option<u64>) {
        assert_eq!(sockstat_tcp(text), want);
    }

    #[rstest]
    #[case("32768\t60999\n", Some((32768, 60999)))]
    #[case("1024 65000", Some((1024, 65000)))]
    #[case("60999 32768", None)]
    #[case("1024", None)]
    #[case("a b", None)]
    #[case("1 2 3", None)]
    fn reads_port_range(#[case] text: &str, #[case] want: Option<(u16, u16)>) {
        assert_eq!(port_range(text), want);
    }

    #[test]
    fn the_whole_part_has_no_filter() {
        assert!(split(1, DEFAULT_EPHEMERAL)[0].attribute().is_empty());
    }

    proptest! {
        /// Every socket is in exactly one part, the one whose ranges hold its key,
        /// whatever the range and number of parts; every filter passes the kernel's audit.
        #[test]
        fn parts_are_disjoint_and_cover_every_socket(
            parts in 1usize..=MAX_PARTS,
            lo in any::<u16>(),
            width in 1u16..=u16::MAX,
            sport in any::<u16>(),
            dport in any::<u16>(),
        ) {
            let eph = (lo, lo.saturating_add(width));
            let ps = split(parts, eph);
            let owners: Vec<&PortPart> = ps.iter().filter(|p| accepts(p, sport, dport)).collect();
            prop_assert_eq!(owners.len(), 1, "{:?} with ports {} {}", ps, sport, dport);
            prop_assert!(owners[0].contains(sport, dport));
        }

        /// The edges of each range: its lowest and highest keys are in its part, the keys
        /// next to them are not.
        #[test]
        fn range_edges(parts in 2usize..=MAX_PARTS, other in any::<u16>()) {
            for p in split(parts, DEFAULT_EPHEMERAL) {
                for &(lo, hi) in &p.ranges {
                    let small = other.min(lo);
                    prop_assert!(accepts(&p, lo, small) && accepts(&p, small, lo));
                    prop_assert!(accepts(&p, hi, other.min(hi)) && accepts(&p, other.min(hi), hi));
                    if lo > 0 {
                        prop_assert!(!accepts(&p, lo - 1, small.min(lo - 1)));
                    }
                    if hi < u16::MAX {
                        prop_assert!(!accepts(&p, hi + 1, 0) && !accepts(&p, 0, hi + 1));
                    }
                }
            }
        }
    }
}
