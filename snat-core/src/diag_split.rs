//! Splitting one sock_diag dump into disjoint parts, so that the census of a large network
//! namespace can ask the kernel for each part on its own thread.
//!
//! Most of a census's time is the kernel filling one netlink message per socket, which a
//! single dump does on one CPU. Each part here is an `inet_diag` bytecode filter
//! (`INET_DIAG_REQ_BYTECODE`) on the key `max(local port, remote port)`: for an outbound
//! connection that key is its ephemeral local port, for an inbound one the client's
//! ephemeral port, so cutting the namespace's ephemeral range
//! (`net.ipv4.ip_local_port_range`) into equal slices gives parts of about equal size.
//! The first part starts at port 0 and the last ends at 65535, so every socket, listeners
//! included, is in exactly one part. Every part still walks the whole hash table (the
//! filter runs per socket), so a split costs CPU: [`parts_for`] splits only namespaces
//! large enough for it to pay, and into two parts by default.

/// Below this many TCP sockets (in use plus TIME_WAIT) a namespace is dumped in one part.
pub(crate) const SPLIT_MIN_SOCKETS: u64 = 4096;
/// Parts used when the caller leaves the choice to [`parts_for`].
pub(crate) const AUTO_PARTS: usize = 2;
/// The most parts a caller may ask for.
pub(crate) const MAX_PARTS: usize = 16;
/// Linux's default `net.ipv4.ip_local_port_range`.
pub(crate) const DEFAULT_EPHEMERAL: (u16, u16) = (32768, 60999);

// inet_diag bytecode operations (include/uapi/linux/inet_diag.h).
#[cfg(test)] // only the tests' interpreter needs it
const BC_S_GE: u8 = 2;
const BC_S_LE: u8 = 3;
const BC_D_GE: u8 = 4;
const BC_D_LE: u8 = 5;
/// `INET_DIAG_REQ_BYTECODE`, the request attribute holding the filter.
const REQ_BYTECODE: u16 = 1;
/// One port comparison: the operation, then a second operation whose `no` holds the port.
const OP_LEN: usize = 8;

/// The sockets whose key `max(local port, remote port)` lies in `lo..=hi`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortPart {
    /// Lowest key in the part.
    pub lo: u16,
    /// Highest key in the part.
    pub hi: u16,
}

impl PortPart {
    /// Whether a socket with these ports belongs to this part.
    #[cfg(test)]
    fn contains(self, sport: u16, dport: u16) -> bool {
        (self.lo..=self.hi).contains(&sport.max(dport))
    }

    /// The filter as a netlink attribute (`nlattr` header, then the operations), ready to
    /// append to a dump request. Empty for the part that holds every key.
    pub(crate) fn attribute(self) -> Vec<u8> {
        // A comparison jumps to `end + 4` to reject and falls through to the next
        // operation to go on; running exactly to the end accepts.
        let mut ops: Vec<(u8, usize, usize, u16)> = Vec::new(); // code, yes, no, port
        let len = OP_LEN * (2 * usize::from(self.hi < u16::MAX) + 2 * usize::from(self.lo > 0));
        let mut at = 0;
        if self.hi < u16::MAX {
            // local port <= hi and remote port <= hi
            ops.push((BC_S_LE, OP_LEN, len - at + 4, self.hi));
            at += OP_LEN;
            ops.push((BC_D_LE, OP_LEN, len - at + 4, self.hi));
            at += OP_LEN;
        }
        if self.lo > 0 {
            // local port >= lo (accept), or else remote port >= lo
            ops.push((BC_S_LE, OP_LEN, len - at, self.lo - 1));
            at += OP_LEN;
            ops.push((BC_D_GE, OP_LEN, len - at + 4, self.lo));
        }
        if ops.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::with_capacity(4 + len);
        out.extend_from_slice(&((4 + len) as u16).to_ne_bytes());
        out.extend_from_slice(&REQ_BYTECODE.to_ne_bytes());
        for (code, yes, no, port) in ops {
            out.push(code);
            out.push(yes as u8);
            out.extend_from_slice(&(no as u16).to_ne_bytes());
            out.extend_from_slice(&[0, 0]);
            out.extend_from_slice(&port.to_ne_bytes());
        }
        out
    }
}

/// `parts` disjoint parts covering every key, cut at equal slices of the ephemeral range
/// `eph` (`lo..=hi`; Linux's default when `lo >= hi`). One part (no filter) when
/// `parts <= 1`; no more parts than the range has ports.
pub(crate) fn split(parts: usize, eph: (u16, u16)) -> Vec<PortPart> {
    let (lo, hi) = if eph.0 < eph.1 { eph } else { DEFAULT_EPHEMERAL };
    let width = u32::from(hi) - u32::from(lo) + 1;
    // At most one part per port of the range, so that every cut is above the last.
    let parts = (parts.clamp(1, MAX_PARTS) as u32).min(width);
    let cut = |k: u32| (u32::from(lo) + width * k / parts) as u16;
    (0..parts)
        .map(|k| PortPart {
            lo: if k == 0 { 0 } else { cut(k) },
            hi: if k + 1 == parts { u16::MAX } else { cut(k + 1) - 1 },
        })
        .collect()
}

/// How many parts to dump a namespace in. `requested` 0 means automatic:
/// [`AUTO_PARTS`] when the namespace holds at least [`SPLIT_MIN_SOCKETS`] TCP sockets
/// (`sockets`, from `sockstat`; unknown counts as small) and the process may use that many
/// CPUs, else one. Any other value is used as given, up to [`MAX_PARTS`].
pub(crate) fn parts_for(requested: usize, sockets: Option<u64>, cpus: usize) -> usize {
    match requested {
        0 if sockets.is_some_and(|n| n >= SPLIT_MIN_SOCKETS) => AUTO_PARTS.min(cpus.max(1)),
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

    /// The kernel's `inet_diag_bc_audit` on the port comparisons used here: every jump a
    /// multiple of 4, at least one operation long, at most 4 past the end; the walk along
    /// the `yes` jumps ends exactly at the end.
    fn audit(bc: &[u8]) -> bool {
        let mut len = bc.len() as i64;
        let mut at = 0usize;
        while len > 0 {
            let (code, yes, no) = (
                bc[at],
                i64::from(bc[at + 1]),
                i64::from(u16::from_ne_bytes([bc[at + 2], bc[at + 3]])),
            );
            if !(BC_S_GE..=BC_D_LE).contains(&code) || len < OP_LEN as i64 {
                return false;
            }
            for jump in [yes, no] {
                if jump < OP_LEN as i64 || jump > len + 4 || jump & 3 != 0 {
                    return false;
                }
            }
            at += yes as usize;
            len -= yes;
        }
        len == 0
    }

    /// The kernel's `inet_diag_bc_run` for port comparisons: accept when the program runs
    /// exactly to its end.
    fn run(bc: &[u8], sport: u16, dport: u16) -> bool {
        let mut len = bc.len() as i64;
        let mut at = 0usize;
        while len > 0 {
            let code = bc[at];
            let port = u16::from_ne_bytes([bc[at + 6], bc[at + 7]]);
            let ok = match code {
                BC_S_GE => sport >= port,
                BC_S_LE => sport <= port,
                BC_D_GE => dport >= port,
                BC_D_LE => dport <= port,
                _ => unreachable!("code {code}"),
            };
            let jump = if ok {
                i64::from(bc[at + 1])
            } else {
                i64::from(u16::from_ne_bytes([bc[at + 2], bc[at + 3]]))
            };
            len -= jump;
            at = at.wrapping_add(jump as usize);
        }
        len == 0
    }

    fn accepts(part: PortPart, sport: u16, dport: u16) -> bool {
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
    #[case(1, (32768, 60999), vec![(0, 65535)])]
    #[case(2, (32768, 60999), vec![(0, 46883), (46884, 65535)])]
    #[case(2, (1024, 65000), vec![(0, 33011), (33012, 65535)])]
    #[case(3, (1000, 1002), vec![(0, 1000), (1001, 1001), (1002, 65535)])]
    #[case(2, (0, 0), vec![(0, 46883), (46884, 65535)])]
    #[case(0, (32768, 60999), vec![(0, 65535)])]
    #[case(16, (0, 2), vec![(0, 0), (1, 1), (2, 65535)])]
    fn splits(#[case] parts: usize, #[case] eph: (u16, u16), #[case] want: Vec<(u16, u16)>) {
        let got: Vec<(u16, u16)> = split(parts, eph).iter().map(|p| (p.lo, p.hi)).collect();
        assert_eq!(got, want);
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
        assert_eq!(parts_for(req, sockets, cpus), want);
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
        assert!(PortPart { lo: 0, hi: u16::MAX }.attribute().is_empty());
    }

    proptest! {
        /// Every socket is in exactly one part, the one its key falls in, whatever the
        /// range and number of parts; every filter passes the kernel's audit.
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
            let owners: Vec<PortPart> = ps.iter().copied().filter(|&p| accepts(p, sport, dport)).collect();
            prop_assert_eq!(owners.len(), 1, "{:?} with ports {} {}", ps, sport, dport);
            prop_assert!(owners[0].contains(sport, dport));
        }

        /// The edges of each part: its lowest and highest keys are in, the keys next to
        /// them are not.
        #[test]
        fn part_edges(parts in 2usize..=MAX_PARTS, other in any::<u16>()) {
            for p in split(parts, DEFAULT_EPHEMERAL) {
                let small = other.min(p.lo);
                prop_assert!(accepts(p, p.lo, small) && accepts(p, small, p.lo));
                prop_assert!(accepts(p, p.hi, other.min(p.hi)) && accepts(p, other.min(p.hi), p.hi));
                if p.lo > 0 {
                    prop_assert!(!accepts(p, p.lo - 1, small.min(p.lo - 1)));
                }
                if p.hi < u16::MAX {
                    prop_assert!(!accepts(p, p.hi + 1, 0) && !accepts(p, 0, p.hi + 1));
                }
            }
        }
    }
}
