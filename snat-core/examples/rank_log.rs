//! Ranks a tcptracer log by (SADDR, NETNS), like the article's
//! `awk '{print $6,$10}' log | sort | uniq -c | sort -nrk 1`, and prints the ranking in
//! the same shape (`Count SADDR NETNS`), then the summary's notes on stderr.
//!
//! Usage: `rank_log LOG|- [THREADS]` (THREADS 0, the default, means one per CPU).

use snat_core::aggregate::{Field, Metric};
use snat_core::tcptracer::LogReader;

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(path) = args.next() else {
        eprintln!("usage: rank_log LOG|- [THREADS]");
        std::process::exit(2);
    };
    let threads = args.next().and_then(|t| t.parse().ok()).unwrap_or(0);
    let reader = LogReader::new()
        .groupings(vec![vec![Field::Saddr, Field::Netns]])
        .threads(threads);
    let summary = match reader.read_path(&path) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rank_log: {e}");
            std::process::exit(1);
        }
    };
    match summary.rank(&[Field::Saddr, Field::Netns], Metric::Events) {
        Ok(r) => print!("{}", r.to_text()),
        Err(e) => {
            eprintln!("rank_log: {e}");
            std::process::exit(1);
        }
    }
    eprintln!(
        "events {} lost {} malformed {}",
        summary.totals.events, summary.lost_events, summary.malformed_lines
    );
    for n in &summary.notes {
        eprintln!("note: {n}");
    }
}
