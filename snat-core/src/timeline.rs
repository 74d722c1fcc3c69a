//! Connections over a trace window, per network namespace, in fixed time buckets: the time
//! series behind "which pod opened connections when" (issue 6's chart). A live trace fills
//! it either from the kernel's cumulative per-flow counters sampled at each bucket end
//! ([`TimelineBuilder::sample`], which keeps deltas) or from timestamped events
//! ([`TimelineBuilder::add_event`]); a tcptracer `-t` log fills it from its TIME column
//! with a [`TimelineBuilder::growing`] builder that halves its resolution instead of growing
//! past a bound. Memory is buckets x namespaces, never events. [`Timeline::grouped`] folds
//! namespaces into labelled series (pods), keeps the top N and sums the rest as "other".

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;
use crate::model::EventKind;

/// The most buckets one timeline holds (a day at one-minute buckets).
pub const MAX_BUCKETS: usize = 1440;

/// The shortest bucket: live samples are taken on a 100 ms loop, so shorter buckets
/// would only show its jitter.
pub const MIN_BUCKET: Duration = Duration::from_millis(500);

/// The default bucket for a window: one sixtieth of it, at least one second.
pub fn default_bucket(window: Duration) -> Duration {
    (window / 60).max(Duration::from_secs(1))
}

/// How many buckets of `bucket` cover `window` (the last one may be shorter), checking
/// that the bucket is usable: at least [`MIN_BUCKET`], at most the window, and at most
/// [`MAX_BUCKETS`] of them.
pub fn bucket_count(window: Duration, bucket: Duration) -> Result<usize, Error> {
    let w = window.as_secs_f64();
    let bad = |reason: String| Error::InvalidBucket {
        bucket_secs: bucket.as_secs_f64(),
        reason,
    };
    if bucket < MIN_BUCKET {
        return Err(bad(format!(
            "buckets shorter than {} s cannot be sampled reliably",
            MIN_BUCKET.as_secs_f64()
        )));
    }
    if window.is_zero() {
        return Err(bad("the window is empty".into()));
    }
    if bucket > window {
        return Err(bad(format!(
            "the bucket is longer than the {w} s window: use a shorter bucket"
        )));
    }
    let n = window.as_nanos().div_ceil(bucket.as_nanos());
    if n > MAX_BUCKETS as u128 {
        return Err(bad(format!(
            "a {w} s window makes {n} buckets, at most {MAX_BUCKETS} are kept: use a bucket of at least {} s",
            w / MAX_BUCKETS as f64
        )));
    }
    Ok(usize::try_from(n).unwrap_or(MAX_BUCKETS))
}

/// Event counts of one namespace in one bucket (or cumulative, for [`TimelineBuilder::sample`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BucketCounts {
    /// Connects that reached ESTABLISHED.
    pub connects: u64,
    /// Accepted connections.
    pub accepts: u64,
    /// Connects that never reached ESTABLISHED.
    pub failed_connects: u64,
    /// Closes.
    pub closes: u64,
}

impl BucketCounts {
    /// One event of `kind` (an `Unknown` kind counts nowhere).
    pub fn of_kind(kind: EventKind) -> BucketCounts {
        let mut c = BucketCounts::default();
        match kind {
            EventKind::Connect => c.connects = 1,
            EventKind::Accept => c.accepts = 1,
            EventKind::FailedConnect => c.failed_connects = 1,
            EventKind::Close => c.closes = 1,
            EventKind::Unknown => {}
        }
        c
    }

    /// Add another count to this one.
    pub fn add(&mut self, o: &BucketCounts) {
        self.connects += o.connects;
        self.accepts += o.accepts;
        self.failed_connects += o.failed_connects;
        self.closes += o.closes;
    }

    /// What was added since `prev` (a counter that went back counts 0).
    pub fn since(&self, prev: &BucketCounts) -> BucketCounts {
        BucketCounts {
            connects: self.connects.saturating_sub(prev.connects),
            accepts: self.accepts.saturating_sub(prev.accepts),
            failed_connects: self.failed_connects.saturating_sub(prev.failed_connects),
            closes: self.closes.saturating_sub(prev.closes),
        }
    }

    /// Outbound connection attempts: connects plus failed connects (each took a SNAT port).
    pub fn attempts(&self) -> u64 {
        self.connects + self.failed_connects
    }
}

/// One namespace's counts per bucket (all vectors have one value per bucket).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetnsSeries {
    /// Network namespace inode (0: the event carried none).
    pub netns: u64,
    /// Connects per bucket.
    pub connects: Vec<u64>,
    /// Accepts per bucket.
    pub accepts: Vec<u64>,
    /// Failed connects per bucket.
    pub failed_connects: Vec<u64>,
    /// Closes per bucket.
    pub closes: Vec<u64>,
    /// Connections established during the trace and still open at each bucket's end
    /// (`None` when the source cannot tell, e.g. a tcptracer log).
    pub open: Option<Vec<u64>>,
}

impl NetnsSeries {
    /// Totals over the window.
    pub fn totals(&self) -> BucketCounts {
        BucketCounts {
            connects: self.connects.iter().sum(),
            accepts: self.accepts.iter().sum(),
            failed_connects: self.failed_connects.iter().sum(),
            closes: self.closes.iter().sum(),
        }
    }

    /// The values of one metric per bucket (`Open` is all zeros when unknown).
    pub fn values(&self, metric: SeriesMetric) -> Vec<u64> {
        match metric {
            SeriesMetric::Attempts => self
                .connects
                .iter()
                .zip(&self.failed_connects)
                .map(|(c, f)| c + f)
                .collect(),
            SeriesMetric::Connects => self.connects.clone(),
            SeriesMetric::Accepts => self.accepts.clone(),
            SeriesMetric::FailedConnects => self.failed_connects.clone(),
            SeriesMetric::Closes => self.closes.clone(),
            SeriesMetric::Open => self.open.clone().unwrap_or_else(|| vec![0; self.connects.len()]),
        }
    }
}

/// What a grouped series counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SeriesMetric {
    /// Connects plus failed connects per bucket.
    Attempts,
    /// Connects per bucket.
    Connects,
    /// Accepts per bucket.
    Accepts,
    /// Failed connects per bucket.
    FailedConnects,
    /// Closes per bucket.
    Closes,
    /// Open at each bucket's end (a level, not a rate).
    Open,
}

impl SeriesMetric {
    /// The series' value over the whole window, from its values per bucket (see
    /// [`LabelledSeries::total`]): their sum for counts, the last level for `Open`.
    pub fn total(self, values: &[u64]) -> u64 {
        match self {
            SeriesMetric::Open => values.last().copied().unwrap_or(0),
            _ => values.iter().sum(),
        }
    }
}

impl std::str::FromStr for SeriesMetric {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Ok(match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
            "attempts" => SeriesMetric::Attempts,
            "connects" => SeriesMetric::Connects,
            "accepts" => SeriesMetric::Accepts,
            "failed_connects" | "failed" => SeriesMetric::FailedConnects,
            "closes" => SeriesMetric::Closes,
            "open" => SeriesMetric::Open,
            other => {
                return Err(Error::InvalidArgument(format!(
                    "unknown timeline metric {other:?}: expected attempts, connects, accepts, failed_connects, closes or open"
                )));
            }
        })
    }
}

/// A labelled series (a pod, or "other"), as [`Timeline::grouped`] returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabelledSeries {
    /// The label (a pod name, `netns N`, or `other`).
    pub name: String,
    /// The namespaces folded into it.
    pub netns: Vec<u64>,
    /// One value per bucket.
    pub values: Vec<u64>,
    /// The series over the whole window. For the counts (attempts, connects, accepts,
    /// failed connects, closes), the sum of the values: events in the window. For `open`,
    /// a level per bucket rather than a count, the last value: the connections still open
    /// at the end of the window, what the trace's `open` total and rankings count (a sum of
    /// levels would count a connection once per bucket it stayed open; its highest level
    /// is `peak`).
    pub total: u64,
    /// Highest value.
    pub peak: u64,
    /// Index of the first bucket holding the peak.
    pub peak_bucket: usize,
}

/// Connections over a trace window: bucket starts and one series per namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Timeline {
    /// Length of a bucket in seconds (the last bucket may be shorter).
    pub bucket_secs: f64,
    /// Length of the window in seconds.
    pub window_secs: f64,
    /// Start of each bucket, in seconds from the start of the trace.
    pub starts: Vec<f64>,
    /// One series per namespace that had any event, sorted by inode.
    pub series: Vec<NetnsSeries>,
    /// Remarks: events outside the window, resolution changes, how `open` was measured.
    pub notes: Vec<String>,
}

impl Timeline {
    /// Fold namespaces into series by label (`label(netns)`; `None`: `netns N`), rank them
    /// by total (by peak for `Open`), keep the first `top` and sum the rest into one
    /// series named `other` (left out when it would be all zeros).
    pub fn grouped(
        &self,
        label: impl Fn(u64) -> Option<String>,
        top: usize,
        metric: SeriesMetric,
    ) -> Vec<LabelledSeries> {
        let n = self.starts.len();
        let mut by: BTreeMap<String, (Vec<u64>, Vec<u64>)> = BTreeMap::new();
        for s in &self.series {
            let name = label(s.netns).unwrap_or_else(|| format!("netns {}", s.netns));
            let e = by.entry(name).or_insert_with(|| (Vec::new(), vec![0; n]));
            e.0.push(s.netns);
            for (acc, v) in e.1.iter_mut().zip(s.values(metric)) {
                *acc += v;
            }
        }
        let mut all: Vec<LabelledSeries> = by
            .into_iter()
            .map(|(name, (netns, values))| labelled(name, netns, values, metric))
            .collect();
        let key = |s: &LabelledSeries| if metric == SeriesMetric::Open { s.peak } else { s.total };
        all.sort_by(|a, b| key(b).cmp(&key(a)).then_with(|| a.name.cmp(&b.name)));
        if all.len() <= top {
            return all;
        }
        let rest = all.split_off(top);
        let mut netns = Vec::new();
        let mut values = vec![0; n];
        for s in rest {
            netns.extend(s.netns);
            for (acc, v) in values.iter_mut().zip(s.values) {
                *acc += v;
            }
        }
        if values.iter().any(|v| *v > 0) {
            netns.sort_unstable();
            all.push(labelled("other".into(), netns, values, metric));
        }
        all
    }
}

fn labelled(name: String, netns: Vec<u64>, values: Vec<u64>, metric: SeriesMetric) -> LabelledSeries {
    let (peak_bucket, peak) = values
        .iter()
        .enumerate()
        .fold((0, 0), |(bi, bv), (i, v)| if *v > bv { (i, *v) } else { (bi, bv) });
    LabelledSeries {
        name,
        netns,
        total: metric.total(&values),
        values,
        peak,
        peak_bucket,
    }
}

#[derive(Debug, Clone, Default)]
struct Row {
    counts: Vec<BucketCounts>,
    open: Vec<Option<u64>>,
}

impl Row {
    fn grow(&mut self, n: usize) {
        if self.counts.len() < n {
            self.counts.resize(n, BucketCounts::default());
            self.open.resize(n, None);
        }
    }
}

/// Builds a [`Timeline`]: fixed buckets over a known window ([`TimelineBuilder::new`]) or
/// a growing run of buckets for a log whose span is only known at its end
/// ([`TimelineBuilder::growing`]).
#[derive(Debug, Clone)]
pub struct TimelineBuilder {
    bucket: Duration,
    /// Fixed number of buckets (events past the end land in the last one), or `None`.
    fixed: Option<usize>,
    max: usize,
    rows: BTreeMap<u64, Row>,
    prev: BTreeMap<u64, BucketCounts>,
    late: u64,
    coarsened: u32,
    last_offset: Duration,
}

impl TimelineBuilder {
    /// Fixed buckets of `bucket` over `window` (checked with [`bucket_count`]).
    pub fn new(window: Duration, bucket: Duration) -> Result<TimelineBuilder, Error> {
        let n = bucket_count(window, bucket)?;
        Ok(TimelineBuilder {
            bucket,
            fixed: Some(n),
            max: n,
            rows: BTreeMap::new(),
            prev: BTreeMap::new(),
            late: 0,
            coarsened: 0,
            last_offset: Duration::ZERO,
        })
    }

    /// Buckets of `bucket` from offset 0 for as long as events come; whenever more than
    /// `max_buckets` would be needed, neighbouring buckets are merged and the bucket
    /// doubles, so memory stays bounded whatever the span.
    pub fn growing(bucket: Duration, max_buckets: usize) -> Result<TimelineBuilder, Error> {
        if bucket < MIN_BUCKET || !(2..=MAX_BUCKETS).contains(&max_buckets) {
            return Err(Error::InvalidBucket {
                bucket_secs: bucket.as_secs_f64(),
                reason: format!(
                    "a growing timeline needs a bucket of at least {} s and 2 to {MAX_BUCKETS} buckets (asked {max_buckets})",
                    MIN_BUCKET.as_secs_f64()
                ),
            });
        }
        Ok(TimelineBuilder {
            bucket,
            fixed: None,
            max: max_buckets,
            rows: BTreeMap::new(),
            prev: BTreeMap::new(),
            late: 0,
            coarsened: 0,
            last_offset: Duration::ZERO,
        })
    }

    /// The current bucket length.
    pub fn bucket(&self) -> Duration {
        self.bucket
    }

    fn index(&mut self, offset: Duration) -> usize {
        self.last_offset = self.last_offset.max(offset);
        loop {
            let i = usize::try_from(offset.as_nanos() / self.bucket.as_nanos()).unwrap_or(usize::MAX);
            match self.fixed {
                Some(n) if i >= n => {
                    self.late += 1;
                    return n - 1;
                }
                Some(_) => return i,
                None if i < self.max => return i,
                None => self.coarsen(),
            }
        }
    }

    /// Merge neighbouring buckets and double the bucket.
    fn coarsen(&mut self) {
        for row in self.rows.values_mut() {
            let n = row.counts.len().div_ceil(2);
            let mut counts = vec![BucketCounts::default(); n];
            let mut open = vec![None; n];
            for (i, c) in row.counts.iter().enumerate() {
                counts[i / 2].add(c);
                // A level at the end of the merged bucket is the later one's.
                if row.open[i].is_some() {
                    open[i / 2] = row.open[i];
                }
            }
            row.counts = counts;
            row.open = open;
        }
        self.bucket *= 2;
        self.coarsened += 1;
    }

    fn row(&mut self, netns: u64, i: usize) -> &mut Row {
        let row = self.rows.entry(netns).or_default();
        row.grow(i + 1);
        row
    }

    /// Count one event that happened `offset` after the start of the trace.
    pub fn add_event(&mut self, offset: Duration, netns: u64, kind: EventKind) {
        if kind == EventKind::Unknown {
            return;
        }
        let i = self.index(offset);
        self.row(netns, i).counts[i].add(&BucketCounts::of_kind(kind));
    }

    /// Record the cumulative counts and open connections of each namespace at the end of
    /// bucket `bucket` (later samples of the same bucket add what changed since): the
    /// bucket gets the difference with the previous sample.
    pub fn sample(&mut self, bucket: usize, cumulative: &BTreeMap<u64, (BucketCounts, u64)>) {
        let i = match self.fixed {
            Some(n) => bucket.min(n - 1),
            None => self.index(self.bucket * u32::try_from(bucket).unwrap_or(u32::MAX)),
        };
        for (ns, (cum, open)) in cumulative {
            let prev = self.prev.insert(*ns, *cum).unwrap_or_default();
            let delta = cum.since(&prev);
            let row = self.row(*ns, i);
            row.counts[i].add(&delta);
            row.open[i] = Some(*open);
        }
        // A namespace missing from this sample has nothing open any more.
        let gone: Vec<u64> = self
            .prev
            .keys()
            .filter(|ns| !cumulative.contains_key(ns))
            .copied()
            .collect();
        for ns in gone {
            self.row(ns, i).open[i] = Some(0);
        }
    }

    /// The timeline, over a window of `window` (for a growing builder: the last event's
    /// offset when `None`).
    pub fn finish(self, window: Option<Duration>) -> Timeline {
        let n = match self.fixed {
            Some(n) => n,
            None => self.rows.values().map(|r| r.counts.len()).max().unwrap_or(0),
        };
        let window = window.unwrap_or(self.last_offset);
        let b = self.bucket.as_secs_f64();
        let mut notes = Vec::new();
        if self.late > 0 {
            notes.push(format!(
                "{} events came after the end of the window (while the tracer detached) and were counted in its last bucket",
                self.late
            ));
        }
        if self.coarsened > 0 {
            notes.push(format!(
                "the span needed more than {} buckets: buckets were merged to {b} s",
                self.max
            ));
        }
        let sampled = self.rows.values().any(|r| r.open.iter().any(Option::is_some));
        let series = self
            .rows
            .into_iter()
            .map(|(netns, mut row)| {
                row.grow(n);
                let open = sampled.then(|| {
                    // A bucket without a sample keeps the previous level.
                    let mut level = 0;
                    row.open
                        .iter()
                        .map(|o| {
                            level = o.unwrap_or(level);
                            level
                        })
                        .collect()
                });
                NetnsSeries {
                    netns,
                    connects: row.counts.iter().map(|c| c.connects).collect(),
                    accepts: row.counts.iter().map(|c| c.accepts).collect(),
                    failed_connects: row.counts.iter().map(|c| c.failed_connects).collect(),
                    closes: row.counts.iter().map(|c| c.closes).collect(),
                    open,
                }
            })
            .filter(|s| {
                s.totals() != BucketCounts::default() || s.open.as_ref().is_some_and(|o| o.iter().any(|v| *v > 0))
            })
            .collect();
        Timeline {
            bucket_secs: b,
            window_secs: window.as_secs_f64(),
            starts: (0..n).map(|i| b * i as f64).collect(),
            series,
            notes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rstest::rstest;

    const S: fn(u64) -> Duration = Duration::from_secs;

    #[rstest]
    #[case::ten_seconds(S(10), S(1))]
    #[case::one_minute(S(60), S(1))]
    #[case::ten_minutes(S(600), S(10))]
    #[case::fractional(Duration::from_millis(1500), S(1))]
    fn default_bucket_is_a_sixtieth_at_least_one_second(#[case] window: Duration, #[case] want: Duration) {
        assert_eq!(default_bucket(window), want);
    }

    #[rstest]
    #[case::exact(S(10), S(1), Ok(10))]
    #[case::partial_last(S(10), S(3), Ok(4))]
    #[case::one(S(10), S(10), Ok(1))]
    #[case::too_short(S(10), Duration::from_millis(100), Err("shorter than 0.5 s"))]
    #[case::longer_than_window(S(10), S(20), Err("longer than the 10 s window"))]
    #[case::too_many(S(86_400), S(1), Err("makes 86400 buckets, at most 1440"))]
    fn bucket_count_checks(#[case] window: Duration, #[case] bucket: Duration, #[case] want: Result<usize, &str>) {
        match (bucket_count(window, bucket), want) {
            (Ok(n), Ok(w)) => assert_eq!(n, w),
            (Err(e), Err(needle)) => {
                let m = e.to_string();
                assert!(m.contains(needle) && m.contains("bucket"), "{m}");
            }
            (got, want) => panic!("{got:?} vs {want:?}"),
        }
    }

    #[test]
    fn events_land_in_their_bucket_and_namespace() {
        let mut b = TimelineBuilder::new(S(6), S(1)).unwrap();
        for ms in [100, 200, 300] {
            b.add_event(Duration::from_millis(ms), 7, EventKind::Connect);
        }
        b.add_event(Duration::from_millis(4500), 7, EventKind::FailedConnect);
        b.add_event(Duration::from_millis(4600), 9, EventKind::Connect);
        b.add_event(Duration::from_millis(6100), 9, EventKind::Close); // late: last bucket
        let t = b.finish(Some(S(6)));
        assert_eq!(t.starts, vec![0.0, 1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(t.series.len(), 2);
        assert_eq!(t.series[0].netns, 7);
        assert_eq!(t.series[0].connects, vec![3, 0, 0, 0, 0, 0]);
        assert_eq!(t.series[0].failed_connects, vec![0, 0, 0, 0, 1, 0]);
        assert_eq!(t.series[1].closes, vec![0, 0, 0, 0, 0, 1]);
        assert_eq!(t.series[0].open, None);
        assert!(t.notes[0].starts_with("1 events came after the end"), "{:?}", t.notes);
    }

    #[test]
    fn samples_become_deltas_and_open_levels() {
        let mut b = TimelineBuilder::new(S(4), S(1)).unwrap();
        let cum = |c: u64, f: u64, open: u64| {
            BTreeMap::from([(
                7,
                (
                    BucketCounts {
                        connects: c,
                        failed_connects: f,
                        ..Default::default()
                    },
                    open,
                ),
            )])
        };
        b.sample(0, &cum(5, 1, 5));
        b.sample(1, &cum(5, 1, 2));
        // bucket 2 missed: its delta lands in bucket 3, its level is carried
        b.sample(3, &cum(9, 1, 4));
        let t = b.finish(Some(S(4)));
        let s = &t.series[0];
        assert_eq!(s.connects, vec![5, 0, 0, 4]);
        assert_eq!(s.failed_connects, vec![1, 0, 0, 0]);
        assert_eq!(s.open, Some(vec![5, 2, 2, 4]));
        assert_eq!(s.values(SeriesMetric::Attempts), vec![6, 0, 0, 4]);
    }

    #[test]
    fn grouped_keeps_top_and_sums_the_rest() {
        let mut b = TimelineBuilder::new(S(3), S(1)).unwrap();
        for (ns, i, n) in [(1, 0, 10), (2, 1, 5), (3, 2, 2), (4, 2, 1), (5, 0, 1)] {
            for _ in 0..n {
                b.add_event(S(i), ns, EventKind::Connect);
            }
        }
        let t = b.finish(None);
        let label = |ns: u64| match ns {
            1 => Some("a/web".to_string()),
            4 | 5 => Some("b/batch".to_string()),
            _ => None,
        };
        let g = t.grouped(label, 2, SeriesMetric::Connects);
        let names: Vec<&str> = g.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, vec!["a/web", "netns 2", "other"]);
        assert_eq!(g[2].values, vec![1, 0, 3]);
        assert_eq!(g[2].netns, vec![3, 4, 5]);
        assert_eq!((g[1].peak, g[1].peak_bucket), (5, 1));
        assert_eq!(g.iter().map(|s| s.total).sum::<u64>(), 19);
        assert_eq!(t.grouped(label, 10, SeriesMetric::Connects).len(), 4);
        assert!("bogus".parse::<SeriesMetric>().is_err());
    }

    /// A series' total means something for every metric: events in the window for the
    /// counts, and for `open` (a level) the connections still open at the window's end, not
    /// the sum of its levels. Namespace 7 opens 5, closes 3, opens 2 more; namespace 9
    /// opens 1 and keeps it; both folded into "other" when only one series is kept.
    #[rstest]
    #[case::attempts(SeriesMetric::Attempts, 10, [10, 1], 11)]
    #[case::connects(SeriesMetric::Connects, 10, [7, 1], 8)]
    #[case::closes(SeriesMetric::Closes, 10, [3, 0], 3)]
    #[case::open_is_the_last_level_not_the_sum(SeriesMetric::Open, 10, [4, 1], 5)]
    #[case::open_in_a_folded_series(SeriesMetric::Open, 1, [4, 1], 5)]
    fn series_totals_mean_something_per_metric(
        #[case] metric: SeriesMetric,
        #[case] top: usize,
        #[case] per_netns: [u64; 2],
        #[case] all: u64,
    ) {
        let mut b = TimelineBuilder::new(S(4), S(1)).unwrap();
        let cum = |c7: u64, f7: u64, x7: u64, open7: u64, c9: u64, open9: u64| {
            BTreeMap::from([
                (
                    7,
                    (
                        BucketCounts {
                            connects: c7,
                            failed_connects: f7,
                            closes: x7,
                            ..Default::default()
                        },
                        open7,
                    ),
                ),
                (
                    9,
                    (
                        BucketCounts {
                            connects: c9,
                            ..Default::default()
                        },
                        open9,
                    ),
                ),
            ])
        };
        b.sample(0, &cum(5, 0, 0, 5, 1, 1));
        b.sample(1, &cum(5, 1, 3, 2, 1, 1));
        b.sample(2, &cum(7, 2, 3, 4, 1, 1));
        b.sample(3, &cum(7, 3, 3, 4, 1, 1));
        let t = b.finish(Some(S(4)));
        assert_eq!(t.series[0].open, Some(vec![5, 2, 4, 4]));
        let g = t.grouped(|_| None, top, metric);
        if top >= 2 {
            let totals: Vec<u64> = g.iter().map(|s| s.total).collect();
            let mut want = per_netns.to_vec();
            want.sort_unstable_by(|a, b| b.cmp(a));
            assert_eq!(totals, want, "{g:?}");
        }
        let folded = t.grouped(|_| None, 0, metric);
        assert_eq!(folded.len(), 1);
        assert_eq!((folded[0].name.as_str(), folded[0].total), ("other", all), "{folded:?}");
        if metric == SeriesMetric::Open {
            assert_eq!(folded[0].values, vec![6, 3, 5, 5]);
            assert_eq!(folded[0].peak, 6);
        }
    }

    #[test]
    fn growing_merges_instead_of_growing_past_its_bound() {
        let mut b = TimelineBuilder::growing(S(1), 4).unwrap();
        for s in 0..10 {
            b.add_event(S(s), 1, EventKind::Connect);
        }
        assert_eq!(b.bucket(), S(4));
        let t = b.finish(None);
        assert_eq!(t.series[0].connects, vec![4, 4, 2]);
        assert_eq!(t.starts, vec![0.0, 4.0, 8.0]);
        assert_eq!(t.window_secs, 9.0);
        assert!(t.notes[0].contains("merged to 4 s"), "{:?}", t.notes);
        assert!(TimelineBuilder::growing(Duration::from_millis(1), 4).is_err());
    }

    fn kind() -> impl Strategy<Value = EventKind> {
        prop_oneof![
            Just(EventKind::Connect),
            Just(EventKind::Accept),
            Just(EventKind::Close),
            Just(EventKind::FailedConnect),
        ]
    }

    proptest! {
        /// Whatever the events, each namespace's buckets add up to its events by kind.
        #[test]
        fn bucket_sums_equal_event_totals(
            events in prop::collection::vec((0u64..20_000, 1u64..5, kind()), 0..300),
            bucket_ms in 500u64..5_000,
            growing in any::<bool>(),
        ) {
            let mut b = if growing {
                TimelineBuilder::growing(Duration::from_millis(bucket_ms), 8).unwrap()
            } else {
                TimelineBuilder::new(S(20), Duration::from_millis(bucket_ms)).unwrap()
            };
            let mut want: BTreeMap<u64, BucketCounts> = BTreeMap::new();
            for (ms, ns, k) in &events {
                b.add_event(Duration::from_millis(*ms), *ns, *k);
                want.entry(*ns).or_default().add(&BucketCounts::of_kind(*k));
            }
            let t = b.finish(Some(S(20)));
            let bound = if growing { 8 } else { MAX_BUCKETS };
            prop_assert!(t.starts.len() <= bound);
            let got: BTreeMap<u64, BucketCounts> = t.series.iter().map(|s| (s.netns, s.totals())).collect();
            prop_assert_eq!(got, want);
            for s in &t.series {
                prop_assert_eq!(s.connects.len(), t.starts.len());
            }
        }

        /// Deltas of monotone cumulative samples add up to the last sample.
        #[test]
        fn sampled_deltas_add_up_to_the_last_cumulative(
            steps in prop::collection::vec(prop::collection::vec((1u64..4, 0u64..50, 0u64..5), 0..4), 1..12),
        ) {
            let n = steps.len();
            let mut b = TimelineBuilder::new(S(n as u64), S(1)).unwrap();
            let mut cum: BTreeMap<u64, (BucketCounts, u64)> = BTreeMap::new();
            for (i, step) in steps.iter().enumerate() {
                for (ns, c, f) in step {
                    let e = cum.entry(*ns).or_default();
                    e.0.connects += c;
                    e.0.failed_connects += f;
                    e.1 = *c;
                }
                b.sample(i, &cum);
            }
            let t = b.finish(None);
            for s in &t.series {
                prop_assert_eq!(s.totals(), cum[&s.netns].0);
            }
            let kept: usize = t.grouped(|_| None, 2, SeriesMetric::Attempts).iter().map(|s| s.total as usize).sum();
            prop_assert_eq!(kept as u64, cum.values().map(|(c, _)| c.attempts()).sum::<u64>());
        }
    }
}
