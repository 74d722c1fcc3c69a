//! A busy namespace's sock_diag dump split across two threads. The kernel's cost of a
//! census is filling one netlink message per socket, on the thread that reads the dump; on
//! a namespace with many sockets (the one a census is usually pointed at) two threads that
//! each ask for half of the sockets finish in a little more than half the time. The halves
//! are chosen in the kernel with an `INET_DIAG_REQ_BYTECODE` filter on the ports, split at
//! the middle of the namespace's ephemeral port range: half A holds the sockets whose local
//! and remote ports are both below the middle, half B every other socket, so the halves are
//! disjoint and cover everything, and a connection's ephemeral end (uniform over the range)
//! decides its half, for outbound and accepted connections alike. Each thread walks the
//! kernel's hash tables (a fixed cost of about a millisecond per 100,000 buckets), so the
//! split is only used when the namespace holds at least [`SPLIT_MIN_SOCKETS`] sockets and
//! the process may run on two CPUs.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use super::{StateSet, compat_dump_request, open_sock_diag, sock_diag_dump, split_listeners};
use crate::error::Error;
use crate::model::Socket;

/// Sockets in the namespace (hashed plus TIME_WAIT, from `/proc/net/sockstat`) from which a
/// dump is split across two threads.
pub const SPLIT_MIN_SOCKETS: u64 = 5000;

/// `INET_DIAG_REQ_BYTECODE`, the request attribute holding a filter program.
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const BC_JMP: u8 = 1;
const BC_S_GE: u8 = 2;
const BC_S_LE: u8 = 3;
const BC_D_GE: u8 = 4;
const BC_D_LE: u8 = 5;

/// One `struct inet_diag_bc_op` (code, yes, no).
fn op(code: u8, yes: u8, no: u16) -> [u8; 4] {
    let n = no.to_ne_bytes();
    [code, yes, n[0], n[1]]
}

/// A port comparison: the op and its operand op (the port in the `no` field).
fn port_op(code: u8, port: u16, yes: u8, no: u16) -> Vec<u8> {
    let mut v = op(code, yes, no).to_vec();
    v.extend_from_slice(&op(0, 0, port));
    v
}

/// The filter of one half. `low == true`: local and remote port both below `mid`;
/// otherwise: either port at or above `mid`.
///
/// Semantics (`inet_diag_bc_run`): each op jumps `yes` bytes forward when its condition
/// holds, else `no` bytes; the socket is kept when the program ends exactly at its end, so
/// a jump 4 bytes past the end rejects. The kernel's audit requires every `no` target to be
/// on the chain of `yes` jumps, hence the `JMP` in the second program.
pub(super) fn half_filter(mid: u16, low: bool) -> Vec<u8> {
    if low {
        // 0: sport <= mid-1 ? next : reject     8: dport <= mid-1 ? accept : reject
        let mut v = port_op(BC_S_LE, mid - 1, 8, 20);
        v.extend(port_op(BC_D_LE, mid - 1, 8, 12));
        v
    } else {
        // 0: sport >= mid ? 8 : 12     8: JMP accept     12: dport >= mid ? accept : reject
        let mut v = port_op(BC_S_GE, mid, 8, 12);
        v.extend_from_slice(&op(BC_JMP, 4, 12));
        v.extend(port_op(BC_D_GE, mid, 8, 12));
        v
    }
}

/// A `TCPDIAG_GETSOCK` dump request carrying `filter`.
pub(super) fn filtered_request(states: u32, seq: u32, filter: &[u8]) -> Vec<u8> {
    let mut req = compat_dump_request(states, seq).to_vec();
    let attr_len = 4 + filter.len();
    req.extend_from_slice(&(attr_len as u16).to_ne_bytes());
    req.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
    req.extend_from_slice(filter);
    while !req.len().is_multiple_of(4) {
        req.push(0);
    }
    let len = req.len() as u32;
    req[0..4].copy_from_slice(&len.to_ne_bytes());
    req
}

/// TCP sockets of the calling thread's namespace (hashed plus TIME_WAIT), from
/// `/proc/thread-self/net/sockstat`; `None` when it cannot be read.
pub(super) fn sockets_in_namespace() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/net/sockstat").ok()?;
    let line = text.lines().find(|l| l.starts_with("TCP:"))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let field = |name: &str| {
        words
            .iter()
            .position(|w| *w == name)
            .and_then(|i| words.get(i + 1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some(field("inuse")? + field("tw").unwrap_or(0))
}

/// The middle of the calling thread's namespace's ephemeral port range (Linux's default
/// range 32768-60999 when it cannot be read).
pub(super) fn ephemeral_middle() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok();
    let (lo, hi) = range
        .as_deref()
        .and_then(|t| {
            let mut it = t.split_whitespace().map(|w| w.parse::<u32>().ok());
            Some((it.next()??, it.next()??))
        })
        .filter(|(lo, hi)| 0 < *lo && lo <= hi && *hi <= 65535)
        .unwrap_or((32768, 60999));
    // At least 1, so that `mid - 1` is a port.
    (lo.midpoint(hi)).max(1) as u16
}

/// Whether the dump of the calling thread's namespace is worth splitting.
pub(super) fn worth_splitting() -> bool {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    cpus >= 2 && sockets_in_namespace().is_some_and(|n| n >= SPLIT_MIN_SOCKETS)
}

/// One half of the dump, from the calling thread's namespace.
fn dump_half(states: StateSet, mid: u16, low: bool) -> Result<Vec<Socket>, Error> {
    let fd = open_sock_diag().map_err(|e| super::netlink_err("socket(NETLINK_SOCK_DIAG)", e))?;
    let bits = states.with(crate::model::TcpState::Listen).bits();
    let seq = if low { 11 } else { 12 };
    let mut out = Vec::new();
    sock_diag_dump(
        &fd,
        &filtered_request(bits, seq, &half_filter(mid, low)),
        seq,
        states,
        &mut out,
    )?;
    Ok(out)
}

/// The dump of the calling thread's namespace in two halves, the second on a helper thread
/// that enters the same namespace.
pub(super) fn sock_diag_split(states: StateSet) -> Result<(Vec<Socket>, Vec<SocketAddr>), Error> {
    let mid = ephemeral_middle();
    let ns = std::fs::File::open("/proc/thread-self/ns/net").map_err(|source| Error::Io {
        what: "cannot open this thread's network namespace",
        path: "/proc/thread-self/ns/net".into(),
        source,
    })?;
    let helper = std::thread::Builder::new()
        .name("snat-census-2".into())
        .spawn(move || -> Result<Vec<Socket>, Error> {
            // SAFETY: setns on a valid descriptor; it changes only this thread, which ends
            // with the dump.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(Error::EnterNetns {
                    path: "/proc/thread-self/ns/net".into(),
                    source: io::Error::last_os_error(),
                });
            }
            drop(ns);
            dump_half(states, mid, false)
        })
        .map_err(|e| Error::CensusThread(e.to_string()))?;
    let low = dump_half(states, mid, true);
    let high = helper
        .join()
        .map_err(|_| Error::CensusThread("the second census thread panicked".into()))?;
    let mut all = low?;
    all.extend(high?);
    Ok(split_listeners(all, states))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    /// The kernel's `inet_diag_bc_run`, for checking the programs without a kernel.
    fn run(bc: &[u8], sport: u16, dport: u16) -> bool {
        let mut pos = 0usize;
        let mut len = bc.len() as i64;
        while len > 0 {
            let code = bc[pos];
            let yes_len = i64::from(bc[pos + 1]);
            let no_len = i64::from(u16::from_ne_bytes([bc[pos + 2], bc[pos + 3]]));
            let operand = || u16::from_ne_bytes([bc[pos + 6], bc[pos + 7]]);
            let yes = match code {
                BC_JMP => false,
                BC_S_GE => sport >= operand(),
                BC_S_LE => sport <= operand(),
                BC_D_GE => dport >= operand(),
                BC_D_LE => dport <= operand(),
                other => panic!("unexpected op {other}"),
            };
            let step = if yes { yes_len } else { no_len };
            len -= step;
            pos += step as usize;
        }
        len == 0
    }

    /// The kernel's `inet_diag_bc_audit` rules for these ops: every jump a multiple of 4,
    /// at least the op's length, at most 4 past the end, and every `no` target inside the
    /// program on the chain of `yes` jumps.
    fn audit(bc: &[u8]) {
        let total = bc.len() as i64;
        let mut yes_chain = vec![];
        let (mut pos, mut len) = (0usize, total);
        while len > 0 {
            yes_chain.push(len);
            let min_len = if bc[pos] == BC_JMP { 4 } else { 8 };
            let yes = i64::from(bc[pos + 1]);
            let no = i64::from(u16::from_ne_bytes([bc[pos + 2], bc[pos + 3]]));
            assert!(no >= min_len && no <= len + 4 && no % 4 == 0, "bad no {no} at {pos}");
            assert!(
                yes >= min_len && yes <= len + 4 && yes % 4 == 0,
                "bad yes {yes} at {pos}"
            );
            pos += yes as usize;
            len -= yes;
        }
        let (mut pos, mut len) = (0usize, total);
        while len > 0 {
            let no = i64::from(u16::from_ne_bytes([bc[pos + 2], bc[pos + 3]]));
            if no < len {
                assert!(
                    yes_chain.contains(&(len - no)),
                    "no target {} not on the yes chain",
                    len - no
                );
            }
            let yes = i64::from(bc[pos + 1]);
            pos += yes as usize;
            len -= yes;
        }
    }

    #[rstest]
    #[case(40000, 443, true)]
    #[case(50000, 443, false)]
    #[case(443, 40000, true)]
    #[case(443, 50000, false)]
    #[case(46883, 46883, true)]
    #[case(46884, 80, false)]
    #[case(80, 46884, false)]
    #[case(8080, 0, true)]
    #[case(65535, 0, false)]
    fn halves(#[case] sport: u16, #[case] dport: u16, #[case] in_low: bool) {
        let (a, b) = (half_filter(46884, true), half_filter(46884, false));
        audit(&a);
        audit(&b);
        assert_eq!(run(&a, sport, dport), in_low);
        assert_eq!(run(&b, sport, dport), !in_low);
    }

    proptest::proptest! {
        #[test]
        fn every_socket_is_in_exactly_one_half(mid in 1u16.., sport: u16, dport: u16) {
            let (a, b) = (half_filter(mid, true), half_filter(mid, false));
            proptest::prop_assert!(run(&a, sport, dport) != run(&b, sport, dport));
            proptest::prop_assert_eq!(run(&a, sport, dport), sport < mid && dport < mid);
        }
    }

    #[test]
    fn request_carries_the_filter_as_an_attribute() {
        let f = half_filter(46884, false);
        let req = filtered_request(1 << 1, 7, &f);
        assert_eq!(req.len() % 4, 0);
        assert_eq!(u32::from_ne_bytes(req[0..4].try_into().unwrap()) as usize, req.len());
        let attr = &req[16 + 60..];
        assert_eq!(u16::from_ne_bytes([attr[0], attr[1]]) as usize, 4 + f.len());
        assert_eq!(u16::from_ne_bytes([attr[2], attr[3]]), INET_DIAG_REQ_BYTECODE);
        assert_eq!(&attr[4..4 + f.len()], &f[..]);
    }
}
