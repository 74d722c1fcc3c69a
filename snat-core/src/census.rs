//! Socket census of a network namespace: every TCP socket in chosen states, with counts
//! per state and per public destination, read without touching the processes that own
//! them.
//!
//! [`census_netns`] enters the namespace through a namespace file (`/proc/PID/ns/net` or
//! `/run/netns/NAME`) with `setns(CLONE_NEWNET)` on a dedicated `std::thread` (setns only
//! affects the calling thread, so the caller's threads never change namespace), then asks
//! the kernel for a dump over netlink `NETLINK_SOCK_DIAG` whose state bitmask filters in
//! the kernel. It sends one `TCPDIAG_GETSOCK` request for IPv4 and IPv6 together, so the
//! kernel walks its host-wide TCP hash tables once, not once per family; a kernel that
//! refuses that request gets one `SOCK_DIAG_BY_FAMILY` request per family. A large
//! namespace is dumped in parts on parallel threads, each part an `inet_diag` bytecode
//! filter on ports (see [`CensusOptions::threads`]). When
//! sock_diag is not available it falls back to `/proc/thread-self/net/tcp{,6}`, and the
//! [`Census`] says which [`Method`] was used and why. [`parse_proc_net_tcp`] parses the
//! text of those files given as a string (the in-pod census reads them through the
//! Kubernetes exec API). Listening sockets are always collected on the side, so that
//! [`Census::destinations`] can leave out accepted (inbound) connections, which use no
//! SNAT port. It also leaves out the sockets a service-mesh sidecar (Istio, Linkerd)
//! redirected to itself with iptables/nft REDIRECT: such a socket still shows the public
//! destination, but its local endpoint is the remote endpoint of a socket the sidecar
//! accepted in the same namespace, and the sidecar's own upstream socket is the one that
//! uses the SNAT port. [`Census::redirected_locally`] counts them apart.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::diag_split;
use crate::error::Error;
use crate::model::{Family, Socket, TcpState};

/// A set of TCP states, as the kernel's `idiag_states` bitmask (`1 << state number`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct StateSet(u32);

impl StateSet {
    /// No state.
    pub const EMPTY: StateSet = StateSet(0);

    /// Every state.
    pub fn all() -> StateSet {
        StateSet::of(&TcpState::ALL)
    }

    /// Every state a connection can be in, that is all but LISTEN (the default of a census).
    pub fn connections() -> StateSet {
        let mut s = StateSet::all();
        s.0 &= !(1 << TcpState::Listen.number());
        s
    }

    /// The states given.
    pub fn of(states: &[TcpState]) -> StateSet {
        StateSet(states.iter().fold(0, |acc, s| acc | (1 << s.number())))
    }

    /// Parse state names such as `ESTABLISHED`, `syn-sent`.
    pub fn parse<S: AsRef<str>>(names: &[S]) -> Result<StateSet, Error> {
        let states = names
            .iter()
            .map(|n| n.as_ref().parse::<TcpState>().map_err(Error::InvalidArgument))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StateSet::of(&states))
    }

    /// Whether `state` is in the set.
    pub fn contains(self, state: TcpState) -> bool {
        self.0 & (1 << state.number()) != 0
    }

    /// The kernel bitmask.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// The set with `state` added.
    pub fn with(self, state: TcpState) -> StateSet {
        StateSet(self.0 | (1 << state.number()))
    }

    /// The states, in kernel order.
    pub fn states(self) -> Vec<TcpState> {
        TcpState::ALL.into_iter().filter(|s| self.contains(*s)).collect()
    }
}

/// How the sockets were listed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// netlink sock_diag, filtered in the kernel.
    SockDiag,
    /// `/proc/net/tcp` and `/proc/net/tcp6` text.
    ProcNetTcp,
}

impl Method {
    /// `sock_diag` or `proc_net_tcp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::SockDiag => "sock_diag",
            Method::ProcNetTcp => "proc_net_tcp",
        }
    }
}

/// Which method a census may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MethodChoice {
    /// sock_diag, falling back to `/proc/net/tcp{,6}` when sock_diag is not available.
    #[default]
    Auto,
    /// Only sock_diag.
    SockDiag,
    /// Only `/proc/net/tcp{,6}`.
    ProcNetTcp,
}

/// The most threads [`CensusOptions::threads`] may ask for.
pub const MAX_THREADS: usize = 16;

/// What a census lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CensusOptions {
    /// States to keep (default: every state but LISTEN).
    pub states: StateSet,
    /// Method to use.
    pub method: MethodChoice,
    /// How many threads the sock_diag dump may use, each asking the kernel for a disjoint
    /// part of the sockets (split by port; see the module docs). 0 (the default) chooses:
    /// two when the namespace holds at least 4,096 TCP sockets and the process may use two
    /// CPUs, else one. 1 is always a single dump; larger values are used as given, up to
    /// [`MAX_THREADS`].
    pub threads: usize,
}

impl Default for CensusOptions {
    fn default() -> Self {
        CensusOptions {
            states: StateSet::connections(),
            method: MethodChoice::Auto,
            threads: 0,
        }
    }
}

/// Counts of sockets by the states that matter for SNAT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StateCounts {
    /// ESTABLISHED: flows holding a SNAT port.
    pub established: u64,
    /// SYN_SENT: connects waiting for an answer (a direct symptom of exhaustion).
    pub syn_sent: u64,
    /// TIME_WAIT: closed by this side, the port is still held for a while.
    pub time_wait: u64,
    /// CLOSE_WAIT: closed by the peer, not yet by the application (a leak when it grows).
    pub close_wait: u64,
    /// FIN_WAIT1, FIN_WAIT2, CLOSING and LAST_ACK: closing, the FIN exchange not finished.
    #[serde(default)]
    pub fin_wait: u64,
    /// Every other state (SYN_RECV, CLOSE, LISTEN, ...).
    pub other: u64,
    /// All of the above.
    pub total: u64,
}

impl StateCounts {
    /// Count one socket in `state`.
    pub fn add(&mut self, state: TcpState) {
        match state {
            TcpState::Established => self.established += 1,
            TcpState::SynSent => self.syn_sent += 1,
            TcpState::TimeWait => self.time_wait += 1,
            TcpState::CloseWait => self.close_wait += 1,
            TcpState::FinWait1 | TcpState::FinWait2 | TcpState::Closing | TcpState::LastAck => self.fin_wait += 1,
            _ => self.other += 1,
        }
        self.total += 1;
    }

    /// Flows that hold or want a SNAT port right now: ESTABLISHED plus SYN_SENT.
    pub fn active(&self) -> u64 {
        self.established + self.syn_sent
    }

    /// Sockets closing but whose SNAT port is still held: TIME_WAIT, CLOSE_WAIT, FIN_WAIT1,
    /// FIN_WAIT2, CLOSING and LAST_ACK. A load balancer keeps a SNAT port about 240 s after
    /// a FIN (15 s after a RST), longer than Linux's 60 s TIME_WAIT, so every one of them
    /// still holds its port.
    pub fn closing(&self) -> u64 {
        self.time_wait + self.close_wait + self.fin_wait
    }

    /// SNAT ports held: [`active`](Self::active) (open and opening) plus
    /// [`closing`](Self::closing). A lower bound of what the load balancer holds: it keeps
    /// a port after the node's TIME_WAIT has ended, and only the side that closes first
    /// goes through TIME_WAIT at all.
    pub fn held(&self) -> u64 {
        self.active() + self.closing()
    }
}

/// Sockets towards one destination (IP and port).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DestinationCount {
    /// Destination address (IPv4-mapped IPv6 addresses are given as IPv4).
    pub ip: IpAddr,
    /// Destination port.
    pub port: u16,
    /// Counts by state.
    pub counts: StateCounts,
}

/// The sockets of one network namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Census {
    /// Network namespace inode, when known.
    pub netns: Option<u64>,
    /// How the sockets were listed.
    pub method: Method,
    /// Why the census fell back from sock_diag, when it did.
    pub fallback_reason: Option<String>,
    /// The sockets in the requested states.
    pub sockets: Vec<Socket>,
    /// Local addresses of listening sockets (always collected; used to tell accepted
    /// connections from outgoing ones).
    pub listeners: Vec<SocketAddr>,
}

/// The destination as SNAT sees it: IPv4-mapped IPv6 addresses become IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

/// An endpoint with its address as [`canonical`] makes it.
fn endpoint(a: SocketAddr) -> SocketAddr {
    SocketAddr::new(canonical(a.ip()), a.port())
}

/// Remote endpoint -> the local endpoints of the sockets connected to it.
pub(crate) type Remotes = BTreeMap<SocketAddr, BTreeSet<SocketAddr>>;

impl Census {
    /// Number of sockets per state (only states that occur).
    pub fn by_state(&self) -> BTreeMap<TcpState, u64> {
        let mut m = BTreeMap::new();
        for s in &self.sockets {
            *m.entry(s.state).or_insert(0) += 1;
        }
        m
    }

    /// Counts over all sockets.
    pub fn counts(&self) -> StateCounts {
        let mut c = StateCounts::default();
        for s in &self.sockets {
            c.add(s.state);
        }
        c
    }

    /// Whether a socket is an accepted (inbound) connection: its local port is one this
    /// namespace listens on, on the same address or on a wildcard address.
    pub fn is_inbound(&self, s: &Socket) -> bool {
        self.listeners.iter().any(|l| {
            l.port() == s.local.port() && (l.ip().is_unspecified() || canonical(l.ip()) == canonical(s.local.ip()))
        })
    }

    /// Outgoing sockets (not accepted ones) to destinations `is_public` says consume SNAT
    /// ports, counted per destination IP and port, ranked by ESTABLISHED + SYN_SENT, then
    /// by total, then by destination. The predicate sees IPv4-mapped addresses as IPv4.
    ///
    /// Sockets a service-mesh sidecar redirected locally are left out (see
    /// [`Census::redirected_locally`]): the sidecar's own upstream socket to the same
    /// destination is the one that uses a SNAT port, so counting both counts it twice.
    pub fn destinations(&self, is_public: impl Fn(IpAddr) -> bool) -> Vec<DestinationCount> {
        self.destinations_in(&is_public, &self.remote_endpoints())
    }

    /// Every socket's remote endpoint, with the local endpoints of the sockets that have
    /// it (IPv4-mapped addresses made IPv4).
    pub(crate) fn remote_endpoints(&self) -> Remotes {
        let mut m = Remotes::new();
        for s in &self.sockets {
            m.entry(endpoint(s.remote)).or_default().insert(endpoint(s.local));
        }
        m
    }

    /// Whether an outgoing socket was redirected to a local proxy (iptables/nft REDIRECT,
    /// as Istio and Linkerd install it): its local endpoint is the remote endpoint of a
    /// socket of the same namespace, the one the proxy accepted, and that socket's local
    /// endpoint is not the destination the outgoing socket shows (so NAT changed it: a
    /// plain connection to a server of the same namespace is not a redirect). It still
    /// shows the public destination it asked for, but its packets never leave the host.
    fn redirected_in(s: &Socket, remotes: &Remotes) -> bool {
        remotes
            .get(&endpoint(s.local))
            .is_some_and(|peers| peers.iter().any(|&p| p != endpoint(s.remote)))
    }

    /// [`Census::destinations`] with the remote endpoints of the whole namespace given
    /// (the census may be one owner's share of it).
    pub(crate) fn destinations_in(
        &self,
        is_public: &dyn Fn(IpAddr) -> bool,
        remotes: &Remotes,
    ) -> Vec<DestinationCount> {
        let listening: BTreeSet<u16> = self.listeners.iter().map(|l| l.port()).collect();
        let mut m: HashMap<(IpAddr, u16), StateCounts> = HashMap::new();
        for s in &self.sockets {
            if listening.contains(&s.local.port()) && self.is_inbound(s) {
                continue;
            }
            let ip = canonical(s.remote.ip());
            if !is_public(ip) || Self::redirected_in(s, remotes) {
                continue;
            }
            m.entry((ip, s.remote.port())).or_default().add(s.state);
        }
        let mut v: Vec<DestinationCount> = m
            .into_iter()
            .map(|((ip, port), counts)| DestinationCount { ip, port, counts })
            .collect();
        v.sort_by(|a, b| {
            (b.counts.active(), b.counts.total)
                .cmp(&(a.counts.active(), a.counts.total))
                .then((a.ip, a.port).cmp(&(b.ip, b.port)))
        });
        v
    }

    /// Outgoing sockets to public destinations that a local proxy took over (a
    /// service-mesh sidecar's iptables/nft REDIRECT): their local address and port are the
    /// remote address and port of another socket of this namespace, the one the sidecar
    /// accepted. [`Census::destinations`] leaves them out, since the sidecar's upstream
    /// socket is the one using the SNAT port; this says how many there were, by state.
    pub fn redirected_locally(&self, is_public: impl Fn(IpAddr) -> bool) -> StateCounts {
        let remotes = self.remote_endpoints();
        let mut c = StateCounts::default();
        for s in &self.sockets {
            if !self.is_inbound(s) && is_public(canonical(s.remote.ip())) && Self::redirected_in(s, &remotes) {
                c.add(s.state);
            }
        }
        c
    }

    /// Fill in `owner_pid` from a socket inode -> pid map (see
    /// [`procindex::socket_owners`](crate::procindex::socket_owners)). Returns how many
    /// sockets got an owner.
    pub fn attach_owners(&mut self, owners: &HashMap<u64, u32>) -> usize {
        let mut n = 0;
        for s in &mut self.sockets {
            if s.inode != 0
                && let Some(pid) = owners.get(&s.inode)
            {
                s.owner_pid = Some(*pid);
                n += 1;
            }
        }
        n
    }
}

// ----- netlink sock_diag ------------------------------------------------------------

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// `TCPDIAG_GETSOCK`: the original inet_diag request, which the kernel still serves. Its
/// dump has no family (`AF_UNSPEC`), so one walk of the host-wide TCP hash tables yields
/// both IPv4 and IPv6 sockets, where `SOCK_DIAG_BY_FAMILY` needs one walk per family. The
/// walk is most of the cost on a namespace with few sockets (the established table has
/// hundreds of thousands of buckets); on a busy one the per-socket work dominates.
const TCPDIAG_GETSOCK: u16 = 18;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 56;
/// `struct inet_diag_req` (the compat request of [`TCPDIAG_GETSOCK`]).
const COMPAT_REQ_LEN: usize = 60;
/// `struct inet_diag_msg`.
const DIAG_MSG_LEN: usize = 72;
const RECV_BUF: usize = 64 * 1024;

fn netlink_err(what: &'static str, source: io::Error) -> Error {
    Error::SockDiag { what, source }
}

fn open_sock_diag() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the returned descriptor is owned by the OwnedFd.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn dump_request(family: u8, states: u32, seq: u32) -> [u8; NLMSG_HDRLEN + REQ_LEN] {
    let mut b = [0u8; NLMSG_HDRLEN + REQ_LEN];
    b[0..4].copy_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    let r = &mut b[NLMSG_HDRLEN..];
    r[0] = family;
    r[1] = libc::IPPROTO_TCP as u8;
    r[4..8].copy_from_slice(&states.to_ne_bytes());
    // id.idiag_cookie = INET_DIAG_NOCOOKIE
    r[48..56].fill(0xff);
    b
}

/// A `TCPDIAG_GETSOCK` dump request: `struct inet_diag_req` with family `AF_UNSPEC`.
fn compat_dump_request(states: u32, seq: u32) -> [u8; NLMSG_HDRLEN + COMPAT_REQ_LEN] {
    let mut b = [0u8; NLMSG_HDRLEN + COMPAT_REQ_LEN];
    b[0..4].copy_from_slice(&((NLMSG_HDRLEN + COMPAT_REQ_LEN) as u32).to_ne_bytes());
    b[4..6].copy_from_slice(&TCPDIAG_GETSOCK.to_ne_bytes());
    b[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b[8..12].copy_from_slice(&seq.to_ne_bytes());
    let r = &mut b[NLMSG_HDRLEN..];
    // idiag_family, src_len, dst_len, ext: all 0 (AF_UNSPEC, no extensions).
    // id (48 bytes) at 4..52; id.idiag_cookie = INET_DIAG_NOCOOKIE.
    r[44..52].fill(0xff);
    r[52..56].copy_from_slice(&states.to_ne_bytes());
    // idiag_dbs at 56..60: unused.
    b
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_ne_bytes(a)
}

/// Decode one `inet_diag_msg` (at least [`DIAG_MSG_LEN`] bytes). `None` for a family or
/// state this code does not know.
fn decode_diag_msg(m: &[u8]) -> Option<Socket> {
    let (family, ip_of): (Family, fn(&[u8]) -> IpAddr) = match i32::from(m[0]) {
        libc::AF_INET => (Family::Ipv4, |b| IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))),
        libc::AF_INET6 => (Family::Ipv6, |b| {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[..16]);
            IpAddr::V6(Ipv6Addr::from(a))
        }),
        _ => return None,
    };
    let state = TcpState::from_number(m[1])?;
    let id = &m[4..52];
    let sport = u16::from_be_bytes([id[0], id[1]]);
    let dport = u16::from_be_bytes([id[2], id[3]]);
    Some(Socket {
        family,
        state,
        local: SocketAddr::new(ip_of(&id[4..20]), sport),
        remote: SocketAddr::new(ip_of(&id[20..36]), dport),
        uid: u32_at(m, 64),
        inode: u64::from(u32_at(m, 68)),
        owner_pid: None,
    })
}

/// Parse one buffer of netlink messages. Returns `true` once the dump is done.
fn parse_dump_chunk(buf: &[u8], seq: u32, out: &mut Vec<Socket>, states: StateSet) -> Result<bool, Error> {
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, off) as usize;
        if len < NLMSG_HDRLEN || off + len > buf.len() {
            return Err(Error::SockDiagMalformed(format!(
                "message length {len} at offset {off} of a {}-byte read",
                buf.len()
            )));
        }
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        let msg_seq = u32_at(buf, off + 8);
        let payload = &buf[off + NLMSG_HDRLEN..off + len];
        if msg_seq == seq {
            match ty {
                NLMSG_DONE => return Ok(true),
                NLMSG_ERROR => {
                    if payload.len() < 4 {
                        return Err(Error::SockDiagMalformed("short NLMSG_ERROR".into()));
                    }
                    let errno = -(u32_at(payload, 0) as i32);
                    if errno != 0 {
                        return Err(netlink_err("dump request", io::Error::from_raw_os_error(errno)));
                    }
                }
                SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => {
                    if payload.len() < DIAG_MSG_LEN {
                        return Err(Error::SockDiagMalformed(format!(
                            "inet_diag_msg of {} bytes (expected at least {DIAG_MSG_LEN})",
                            payload.len()
                        )));
                    }
                    if let Some(s) = decode_diag_msg(payload)
                        && (states.contains(s.state) || s.state == TcpState::Listen)
                    {
                        out.push(s);
                    }
                }
                _ => {}
            }
        }
        off += (len + 3) & !3;
    }
    Ok(false)
}

/// Send one dump request and collect its sockets in `states` (plus LISTEN).
fn sock_diag_dump(fd: &OwnedFd, req: &[u8], seq: u32, states: StateSet, out: &mut Vec<Socket>) -> Result<(), Error> {
    // SAFETY: req is a valid buffer of req.len() bytes for the duration of the call.
    let n = unsafe { libc::send(fd.as_raw_fd(), req.as_ptr().cast(), req.len(), 0) };
    if n < 0 {
        return Err(netlink_err("send", io::Error::last_os_error()));
    }
    let mut buf = vec![0u8; RECV_BUF];
    loop {
        // SAFETY: buf is a valid, writable buffer of buf.len() bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(netlink_err("recv", e));
        }
        let n = n as usize;
        if n > buf.len() {
            return Err(Error::SockDiagMalformed(format!(
                "a {n}-byte netlink message did not fit the {}-byte buffer",
                buf.len()
            )));
        }
        if n == 0 {
            return Err(Error::SockDiagMalformed(
                "netlink socket closed before NLMSG_DONE".into(),
            ));
        }
        if parse_dump_chunk(&buf[..n], seq, out, states)? {
            return Ok(());
        }
    }
}

/// How [`sock_diag_here`] asks the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DumpStyle {
    /// One `TCPDIAG_GETSOCK` dump for both families (one hash-table walk).
    Compat,
    /// One `SOCK_DIAG_BY_FAMILY` dump per family (for kernels without the compat request).
    PerFamily,
}

/// A dump refused because the kernel does not know the request (or its filter): EINVAL,
/// ENOENT or EOPNOTSUPP. Anything else (EPERM, ...) is the answer.
fn refused(e: &Error) -> bool {
    matches!(e, Error::SockDiag { source, .. }
        if matches!(source.raw_os_error(), Some(libc::EINVAL | libc::ENOENT | libc::EOPNOTSUPP)))
}

/// sock_diag census of the calling thread's network namespace, in as many parallel parts
/// as `threads` and the namespace's size call for ([`diag_split::parts_for`]).
fn sock_diag_here(states: StateSet, threads: usize) -> Result<(Vec<Socket>, Vec<SocketAddr>), Error> {
    let here = |name: &str| std::fs::read_to_string(Path::new("/proc/thread-self/net").join(name)).ok();
    let sockets = here("sockstat").as_deref().and_then(diag_split::sockstat_tcp);
    let cpus = || std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let parts = diag_split::parts_for(threads, sockets, cpus);
    // Room for a quarter more sockets than sockstat counts: reserved, not touched, so only
    // the pages filled cost anything, and the lists never grow by copying.
    let room = sockets.map_or(0, |n| n as usize + n as usize / 4);
    if parts > 1 {
        match sock_diag_split(states, &diag_split::split(parts, ephemeral_here()), room) {
            Err(e) if refused(&e) => tracing::debug!(error = %e, "split dump refused; dumping in one part"),
            r => return r,
        }
    }
    sock_diag_styled(states, DumpStyle::Compat, room)
}

/// The ephemeral port range of the calling thread's network namespace (the sysctl file
/// follows the reader's netns), or Linux's default when it cannot be read.
fn ephemeral_here() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| diag_split::port_range(&t))
        .unwrap_or(diag_split::DEFAULT_EPHEMERAL)
}

/// One compat dump per part, the first on the calling thread and each other on a thread
/// of its own (threads inherit the caller's network namespace). A part whose thread cannot
/// be started is dumped on the calling thread.
///
/// `room`: how many sockets to make room for, in all; the first part's list has room for
/// all of them (the others are appended to it), each other part's for its share.
fn sock_diag_split(
    states: StateSet,
    parts: &[diag_split::PortPart],
    room: usize,
) -> Result<(Vec<Socket>, Vec<SocketAddr>), Error> {
    let bits = states.with(TcpState::Listen).bits();
    let dump = |part: &diag_split::PortPart, room: usize| -> Result<Vec<Socket>, Error> {
        let fd = open_sock_diag().map_err(|e| netlink_err("socket(NETLINK_SOCK_DIAG)", e))?;
        let mut req = compat_dump_request(bits, 1).to_vec();
        req.extend_from_slice(&part.attribute());
        let len = req.len() as u32;
        req[0..4].copy_from_slice(&len.to_ne_bytes());
        let mut out = Vec::with_capacity(room);
        sock_diag_dump(&fd, &req, 1, states, &mut out)?;
        Ok(out)
    };
    let results: Vec<Result<Vec<Socket>, Error>> = std::thread::scope(|scope| {
        let dump = &dump;
        let mut inline = Vec::new();
        let mut spawned = Vec::new();
        for part in &parts[1..] {
            match std::thread::Builder::new()
                .name("snat-census-part".into())
                .spawn_scoped(scope, move || dump(part, room / parts.len()))
            {
                Ok(h) => spawned.push(h),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot start a census thread; dumping its part inline");
                    inline.push(part);
                }
            }
        }
        let mut results = vec![dump(&parts[0], room)];
        results.extend(inline.into_iter().map(|part| dump(part, 0)));
        results.extend(spawned.into_iter().map(|h| {
            h.join()
                .unwrap_or_else(|_| Err(Error::CensusThread("a census thread panicked".into())))
        }));
        results
    });
    let mut results = results.into_iter();
    let mut all = results.next().unwrap_or(Ok(Vec::new()))?;
    for r in results {
        all.append(&mut r?);
    }
    Ok(split_listeners(all, states))
}

/// `capacity`: how many sockets to make room for up front.
fn sock_diag_styled(
    states: StateSet,
    style: DumpStyle,
    capacity: usize,
) -> Result<(Vec<Socket>, Vec<SocketAddr>), Error> {
    let fd = open_sock_diag().map_err(|e| netlink_err("socket(NETLINK_SOCK_DIAG)", e))?;
    let bits = states.with(TcpState::Listen).bits();
    let mut all = Vec::with_capacity(capacity);
    match style {
        DumpStyle::Compat => match sock_diag_dump(&fd, &compat_dump_request(bits, 1), 1, states, &mut all) {
            Ok(()) => {}
            // A kernel built without the compat request refuses it: ask per family instead.
            Err(e) if refused(&e) => {
                tracing::debug!(error = %e, "TCPDIAG_GETSOCK refused; dumping per family");
                return sock_diag_styled(states, DumpStyle::PerFamily, capacity);
            }
            Err(e) => return Err(e),
        },
        DumpStyle::PerFamily => {
            sock_diag_dump(&fd, &dump_request(libc::AF_INET as u8, bits, 2), 2, states, &mut all)?;
            sock_diag_dump(&fd, &dump_request(libc::AF_INET6 as u8, bits, 3), 3, states, &mut all)?;
        }
    }
    Ok(split_listeners(all, states))
}

fn split_listeners(all: Vec<Socket>, states: StateSet) -> (Vec<Socket>, Vec<SocketAddr>) {
    let listeners = all
        .iter()
        .filter(|s| s.state == TcpState::Listen)
        .map(|s| s.local)
        .collect();
    let sockets = all.into_iter().filter(|s| states.contains(s.state)).collect();
    (sockets, listeners)
}

// ----- /proc/net/tcp ----------------------------------------------------------------

fn parse_addr(field: &str, family: Family) -> Option<SocketAddr> {
    let (addr, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    // Each 8-digit group is a network-order word printed as a little-endian host u32
    // (every AKS node is little-endian: x86_64 or arm64).
    let word = |i: usize| -> Option<[u8; 4]> {
        let g = addr.get(i * 8..i * 8 + 8)?;
        if !g.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        Some(u32::from_str_radix(g, 16).ok()?.to_le_bytes())
    };
    let ip = match (family, addr.len()) {
        (Family::Ipv4, 8) => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        (Family::Ipv6, 32) => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// Parse the text of `/proc/net/tcp` (`family` IPv4) or `/proc/net/tcp6` (IPv6): every
/// socket, whatever its state, with `owner_pid` unset. The header line and blank lines
/// are skipped.
///
/// Errors: [`Error::ProcNetTcpParse`] naming the line (1-based) and what is wrong with it,
/// for a line that is not a socket line of this family.
pub fn parse_proc_net_tcp(text: &str, family: Family) -> Result<Vec<Socket>, Error> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() || t.starts_with("sl ") {
            continue;
        }
        let bad = |reason: &str| Error::ProcNetTcpParse {
            line: i + 1,
            reason: reason.to_string(),
            text: line.chars().take(200).collect(),
        };
        let f: Vec<&str> = t.split_ascii_whitespace().collect();
        if f.len() < 10 || !f[0].ends_with(':') {
            return Err(bad("expected at least 10 fields, starting with `N:`"));
        }
        let local = parse_addr(f[1], family).ok_or_else(|| bad(&format!("bad {family} local address")))?;
        let remote = parse_addr(f[2], family).ok_or_else(|| bad(&format!("bad {family} remote address")))?;
        let state = u8::from_str_radix(f[3], 16)
            .ok()
            .filter(|_| f[3].len() == 2)
            .and_then(TcpState::from_number)
            .ok_or_else(|| bad("bad state"))?;
        let uid = f[7].parse().map_err(|_| bad("bad uid"))?;
        let inode = f[9].parse().map_err(|_| bad("bad inode"))?;
        out.push(Socket {
            family,
            state,
            local,
            remote,
            inode,
            uid,
            owner_pid: None,
        });
    }
    Ok(out)
}

/// Census of the calling thread's netns from `/proc/thread-self/net/tcp{,6}`.
fn proc_net_here(states: StateSet) -> Result<(Vec<Socket>, Vec<SocketAddr>), Error> {
    let mut all = Vec::new();
    for (name, family) in [("tcp", Family::Ipv4), ("tcp6", Family::Ipv6)] {
        let path = PathBuf::from("/proc/thread-self/net").join(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => all.extend(parse_proc_net_tcp(&text, family)?),
            // No IPv6 in this kernel: no tcp6 file.
            Err(e) if e.kind() == io::ErrorKind::NotFound && family == Family::Ipv6 => {}
            Err(source) => {
                return Err(Error::Io {
                    what: "cannot read",
                    path,
                    source,
                });
            }
        }
    }
    Ok(split_listeners(all, states))
}

/// Census of the calling thread's current network namespace, by `opts.method`.
fn census_here(netns: Option<u64>, opts: CensusOptions) -> Result<Census, Error> {
    let build = |method, fallback_reason, (sockets, listeners): (Vec<Socket>, Vec<SocketAddr>)| Census {
        netns,
        method,
        fallback_reason,
        sockets,
        listeners,
    };
    match opts.method {
        MethodChoice::SockDiag => Ok(build(
            Method::SockDiag,
            None,
            sock_diag_here(opts.states, opts.threads)?,
        )),
        MethodChoice::ProcNetTcp => Ok(build(Method::ProcNetTcp, None, proc_net_here(opts.states)?)),
        MethodChoice::Auto => match sock_diag_here(opts.states, opts.threads) {
            Ok(r) => Ok(build(Method::SockDiag, None, r)),
            Err(e) => {
                let why = e.to_string();
                tracing::warn!(error = %why, "sock_diag failed, falling back to /proc/net/tcp");
                Ok(build(Method::ProcNetTcp, Some(why), proc_net_here(opts.states)?))
            }
        },
    }
}

/// Census of the network namespace the calling process is in (no namespace change).
pub fn census_current(opts: CensusOptions) -> Result<Census, Error> {
    let netns = std::fs::metadata("/proc/thread-self/ns/net")
        .ok()
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    census_here(netns, opts)
}

/// Census of the network namespace behind `netns_file` (`/proc/PID/ns/net`,
/// `/run/netns/NAME`), entered with `setns` on a dedicated thread that ends with the
/// census.
///
/// Errors: the file cannot be opened ([`Error::Io`]), is not a network namespace or
/// cannot be entered ([`Error::EnterNetns`]: needs root or CAP_SYS_ADMIN), or both
/// methods fail.
pub fn census_netns(netns_file: &Path, opts: CensusOptions) -> Result<Census, Error> {
    use std::os::unix::fs::MetadataExt;
    let file = std::fs::File::open(netns_file).map_err(|source| Error::Io {
        what: "cannot open network namespace file",
        path: netns_file.to_path_buf(),
        source,
    })?;
    let inode = file.metadata().ok().map(|m| m.ino());
    let path = netns_file.to_path_buf();
    let handle = std::thread::Builder::new()
        .name("snat-census".into())
        .spawn(move || -> Result<Census, Error> {
            // SAFETY: setns on a valid descriptor; it changes only this thread's netns,
            // and this thread ends right after the census.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            if rc != 0 {
                return Err(Error::EnterNetns {
                    path,
                    source: io::Error::last_os_error(),
                });
            }
            drop(file);
            census_here(inode, opts)
        })
        .map_err(|e| Error::CensusThread(e.to_string()))?;
    handle
        .join()
        .map_err(|_| Error::CensusThread("the census thread panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    /// Bring `lo` up in the calling thread's network namespace.
    fn loopback_up() {
        // SAFETY: plain socket/ioctl calls on a zeroed ifreq naming "lo"; the socket is
        // closed before returning.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
            let mut req: libc::ifreq = std::mem::zeroed();
            for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
                *d = *s as libc::c_char;
            }
            assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), 0, "SIOCGIFFLAGS");
            req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &req), 0, "SIOCSIFFLAGS");
            libc::close(fd);
        }
    }

    /// Run `f` on a thread of its own in a new, unnamed network namespace with `lo` up. Only
    /// that thread enters it (unshare), and it disappears with the thread's sockets:
    /// nothing to clean up, even when `f` fails.
    fn in_private_netns(f: impl FnOnce() + Send + 'static) {
        std::thread::spawn(|| {
            // SAFETY: unshare affects only this thread, which ends with `f`.
            assert_eq!(
                unsafe { libc::unshare(libc::CLONE_NEWNET) },
                0,
                "{}",
                io::Error::last_os_error()
            );
            loopback_up();
            f();
        })
        .join()
        .expect("test thread");
    }

    /// `v4` loopback connections over IPv4 and `v6` over IPv6, each to its own listener,
    /// held open as long as the returned value lives.
    fn connect_pairs(
        v4: usize,
        v6: usize,
    ) -> Vec<(std::net::TcpListener, Vec<(std::net::TcpStream, std::net::TcpStream)>)> {
        [("127.0.0.1:0", v4), ("[::1]:0", v6)]
            .into_iter()
            .map(|(addr, n)| {
                let listener = std::net::TcpListener::bind(addr).expect("bind");
                let pairs = (0..n)
                    .map(|_| {
                        let c = std::net::TcpStream::connect(listener.local_addr().unwrap()).expect("connect");
                        (c, listener.accept().expect("accept").0)
                    })
                    .collect();
                (listener, pairs)
            })
            .collect()
    }

    /// Sockets and listeners in a fixed order, to compare dumps.
    fn sorted((mut v, mut l): (Vec<Socket>, Vec<SocketAddr>)) -> (Vec<Socket>, Vec<SocketAddr>) {
        v.sort_by_key(|s| (s.local, s.remote, s.inode));
        l.sort();
        (v, l)
    }

    /// The single compat dump (AF_UNSPEC) and the two per-family dumps see the same
    /// sockets, in a private network namespace holding known IPv4 and IPv6 connections.
    #[test]
    fn compat_dump_equals_per_family_dumps() {
        if !snat_testbed::require_root() {
            return;
        }
        in_private_netns(|| {
            let _held = connect_pairs(3, 2);
            let compat = sorted(sock_diag_styled(StateSet::connections(), DumpStyle::Compat, 0).unwrap());
            let per_family = sorted(sock_diag_styled(StateSet::connections(), DumpStyle::PerFamily, 0).unwrap());
            assert_eq!(compat, per_family);
            let (sockets, listeners) = compat;
            let v4 = sockets.iter().filter(|s| s.family == Family::Ipv4).count();
            let v6 = sockets.iter().filter(|s| s.family == Family::Ipv6).count();
            assert_eq!((v4, v6), (6, 4), "{sockets:#?}");
            assert!(sockets.iter().all(|s| s.state == TcpState::Established));
            assert_eq!(listeners.len(), 2, "{listeners:?}");
        });
    }

    /// A dump split in parts lists the same sockets as one dump, for any number of parts,
    /// in a private network namespace with its own ephemeral range, holding IPv4 and IPv6
    /// connections and listeners. The part threads must inherit
    /// the namespace: in the host's they would list other sockets.
    #[test]
    fn split_dumps_list_what_one_dump_lists() {
        if !snat_testbed::require_root() {
            return;
        }
        in_private_netns(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_local_port_range", "20000 20999").expect("set port range");
            assert_eq!(ephemeral_here(), (20000, 20999), "the range of this thread's namespace");
            let _held = connect_pairs(150, 50);
            let states = StateSet::connections();
            let one = sorted(sock_diag_styled(states, DumpStyle::Compat, 0).unwrap());
            assert_eq!(one.0.len(), 400, "{:?}", one.0);
            assert_eq!(one.1.len(), 2);
            for parts in [2, 3, 5, 16] {
                let split = diag_split::split(parts, ephemeral_here());
                let each: Vec<usize> = split
                    .iter()
                    .map(|p| sock_diag_split(states, std::slice::from_ref(p), 0).unwrap().0.len())
                    .collect();
                // The kernel puts each socket in the part its higher port falls in.
                let want: Vec<usize> = split
                    .iter()
                    .map(|p| {
                        one.0
                            .iter()
                            .filter(|s| p.contains(s.local.port(), s.remote.port()))
                            .count()
                    })
                    .collect();
                assert_eq!(each, want, "{parts} parts: {split:?}");
                assert_eq!(
                    sorted(sock_diag_split(states, &split, 10).unwrap()),
                    one,
                    "{parts} parts"
                );
                assert_eq!(sorted(sock_diag_here(states, parts).unwrap()), one, "{parts} threads");
            }
        });
    }

    /// Render sockets the way the kernel prints `/proc/net/tcp{,6}` (little-endian host).
    fn render(sockets: &[Socket], family: Family) -> String {
        let hex_addr = |a: &SocketAddr| -> String {
            let words: Vec<String> = match a.ip() {
                IpAddr::V4(v4) => vec![format!("{:08X}", u32::from_le_bytes(v4.octets()))],
                IpAddr::V6(v6) => v6
                    .octets()
                    .chunks(4)
                    .map(|c| format!("{:08X}", u32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                    .collect(),
            };
            format!("{}:{:04X}", words.concat(), a.port())
        };
        let mut s = if family == Family::Ipv4 {
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
                .to_string()
        } else {
            "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n".to_string()
        };
        for (i, k) in sockets.iter().enumerate() {
            s.push_str(&format!(
                "{i:4}: {} {} {:02X} 00000000:00000000 00:00000000 00000000 {:5} {:8} {} 1 0000000000000000 20 4 30 10 -1\n",
                hex_addr(&k.local),
                hex_addr(&k.remote),
                k.state.number(),
                k.uid,
                0,
                k.inode
            ));
        }
        s
    }

    const TCP4: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 15862 1 0000000000000000 100 0 0 10 0
   1: 2100E00A:A2F4 0571000CB:01BB 01 00000000:00000000 02:000A7E2B 00000000  1000        0 998877 2 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn parses_kernel_text() {
        // 10.224.0.33 is printed 2100E00A (domain facts); port 0x01BB = 443.
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:0016 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 15862 1 0000000000000000 100 0 0 10 0
   1: 2100E00A:A2F4 057100CB:01BB 01 00000000:00000000 02:000A7E2B 00000000  1000        0 998877 2 0000000000000000 20 4 30 10 -1
   2: 2100E00A:A2F5 057100CB:01BB 02 00000000:00000000 01:00000064 00000002  1000        0 998878 2 0000000000000000 20 4 30 10 -1
";
        let v = parse_proc_net_tcp(text, Family::Ipv4).unwrap();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].state, TcpState::Listen);
        assert_eq!(v[1].local, "10.224.0.33:41716".parse().unwrap());
        assert_eq!(v[1].remote, "203.0.113.5:443".parse().unwrap());
        assert_eq!(v[1].uid, 1000);
        assert_eq!(v[1].inode, 998877);
        assert_eq!(v[2].state, TcpState::SynSent);
    }

    /// Every state a socket can be in on its way to closed still holds its SNAT port:
    /// `held` is `active` plus the closing states; LISTEN, SYN_RECV and CLOSE are not.
    #[rstest]
    #[case::established(TcpState::Established, 1, 0)]
    #[case::syn_sent(TcpState::SynSent, 1, 0)]
    #[case::time_wait(TcpState::TimeWait, 0, 1)]
    #[case::close_wait(TcpState::CloseWait, 0, 1)]
    #[case::fin_wait1(TcpState::FinWait1, 0, 1)]
    #[case::fin_wait2(TcpState::FinWait2, 0, 1)]
    #[case::closing(TcpState::Closing, 0, 1)]
    #[case::last_ack(TcpState::LastAck, 0, 1)]
    #[case::syn_recv(TcpState::SynRecv, 0, 0)]
    #[case::close(TcpState::Close, 0, 0)]
    #[case::listen(TcpState::Listen, 0, 0)]
    fn held_is_active_plus_closing(#[case] state: TcpState, #[case] active: u64, #[case] closing: u64) {
        let mut c = StateCounts::default();
        c.add(state);
        c.add(TcpState::Established);
        assert_eq!(
            (c.active(), c.closing(), c.held()),
            (active + 1, closing, active + closing + 1)
        );
        assert_eq!(c.total, 2);
    }

    #[rstest]
    #[case::odd_address(TCP4, "bad ipv4 remote address", 3)]
    #[case::short("   0: 00000000:0016 00000000:0000 0A\n", "at least 10 fields", 1)]
    #[case::bad_state(
        "   0: 00000000:0016 00000000:0000 0D 00000000:00000000 00:00000000 00000000 0 0 1\n",
        "bad state",
        1
    )]
    #[case::v6_in_v4(
        "   0: 00000000000000000000000000000000:0016 00000000:0000 0A 0:0 0:0 0 0 0 1\n",
        "bad ipv4 local address",
        1
    )]
    #[case::bad_inode("   0: 00000000:0016 00000000:0000 0A 0:0 0:0 0 0 0 x\n", "bad inode", 1)]
    fn rejects_bad_lines(#[case] text: &str, #[case] want: &str, #[case] line: usize) {
        let err = parse_proc_net_tcp(text, Family::Ipv4).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains(want), "{msg}");
        assert!(msg.contains(&format!("line {line}")), "{msg}");
    }

    #[test]
    fn empty_and_header_only_are_empty() {
        assert!(parse_proc_net_tcp("", Family::Ipv6).unwrap().is_empty());
        assert!(
            parse_proc_net_tcp(TCP4.lines().next().unwrap(), Family::Ipv4)
                .unwrap()
                .is_empty()
        );
    }

    fn arb_socket(family: Family) -> impl Strategy<Value = Socket> {
        let ip = move || -> BoxedStrategy<IpAddr> {
            match family {
                Family::Ipv4 => any::<[u8; 4]>().prop_map(|b| IpAddr::V4(b.into())).boxed(),
                Family::Ipv6 => any::<[u8; 16]>().prop_map(|b| IpAddr::V6(b.into())).boxed(),
            }
        };
        (
            ip(),
            any::<u16>(),
            ip(),
            any::<u16>(),
            1u8..=12,
            any::<u32>(),
            any::<u32>(),
        )
            .prop_map(move |(li, lp, ri, rp, st, uid, inode)| Socket {
                family,
                state: TcpState::from_number(st).unwrap(),
                local: SocketAddr::new(li, lp),
                remote: SocketAddr::new(ri, rp),
                inode: u64::from(inode),
                uid,
                owner_pid: None,
            })
    }

    proptest! {
        #[test]
        fn proc_net_tcp_round_trips_v4(sockets in proptest::collection::vec(arb_socket(Family::Ipv4), 0..40)) {
            let back = parse_proc_net_tcp(&render(&sockets, Family::Ipv4), Family::Ipv4).unwrap();
            prop_assert_eq!(back, sockets);
        }

        #[test]
        fn proc_net_tcp_round_trips_v6(sockets in proptest::collection::vec(arb_socket(Family::Ipv6), 0..40)) {
            let back = parse_proc_net_tcp(&render(&sockets, Family::Ipv6), Family::Ipv6).unwrap();
            prop_assert_eq!(back, sockets);
        }

        #[test]
        fn proc_net_tcp_never_panics(text in "\\PC{0,400}") {
            let _ = parse_proc_net_tcp(&text, Family::Ipv4);
            let _ = parse_proc_net_tcp(&text, Family::Ipv6);
        }

        #[test]
        fn netlink_chunk_parser_never_panics(buf in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut out = Vec::new();
            let _ = parse_dump_chunk(&buf, 1, &mut out, StateSet::all());
        }
    }

    #[test]
    fn netlink_chunk_decodes_a_message() {
        let mut msg = vec![0u8; NLMSG_HDRLEN + DIAG_MSG_LEN];
        msg[0..4].copy_from_slice(&((NLMSG_HDRLEN + DIAG_MSG_LEN) as u32).to_ne_bytes());
        msg[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        msg[8..12].copy_from_slice(&7u32.to_ne_bytes());
        let m = &mut msg[NLMSG_HDRLEN..];
        m[0] = libc::AF_INET as u8;
        m[1] = TcpState::SynSent.number();
        m[4..6].copy_from_slice(&40000u16.to_be_bytes());
        m[6..8].copy_from_slice(&443u16.to_be_bytes());
        m[8..12].copy_from_slice(&[10, 0, 0, 1]);
        m[24..28].copy_from_slice(&[198, 18, 0, 9]);
        m[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        m[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        let mut done = vec![0u8; NLMSG_HDRLEN + 4];
        done[0..4].copy_from_slice(&((NLMSG_HDRLEN + 4) as u32).to_ne_bytes());
        done[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
        done[8..12].copy_from_slice(&7u32.to_ne_bytes());
        msg.extend_from_slice(&done);
        let mut out = Vec::new();
        assert!(parse_dump_chunk(&msg, 7, &mut out, StateSet::of(&[TcpState::SynSent])).unwrap());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].local, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(out[0].remote, "198.18.0.9:443".parse().unwrap());
        assert_eq!((out[0].uid, out[0].inode), (1000, 4242));
        // Filtered out by state: not kept.
        let mut out = Vec::new();
        parse_dump_chunk(&msg, 7, &mut out, StateSet::of(&[TcpState::Established])).unwrap();
        assert!(out.is_empty());
        // A length running past the buffer is an error, not a panic.
        msg[0..4].copy_from_slice(&9999u32.to_ne_bytes());
        assert!(parse_dump_chunk(&msg, 7, &mut Vec::new(), StateSet::all()).is_err());
    }

    fn sock(state: TcpState, local: &str, remote: &str) -> Socket {
        let local: SocketAddr = local.parse().unwrap();
        Socket {
            family: Family::of(&local.ip()),
            state,
            local,
            remote: remote.parse().unwrap(),
            inode: 1,
            uid: 0,
            owner_pid: None,
        }
    }

    #[test]
    fn destinations_rank_public_outbound_only() {
        use TcpState::*;
        let c = Census {
            netns: None,
            method: Method::SockDiag,
            fallback_reason: None,
            listeners: vec!["0.0.0.0:8080".parse().unwrap()],
            sockets: vec![
                sock(Established, "10.0.0.1:40000", "198.18.0.1:443"),
                sock(SynSent, "10.0.0.1:40001", "198.18.0.1:443"),
                sock(Established, "[::ffff:10.0.0.1]:40002", "[::ffff:198.18.0.1]:443"),
                sock(TimeWait, "10.0.0.1:40003", "198.18.0.2:80"),
                sock(Established, "10.0.0.1:40004", "198.18.0.2:80"),
                sock(Established, "10.0.0.1:40005", "198.18.0.2:80"),
                sock(Established, "10.0.0.1:40006", "10.1.0.1:443"),
                // Accepted from a public client: not SNAT.
                sock(Established, "10.0.0.1:8080", "198.18.0.3:5555"),
            ],
        };
        let d = c.destinations(|ip| !matches!(ip, IpAddr::V4(v4) if v4.is_private()));
        assert_eq!(d.len(), 2);
        assert_eq!((d[0].ip, d[0].port), ("198.18.0.1".parse().unwrap(), 443));
        assert_eq!((d[0].counts.established, d[0].counts.syn_sent), (2, 1));
        assert_eq!((d[1].counts.established, d[1].counts.time_wait), (2, 1));
        assert_eq!(c.counts().total, 8);
        assert_eq!(c.by_state()[&Established], 6);
    }

    /// A sidecar's REDIRECT: the app's 3 sockets still show 198.18.0.1:443, the sidecar
    /// accepted them on 10.0.0.1:15001 and holds 3 upstream sockets of its own. The
    /// destination counts 3, not 6, and the 3 redirected ones are counted on the side.
    #[test]
    fn sockets_a_sidecar_redirected_locally_count_once() {
        use TcpState::*;
        let mut sockets = Vec::new();
        for i in 0..3 {
            sockets.push(sock(Established, &format!("10.0.0.1:4000{i}"), "198.18.0.1:443"));
            sockets.push(sock(Established, "10.0.0.1:15001", &format!("10.0.0.1:4000{i}")));
            sockets.push(sock(Established, &format!("10.0.0.1:5000{i}"), "198.18.0.1:443"));
        }
        // The proxy also listens there; an app socket seen through IPv4-mapped IPv6.
        sockets.push(sock(SynSent, "[::ffff:10.0.0.1]:40009", "198.18.0.1:443"));
        sockets.push(sock(Established, "10.0.0.1:15001", "10.0.0.1:40009"));
        let c = Census {
            netns: None,
            method: Method::SockDiag,
            fallback_reason: None,
            listeners: vec!["0.0.0.0:15001".parse().unwrap()],
            sockets,
        };
        let public = |ip: IpAddr| !matches!(ip, IpAddr::V4(v4) if v4.is_private());
        let d = c.destinations(public);
        assert_eq!(d.len(), 1);
        assert_eq!((d[0].counts.established, d[0].counts.syn_sent), (3, 0));
        let r = c.redirected_locally(public);
        assert_eq!((r.established, r.syn_sent, r.total), (3, 1, 4));
        // A connection to a server of the same namespace (the node's own public address)
        // pairs the same way but was not redirected: the server's end is its destination.
        let plain = Census {
            sockets: vec![
                sock(Established, "10.0.0.1:40000", "198.18.0.1:443"),
                sock(Established, "198.18.0.1:443", "10.0.0.1:40000"),
            ],
            listeners: vec!["198.18.0.1:443".parse().unwrap()],
            ..c
        };
        assert_eq!(plain.destinations(public)[0].counts.established, 1);
        assert_eq!(plain.redirected_locally(public).total, 0);
    }

    #[test]
    fn state_sets() {
        let s = StateSet::parse(&["established", "syn-sent"]).unwrap();
        assert_eq!(s.bits(), 0b110);
        assert!(!StateSet::connections().contains(TcpState::Listen));
        assert!(StateSet::connections().contains(TcpState::TimeWait));
        assert!(StateSet::parse(&["bogus"]).is_err());
    }
}
