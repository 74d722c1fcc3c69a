//! Using snat's stages from Rust, without Rhai: read a tcptracer log, rank it the way the
//! article does, and keep only the destinations that consume SNAT ports.
//!
//! ```sh
//! cargo run --example embed -- tests/data/tcptracer/sample-t4v.log
//! ```

use std::process::ExitCode;

use snat::core::aggregate::{Field, Metric, TraceSummary, Value};
use snat::core::policy::Policy;
use snat::core::tcptracer::LogReader;

fn main() -> ExitCode {
    let Some(path) = std::env::args().nth(1) else {
        eprintln!("usage: embed TCPTRACER_LOG   (`-` for stdin)");
        return ExitCode::from(2);
    };
    let summary = match LogReader::new()
        .groupings(TraceSummary::default_groupings())
        .read_path(&path)
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("embed: {e}");
            return ExitCode::from(1);
        }
    };
    // The article's `awk '{print $6,$10}' log | sort | uniq -c | sort -nrk 1`.
    match summary.rank(&[Field::Saddr, Field::Netns], Metric::Events) {
        Ok(r) => print!("{}", r.top(10).to_text()),
        Err(e) => {
            eprintln!("embed: {e}");
            return ExitCode::from(1);
        }
    }
    // Connects to public destinations, per network namespace and destination.
    let policy = Policy::new();
    println!();
    println!("public destinations (connects, netns, daddr, dport, rule):");
    let ranking = match summary.rank(&[Field::Netns, Field::Daddr, Field::Dport], Metric::Connects) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("embed: {e}");
            return ExitCode::from(1);
        }
    };
    // Keep the public destinations first, then the ten busiest of them.
    let public = ranking.rows.iter().filter_map(|row| match row.key[1] {
        Value::Ip(ip) => Some((row, ip, policy.classify(ip))).filter(|(_, _, v)| v.snat),
        _ => None,
    });
    for (row, ip, v) in public.take(10) {
        println!(
            "{} {} {} {} {}",
            row.counts.connects, row.key[0], ip, row.key[2], v.rule.name
        );
    }
    if summary.lost_events > 0 || summary.malformed_lines > 0 {
        eprintln!(
            "note: {} lost events, {} malformed lines",
            summary.lost_events, summary.malformed_lines
        );
    }
    ExitCode::SUCCESS
}
