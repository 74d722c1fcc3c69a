//! The data model every stage shares: TCP events, sockets, processes, containers, pods,
//! nodes and findings.
//!
//! Every type here is `serde`-serializable; the JSON field names are part of snat's public
//! output (reports, JSON Lines traces, audit records) and are documented on each field.
//! Stages take and return these types so that a log reader, a live tracer and a socket
//! census can be chained without conversions.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// IP address family of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    /// IPv4 (tcptracer's `IP` column: `4`).
    Ipv4,
    /// IPv6 (tcptracer's `IP` column: `6`).
    Ipv6,
}

impl Family {
    /// The family of an address. An IPv4-mapped IPv6 address is still IPv6 here: the
    /// socket is an IPv6 socket.
    pub fn of(addr: &IpAddr) -> Family {
        match addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }

    /// The number tcptracer prints in its `IP` column (4 or 6).
    pub fn number(self) -> u8 {
        match self {
            Family::Ipv4 => 4,
            Family::Ipv6 => 6,
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        })
    }
}

/// What happened to a TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// An outgoing connection reached ESTABLISHED (SYN_SENT -> ESTABLISHED).
    Connect,
    /// An incoming connection reached ESTABLISHED (SYN_RECV -> ESTABLISHED).
    Accept,
    /// A connection closed.
    Close,
    /// An outgoing connection closed without ever reaching ESTABLISHED (SYN_SENT -> CLOSE):
    /// refused, reset or timed out. BCC's tcptracer never reports these.
    FailedConnect,
    /// tcptracer printed a type it does not know (`unknown`).
    Unknown,
}

impl EventKind {
    /// The word used in tcptracer's `TYPE` column and in snat's JSON (`failed_connect` is
    /// snat's own).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connect => "connect",
            EventKind::Accept => "accept",
            EventKind::Close => "close",
            EventKind::FailedConnect => "failed_connect",
            EventKind::Unknown => "unknown",
        }
    }
}

impl EventKind {
    /// The direction an event of this kind shows by itself: outbound for connects and
    /// failed connects, inbound for accepts, unknown for closes (either side may close)
    /// and unknown events.
    pub fn direction(self) -> Direction {
        match self {
            EventKind::Connect | EventKind::FailedConnect => Direction::Outbound,
            EventKind::Accept => Direction::Inbound,
            EventKind::Close | EventKind::Unknown => Direction::Unknown,
        }
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for EventKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "connect" => EventKind::Connect,
            "accept" => EventKind::Accept,
            "close" => EventKind::Close,
            "failed_connect" | "failed-connect" | "fail" => EventKind::FailedConnect,
            "unknown" => EventKind::Unknown,
            other => {
                return Err(format!(
                    "unknown event kind {other:?} (expected connect, accept, close, failed_connect or unknown)"
                ));
            }
        })
    }
}

/// Which clock an event's `time_ns` is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Clock {
    /// Nanoseconds since the first event of the trace (tcptracer `-t`).
    #[default]
    Relative,
    /// Nanoseconds since the Unix epoch (wall clock; snat's live tracer).
    Unix,
}

/// The TCP states the kernel uses (`include/net/tcp_states.h`), numbered as in
/// `/proc/net/tcp` and sock_diag.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
#[allow(missing_docs)]
pub enum TcpState {
    Established = 1,
    SynSent = 2,
    SynRecv = 3,
    FinWait1 = 4,
    FinWait2 = 5,
    TimeWait = 6,
    Close = 7,
    CloseWait = 8,
    LastAck = 9,
    Listen = 10,
    Closing = 11,
    NewSynRecv = 12,
}

impl TcpState {
    /// All states, in kernel order.
    pub const ALL: [TcpState; 12] = [
        TcpState::Established,
        TcpState::SynSent,
        TcpState::SynRecv,
        TcpState::FinWait1,
        TcpState::FinWait2,
        TcpState::TimeWait,
        TcpState::Close,
        TcpState::CloseWait,
        TcpState::LastAck,
        TcpState::Listen,
        TcpState::Closing,
        TcpState::NewSynRecv,
    ];

    /// The state with the kernel's number, if there is one.
    pub fn from_number(n: u8) -> Option<TcpState> {
        TcpState::ALL.get(usize::from(n).checked_sub(1)?).copied()
    }

    /// The kernel's number for this state.
    pub fn number(self) -> u8 {
        self as u8
    }

    /// The name `netstat` and `ss` use, e.g. `ESTABLISHED`, `SYN_SENT`.
    pub fn name(self) -> &'static str {
        match self {
            TcpState::Established => "ESTABLISHED",
            TcpState::SynSent => "SYN_SENT",
            TcpState::SynRecv => "SYN_RECV",
            TcpState::FinWait1 => "FIN_WAIT1",
            TcpState::FinWait2 => "FIN_WAIT2",
            TcpState::TimeWait => "TIME_WAIT",
            TcpState::Close => "CLOSE",
            TcpState::CloseWait => "CLOSE_WAIT",
            TcpState::LastAck => "LAST_ACK",
            TcpState::Listen => "LISTEN",
            TcpState::Closing => "CLOSING",
            TcpState::NewSynRecv => "NEW_SYN_RECV",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for TcpState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let up = s.trim().to_ascii_uppercase().replace('-', "_");
        TcpState::ALL
            .iter()
            .copied()
            .find(|st| st.name() == up || st.name().replace('_', "") == up)
            .ok_or_else(|| format!("unknown TCP state {s:?} (expected e.g. ESTABLISHED, SYN_SENT, TIME_WAIT)"))
    }
}

/// One TCP event, from a tcptracer log or from snat's live tracer.
///
/// JSON (one object per line in JSON Lines output):
///
/// | field | type | meaning |
/// | --- | --- | --- |
/// | `time_ns` | integer or null | time of the event, on `clock` |
/// | `clock` | `"relative"` / `"unix"` | which clock `time_ns` is on |
/// | `kind` | string | `connect`, `accept`, `close`, `failed_connect`, `unknown` |
/// | `direction` | `"outbound"` / `"inbound"` / `"unknown"` | who opened the connection (see [`TcpEvent::direction`]) |
/// | `pid` | integer or null | owning process (see [`TcpEvent::pid`]); null when the owner is unknown |
/// | `comm` | string or null | owning process's command name (may contain spaces); null when the owner is unknown |
/// | `family` | `"ipv4"` / `"ipv6"` | address family |
/// | `saddr`, `daddr` | string | local and remote address |
/// | `sport`, `dport` | integer | local and remote port |
/// | `netns` | integer or null | network namespace inode (null: the log had no NETNS column) |
/// | `cgroup_id` | integer or null | cgroup v2 id of the owner (live traces only) |
/// | `prev_state` | string or null | state before a close (live traces only) |
/// | `duration_ns` | integer or null | for a close: time since ESTABLISHED (live traces only) |
/// | `error` | integer or null | for a failed connect: the socket's errno where known |
///
/// An owner the live tracer could not know (a socket older than the trace that the
/// attach-time snapshot did not name, see [`TcpEvent::owner_known`]) is `"pid": null,
/// "comm": null` (and `"cgroup_id": null`): test `pid == null`. The tcptracer text output
/// shows the same event as PID `0` and COMM `[unknown]`, since its columns must hold a
/// number and a word. Reading JSON, a null `pid` or `comm` is read as 0 or empty.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct TcpEvent {
    /// Time of the event in nanoseconds on [`TcpEvent::clock`]; `None` when the log has no
    /// TIME column.
    pub time_ns: Option<u64>,
    /// Which clock `time_ns` is on.
    #[serde(default)]
    pub clock: Clock,
    /// What happened.
    pub kind: EventKind,
    /// Which side opened the connection: [`EventKind::direction`] for connects, failed
    /// connects and accepts; for a close, what the live tracer knew (outbound or inbound
    /// when it saw the connection established, unknown for a connection older than the
    /// trace) and unknown in a tcptracer log, whose close lines do not say. Rankings use it
    /// for `dport` (see [`crate::aggregate::Field::Dport`]). Absent in JSON: unknown.
    #[serde(default)]
    pub direction: Direction,
    /// The owning process. For live traces, the process that called `connect()` (for
    /// connects and failed connects) or `listen()` (for accepts): an accepted socket
    /// inherits its listener's owner, which is wrong for pre-fork servers. 0 when the owner
    /// is unknown ([`TcpEvent::owner_known`]).
    #[serde(deserialize_with = "null_as_default")]
    pub pid: u32,
    /// The owning process's command name (at most 15 bytes in the kernel; may contain
    /// spaces). Empty when the owner is unknown.
    #[serde(deserialize_with = "null_as_default")]
    pub comm: String,
    /// Address family.
    pub family: Family,
    /// Local address.
    pub saddr: IpAddr,
    /// Remote address.
    pub daddr: IpAddr,
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    /// Network namespace inode, when known.
    pub netns: Option<u64>,
    /// cgroup v2 id of the owner (live traces).
    #[serde(default)]
    pub cgroup_id: Option<u64>,
    /// The state the socket left, for closes (live traces).
    #[serde(default)]
    pub prev_state: Option<TcpState>,
    /// For closes: nanoseconds since the connection was established (live traces).
    #[serde(default)]
    pub duration_ns: Option<u64>,
    /// For failed connects: the socket error (errno) where the kernel exposes it.
    #[serde(default)]
    pub error: Option<i32>,
}

impl TcpEvent {
    /// Is this event about a connection this host opened (connect or failed connect)?
    pub fn is_outbound(&self) -> bool {
        matches!(self.kind, EventKind::Connect | EventKind::FailedConnect)
    }

    /// Whether the event names its owning process: pid 0 is no process (the live tracer
    /// reports pid 0 and no comm for a socket whose owner it could not know, and tcptracer
    /// prints pid 0 for work the kernel did on no process's behalf).
    pub fn owner_known(&self) -> bool {
        self.pid != 0
    }
}

/// A JSON field that may be null, read as the type's default when it is.
fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// [`TcpEvent`] as JSON, with an unknown owner's `pid` and `comm` as null.
#[derive(Serialize)]
struct TcpEventJson<'a> {
    time_ns: Option<u64>,
    clock: Clock,
    kind: EventKind,
    direction: Direction,
    pid: Option<u32>,
    comm: Option<&'a str>,
    family: Family,
    saddr: IpAddr,
    daddr: IpAddr,
    sport: u16,
    dport: u16,
    netns: Option<u64>,
    cgroup_id: Option<u64>,
    prev_state: Option<TcpState>,
    duration_ns: Option<u64>,
    error: Option<i32>,
}

impl Serialize for TcpEvent {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let known = self.owner_known();
        TcpEventJson {
            time_ns: self.time_ns,
            clock: self.clock,
            kind: self.kind,
            direction: self.direction,
            pid: known.then_some(self.pid),
            comm: known.then_some(self.comm.as_str()),
            family: self.family,
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            netns: self.netns,
            cgroup_id: self.cgroup_id,
            prev_state: self.prev_state,
            duration_ns: self.duration_ns,
            error: self.error,
        }
        .serialize(s)
    }
}

/// The direction of a connection, relative to the host (or netns) that owns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    /// This side called `connect()`: the connection uses a SNAT port when its
    /// destination is public.
    Outbound,
    /// This side accepted the connection.
    Inbound,
    /// Not known (e.g. a close in a tcptracer log).
    #[default]
    Unknown,
}

/// One socket found by a census.
///
/// JSON: `family`, `state` (e.g. `"ESTABLISHED"`), `local` and `remote` (`"ip:port"`,
/// IPv6 in brackets), `inode`, `uid`, `owner_pid` (null when no process could be tied to
/// the socket's inode).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Socket {
    /// Address family.
    pub family: Family,
    /// TCP state.
    pub state: TcpState,
    /// Local address and port.
    pub local: SocketAddr,
    /// Remote address and port.
    pub remote: SocketAddr,
    /// Socket inode (0 for sockets with no file, such as TIME_WAIT).
    pub inode: u64,
    /// Owning user id.
    pub uid: u32,
    /// Process holding the socket open, where known.
    pub owner_pid: Option<u32>,
}

/// A process on the host.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ProcessRef {
    /// Process id, in the namespace of the /proc that was read.
    pub pid: u32,
    /// Command name (`/proc/PID/comm`).
    pub comm: String,
    /// Command line, arguments joined by spaces (may be empty for kernel threads).
    pub cmdline: String,
    /// Network namespace inode.
    pub netns: Option<u64>,
    /// cgroup v2 path (or the most specific v1 path), as in `/proc/PID/cgroup`.
    pub cgroup: Option<String>,
}

/// A container runtime, as told by the cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// containerd (`cri-containerd-<id>`).
    Containerd,
    /// CRI-O (`crio-<id>`, `crio-conmon-<id>`).
    Crio,
    /// Docker (`docker-<id>`).
    Docker,
    /// A container id without a recognised runtime prefix (cgroupfs driver).
    Unknown,
}

/// A container.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ContainerRef {
    /// Runtime that runs it.
    pub runtime: Runtime,
    /// Full container id (64 hex digits for containerd, CRI-O and Docker).
    pub id: String,
}

/// Kubernetes QoS class of a pod.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    /// Guaranteed (no QoS level in the cgroup path).
    Guaranteed,
    /// Burstable.
    Burstable,
    /// BestEffort.
    Besteffort,
}

/// The workload that owns a pod (through ownerReferences).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct OwnerRef {
    /// Kind, e.g. `Deployment`, `StatefulSet`, `DaemonSet`, `CronJob`, `Job`.
    pub kind: String,
    /// Name.
    pub name: String,
    /// For Jobs (and CronJobs through their Job): whether the Job still has active pods.
    pub active: Option<bool>,
}

/// A pod. Fields other than `uid` are filled in as stages learn them (from the cgroup path,
/// then from the Kubernetes API).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PodRef {
    /// Pod UID with dashes (static pods: 32 hex digits without dashes).
    pub uid: String,
    /// Namespace, when known from the API.
    pub namespace: Option<String>,
    /// Name, when known from the API.
    pub name: Option<String>,
    /// QoS class, from the cgroup path.
    pub qos: Option<Qos>,
    /// Owner workload, when known from the API.
    pub owner: Option<OwnerRef>,
    /// Whether the pod runs in the node's network namespace.
    pub host_network: bool,
}

/// A Kubernetes node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct NodeRef {
    /// Node name, when known.
    pub name: Option<String>,
    /// The node's IP (e.g. the load balancer's BackendIPAddress).
    pub ip: Option<IpAddr>,
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Worth knowing.
    Info,
    /// Pressure building up.
    Warning,
    /// Ports exhausted or connections failing.
    Critical,
}

impl FromStr for Severity {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "info" => Ok(Severity::Info),
            "warning" | "warn" => Ok(Severity::Warning),
            "critical" | "crit" => Ok(Severity::Critical),
            other => Err(format!(
                "unknown severity {other:?} (expected info, warning or critical)"
            )),
        }
    }
}

/// What a playbook concluded about one subject, with its evidence.
///
/// JSON: `kind` (e.g. `"snat_pressure"`), `severity`, `summary`, then the subject
/// (`node`, `pod`, `process`, `netns`, `destination`: each null when unknown) and
/// `evidence`, an object of named figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Machine-readable kind, e.g. `snat_pressure`, `failed_connects`, `top_talker`.
    pub kind: String,
    /// How serious it is.
    pub severity: Severity,
    /// One sentence for a human.
    pub summary: String,
    /// Node, when known.
    #[serde(default)]
    pub node: Option<NodeRef>,
    /// Pod, when known.
    #[serde(default)]
    pub pod: Option<PodRef>,
    /// Process, when known.
    #[serde(default)]
    pub process: Option<ProcessRef>,
    /// Network namespace inode, when known.
    #[serde(default)]
    pub netns: Option<u64>,
    /// Destination (address and port), when the finding is about one.
    #[serde(default)]
    pub destination: Option<SocketAddr>,
    /// Named figures that back the summary.
    #[serde(default)]
    pub evidence: serde_json::Map<String, serde_json::Value>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tcp_state_numbers_round_trip() {
        for st in TcpState::ALL {
            assert_eq!(TcpState::from_number(st.number()), Some(st));
            assert_eq!(st.name().parse::<TcpState>().unwrap(), st);
        }
        assert_eq!(TcpState::from_number(0), None);
        assert_eq!(TcpState::from_number(13), None);
        assert_eq!("syn-sent".parse::<TcpState>().unwrap(), TcpState::SynSent);
    }

    #[test]
    fn event_json_field_names() {
        let ev = TcpEvent {
            time_ns: Some(5),
            clock: Clock::Relative,
            kind: EventKind::FailedConnect,
            direction: Direction::Outbound,
            pid: 7,
            comm: "my app".into(),
            family: Family::Ipv4,
            saddr: "10.0.0.1".parse().unwrap(),
            daddr: "20.0.0.1".parse().unwrap(),
            sport: 1000,
            dport: 443,
            netns: Some(4026531992),
            cgroup_id: None,
            prev_state: Some(TcpState::SynSent),
            duration_ns: None,
            error: Some(111),
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["kind"], "failed_connect");
        assert_eq!(v["family"], "ipv4");
        assert_eq!(v["prev_state"], "SYN_SENT");
        assert_eq!(v["daddr"], "20.0.0.1");
        assert_eq!(
            (v["pid"].clone(), v["comm"].clone()),
            (serde_json::json!(7), serde_json::json!("my app"))
        );
        let back: TcpEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    /// An unknown owner is `"pid": null, "comm": null` in JSON, and reads back as unknown.
    #[test]
    fn unknown_owner_is_null_in_json() {
        let ev = TcpEvent {
            time_ns: None,
            clock: Clock::Unix,
            kind: EventKind::Close,
            direction: Direction::Unknown,
            pid: 0,
            comm: String::new(),
            family: Family::Ipv4,
            saddr: "10.0.0.1".parse().unwrap(),
            daddr: "20.0.0.1".parse().unwrap(),
            sport: 1000,
            dport: 443,
            netns: Some(4026531992),
            cgroup_id: None,
            prev_state: Some(TcpState::Established),
            duration_ns: None,
            error: None,
        };
        assert!(!ev.owner_known());
        let v = serde_json::to_value(&ev).unwrap();
        assert!(
            v["pid"].is_null() && v["comm"].is_null() && v["cgroup_id"].is_null(),
            "{v}"
        );
        assert!(v.as_object().unwrap().contains_key("pid"), "{v}");
        let back: TcpEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
        assert!(!back.owner_known());
    }
}
