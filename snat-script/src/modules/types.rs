//! Rhai bindings for the types every trace source returns: `Trace` (a consumed log or
//! live window), `Ranking`, `RankRow` and `Timeline` (connections per bucket and network
//! namespace over the window). A tcptracer log and a live trace give the same `Trace`, so
//! one playbook ranks (and charts) either.

use std::sync::Arc;

use rhai::{Array, Dynamic, EvalAltResult, ImmutableString, Map, Module};
use snat_core::aggregate::{
    Counts, Field, Metric, RankRow as CoreRow, RankView, Ranking as CoreRanking, TraceSummary, Value,
};
use snat_core::timeline::{SeriesMetric, Timeline as CoreTimeline};

use super::{getter, method, to_dyn, usage};
use crate::ctx::{Ctx, StageFailure};

/// A consumed trace: totals, loss accounting and the groupings it kept, and its timeline
/// when the source has one.
#[derive(Debug, Clone)]
pub struct Trace(pub Arc<TraceSummary>, pub Option<Arc<CoreTimeline>>);

impl Trace {
    /// A trace without a timeline.
    pub fn new(summary: TraceSummary) -> Trace {
        Trace(Arc::new(summary), None)
    }

    /// A trace with its timeline.
    pub fn with_timeline(summary: TraceSummary, timeline: Option<CoreTimeline>) -> Trace {
        Trace(Arc::new(summary), timeline.map(Arc::new))
    }
}

/// Connections per time bucket and network namespace over a trace window.
#[derive(Debug, Clone)]
pub struct Timeline(pub Arc<CoreTimeline>);

const NO_TIMELINE: &str = "this trace has no timeline: trace::run always keeps one; for a tcptracer log, read a log with a TIME column (tcptracer -t) with tcptracer::read(path, #{timeline: true})";

impl Timeline {
    /// Series folded by label (see [`CoreTimeline::grouped`]) as chart-ready maps:
    /// `#{name, netns, values, total, peak, peak_at, points}` (`total` as
    /// [`snat_core::timeline::LabelledSeries::total`]: the last level for `open`).
    fn grouped(&self, labels: &Map, top: i64, metric: &str) -> Result<Array, Box<EvalAltResult>> {
        let metric: SeriesMetric = metric.parse().map_err(|e: snat_core::Error| e.to_string())?;
        let Ok(top) = usize::try_from(top) else {
            return usage(format!("top must be 0 or more, got {top}"));
        };
        let mut names = std::collections::BTreeMap::new();
        for (k, v) in labels {
            let Ok(ns) = k.trim().parse::<u64>() else {
                return usage(format!(
                    "timeline labels are keyed by network namespace inode (e.g. \"4026532785\"), got key {k:?}"
                ));
            };
            names.insert(ns, v.to_string());
        }
        let starts = &self.0.starts;
        let out = self.0.grouped(|ns| names.get(&ns).cloned(), top, metric);
        Ok(out
            .into_iter()
            .map(|s| {
                let mut m = Map::new();
                let points: Array = starts
                    .iter()
                    .zip(&s.values)
                    .map(|(x, y)| Dynamic::from_array(vec![Dynamic::from_float(*x), Dynamic::from_int(clamp(*y))]))
                    .collect();
                m.insert("name".into(), s.name.clone().into());
                m.insert(
                    "netns".into(),
                    Dynamic::from_array(s.netns.iter().map(|n| Dynamic::from_int(clamp(*n))).collect()),
                );
                m.insert(
                    "values".into(),
                    Dynamic::from_array(s.values.iter().map(|n| Dynamic::from_int(clamp(*n))).collect()),
                );
                m.insert("total".into(), Dynamic::from_int(clamp(s.total)));
                m.insert("peak".into(), Dynamic::from_int(clamp(s.peak)));
                m.insert(
                    "peak_at".into(),
                    Dynamic::from_float(starts.get(s.peak_bucket).copied().unwrap_or(0.0)),
                );
                m.insert("points".into(), Dynamic::from_array(points));
                Dynamic::from_map(m)
            })
            .collect())
    }
}

fn clamp(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A ranking of keys by a metric.
#[derive(Debug, Clone)]
pub enum Ranking {
    /// Rows held by the ranking (a top, a sum, a ranking built in Rust).
    Rows(Arc<CoreRanking>),
    /// Rows left in their trace, made as they are asked for: what `trace.rank` gives, 4
    /// bytes per row, so a ranking of millions of keys does not copy them.
    View(Arc<RankView>),
}

impl Ranking {
    /// The ranking with its rows made (all of them, for a view).
    pub fn core(&self) -> Arc<CoreRanking> {
        match self {
            Ranking::Rows(r) => r.clone(),
            Ranking::View(v) => Arc::new(v.to_ranking()),
        }
    }

    fn fields(&self) -> &[Field] {
        match self {
            Ranking::Rows(r) => &r.fields,
            Ranking::View(v) => v.fields(),
        }
    }

    fn metric(&self) -> Metric {
        match self {
            Ranking::Rows(r) => r.metric,
            Ranking::View(v) => v.metric(),
        }
    }

    fn len(&self) -> usize {
        match self {
            Ranking::Rows(r) => r.rows.len(),
            Ranking::View(v) => v.len(),
        }
    }

    fn row_at(&self, n: usize) -> Option<CoreRow> {
        match self {
            Ranking::Rows(r) => r.rows.get(n).cloned(),
            Ranking::View(v) => v.row(n),
        }
    }

    fn top(&self, n: usize) -> Ranking {
        Ranking::Rows(Arc::new(match self {
            Ranking::Rows(r) => r.top(n),
            Ranking::View(v) => v.top(n),
        }))
    }
}

/// One row of a ranking, with the grouping's field names so fields read as properties.
#[derive(Debug, Clone)]
pub struct RankRow {
    fields: Arc<Vec<Field>>,
    metric: Metric,
    row: CoreRow,
}

/// A key value as a Rhai value: numbers as integers, everything else as strings, a
/// missing value as `()`.
pub fn value_to_dyn(v: &Value) -> Dynamic {
    match v {
        Value::Missing => Dynamic::UNIT,
        Value::Int(n) => Dynamic::from_int(i64::try_from(*n).unwrap_or(i64::MAX)),
        Value::Text(s) => s.clone().into(),
        Value::Ip(ip) => ip.to_string().into(),
        Value::Kind(k) => k.as_str().into(),
        Value::Family(f) => f.to_string().into(),
    }
}

fn counts_map(c: &Counts) -> Dynamic {
    to_dyn(c).unwrap_or(Dynamic::UNIT)
}

/// Parse a Rhai array of field names.
pub fn fields_of(arr: &Array) -> Result<Vec<Field>, Box<EvalAltResult>> {
    parse_fields(arr).map_err(Into::into)
}

fn parse_fields(arr: &Array) -> Result<Vec<Field>, String> {
    let names: Vec<String> = arr.iter().map(|d| d.to_string()).collect();
    Field::parse_list(&names).map_err(|e| e.to_string())
}

/// Parse the `by` option (an array of arrays of field names) of trace sources. Every
/// error message starts with "option `by`", for the caller to raise as it is.
pub fn groupings_of(by: &Dynamic) -> Result<Vec<Vec<Field>>, String> {
    let Some(outer) = by.clone().try_cast::<Array>() else {
        return Err("option `by` must be an array of field-name arrays, e.g. [[\"saddr\", \"netns\"]]".into());
    };
    if outer.is_empty() {
        return Err("option `by` needs at least one grouping".into());
    }
    outer
        .iter()
        .map(|g| match g.clone().try_cast::<Array>() {
            Some(a) => parse_fields(&a).map_err(|e| format!("option `by`: {e}")),
            None => Err(format!(
                "option `by`: each grouping must be an array of field names, got {g}"
            )),
        })
        .collect()
}

fn metric_of(s: &str) -> Result<Metric, Box<EvalAltResult>> {
    s.parse::<Metric>().map_err(|e| e.to_string().into())
}

impl Ranking {
    fn rows(&self) -> Array {
        self.clone().into_iter().map(Dynamic::from).collect()
    }
}

/// `for row in ranking { ... }`: the rows one at a time, highest first, without building
/// the array `ranking.rows` would (which the sandbox's array limit caps: a log can hold
/// more destinations than that).
impl IntoIterator for Ranking {
    type Item = RankRow;
    type IntoIter = RankRows;

    fn into_iter(self) -> RankRows {
        RankRows {
            fields: Arc::new(self.fields().to_vec()),
            metric: self.metric(),
            ranking: self,
            next: 0,
        }
    }
}

/// The rows of a [`Ranking`], made as they are asked for.
#[derive(Debug)]
pub struct RankRows {
    ranking: Ranking,
    fields: Arc<Vec<Field>>,
    metric: Metric,
    next: usize,
}

impl Iterator for RankRows {
    type Item = RankRow;

    fn next(&mut self) -> Option<RankRow> {
        let row = self.ranking.row_at(self.next)?;
        self.next += 1;
        Some(RankRow {
            fields: self.fields.clone(),
            metric: self.metric,
            row,
        })
    }
}

impl RankRow {
    fn get(&self, f: Field) -> Dynamic {
        self.fields
            .iter()
            .position(|x| *x == f)
            .map_or(Dynamic::UNIT, |i| value_to_dyn(&self.row.key[i]))
    }
}

/// The module (registered globally: types, getters and methods).
pub fn create_module(_ctx: &Ctx) -> Module {
    let mut m = Module::new();
    m.set_custom_type::<Trace>("Trace");
    m.set_custom_type::<Ranking>("Ranking");
    m.set_iterable::<Ranking>();
    m.set_custom_type::<RankRow>("RankRow");
    m.set_custom_type::<Timeline>("Timeline");

    // ---- StageFailure: what `catch (e)` gets when a stage fails, so a playbook can go on
    // (e.g. "no cluster reachable") and say why.
    m.set_custom_type::<StageFailure>("StageFailure");
    method(
        "to_string",
        &["failure: StageFailure", "String"],
        "A caught stage failure as `stage: message`.",
    )
    .set_into_module(&mut m, |f: &mut StageFailure| f.to_string());
    getter(
        &mut m,
        "message",
        "String",
        "What failed and why.",
        |f: &mut StageFailure| f.message.clone(),
    );
    getter(
        &mut m,
        "stage",
        "String",
        "The stage that failed, e.g. `kube::pods_on_node`.",
        |f: &mut StageFailure| f.stage.clone(),
    );

    // ---- Trace
    getter(
        &mut m,
        "source",
        "String",
        "Where the events came from: a path, `-` for stdin, or `live`.",
        |t: &mut Trace| ImmutableString::from(t.0.source.as_str()),
    );
    getter(
        &mut m,
        "events",
        "i64",
        "All events counted (every connect/accept/close/failed line).",
        |t: &mut Trace| t.0.totals.events as i64,
    );
    getter(
        &mut m,
        "connects",
        "i64",
        "Connects that reached ESTABLISHED.",
        |t: &mut Trace| t.0.totals.connects as i64,
    );
    getter(&mut m, "accepts", "i64", "Accepted connections.", |t: &mut Trace| {
        t.0.totals.accepts as i64
    });
    getter(&mut m, "closes", "i64", "Closes.", |t: &mut Trace| {
        t.0.totals.closes as i64
    });
    getter(
        &mut m,
        "failed_connects",
        "i64",
        "Connects that never reached ESTABLISHED.",
        |t: &mut Trace| t.0.totals.failed_connects as i64,
    );
    getter(
        &mut m,
        "lost_events",
        "i64",
        "Events the producer reports lost (never silently zero).",
        |t: &mut Trace| t.0.lost_events as i64,
    );
    getter(
        &mut m,
        "malformed_lines",
        "i64",
        "Log lines that could not be parsed.",
        |t: &mut Trace| t.0.malformed_lines as i64,
    );
    getter(
        &mut m,
        "notes",
        "Array",
        "Remarks: first malformed lines, truncation, attribution caveats.",
        |t: &mut Trace| t.0.notes.iter().map(|n| Dynamic::from(n.clone())).collect::<Array>(),
    );
    getter(
        &mut m,
        "totals",
        "Map",
        "All counts: events, connects, accepts, closes, failed_connects, unknown, open.",
        |t: &mut Trace| counts_map(&t.0.totals),
    );
    getter(
        &mut m,
        "groupings",
        "Array",
        "The groupings this trace kept, as arrays of field names.",
        |t: &mut Trace| {
            t.0.groupings
                .iter()
                .map(|g| Dynamic::from(g.fields().iter().map(|f| Dynamic::from(f.name())).collect::<Array>()))
                .collect::<Array>()
        },
    );
    method(
        "rank",
        &["trace: Trace", "fields: Array", "Ranking"],
        "Rank the keys of a kept grouping by event count, highest first, ties by key.\nExample: trace.rank([\"saddr\", \"netns\"])",
    )
    .set_into_module(&mut m, |t: &mut Trace, fields: Array| -> Result<Ranking, Box<EvalAltResult>> {
        let f = fields_of(&fields)?;
        t.0.rank_view(&f, Metric::Events)
            .map(|r| Ranking::View(Arc::new(r)))
            .map_err(|e| e.to_string().into())
    });
    method(
        "rank",
        &["trace: Trace", "fields: Array", "metric: &str", "Ranking"],
        "Rank by a metric: events, connects, accepts, closes, failed_connects, open or attempts\n(connects + failed_connects: outbound attempts, each of which took a SNAT port).",
    )
    .set_into_module(
        &mut m,
        |t: &mut Trace, fields: Array, metric: &str| -> Result<Ranking, Box<EvalAltResult>> {
            let f = fields_of(&fields)?;
            t.0.rank_view(&f, metric_of(metric)?)
                .map(|r| Ranking::View(Arc::new(r)))
                .map_err(|e| e.to_string().into())
        },
    );

    getter(
        &mut m,
        "has_timeline",
        "bool",
        "Whether `timeline()` has data: always for trace::run, for tcptracer::read with `timeline: true`.",
        |t: &mut Trace| t.1.is_some(),
    );
    method(
        "timeline",
        &["trace: Trace", "Timeline"],
        "Connections per time bucket and network namespace over the window: bucket starts in seconds from\nthe start of the trace, and per netns connects, accepts, failed_connects, closes (per bucket) and\nopen (at each bucket's end; live traces only). Fails on a trace read without a timeline.",
    )
    .set_into_module(&mut m, |t: &mut Trace| -> Result<Timeline, Box<EvalAltResult>> {
        match &t.1 {
            Some(tl) => Ok(Timeline(tl.clone())),
            None => usage(NO_TIMELINE),
        }
    });

    // ---- Timeline
    getter(
        &mut m,
        "bucket_secs",
        "f64",
        "Length of a bucket in seconds (the last one may be shorter).",
        |t: &mut Timeline| t.0.bucket_secs,
    );
    getter(
        &mut m,
        "window_secs",
        "f64",
        "Length of the traced window in seconds.",
        |t: &mut Timeline| t.0.window_secs,
    );
    getter(
        &mut m,
        "starts",
        "Array",
        "Start of each bucket, in seconds from the start of the trace.",
        |t: &mut Timeline| t.0.starts.iter().map(|x| Dynamic::from_float(*x)).collect::<Array>(),
    );
    getter(
        &mut m,
        "series",
        "Array",
        "One map per network namespace with any event: #{netns, connects, accepts, failed_connects, closes,\nopen}, each an array with one value per bucket (open is () when the source cannot tell).",
        |t: &mut Timeline| to_dyn(&t.0.series).unwrap_or(Dynamic::UNIT),
    );
    getter(
        &mut m,
        "notes",
        "Array",
        "Remarks: late events, merged buckets, how open connections were measured.",
        |t: &mut Timeline| t.0.notes.iter().map(|n| Dynamic::from(n.clone())).collect::<Array>(),
    );
    method(
        "to_map",
        &["timeline: Timeline", "Map"],
        "The whole timeline as a map (bucket_secs, window_secs, starts, series, notes), e.g. for report::data.",
    )
    .set_into_module(&mut m, |t: &mut Timeline| to_dyn(&*t.0));
    method(
        "grouped",
        &["timeline: Timeline", "labels: Map", "top: i64", "metric: &str", "Array"],
        "Fold namespaces into labelled series for report::chart: labels maps a netns inode (as a string key)\nto a name (namespaces without one are `netns N`; several with the same name are added up), the\n`top` series by total (by peak for \"open\") are kept and the rest summed as \"other\". metric:\nattempts (connects + failed_connects), connects, accepts, failed_connects, closes or open. Each\nseries: #{name, netns, values, total, peak, peak_at (seconds), points: [[start, value], ...]};\ntotal is the sum of the values, but for \"open\" (a level per bucket) the last level: the connections\nstill open at the end of the window.",
    )
    .set_into_module(
        &mut m,
        |t: &mut Timeline, labels: Map, top: i64, metric: &str| t.grouped(&labels, top, metric),
    );

    // ---- Ranking
    getter(
        &mut m,
        "rows",
        "Array",
        "The rows (RankRow), highest first, as an array (capped by --max-array-size). To go\nthrough every row of a large ranking, iterate the ranking itself: `for r in ranking { ... }`.",
        |r: &mut Ranking| r.rows(),
    );
    getter(
        &mut m,
        "fields",
        "Array",
        "The grouping's field names.",
        |r: &mut Ranking| r.fields().iter().map(|f| Dynamic::from(f.name())).collect::<Array>(),
    );
    getter(
        &mut m,
        "metric",
        "String",
        "What the rows are ordered by.",
        |r: &mut Ranking| to_dyn(&r.metric()).unwrap_or(Dynamic::UNIT),
    );
    getter(&mut m, "len", "i64", "Number of rows.", |r: &mut Ranking| {
        r.len() as i64
    });
    method(
        "top",
        &["ranking: Ranking", "n: i64", "Ranking"],
        "The first n rows (n >= 0).",
    )
    .set_into_module(
        &mut m,
        |r: &mut Ranking, n: i64| -> Result<Ranking, Box<EvalAltResult>> {
            match usize::try_from(n) {
                Ok(n) => Ok(r.top(n)),
                Err(_) => usage(format!("top({n}): the number of rows cannot be negative")),
            }
        },
    );
    method(
        "by",
        &["ranking: Ranking", "metric: &str", "Ranking"],
        "The same rows ordered by another metric.",
    )
    .set_into_module(
        &mut m,
        |r: &mut Ranking, metric: &str| -> Result<Ranking, Box<EvalAltResult>> {
            let metric = metric_of(metric)?;
            Ok(match r {
                Ranking::Rows(x) => Ranking::Rows(Arc::new(x.by(metric))),
                Ranking::View(v) => Ranking::View(Arc::new(v.by(metric))),
            })
        },
    );
    method(
        "snat_only",
        &["ranking: Ranking", "policy: Policy", "Ranking"],
        "The rows whose daddr uses SNAT ports by `policy` (pol.classify(row.daddr).snat), in the same\norder, filtered in Rust: for rankings too large to go through in the playbook. The ranking must\ngroup by daddr.",
    )
    .set_into_module(
        &mut m,
        |r: &mut Ranking, pol: snat_core::policy::Policy| -> Result<Ranking, Box<EvalAltResult>> {
            let Some(at) = r.fields().iter().position(|f| *f == Field::Daddr) else {
                return usage("snat_only: the ranking must group by daddr".to_string());
            };
            let public = |row: &CoreRow| match row.key[at] {
                Value::Ip(ip) => pol.classify(ip).snat,
                _ => false,
            };
            Ok(match r {
                Ranking::Rows(x) => Ranking::Rows(Arc::new(x.retain(|_, row| public(row)))),
                Ranking::View(v) => Ranking::View(Arc::new(v.retain(|_, row| public(row)))),
            })
        },
    );
    method(
        "sum_by",
        &["ranking: Ranking", "fields: Array", "Ranking"],
        "The rows added up by some of the ranking's fields, ranked again by the same metric: e.g. a\nranking by [\"netns\", \"daddr\", \"dport\"] summed by [\"netns\"] gives each namespace's total.",
    )
    .set_into_module(
        &mut m,
        |r: &mut Ranking, fields: Array| -> Result<Ranking, Box<EvalAltResult>> {
            let fields = fields_of(&fields)?;
            match r {
                Ranking::Rows(x) => x.regroup(&fields),
                Ranking::View(v) => v.regroup(&fields),
            }
            .map(|g| Ranking::Rows(Arc::new(g)))
            .or_else(|e| usage(e.to_string()))
        },
    );
    method(
        "to_text",
        &["ranking: Ranking", "String"],
        "The ranking as the article's pipeline prints it: `Count SADDR NETNS` and aligned rows.",
    )
    .set_into_module(&mut m, |r: &mut Ranking| r.core().to_text());
    method("to_string", &["ranking: Ranking", "String"], "Same as to_text.")
        .set_into_module(&mut m, |r: &mut Ranking| r.core().to_text());

    // ---- RankRow
    getter(
        &mut m,
        "count",
        "i64",
        "The value of the ranking's metric for this row.",
        |r: &mut RankRow| r.row.counts.get(r.metric) as i64,
    );
    getter(
        &mut m,
        "counts",
        "Map",
        "All counts for this key.",
        |r: &mut RankRow| counts_map(&r.row.counts),
    );
    getter(
        &mut m,
        "key",
        "Map",
        "The key as a map: field name -> value.",
        |r: &mut RankRow| {
            let mut map = Map::new();
            for (f, v) in r.fields.iter().zip(&r.row.key) {
                map.insert(f.name().into(), value_to_dyn(v));
            }
            Dynamic::from_map(map)
        },
    );
    for f in Field::ALL {
        getter(
            &mut m,
            f.name(),
            "?",
            &format!(
                "The row's `{}` (unit `()` when the ranking does not group by it).",
                f.name()
            ),
            move |r: &mut RankRow| r.get(f),
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use snat_core::model::{Clock, EventKind, Family, TcpEvent};
    use std::time::Duration;

    fn trace() -> Trace {
        let mut s = TraceSummary::new("mem", TraceSummary::default_groupings());
        for (i, d) in ["203.0.113.5", "203.0.113.5", "10.0.0.7"].iter().enumerate() {
            s.add(&TcpEvent {
                time_ns: Some(i as u64),
                clock: Clock::Relative,
                kind: EventKind::Connect,
                direction: snat_core::model::Direction::Outbound,
                pid: 10,
                comm: "curl".into(),
                family: Family::Ipv4,
                saddr: "10.244.0.5".parse().unwrap(),
                daddr: d.parse().unwrap(),
                sport: 40000 + i as u16,
                dport: 443,
                netns: Some(4026532785),
                cgroup_id: None,
                prev_state: None,
                duration_ns: None,
                error: None,
            })
            .unwrap();
        }
        Trace::new(s)
    }

    fn engine() -> rhai::Engine {
        let mut e = rhai::Engine::new();
        e.register_global_module(create_module(&Ctx::new(Default::default(), Default::default())).into());
        e
    }

    #[rstest::rstest]
    #[case::some("t.rank([\"netns\", \"daddr\", \"dport\"]).top(1).len", Ok(1))]
    #[case::none("t.rank([\"netns\", \"daddr\", \"dport\"]).top(0).len", Ok(0))]
    #[case::more_than_there_are("t.rank([\"netns\", \"daddr\", \"dport\"]).top(50).len", Ok(2))]
    #[case::negative(
        "t.rank([\"netns\", \"daddr\", \"dport\"]).top(-1).len",
        Err("top(-1): the number of rows cannot be negative")
    )]
    fn top_takes_rows_and_refuses_a_negative_count(#[case] script: &str, #[case] want: Result<i64, &str>) {
        let e = engine();
        let mut scope = rhai::Scope::new();
        scope.push("t", trace());
        match (e.eval_with_scope::<i64>(&mut scope, script), want) {
            (Ok(n), Ok(w)) => assert_eq!(n, w),
            (Err(err), Err(w)) => assert!(err.to_string().contains(w), "{err}"),
            (got, want) => panic!("got {got:?}, want {want:?}"),
        }
    }

    #[test]
    fn rank_rows_read_as_properties() {
        let e = engine();
        let mut scope = rhai::Scope::new();
        scope.push("t", trace());
        let out: String = e
            .eval_with_scope(
                &mut scope,
                r#"let r = t.rank(["netns", "daddr", "dport"]); let x = r.rows[0]; `${r.len} ${x.count} ${x.daddr} ${x.dport} ${x.netns} ${x.pid}`"#,
            )
            .unwrap();
        assert_eq!(out, "2 2 203.0.113.5 443 4026532785 ");
        let n: i64 = e
            .eval_with_scope(&mut scope, "t.events + t.connects + t.lost_events")
            .unwrap();
        assert_eq!(n, 6);
    }

    /// `for r in ranking` goes through every row, also when `.rows` would pass the
    /// sandbox's array limit.
    #[test]
    fn a_ranking_iterates_its_rows_past_the_array_limit() {
        let mut e = engine();
        e.set_max_array_size(1);
        let mut scope = rhai::Scope::new();
        scope.push("t", trace());
        scope.push(
            "by_dest",
            vec![Dynamic::from("netns"), Dynamic::from("daddr"), Dynamic::from("dport")],
        );
        let out: String = e
            .eval_with_scope(
                &mut scope,
                r#"let s = ""; for r in t.rank(by_dest) { s += `${r.daddr}=${r.count} `; } s"#,
            )
            .unwrap();
        assert_eq!(out, "203.0.113.5=2 10.0.0.7=1 ");
        let err = e
            .eval_with_scope::<i64>(&mut scope, "t.rank(by_dest).rows.len()")
            .unwrap_err();
        assert!(err.to_string().contains("too large"), "{err}");
    }

    #[test]
    fn snat_only_and_sum_by_work_in_rust() {
        let mut e = engine();
        e.register_static_module(
            "policy",
            crate::modules::policy::create_module(&Ctx::new(Default::default(), Default::default())).into(),
        );
        let mut scope = rhai::Scope::new();
        scope.push("t", trace());
        let out: String = e
            .eval_with_scope(
                &mut scope,
                r#"let r = t.rank(["netns", "daddr", "dport"], "connects");
                   let p = r.snat_only(policy::azure()).sum_by(["netns"]);
                   `${r.len} ${r.sum_by(["netns"]).rows[0].count} ${p.len} ${p.rows[0].netns} ${p.rows[0].count}`"#,
            )
            .unwrap();
        // 203.0.113.5 twice (public), 10.0.0.7 once (private).
        assert_eq!(out, "2 3 1 4026532785 2");
        let err = e
            .eval_with_scope::<Dynamic>(&mut scope, r#"t.rank(["saddr", "netns"]).snat_only(policy::azure())"#)
            .unwrap_err();
        assert!(err.to_string().contains("must group by daddr"), "{err}");
        let err = e
            .eval_with_scope::<Dynamic>(&mut scope, r#"t.rank(["saddr", "netns"]).sum_by(["dport"])"#)
            .unwrap_err();
        assert!(err.to_string().contains("cannot sum a ranking by dport"), "{err}");
    }

    fn timed_trace() -> Trace {
        use snat_core::timeline::TimelineBuilder;
        let mut b = TimelineBuilder::new(Duration::from_secs(6), Duration::from_secs(1)).unwrap();
        for (ms, ns, kind) in [
            (100, 11, EventKind::Connect),
            (300, 11, EventKind::FailedConnect),
            (4200, 11, EventKind::Connect),
            (4300, 22, EventKind::Connect),
            (5900, 33, EventKind::Close),
        ] {
            b.add_event(Duration::from_millis(ms), ns, kind);
        }
        Trace::with_timeline(
            TraceSummary::new("mem", TraceSummary::default_groupings()),
            Some(b.finish(None)),
        )
    }

    #[test]
    fn timeline_reads_from_rhai() {
        let e = engine();
        let mut scope = rhai::Scope::new();
        scope.push("t", timed_trace());
        let out: String = e
            .eval_with_scope(
                &mut scope,
                r#"let tl = t.timeline();
                   let s = tl.series[0];
                   let g = tl.grouped(#{"11": "shop/web", "22": "shop/web"}, 1, "attempts");
                   `${t.has_timeline} ${tl.bucket_secs} ${tl.starts} ${s.netns} ${s.connects} ${s.failed_connects} ${s.open} | ${g.len()} ${g[0].name} ${g[0].values} ${g[0].peak} ${g[0].peak_at} ${g[0].points[4]} ${g[0].netns} | ${tl.to_map().series.len()}`"#,
            )
            .unwrap();
        assert_eq!(
            out,
            "true 1.0 [0.0, 1.0, 2.0, 3.0, 4.0, 5.0] 11 [1, 0, 0, 0, 1, 0] [1, 0, 0, 0, 0, 0]  | 1 shop/web [2, 0, 0, 0, 2, 0] 2 0.0 [4.0, 2] [11, 22] | 3"
        );
    }

    #[test]
    fn timeline_mistakes_are_script_errors() {
        let e = engine();
        let mut scope = rhai::Scope::new();
        scope.push("t", timed_trace());
        scope.push("plain", trace());
        for (script, needle) in [
            ("plain.timeline()", "has no timeline"),
            (r#"t.timeline().grouped(#{}, 3, "bogus")"#, "unknown timeline metric"),
            (
                r#"t.timeline().grouped(#{pod: "x"}, 3, "open")"#,
                "keyed by network namespace inode",
            ),
            (r#"t.timeline().grouped(#{}, -1, "open")"#, "top must be 0 or more"),
        ] {
            let err = e.eval_with_scope::<Dynamic>(&mut scope, script).unwrap_err();
            assert!(err.to_string().contains(needle), "{script}: {err}");
        }
        let has: bool = e.eval_with_scope(&mut scope, "plain.has_timeline").unwrap();
        assert!(!has);
    }

    #[test]
    fn bad_field_is_a_script_error() {
        let e = engine();
        let mut scope = rhai::Scope::new();
        scope.push("t", trace());
        let err = e
            .eval_with_scope::<Dynamic>(&mut scope, r#"t.rank(["bogus"])"#)
            .unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");
        let err = e
            .eval_with_scope::<Dynamic>(&mut scope, r#"t.rank(["pid"])"#)
            .unwrap_err();
        assert!(err.to_string().contains("did not keep"), "{err}");
    }
}
