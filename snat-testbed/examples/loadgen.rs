//! Load generator for scripts/bench-census and demos: builds a simulated load, prints
//! `READY <netns name or ->` on stdout, holds it until stdin closes, then removes it. Ctrl-C,
//! SIGTERM and SIGHUP also remove it (they are blocked while the load is built and handled
//! once it is held), so an interrupted benchmark leaves no namespace or cgroup behind.
//!
//! - `loadgen established N`: one netns with N loopback connections (2N ESTABLISHED
//!   sockets: client and server side), the clients spread over processes of at most 5,000
//!   connections each (the open-file limit is 20,000 per process).
//! - `loadgen processes N K [pods]`: N idle processes spread over K fresh network
//!   namespaces; with `pods`, each namespace is a pod (its processes in a kubelet-named
//!   cgroup), as on a Kubernetes node.
//! - `loadgen node`: a world and two pods (systemd and cgroupfs cgroups) with public and
//!   private connections, plus a hostNetwork pod on loopback, for trying examples/census.rhai.

use std::io::Write;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use snat_testbed::{Holder, Layout, Netns, Plan, PodCgroup, Qos, Veth, require_root, spawn_holder};

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("address")
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if !require_root() {
        return Ok(());
    }
    let stop = stop_signals()?;
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
    let mut namespaces: Vec<Netns> = Vec::new();
    let mut holders: Vec<Holder> = Vec::new();
    let mut keep_veth: Vec<Veth> = Vec::new();
    let mut keep_cg: Vec<PodCgroup> = Vec::new();
    let ready: String;
    match args.first().map(String::as_str) {
        Some("established") => {
            let n = num(1, 10_400);
            let ns = Netns::new("bn")?;
            ns.exec("sysctl", &["-qw", "net.core.somaxconn=65535"])?;
            ns.exec("sysctl", &["-qw", "net.ipv4.ip_local_port_range=1024 65000"])?;
            let ports = n.div_ceil(5_000).max(1);
            let plan: Vec<Plan> = (0..ports)
                .map(|i| Plan::Listen {
                    on: SocketAddr::from(([127, 0, 0, 1], 5000 + i as u16)),
                    backlog: 65_535,
                })
                .collect();
            holders.push(spawn_holder(Some(&ns.path()), None, &plan)?);
            let mut left = n;
            for i in 0..ports {
                let count = left.min(5_000);
                left -= count;
                holders.push(spawn_holder(
                    Some(&ns.path()),
                    None,
                    &[Plan::Connect {
                        to: SocketAddr::from(([127, 0, 0, 1], 5000 + i as u16)),
                        count,
                    }],
                )?);
            }
            ready = ns.name().to_string();
            namespaces.push(ns);
        }
        Some("processes") => {
            let n = num(1, 2_000);
            let k = num(2, 40).max(1);
            let pods = args.get(3).map(String::as_str) == Some("pods");
            for i in 0..k {
                namespaces.push(Netns::new("bp")?);
                if pods {
                    let layout = if i % 2 == 0 { Layout::Systemd } else { Layout::Cgroupfs };
                    keep_cg.push(PodCgroup::new(layout, Qos::Burstable)?);
                }
            }
            for i in 0..n {
                let cg = keep_cg.get(i % k).map(|p| &p.cgroup);
                holders.push(spawn_holder(Some(&namespaces[i % k].path()), cg, &[])?);
            }
            ready = "-".to_string();
        }
        Some("node") => {
            let w = Netns::new("w")?;
            for a in ["198.18.0.1/32", "198.18.0.2/32", "10.99.0.1/32"] {
                w.add_lo_addr(a)?;
            }
            let listen: Vec<Plan> = ["198.18.0.1:443", "198.18.0.2:80", "10.99.0.1:5432"]
                .iter()
                .map(|a| Plan::Listen {
                    on: sa(a),
                    backlog: 4096,
                })
                .collect();
            holders.push(spawn_holder(Some(&w.path()), None, &listen)?);
            for (i, (layout, conns)) in [(Layout::Systemd, 600usize), (Layout::Cgroupfs, 40)]
                .into_iter()
                .enumerate()
            {
                let p = Netns::new("p")?;
                keep_veth.push(Veth::new(
                    &p,
                    &format!("10.201.{i}.2/24"),
                    &w,
                    &format!("10.201.{i}.1/24"),
                )?);
                p.ip(&["route", "add", "default", "via", &format!("10.201.{i}.1")])?;
                let cg = PodCgroup::new(layout, Qos::Burstable)?;
                holders.push(spawn_holder(
                    Some(&p.path()),
                    Some(&cg.cgroup),
                    &[
                        Plan::Connect {
                            to: sa("198.18.0.1:443"),
                            count: conns,
                        },
                        Plan::Connect {
                            to: sa("198.18.0.2:80"),
                            count: conns / 4,
                        },
                        Plan::Connect {
                            to: sa("10.99.0.1:5432"),
                            count: 20,
                        },
                        Plan::ConnectNoWait {
                            to: sa("198.18.9.9:443"),
                            count: i * 3 + 1,
                        },
                    ],
                )?);
                eprintln!("pod {} ({layout:?}) in netns {}", cg.uid, p.name());
                keep_cg.push(cg);
                namespaces.push(p);
            }
            namespaces.push(w);
            ready = "-".to_string();
        }
        _ => {
            eprintln!("usage: loadgen established N | processes N K | node");
            std::process::exit(2);
        }
    }
    println!("READY {ready}");
    std::io::stdout().flush()?;
    hold(&stop);
    drop(holders);
    drop(keep_cg);
    drop(keep_veth);
    drop(namespaces);
    Ok(())
}

/// Block SIGINT, SIGTERM and SIGHUP (in this process and the holders it spawns, which it
/// kills itself) and return a signalfd that reports them.
fn stop_signals() -> std::io::Result<OwnedFd> {
    // SAFETY: sigset manipulation on a local set; sigprocmask and signalfd with valid
    // pointers; the returned descriptor is owned by the OwnedFd.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        if libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let fd = libc::signalfd(-1, &set, libc::SFD_CLOEXEC);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OwnedFd::from_raw_fd(fd))
    }
}

/// Wait until stdin reaches end of file (or fails) or a stop signal arrives.
fn hold(stop: &OwnedFd) {
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: 0,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two valid pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[1].revents != 0 {
            eprintln!("loadgen: stop signal: removing the load");
            return;
        }
        if fds[0].revents != 0 {
            // SAFETY: read into a valid buffer of buf.len() bytes.
            let r = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                return;
            }
        }
    }
}
