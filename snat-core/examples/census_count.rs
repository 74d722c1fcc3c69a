//! Benchmark helper: `census_count NETNS_FILE [auto|sock_diag|proc_net_tcp [THREADS]]`
//! prints the number of ESTABLISHED TCP sockets in a network namespace (THREADS as in
//! `CensusOptions::threads`, default 0: automatic); `census_count --resolve [PROC]`
//! scans /proc and resolves every network namespace to its owner, printing how many.

use snat_core::census::{CensusOptions, MethodChoice, StateSet, census_netns};
use snat_core::model::TcpState;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--resolve") {
        let root = args.get(1).map_or("/proc", String::as_str);
        let index = snat_core::procindex::ProcIndex::scan(root)?;
        let owners = snat_core::resolve::resolve(&index, &snat_core::resolve::pod_of_cgroup);
        println!("{} namespaces, {} processes", owners.len(), index.processes.len());
        return Ok(());
    }
    let Some(file) = args.first() else {
        eprintln!("usage: census_count NETNS_FILE [auto|sock_diag|proc_net_tcp [THREADS]] | --resolve [PROC]");
        std::process::exit(2);
    };
    let method = match args.get(1).map(String::as_str) {
        Some("proc_net_tcp") => MethodChoice::ProcNetTcp,
        Some("sock_diag") => MethodChoice::SockDiag,
        _ => MethodChoice::Auto,
    };
    let opts = CensusOptions {
        states: StateSet::of(&[TcpState::Established]),
        method,
        threads: match args.get(2) {
            Some(t) => t.parse()?,
            None => 0,
        },
    };
    let c = census_netns(std::path::Path::new(file), opts)?;
    println!("{} {}", c.sockets.len(), c.method.as_str());
    Ok(())
}
