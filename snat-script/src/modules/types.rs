//! Rhai bindings for the types every trace source returns: `Trace` (a consumed log or
//! live window), `Ranking` and `RankRow`. A tcptracer log and a live trace give the same
//! `Trace`, so one playbook ranks either.

use std::sync::Arc;

use rhai::{Array, Dynamic, EvalAltResult, ImmutableString, Map, Module};
use snat_core::aggregate::{Counts, Field, Metric, RankRow as CoreRow, Ranking as CoreRanking, TraceSummary, Value};

use super::{getter, method, to_dyn, usage};
use crate::ctx::{Ctx, StageFailure};

/// A consumed trace: totals, loss accounting and the groupings it kept.
#[derive(Debug, Clone)]
pub struct Trace(pub Arc<TraceSummary>);

/// A ranking of keys by a metric.
#[derive(Debug, Clone)]
pub struct Ranking(pub Arc<CoreRanking>);

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
    let names: Vec<String> = arr.iter().map(|d| d.to_string()).collect();
    Field::parse_list(&names).map_err(|e| e.to_string().into())
}

/// Parse the `by` option (an array of arrays of field names) of trace sources.
pub fn groupings_of(by: &Dynamic) -> Result<Vec<Vec<Field>>, Box<EvalAltResult>> {
    let Some(outer) = by.clone().try_cast::<Array>() else {
        return usage("option `by` must be an array of field-name arrays, e.g. [[\"saddr\", \"netns\"]]");
    };
    if outer.is_empty() {
        return usage("option `by` needs at least one grouping");
    }
    outer
        .iter()
        .map(|g| match g.clone().try_cast::<Array>() {
            Some(a) => fields_of(&a),
            None => usage(format!(
                "each grouping in `by` must be an array of field names, got {g}"
            )),
        })
        .collect()
}

fn metric_of(s: &str) -> Result<Metric, Box<EvalAltResult>> {
    s.parse::<Metric>().map_err(|e| e.to_string().into())
}

impl Ranking {
    fn rows(&self) -> Array {
        let fields = Arc::new(self.0.fields.clone());
        self.0
            .rows
            .iter()
            .map(|r| {
                Dynamic::from(RankRow {
                    fields: fields.clone(),
                    metric: self.0.metric,
                    row: r.clone(),
                })
            })
            .collect()
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
    m.set_custom_type::<RankRow>("RankRow");

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
        t.0.rank(&f, Metric::Events).map(|r| Ranking(Arc::new(r))).map_err(|e| e.to_string().into())
    });
    method(
        "rank",
        &["trace: Trace", "fields: Array", "metric: &str", "Ranking"],
        "Rank by a metric: events, connects, accepts, closes, failed_connects or open.",
    )
    .set_into_module(
        &mut m,
        |t: &mut Trace, fields: Array, metric: &str| -> Result<Ranking, Box<EvalAltResult>> {
            let f = fields_of(&fields)?;
            t.0.rank(&f, metric_of(metric)?)
                .map(|r| Ranking(Arc::new(r)))
                .map_err(|e| e.to_string().into())
        },
    );

    // ---- Ranking
    getter(
        &mut m,
        "rows",
        "Array",
        "The rows (RankRow), highest first.",
        |r: &mut Ranking| r.rows(),
    );
    getter(
        &mut m,
        "fields",
        "Array",
        "The grouping's field names.",
        |r: &mut Ranking| r.0.fields.iter().map(|f| Dynamic::from(f.name())).collect::<Array>(),
    );
    getter(
        &mut m,
        "metric",
        "String",
        "What the rows are ordered by.",
        |r: &mut Ranking| to_dyn(&r.0.metric).unwrap_or(Dynamic::UNIT),
    );
    getter(&mut m, "len", "i64", "Number of rows.", |r: &mut Ranking| {
        r.0.rows.len() as i64
    });
    method("top", &["ranking: Ranking", "n: i64", "Ranking"], "The first n rows.")
        .set_into_module(&mut m, |r: &mut Ranking, n: i64| {
            Ranking(Arc::new(r.0.top(usize::try_from(n).unwrap_or(0))))
        });
    method(
        "by",
        &["ranking: Ranking", "metric: &str", "Ranking"],
        "The same rows ordered by another metric.",
    )
    .set_into_module(
        &mut m,
        |r: &mut Ranking, metric: &str| -> Result<Ranking, Box<EvalAltResult>> {
            Ok(Ranking(Arc::new(r.0.by(metric_of(metric)?))))
        },
    );
    method(
        "to_text",
        &["ranking: Ranking", "String"],
        "The ranking as the article's pipeline prints it: `Count SADDR NETNS` and aligned rows.",
    )
    .set_into_module(&mut m, |r: &mut Ranking| r.0.to_text());
    method("to_string", &["ranking: Ranking", "String"], "Same as to_text.")
        .set_into_module(&mut m, |r: &mut Ranking| r.0.to_text());

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

    fn trace() -> Trace {
        let mut s = TraceSummary::new("mem", TraceSummary::default_groupings());
        for (i, d) in ["203.0.113.5", "203.0.113.5", "10.0.0.7"].iter().enumerate() {
            s.add(&TcpEvent {
                time_ns: Some(i as u64),
                clock: Clock::Relative,
                kind: EventKind::Connect,
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
        Trace(Arc::new(s))
    }

    fn engine() -> rhai::Engine {
        let mut e = rhai::Engine::new();
        e.register_global_module(create_module(&Ctx::new(Default::default(), Default::default())).into());
        e
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
