//! `census::` — the network namespaces of this host with their owners (pod, or process
//! and cgroup), and the TCP sockets of each, counted by state and per public destination,
//! read from the host's /proc (`--host-proc`) and netlink sock_diag without touching the
//! pods. `namespaces` and `sockets` are stages; the getters and rankings on their results
//! are not, nor is `hostname`, the name of the host the census reads.
//!
//! Which destinations count as public is decided by a `Policy` (from `policy::azure()`),
//! by an array of CIDRs treated as private on top of snat's built-in rules, or by a
//! closure `|ip| -> bool` returning true for public addresses.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Arc;

use rhai::{Array, Dynamic, EvalAltResult, FnPtr, Map, Module, NativeCallContext};
use snat_core::census::{Census as CoreCensus, CensusOptions, DestinationCount, MethodChoice, StateCounts, StateSet};
use snat_core::model::{PodRef, ProcessRef};
use snat_core::policy::{Policy, UserRangeKind};
use snat_core::procindex::ProcIndex;
use snat_core::resolve::{self, NetnsOwner};

use super::{func, getter, method, to_dyn, usage};
use crate::ctx::{Ctx, StageError};

/// A network namespace and who owns it, from `census::namespaces()`.
#[derive(Debug, Clone)]
pub struct Netns {
    owner: Arc<NetnsOwner>,
    index: Arc<ProcIndex>,
}

/// The sockets of one namespace, from `census::sockets(...)`.
#[derive(Debug, Clone)]
pub struct Census {
    inner: Arc<CoreCensus>,
    index: Option<Arc<ProcIndex>>,
    owner: Option<Arc<NetnsOwner>>,
    gone: bool,
}

fn pod_map(p: &PodRef) -> Dynamic {
    to_dyn(p).unwrap_or(Dynamic::UNIT)
}

fn process_map(p: &ProcessRef) -> Dynamic {
    to_dyn(p).unwrap_or(Dynamic::UNIT)
}

fn counts_into(m: &mut Map, c: &StateCounts) {
    m.insert("established".into(), Dynamic::from_int(c.established as i64));
    m.insert("syn_sent".into(), Dynamic::from_int(c.syn_sent as i64));
    m.insert("time_wait".into(), Dynamic::from_int(c.time_wait as i64));
    m.insert("close_wait".into(), Dynamic::from_int(c.close_wait as i64));
    m.insert("other".into(), Dynamic::from_int(c.other as i64));
    m.insert("total".into(), Dynamic::from_int(c.total as i64));
    m.insert("fin_wait".into(), Dynamic::from_int(c.fin_wait as i64));
    m.insert("active".into(), Dynamic::from_int(c.active() as i64));
    m.insert("closing".into(), Dynamic::from_int(c.closing() as i64));
    m.insert("held".into(), Dynamic::from_int(c.held() as i64));
}

fn destination_map(d: &DestinationCount) -> Dynamic {
    let mut m = Map::new();
    m.insert("ip".into(), d.ip.to_string().into());
    m.insert("port".into(), Dynamic::from_int(i64::from(d.port)));
    m.insert(
        "destination".into(),
        std::net::SocketAddr::new(d.ip, d.port).to_string().into(),
    );
    counts_into(&mut m, &d.counts);
    Dynamic::from_map(m)
}

fn options_of(opts: &Map) -> Result<CensusOptions, Box<EvalAltResult>> {
    let mut o = CensusOptions::default();
    for (k, v) in opts {
        match k.as_str() {
            "states" => {
                let Some(a) = v.clone().try_cast::<Array>() else {
                    return usage(
                        "option `states` must be an array of state names, e.g. [\"ESTABLISHED\", \"SYN_SENT\"]",
                    );
                };
                let names: Vec<String> = a.iter().map(|d| d.to_string()).collect();
                if names.is_empty() {
                    return usage("option `states` needs at least one state");
                }
                o.states = StateSet::parse(&names).map_err(|e| e.to_string())?;
            }
            "method" => {
                o.method = match v.to_string().as_str() {
                    "auto" => MethodChoice::Auto,
                    "sock_diag" => MethodChoice::SockDiag,
                    "proc_net_tcp" => MethodChoice::ProcNetTcp,
                    other => {
                        return usage(format!(
                            "unknown census method {other:?}: expected auto, sock_diag or proc_net_tcp"
                        ));
                    }
                }
            }
            "threads" => {
                o.threads = match v.as_int().ok().and_then(|n| usize::try_from(n).ok()) {
                    Some(n) if n <= snat_core::census::MAX_THREADS => n,
                    _ => {
                        return usage(format!(
                            "option `threads` must be an integer from 0 (automatic) to {}, not {v}",
                            snat_core::census::MAX_THREADS
                        ));
                    }
                }
            }
            other => {
                return usage(format!(
                    "unknown census option `{other}`: expected states, method or threads"
                ));
            }
        }
    }
    Ok(o)
}

fn opts_json(opts: &Map) -> serde_json::Value {
    super::to_json(&Dynamic::from_map(opts.clone()))
}

/// The public-destination predicate a playbook passes: a Policy, an array of CIDRs
/// treated as private (on top of the built-in rules), a closure, or `()` for the
/// built-in rules alone. Closures are called once per distinct address.
fn public_set(
    ctx: &NativeCallContext<'_>,
    census: &CoreCensus,
    how: &Dynamic,
) -> Result<HashSet<IpAddr>, Box<EvalAltResult>> {
    let ips: HashSet<IpAddr> = census.sockets.iter().map(|s| s.remote.ip().to_canonical()).collect();
    if let Some(f) = how.clone().try_cast::<FnPtr>() {
        let mut out = HashSet::new();
        for ip in ips {
            let public = f.call_within_context::<bool>(ctx, (ip.to_string(),))?;
            if public {
                out.insert(ip);
            }
        }
        return Ok(out);
    }
    let policy = if how.is_unit() {
        Policy::new()
    } else if let Some(p) = how.clone().try_cast::<Policy>() {
        p
    } else if let Some(a) = how.clone().try_cast::<Array>() {
        let mut p = Policy::new();
        for c in a {
            p.add_private(&c.to_string(), UserRangeKind::Other, Some("census private range"))
                .map_err(|e| e.to_string())?;
        }
        p
    } else {
        return usage(format!(
            "public destinations need a Policy, an array of private CIDRs or a closure |ip| -> bool, got {}",
            how.type_name()
        ));
    };
    Ok(ips.into_iter().filter(|ip| policy.classify(*ip).snat).collect())
}

fn scan(ctx: &Ctx) -> Result<ProcIndex, StageError> {
    Ok(ProcIndex::scan(&ctx.options().host_proc)?)
}

/// A namespace whose processes all ended since the scan (a pod that terminated) gives an
/// empty census with `gone` set, so a playbook looping over namespaces carries on.
fn sockets_of_owner(index: Arc<ProcIndex>, owner: Arc<NetnsOwner>, opts: CensusOptions) -> Result<Census, StageError> {
    let (c, gone) = match resolve::census_owned(&index, owner.netns, opts) {
        Ok(c) => (c, false),
        Err(snat_core::Error::NetnsGone { netns }) => (
            CoreCensus {
                netns: Some(netns),
                method: snat_core::census::Method::SockDiag,
                fallback_reason: None,
                sockets: Vec::new(),
                listeners: Vec::new(),
            },
            true,
        ),
        Err(e) => return Err(e.into()),
    };
    Ok(Census {
        inner: Arc::new(c),
        index: Some(index),
        owner: Some(owner),
        gone,
    })
}

fn owner_groups(ctx: &NativeCallContext<'_>, c: &Census, how: &Dynamic) -> Result<Array, Box<EvalAltResult>> {
    let Some(index) = &c.index else {
        return usage(
            "by_owner needs a census taken from census::namespaces() or an inode (a namespace file has no process index)",
        );
    };
    let public = public_set(ctx, &c.inner, how)?;
    let groups = resolve::group_by_owner(&c.inner, index, &resolve::pod_of_cgroup, &|ip| public.contains(&ip));
    Ok(groups
        .iter()
        .map(|g| {
            let mut m = Map::new();
            m.insert("label".into(), g.label().into());
            m.insert("pod".into(), g.pod.as_ref().map_or(Dynamic::UNIT, pod_map));
            m.insert(
                "pod_uid".into(),
                g.pod.as_ref().map_or(Dynamic::UNIT, |p| p.uid.clone().into()),
            );
            m.insert("process".into(), g.process.as_ref().map_or(Dynamic::UNIT, process_map));
            m.insert(
                "cgroup".into(),
                g.process
                    .as_ref()
                    .and_then(|p| p.cgroup.clone())
                    .map_or(Dynamic::UNIT, Dynamic::from),
            );
            m.insert(
                "pids".into(),
                g.pids
                    .iter()
                    .map(|p| Dynamic::from_int(i64::from(*p)))
                    .collect::<Array>()
                    .into(),
            );
            counts_into(&mut m, &g.counts);
            m.insert("public_active".into(), Dynamic::from_int(g.public_active() as i64));
            m.insert(
                "destinations".into(),
                g.destinations.iter().map(destination_map).collect::<Array>().into(),
            );
            Dynamic::from_map(m)
        })
        .collect())
}

/// Register `census.NAME()` (public by snat's built-in rules, as `doc` says) and
/// `census.NAME(public)` (a Policy, an array of private CIDRs or a closure |ip| -> bool),
/// both giving `f` of the census and the set of its remote addresses that are public.
fn public_method<T: rhai::Variant + Clone>(
    m: &mut Module,
    name: &'static str,
    returns: &'static str,
    doc: &'static str,
    f: fn(&CoreCensus, &HashSet<IpAddr>) -> T,
) {
    let call = move |ctx: &NativeCallContext<'_>, c: &Census, how: &Dynamic| -> Result<T, Box<EvalAltResult>> {
        Ok(f(&c.inner, &public_set(ctx, &c.inner, how)?))
    };
    method(name, &["census: Census", returns], doc)
        .set_into_module(m, move |ctx: NativeCallContext<'_>, c: &mut Census| {
            call(&ctx, c, &Dynamic::UNIT)
        });
    method(
        name,
        &["census: Census", "public: ?", returns],
        "Same, with public decided by a Policy, an array of CIDRs treated as private, or a closure |ip| -> bool.",
    )
    .set_into_module(m, move |ctx: NativeCallContext<'_>, c: &mut Census, how: Dynamic| {
        call(&ctx, c, &how)
    });
}

/// The `census` module (types and methods are registered globally too).
pub fn create_module(ctx: &Ctx) -> Module {
    let mut m = Module::new();
    m.set_custom_type::<Netns>("Netns");
    m.set_custom_type::<Census>("Census");

    // ---- stages
    let c = ctx.clone();
    func(
        "namespaces",
        &["Array"],
        "Every network namespace with a process on this host (read from --host-proc), host namespace first, each\nwith its owner: the pods whose processes are in it (from their cgroups) and the processes themselves.\nProcesses that exit during the scan are skipped. Needs root (or CAP_SYS_PTRACE).",
    )
    .set_into_module(&mut m, move || -> Result<Array, Box<EvalAltResult>> {
        let proc_root = c.options().host_proc.display().to_string();
        c.stage("census::namespaces", serde_json::json!({ "proc_root": proc_root }), || {
            let index = Arc::new(scan(&c)?);
            let owners = resolve::resolve(&index, &resolve::pod_of_cgroup);
            let n = owners.len() as u64;
            let arr: Array = owners
                .into_iter()
                .map(|o| {
                    Dynamic::from(Netns {
                        owner: Arc::new(o),
                        index: index.clone(),
                    })
                })
                .collect();
            Ok((arr, Some(n)))
        })
    });

    let c = ctx.clone();
    func(
        "hostname",
        &["?"],
        "The host name of the host whose sockets a census counts: the one --host-proc belongs to (this host's\n`uname -n`, as its audit records hold in host.hostname, when PID 1 of --host-proc shares this process's\nUTS namespace; else that host's /etc/hostname), or () when it cannot be told. For checking that an\nearlier run (a report's or record's host.hostname) was on this host before comparing it with a census.",
    )
    .set_into_module(&mut m, move || -> Dynamic {
        snat_core::audit::hostname_of(&c.options().host_proc).map_or(Dynamic::UNIT, Dynamic::from)
    });

    let c = ctx.clone();
    func(
        "sockets",
        &["netns: Netns", "options: Map", "Census"],
        "The TCP sockets of a namespace from census::namespaces(), each tied to the process holding it.\nOptions: #{states: [\"ESTABLISHED\", \"SYN_SENT\", ...] (default: every state but LISTEN),\nmethod: \"auto\" | \"sock_diag\" | \"proc_net_tcp\",\nthreads: 0 (automatic: two for a namespace of 4,096 TCP sockets or more) | 1..16}.",
    )
    .set_into_module(
        &mut m,
        move |ns: Netns, opts: Map| -> Result<Census, Box<EvalAltResult>> {
            let o = options_of(&opts)?;
            let args = serde_json::json!({ "netns": ns.owner.netns, "options": opts_json(&opts) });
            c.stage("census::sockets", args, || {
                let r = sockets_of_owner(ns.index.clone(), ns.owner.clone(), o)?;
                let n = r.inner.sockets.len() as u64;
                Ok((r, Some(n)))
            })
        },
    );
    let c = ctx.clone();
    func(
        "sockets",
        &["netns: Netns", "Census"],
        "Same, with the default options.",
    )
    .set_into_module(&mut m, move |ns: Netns| -> Result<Census, Box<EvalAltResult>> {
        c.stage(
            "census::sockets",
            serde_json::json!({ "netns": ns.owner.netns }),
            || {
                let r = sockets_of_owner(ns.index.clone(), ns.owner.clone(), CensusOptions::default())?;
                let n = r.inner.sockets.len() as u64;
                Ok((r, Some(n)))
            },
        )
    });
    let c = ctx.clone();
    func(
        "sockets",
        &["netns: i64", "options: Map", "Census"],
        "The TCP sockets of the namespace with this inode (scans --host-proc for a process in it).",
    )
    .set_into_module(
        &mut m,
        move |inode: i64, opts: Map| -> Result<Census, Box<EvalAltResult>> {
            let o = options_of(&opts)?;
            let Ok(inode) = u64::try_from(inode) else {
                return usage(format!("{inode} is not a namespace inode"));
            };
            let args = serde_json::json!({ "netns": inode, "options": opts_json(&opts) });
            c.stage("census::sockets", args, || {
                let index = Arc::new(scan(&c)?);
                let owner = resolve::resolve_one(&index, inode, &resolve::pod_of_cgroup).ok_or_else(|| {
                    StageError::Usage(format!(
                        "no process in network namespace {inode} (see census::namespaces())"
                    ))
                })?;
                let r = sockets_of_owner(index, Arc::new(owner), o)?;
                let n = r.inner.sockets.len() as u64;
                Ok((r, Some(n)))
            })
        },
    );
    let c = ctx.clone();
    func(
        "sockets",
        &["netns_file: &str", "options: Map", "Census"],
        "The TCP sockets of the namespace behind a namespace file (/run/netns/NAME, /proc/PID/ns/net),\nwithout owners (no process index).",
    )
    .set_into_module(
        &mut m,
        move |path: &str, opts: Map| -> Result<Census, Box<EvalAltResult>> {
            let o = options_of(&opts)?;
            let args = serde_json::json!({ "netns_file": path, "options": opts_json(&opts) });
            c.stage("census::sockets", args, || {
                let r = snat_core::census::census_netns(std::path::Path::new(path), o)?;
                let n = r.sockets.len() as u64;
                Ok((
                    Census {
                        inner: Arc::new(r),
                        index: None,
                        owner: None,
                        gone: false,
                    },
                    Some(n),
                ))
            })
        },
    );
    func(
        "parse_proc_net_tcp",
        &["text: &str", "family: &str", "Array"],
        "Parse the text of /proc/net/tcp (family \"ipv4\") or /proc/net/tcp6 (\"ipv6\") into socket maps.",
    )
    .set_into_module(
        &mut m,
        |text: &str, family: &str| -> Result<Array, Box<EvalAltResult>> {
            let fam = match family {
                "ipv4" | "4" => snat_core::model::Family::Ipv4,
                "ipv6" | "6" => snat_core::model::Family::Ipv6,
                other => return usage(format!("unknown family {other:?}: expected ipv4 or ipv6")),
            };
            let v = snat_core::census::parse_proc_net_tcp(text, fam).map_err(|e| e.to_string())?;
            v.iter().map(to_dyn).collect()
        },
    );

    // ---- Netns
    getter(&mut m, "inode", "i64", "Network namespace inode.", |n: &mut Netns| {
        n.owner.netns as i64
    });
    getter(
        &mut m,
        "host",
        "bool",
        "Whether it is the host's namespace.",
        |n: &mut Netns| n.owner.host_netns,
    );
    getter(
        &mut m,
        "pids",
        "Array",
        "The processes in it (pids).",
        |n: &mut Netns| {
            n.owner
                .pids
                .iter()
                .map(|p| Dynamic::from_int(i64::from(*p)))
                .collect::<Array>()
        },
    );
    getter(
        &mut m,
        "pods",
        "Array",
        "The pod that owns it (for the host's: its hostNetwork pods), as maps: uid, qos, host_network (name and\nnamespace: () until the API fills them). Pods that only visit it are in `visitors`.",
        |n: &mut Netns| n.owner.pods.iter().map(pod_map).collect::<Array>(),
    );
    getter(
        &mut m,
        "visitors",
        "Array",
        "Other pods with a process in a pod's namespace (e.g. a DaemonSet's nsenter helper), as maps like `pods`;\nempty for the host's namespace and for a pod alone in its own.",
        |n: &mut Netns| n.owner.visitors.iter().map(pod_map).collect::<Array>(),
    );
    getter(
        &mut m,
        "processes",
        "Array",
        "The processes in it, as maps: pid, comm, cmdline, netns, cgroup.",
        |n: &mut Netns| n.owner.processes.iter().map(process_map).collect::<Array>(),
    );
    getter(
        &mut m,
        "label",
        "String",
        "Who owns it, for a human: `pod <uid>` (`pod <uid> (+N visiting pods)`), `host (+N hostNetwork pods)`\nor `comm[pid] cgroup`.",
        |n: &mut Netns| n.owner.label(),
    );
    method("to_string", &["netns: Netns", "String"], "`netns <inode> <label>`.")
        .set_into_module(&mut m, |n: &mut Netns| {
            format!("netns {} {}", n.owner.netns, n.owner.label())
        });

    // ---- Census
    getter(
        &mut m,
        "netns",
        "i64",
        "Network namespace inode (() when unknown).",
        |c: &mut Census| c.inner.netns.map_or(Dynamic::UNIT, |n| Dynamic::from_int(n as i64)),
    );
    getter(
        &mut m,
        "owner",
        "String",
        "Who owns the namespace (see Netns.label), or () for a census of a namespace file.",
        |c: &mut Census| c.owner.as_ref().map_or(Dynamic::UNIT, |o| o.label().into()),
    );
    getter(
        &mut m,
        "method",
        "String",
        "How the sockets were listed: sock_diag or proc_net_tcp.",
        |c: &mut Census| c.inner.method.as_str().to_string(),
    );
    getter(
        &mut m,
        "fallback_reason",
        "?",
        "Why sock_diag was not used, or ().",
        |c: &mut Census| c.inner.fallback_reason.clone().map_or(Dynamic::UNIT, Dynamic::from),
    );
    getter(
        &mut m,
        "gone",
        "bool",
        "Whether every process of the namespace ended before the census (the census is then empty).",
        |c: &mut Census| c.gone,
    );
    getter(&mut m, "total", "i64", "Number of sockets.", |c: &mut Census| {
        c.inner.sockets.len() as i64
    });
    getter(
        &mut m,
        "by_state",
        "Map",
        "Socket count per state name (only states that occur).",
        |c: &mut Census| {
            let mut m = Map::new();
            for (s, n) in c.inner.by_state() {
                m.insert(s.name().into(), Dynamic::from_int(n as i64));
            }
            m
        },
    );
    getter(
        &mut m,
        "counts",
        "Map",
        "established, syn_sent, time_wait, close_wait, fin_wait (FIN_WAIT1/2, CLOSING, LAST_ACK), other, total,\nactive (established + syn_sent), closing (time_wait + close_wait + fin_wait), held (active + closing).",
        |c: &mut Census| {
            let mut m = Map::new();
            counts_into(&mut m, &c.inner.counts());
            m
        },
    );
    getter(
        &mut m,
        "held",
        "i64",
        "Sockets holding a SNAT port if their destination is public: open (ESTABLISHED, SYN_SENT) plus closing\n(TIME_WAIT, CLOSE_WAIT, FIN_WAIT1/2, CLOSING, LAST_ACK; the load balancer keeps a port ~240 s after a\nFIN). Only the states the census asked for are counted; a lower bound of what the load balancer holds.",
        |c: &mut Census| c.inner.counts().held() as i64,
    );
    getter(
        &mut m,
        "sockets",
        "Array",
        "Every socket as a map: family, state, local, remote, inode, uid, owner_pid.",
        |c: &mut Census| c.inner.sockets.iter().filter_map(|s| to_dyn(s).ok()).collect::<Array>(),
    );
    getter(
        &mut m,
        "listeners",
        "Array",
        "Listening addresses (\"ip:port\"): connections to them are inbound and use no SNAT port.",
        |c: &mut Census| {
            c.inner
                .listeners
                .iter()
                .map(|l| Dynamic::from(l.to_string()))
                .collect::<Array>()
        },
    );
    public_method(
        &mut m,
        "public_destinations",
        "Array",
        "Outgoing sockets to public destinations (snat's built-in rules), per destination IP and port,\nranked by established + syn_sent: maps with ip, port, destination, established, syn_sent, time_wait,\nclose_wait, fin_wait, other, total, active, closing, held (see `held`).",
        |c, public| -> Array {
            c.destinations(|ip| public.contains(&ip))
                .iter()
                .map(destination_map)
                .collect()
        },
    );
    public_method(
        &mut m,
        "redirected_locally",
        "Map",
        "Outgoing sockets to public destinations (snat's built-in rules) that a service-mesh sidecar redirected to\na local proxy (iptables/nft REDIRECT: their local endpoint is the remote endpoint of a socket of this\nnamespace): public_destinations leaves them out, as the proxy's own upstream socket is the one using\nthe SNAT port. A map of counts by state (see `counts`).",
        |c, public| {
            let mut m = Map::new();
            counts_into(&mut m, &c.redirected_locally(|ip| public.contains(&ip)));
            m
        },
    );
    method(
        "by_owner",
        &["census: Census", "Array"],
        "The sockets grouped by owner: by pod when the owning process's cgroup names one (so hostNetwork pods\nare named in the host namespace), else by process; sockets with no known owner (TIME_WAIT) form one\ngroup. Maps: label, pod, pod_uid, process, cgroup, pids, the counts, public_active, destinations.\nRanked by public_active. Public: snat's built-in rules.",
    )
    .set_into_module(&mut m, |ctx: NativeCallContext<'_>, c: &mut Census| {
        owner_groups(&ctx, c, &Dynamic::UNIT)
    });
    method(
        "by_owner",
        &["census: Census", "public: ?", "Array"],
        "Same, with public decided by a Policy, an array of private CIDRs or a closure |ip| -> bool.",
    )
    .set_into_module(&mut m, |ctx: NativeCallContext<'_>, c: &mut Census, how: Dynamic| {
        owner_groups(&ctx, c, &how)
    });
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use snat_core::census::Method;
    use snat_core::model::{Family, Socket, TcpState};

    fn engine(ctx: &Ctx) -> rhai::Engine {
        let mut e = rhai::Engine::new();
        let module: rhai::Shared<Module> = create_module(ctx).into();
        e.register_global_module(module.clone());
        e.register_static_module("census", module);
        let pm: rhai::Shared<Module> = super::super::policy::create_module(ctx).into();
        e.register_global_module(pm.clone());
        e.register_static_module("policy", pm);
        e
    }

    fn census() -> Census {
        let s = |state, remote: &str| Socket {
            family: Family::Ipv4,
            state,
            local: "10.0.0.1:40000".parse().unwrap(),
            remote: remote.parse().unwrap(),
            inode: 1,
            uid: 0,
            owner_pid: None,
        };
        Census {
            inner: Arc::new(CoreCensus {
                netns: Some(4026532000),
                method: Method::SockDiag,
                fallback_reason: None,
                listeners: vec![],
                sockets: vec![
                    s(TcpState::Established, "20.1.2.3:443"),
                    s(TcpState::Established, "20.1.2.3:443"),
                    s(TcpState::SynSent, "20.1.2.3:443"),
                    s(TcpState::Established, "20.9.9.9:80"),
                    s(TcpState::Established, "10.1.1.1:443"),
                    s(TcpState::TimeWait, "52.0.0.1:443"),
                ],
            }),
            index: None,
            owner: None,
            gone: false,
        }
    }

    fn eval<T: Clone + Send + Sync + 'static>(script: &str) -> Result<T, Box<EvalAltResult>> {
        let ctx = Ctx::new(Default::default(), Default::default());
        let e = engine(&ctx);
        let mut scope = rhai::Scope::new();
        scope.push("c", census());
        e.eval_with_scope::<T>(&mut scope, script)
    }

    /// `census::hostname()` names the host of --host-proc: another host's /proc tree gives
    /// that host's name, this host's /proc this host's (as its audit records hold it), and a
    /// tree that tells nothing gives ().
    #[test]
    fn hostname_follows_host_proc() {
        let name_with = |host_proc: &std::path::Path| -> Dynamic {
            let ctx = Ctx::new(
                crate::RunOptions {
                    host_proc: host_proc.to_path_buf(),
                    ..Default::default()
                },
                Default::default(),
            );
            engine(&ctx).eval::<Dynamic>("census::hostname()").unwrap()
        };
        let other = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(other.path().join("1").join("root").join("etc")).unwrap();
        std::fs::write(
            other.path().join("1").join("root").join("etc/hostname"),
            "aks-nodepool1-12345678-vmss000003\n",
        )
        .unwrap();
        assert_eq!(
            name_with(other.path()).into_string().unwrap(),
            "aks-nodepool1-12345678-vmss000003"
        );
        assert_eq!(
            name_with(std::path::Path::new("/proc")).into_string().unwrap(),
            snat_core::audit::HostInfo::current().hostname
        );
        let empty = tempfile::tempdir().unwrap();
        assert!(name_with(empty.path()).is_unit());
    }

    #[test]
    fn public_destinations_by_policy_cidrs_and_closure() {
        // Built-in rules: 10/8 is private.
        let s: String = eval(r#"let d = c.public_destinations(); `${d.len()} ${d[0].destination} ${d[0].established} ${d[0].syn_sent} ${d[0].active}`"#).unwrap();
        assert_eq!(s, "3 20.1.2.3:443 2 1 3");
        // 20.9.0.0/16 declared private (e.g. a VNet in public space).
        let n: i64 = eval(r#"c.public_destinations(["20.9.0.0/16"]).len()"#).unwrap();
        assert_eq!(n, 2);
        let n: i64 = eval(r#"c.public_destinations(policy::azure(#{vnet: ["20.1.0.0/16"]})).len()"#).unwrap();
        assert_eq!(n, 2);
        let s: String =
            eval(r#"let d = c.public_destinations(|ip| ip.starts_with("52.")); `${d.len()} ${d[0].time_wait}`"#)
                .unwrap();
        assert_eq!(s, "1 1");
        let m: Map = eval("c.by_state").unwrap();
        assert_eq!(m["ESTABLISHED"].as_int().unwrap(), 4);
        let n: i64 = eval("c.counts.active").unwrap();
        assert_eq!(n, 5);
        // A socket in TIME_WAIT still holds its SNAT port: held, as closing, not active.
        let s: String = eval(
            r#"let d = c.public_destinations(|ip| ip.starts_with("52.")); `${d[0].active} ${d[0].closing} ${d[0].held}`"#,
        )
        .unwrap();
        assert_eq!(s, "0 1 1");
        let n: i64 = eval("c.held").unwrap();
        assert_eq!(n, 6);
    }

    /// A connection a sidecar redirected locally is out of `public_destinations` and counted
    /// by `redirected_locally`; the proxy's own upstream connection is the one counted.
    #[test]
    fn redirected_locally_counts_what_a_sidecar_redirected() {
        let s = |state, local: &str, remote: &str| Socket {
            family: Family::Ipv4,
            state,
            local: local.parse().unwrap(),
            remote: remote.parse().unwrap(),
            inode: 1,
            uid: 0,
            owner_pid: None,
        };
        let census = Census {
            inner: Arc::new(CoreCensus {
                netns: Some(4026532001),
                method: Method::SockDiag,
                fallback_reason: None,
                listeners: vec!["0.0.0.0:15001".parse().unwrap()],
                sockets: vec![
                    // The app's socket, redirected to the proxy on :15001.
                    s(TcpState::Established, "10.0.0.1:40001", "20.1.2.3:443"),
                    // The proxy's side of it.
                    s(TcpState::Established, "127.0.0.1:15001", "10.0.0.1:40001"),
                    // The proxy's upstream connection: the one using a SNAT port.
                    s(TcpState::Established, "10.0.0.1:50001", "20.1.2.3:443"),
                ],
            }),
            index: None,
            owner: None,
            gone: false,
        };
        let ctx = Ctx::new(Default::default(), Default::default());
        let e = engine(&ctx);
        let mut scope = rhai::Scope::new();
        scope.push("r", census);
        let got: String = e
            .eval_with_scope(
                &mut scope,
                r#"let d = r.public_destinations(); let x = r.redirected_locally(); let y = r.redirected_locally(["10.0.0.0/8"]);
                   `${d.len()} ${d[0].established} ${x.established} ${x.held} ${y.established}`"#,
            )
            .unwrap();
        assert_eq!(got, "1 1 1 1 1");
        // Every destination private: nothing public was redirected.
        let none: i64 = e
            .eval_with_scope(&mut scope, r#"r.redirected_locally(|ip| false).held"#)
            .unwrap();
        assert_eq!(none, 0);
    }

    #[test]
    fn bad_arguments_are_script_errors() {
        let e = eval::<Dynamic>(r#"c.public_destinations(["not a cidr"])"#).unwrap_err();
        assert!(e.to_string().contains("invalid CIDR"), "{e}");
        let e = eval::<Dynamic>(r#"c.public_destinations(42)"#).unwrap_err();
        assert!(e.to_string().contains("need a Policy"), "{e}");
        let e = eval::<Dynamic>(r#"c.by_owner()"#).unwrap_err();
        assert!(e.to_string().contains("needs a census taken from"), "{e}");
        let e = eval::<Dynamic>(r#"census::sockets("/proc/self/ns/net", #{states: ["NOPE"]})"#).unwrap_err();
        assert!(e.to_string().contains("unknown TCP state"), "{e}");
        let e = eval::<Dynamic>(r#"census::sockets("/proc/self/ns/net", #{colour: 1})"#).unwrap_err();
        assert!(e.to_string().contains("unknown census option"), "{e}");
        for bad in ["-1", "17", "\"two\"", "1.5"] {
            let e =
                eval::<Dynamic>(&format!(r#"census::sockets("/proc/self/ns/net", #{{threads: {bad}}})"#)).unwrap_err();
            assert!(
                e.to_string().contains("option `threads` must be an integer from 0"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn parses_proc_net_tcp_text() {
        let n: i64 = eval(
            r#"let t = "  sl  local_address rem_address   st\n   0: 2100E00A:A2F4 057100CB:01BB 01 00000000:00000000 02:000A7E2B 00000000  1000        0 998877 2\n";
               let v = census::parse_proc_net_tcp(t, "ipv4"); if v[0].remote == "203.0.113.5:443" { v.len() } else { -1 }"#,
        )
        .unwrap();
        assert_eq!(n, 1);
    }

    /// As root: the stages see this host's namespaces, record themselves, and a census of
    /// our own namespace finds a listener we hold.
    #[test]
    fn stages_on_this_host() {
        if !snat_testbed::require_root() {
            return;
        }
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let ctx = Ctx::new(Default::default(), Default::default());
        let e = engine(&ctx);
        let script = format!(
            r#"let ns = census::namespaces();
               let host = ns.filter(|n| n.host);
               let me = ns.filter(|n| n.pids.contains({pid}));
               let c = census::sockets(me[0], #{{states: ["LISTEN"]}});
               let mine = c.sockets.filter(|s| s.local == "127.0.0.1:{port}");
               let f = census::sockets("/proc/self/ns/net", #{{states: ["LISTEN"], method: "proc_net_tcp"}});
               let t = census::sockets(me[0], #{{states: ["LISTEN"], threads: 3}});
               let split = t.sockets.filter(|s| s.local == "127.0.0.1:{port}");
               [host.len(), mine.len(), mine[0].owner_pid, f.method, c.method, split.len(), t.sockets.len() - c.sockets.len()]"#,
            pid = std::process::id()
        );
        let r: Array = e.eval(&script).unwrap();
        assert_eq!(r[0].as_int().unwrap(), 1);
        assert_eq!(r[1].as_int().unwrap(), 1);
        assert_eq!(r[2].as_int().unwrap(), i64::from(std::process::id()));
        assert_eq!(r[3].to_string(), "proc_net_tcp");
        assert_eq!(r[4].to_string(), "sock_diag");
        assert_eq!(r[5].as_int().unwrap(), 1, "the split census finds the listener too");
        assert_eq!(r[6].as_int().unwrap(), 0, "and as many listeners as one dump");
        let stages = ctx.stages();
        let names: Vec<&str> = stages.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            vec![
                "census::namespaces",
                "census::sockets",
                "census::sockets",
                "census::sockets"
            ]
        );
        assert!(stages[0].items.unwrap() >= 1);
        drop(l);
    }
}
