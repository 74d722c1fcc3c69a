//! `report::` — building the run's report: title, verdict (which decides exit 0 or 3),
//! findings, tables, text and data sections. None of these are stages: they shape output
//! and touch nothing outside the run.
//!
//! `report::load` reads an earlier run back: a saved report (`snat-run --output json`), an
//! audit record file, or `audit:SELECTOR` (`audit:prev:triage`, `audit:<run id>`) for a
//! record of the run's audit directory; see the `audit` module for selectors.

use rhai::{Array, Dynamic, EvalAltResult, Map, Module};
use serde_json::Value;
use snat_core::audit::Verdict;
use snat_core::model::Finding;

use super::types::{Ranking, value_to_dyn};
use super::{func, to_json, usage};
use crate::ctx::Ctx;
use crate::report::{Section, SectionBody};

fn verdict_of(s: &str) -> Result<Verdict, Box<EvalAltResult>> {
    match s.trim().to_ascii_lowercase().replace('-', "_").as_str() {
        "pressure_found" | "pressure" | "found" => Ok(Verdict::PressureFound),
        "clear" | "none" | "ok" => Ok(Verdict::Clear),
        other => usage(format!(
            "unknown verdict {other:?}: expected \"pressure_found\" (exit 3) or \"clear\" (exit 0)"
        )),
    }
}

fn row_cells(columns: &[String], row: &Dynamic) -> Result<Vec<Value>, Box<EvalAltResult>> {
    if let Some(a) = row.clone().try_cast::<Array>() {
        if a.len() != columns.len() {
            return usage(format!(
                "table row has {} cells but there are {} columns",
                a.len(),
                columns.len()
            ));
        }
        return Ok(a.iter().map(to_json).collect());
    }
    if let Some(map) = row.clone().try_cast::<Map>() {
        return Ok(columns
            .iter()
            .map(|c| map.get(c.as_str()).map_or(Value::Null, to_json))
            .collect());
    }
    usage(format!(
        "a table row must be an array or a map, got {}",
        row.type_name()
    ))
}

/// Check one chart series: a map with a string `name` and `points`, an array of `[x, y]`
/// number pairs.
fn chart_series(d: &Dynamic) -> Result<Value, Box<EvalAltResult>> {
    let Some(map) = d.clone().try_cast::<Map>() else {
        return usage(format!(
            "a chart series must be a map #{{name, points: [[x, y], ...]}}, got {}",
            d.type_name()
        ));
    };
    let Some(name) = map.get("name").and_then(|n| n.clone().into_string().ok()) else {
        return usage("a chart series needs a `name` string");
    };
    let Some(points) = map.get("points").and_then(|p| p.clone().try_cast::<Array>()) else {
        return usage(format!(
            "chart series {name:?} needs `points`: an array of [x, y] pairs"
        ));
    };
    for p in &points {
        let ok = p
            .clone()
            .try_cast::<Array>()
            .is_some_and(|xy| xy.len() == 2 && xy.iter().all(|v| v.is_int() || v.is_float()));
        if !ok {
            return usage(format!(
                "chart series {name:?}: point {p} is not an [x, y] pair of numbers"
            ));
        }
    }
    Ok(to_json(d))
}

/// The `report` module.
pub fn create_module(ctx: &Ctx) -> Module {
    let mut m = Module::new();
    let c = ctx.clone();
    func("title", &["title: &str", "()"], "Set the report's title.").set_into_module(&mut m, move |t: &str| {
        c.report().title = Some(t.to_string());
    });
    let c = ctx.clone();
    func(
        "verdict",
        &["verdict: &str", "summary: &str", "()"],
        "Set the verdict: \"pressure_found\" (snat-run exits 3) or \"clear\" (exits 0), with a one-line summary.",
    )
    .set_into_module(
        &mut m,
        move |v: &str, summary: &str| -> Result<(), Box<EvalAltResult>> {
            let v = verdict_of(v)?;
            let mut r = c.report();
            r.verdict = Some(v);
            r.summary = Some(summary.to_string());
            Ok(())
        },
    );
    let c = ctx.clone();
    func(
        "fail",
        &["message: &str", "()"],
        "End the run as a run-time failure (exit 1, outcome stage_failed) with this message, for a\nplaybook that cannot conclude (e.g. nothing could be read): neither \"clear\" nor \"pressure found\"\nwould be true. The report so far is kept and printed; the audit record holds the message.",
    )
    .set_into_module(&mut m, move |message: &str| -> Result<(), Box<EvalAltResult>> {
        #[derive(Debug)]
        struct Inconclusive(String);
        impl std::fmt::Display for Inconclusive {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl std::error::Error for Inconclusive {}
        c.stage("report::fail", serde_json::json!({ "message": message }), || {
            Err::<((), Option<u64>), _>(crate::ctx::StageError::failed(Inconclusive(message.to_string())))
        })
    });
    let c = ctx.clone();
    func(
        "finding",
        &["finding: Map", "()"],
        "Add a finding: #{kind, severity: \"info\"|\"warning\"|\"critical\", summary, pod?, process?, netns?,\ndestination?: \"ip:port\", node?, evidence?: #{...}}.",
    )
    .set_into_module(&mut m, move |f: Map| -> Result<(), Box<EvalAltResult>> {
        let json = to_json(&Dynamic::from_map(f));
        if let Some(d) = json.get("destination").and_then(|d| d.as_str())
            && d.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(format!(
                "bad finding: destination {d:?} must be \"ip:port\" (e.g. \"203.0.113.10:443\", \"[2001:db8::1]:443\")"
            )
            .into());
        }
        let finding: Finding = serde_json::from_value(json).map_err(|e| format!("bad finding: {e}"))?;
        let arg = super::to_dyn(&finding)?;
        c.report().findings.push(finding);
        c.fire_hook("on_finding", arg);
        Ok(())
    });
    let c = ctx.clone();
    func(
        "table",
        &["title: &str", "columns: Array", "rows: Array", "()"],
        "Add a table. Each row is an array (one cell per column) or a map (cells by column name).",
    )
    .set_into_module(
        &mut m,
        move |title: &str, columns: Array, rows: Array| -> Result<(), Box<EvalAltResult>> {
            let columns: Vec<String> = columns.iter().map(|d| d.to_string()).collect();
            let rows = rows
                .iter()
                .map(|r| row_cells(&columns, r))
                .collect::<Result<Vec<_>, _>>()?;
            c.report().sections.push(Section {
                title: title.into(),
                body: SectionBody::Table { columns, rows },
            });
            Ok(())
        },
    );
    let c = ctx.clone();
    func(
        "table",
        &["title: &str", "ranking: Ranking", "()"],
        "Add a ranking as a table: the metric's count, then one column per grouping field.",
    )
    .set_into_module(&mut m, move |title: &str, r: Ranking| {
        let r = r.core();
        let mut columns = vec!["count".to_string()];
        columns.extend(r.fields.iter().map(|f| f.name().to_string()));
        let rows = r
            .rows
            .iter()
            .map(|row| {
                let mut cells = vec![Value::from(row.counts.get(r.metric))];
                cells.extend(row.key.iter().map(|v| to_json(&value_to_dyn(v))));
                cells
            })
            .collect();
        c.report().sections.push(Section {
            title: title.into(),
            body: SectionBody::Table { columns, rows },
        });
    });
    let c = ctx.clone();
    func(
        "chart",
        &["title: &str", "x_label: &str", "y_label: &str", "series: Array", "()"],
        "Add a line chart: series is [#{name, points: [[x, y], ...]}, ...] (other keys are kept in the JSON\nreport). The HTML report draws it as inline SVG with a legend; table output prints each series'\ntotal (its own `total` when it has a number there, else the sum of its points), peak and where the\npeak is. timeline.grouped(...) returns series in this shape, with a total that fits the metric.",
    )
    .set_into_module(
        &mut m,
        move |title: &str, x_label: &str, y_label: &str, series: Array| -> Result<(), Box<EvalAltResult>> {
            let series = series.iter().map(chart_series).collect::<Result<Vec<_>, _>>()?;
            c.report().sections.push(Section {
                title: title.into(),
                body: SectionBody::Chart {
                    x_label: x_label.into(),
                    y_label: y_label.into(),
                    series,
                },
            });
            Ok(())
        },
    );
    let c = ctx.clone();
    func("text", &["title: &str", "text: &str", "()"], "Add a text section.").set_into_module(
        &mut m,
        move |title: &str, text: &str| {
            c.report().sections.push(Section {
                title: title.into(),
                body: SectionBody::Text { text: text.into() },
            });
        },
    );
    let c = ctx.clone();
    func(
        "data",
        &["title: &str", "data: ?", "()"],
        "Add structured data (any value) as a section.",
    )
    .set_into_module(&mut m, move |title: &str, data: Dynamic| {
        c.report().sections.push(Section {
            title: title.into(),
            body: SectionBody::Data { data: to_json(&data) },
        });
    });
    let c = ctx.clone();
    func(
        "load",
        &["path: &str", "Map"],
        "Read a saved report (the JSON of `snat-run --output json`) or an audit record into a map with `kind`:\n\"report\" or \"audit_record\", `file` (the file read), `findings` and `fleet` (for a run on cluster nodes: #{run_id, record,\nnodes: [#{node, hostname, outcome, exit_code, verdict}], skipped}, from the report or the fleet record next to the\naudit record; () for a run on one host). `audit:SELECTOR` picks a record of the run's\naudit directory instead of a path: audit:last, audit:prev, audit:last~2, audit:<run id>, each optionally\nfollowed by :PLAYBOOK (audit:prev:triage); see the audit:: namespace. A stage: a missing or malformed file,\nno matching record, or a record without findings (run did not complete, written by an older snat) fails saying which.",
    )
    .set_into_module(&mut m, move |path: &str| -> Result<Map, Box<EvalAltResult>> {
        c.stage("report::load", serde_json::json!({ "path": path }), || {
            let v = match path.strip_prefix("audit:") {
                Some(selector) => load_saved(&super::audit::resolve(&c, selector)?.path)?,
                None => load_saved(std::path::Path::new(path))?,
            };
            let n = v["findings"].as_array().map(|a| a.len() as u64);
            let d = rhai::serde::to_dynamic(&v).map_err(|e| crate::ctx::StageError::Usage(e.to_string()))?;
            Ok((d.cast::<Map>(), n))
        })
    });
    m
}

/// Read a saved report or audit record, checking its shape (an audit record must hold the
/// findings of a completed run); adds `kind` and `file`.
fn load_saved(path: &std::path::Path) -> Result<Value, snat_core::Error> {
    let bad = |reason: String| snat_core::Error::SavedReport {
        path: path.to_path_buf(),
        reason,
    };
    let bytes = std::fs::read(path).map_err(|source| snat_core::Error::Io {
        what: "cannot read saved report",
        path: path.to_path_buf(),
        source,
    })?;
    let mut v: Value = serde_json::from_slice(&bytes).map_err(|e| bad(format!("not JSON: {e}")))?;
    let Some(obj) = v.as_object_mut() else {
        return Err(bad("the document is not a JSON object".into()));
    };
    let kind = if obj.get("schema").and_then(Value::as_str) == Some("snat.report/v1") {
        for key in ["findings", "sections"] {
            if !obj.get(key).is_some_and(Value::is_array) {
                return Err(bad(format!("`{key}` is missing or not an array")));
            }
        }
        // A failed or interrupted run's findings are what it had found when it stopped:
        // comparing them would call a fix a success. Audit records are checked the same way
        // (`findings_problem`).
        if let Some(e) = obj.get("error").filter(|e| !e.is_null()) {
            let kind = e["kind"].as_str().unwrap_or("error");
            let message = e["message"].as_str().unwrap_or("");
            return Err(bad(format!(
                "the run did not complete ({kind}: {message}), so its findings are not a whole run's: save the report of a completed run"
            )));
        }
        "report"
    } else if obj.contains_key("schema_version") && obj.contains_key("run_id") && obj.contains_key("stages") {
        let record = snat_core::audit::read_record(path)?;
        if let Some(reason) = record.findings_problem() {
            return Err(snat_core::Error::AuditNoFindings {
                path: path.to_path_buf(),
                run_id: record.run_id,
                reason,
            });
        }
        if let Some(fleet) = fleet_of_record(path, &record) {
            obj.insert("fleet".into(), fleet);
        }
        "audit_record"
    } else if let Some(s) = obj.get("schema") {
        return Err(bad(format!("unknown schema {s}")));
    } else {
        return Err(bad(
            "neither `schema: snat.report/v1` nor an audit record's `schema_version` and `run_id`".into(),
        ));
    };
    obj.insert("kind".into(), Value::from(kind));
    obj.insert("file".into(), Value::from(path.display().to_string()));
    Ok(v)
}

/// For the audit record of a fleet run (its stage `fleet::run`) read from `path`: the same
/// `fleet` object its report has, from the fleet record next to it
/// (`fleet/<run id>/fleet-<run id>.json` in the record's directory), so that a playbook tells
/// a fleet run's record from a run on one host as it does for reports. When that file is
/// missing or unreadable (a record copied alone), `nodes` is null and `problem` says why.
fn fleet_of_record(path: &std::path::Path, record: &snat_core::audit::AuditRecord) -> Option<Value> {
    if !record.stages.iter().any(|s| s.name == "fleet::run") {
        return None;
    }
    let dir = path.parent().unwrap_or(std::path::Path::new("."));
    let file = snat_core::k8s::fleet::record_path(dir, &record.run_id);
    let read = std::fs::read(&file)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice::<snat_core::k8s::fleet::FleetRecord>(&b).map_err(|e| e.to_string()));
    Some(match read {
        Ok(fleet) => crate::fleet::fleet_summary(&fleet, &file),
        Err(e) => serde_json::json!({
            "run_id": record.run_id,
            "record": file.display().to_string(),
            "nodes": null,
            "skipped": [],
            "problem": format!("its fleet record {} cannot be read: {e}", file.display()),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(script: &str) -> (Ctx, Result<Dynamic, Box<EvalAltResult>>) {
        let ctx = Ctx::new(Default::default(), Default::default());
        let mut e = rhai::Engine::new();
        e.register_static_module("report", create_module(&ctx).into());
        let r = e.eval::<Dynamic>(script);
        (ctx, r)
    }

    #[test]
    fn builds_report() {
        let (ctx, r) = run(r#"
            report::title("T");
            report::table("t", ["a", "b"], [[1, "x"], #{b: "y"}]);
            report::finding(#{kind: "snat_pressure", severity: "critical", summary: "s", netns: 5, destination: "203.0.113.5:443", evidence: #{flows: 900}});
            report::verdict("pressure_found", "one pod");
        "#);
        let _ = r.unwrap();
        let rep = ctx.report();
        assert_eq!(rep.verdict, Some(Verdict::PressureFound));
        assert_eq!(rep.findings[0].destination, Some("203.0.113.5:443".parse().unwrap()));
        let (_, r) =
            run(r#"report::finding(#{kind: "k", severity: "info", summary: "s", destination: "203.0.113.10"})"#);
        let msg = r.unwrap_err().to_string();
        assert!(msg.contains(r#"destination "203.0.113.10" must be "ip:port""#), "{msg}");
        assert_eq!(rep.findings[0].evidence["flows"], 900);
        match &rep.sections[0].body {
            SectionBody::Table { rows, .. } => assert_eq!(rows[1], vec![Value::Null, Value::from("y")]),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chart_keeps_series_and_rejects_bad_points() {
        let (ctx, r) = run(r#"
            report::chart("c", "seconds", "connects", [#{name: "a", points: [[0.0, 1], [1.0, 3]], total: 4}]);
        "#);
        let _ = r.unwrap();
        match &ctx.report().sections[0].body {
            SectionBody::Chart { series, x_label, .. } => {
                assert_eq!(x_label, "seconds");
                assert_eq!(series[0]["points"][1][1], 3);
                assert_eq!(series[0]["total"], 4);
            }
            other => panic!("{other:?}"),
        }
        for (script, needle) in [
            (r#"report::chart("c", "x", "y", [1])"#, "must be a map"),
            (r#"report::chart("c", "x", "y", [#{points: []}])"#, "needs a `name`"),
            (r#"report::chart("c", "x", "y", [#{name: "a"}])"#, "needs `points`"),
            (
                r#"report::chart("c", "x", "y", [#{name: "a", points: [[1, "z"]]}])"#,
                "not an [x, y] pair",
            ),
        ] {
            let e = run(script).1.unwrap_err().to_string();
            assert!(e.contains(needle), "{script}: {e}");
        }
    }

    #[test]
    fn rejects_bad_input() {
        assert!(
            run(r#"report::verdict("maybe", "")"#)
                .1
                .unwrap_err()
                .to_string()
                .contains("unknown verdict")
        );
        assert!(
            run(r#"report::finding(#{kind: "k", severity: "bad", summary: ""})"#)
                .1
                .is_err()
        );
        assert!(
            run(r#"report::table("t", ["a"], [[1, 2]])"#)
                .1
                .unwrap_err()
                .to_string()
                .contains("2 cells")
        );
    }

    /// The message of a failed stage raised in the script.
    fn stage_message(e: &EvalAltResult) -> String {
        match e.unwrap_inner() {
            EvalAltResult::ErrorRuntime(d, _) => d
                .clone()
                .try_cast::<crate::ctx::StageFailure>()
                .map_or_else(|| "not a stage failure".into(), |f| f.to_string()),
            other => other.to_string(),
        }
    }

    #[rstest::rstest]
    #[case::report(
        r#"{"schema":"snat.report/v1","findings":[{"kind":"k"}],"sections":[],"verdict":"clear"}"#,
        Ok("report")
    )]
    #[case::not_a_record(
        r#"{"schema_version":2,"run_id":"r","stages":[],"verdict":null}"#,
        Err("not a valid audit record")
    )]
    #[case::failed_run(
        r#"{"schema":"snat.report/v1","findings":[],"sections":[],"exit_code":1,"error":{"kind":"stage_failed","message":"boom"}}"#,
        Err("the run did not complete (stage_failed: boom)")
    )]
    #[case::completed_run_with_null_error(
        r#"{"schema":"snat.report/v1","findings":[],"sections":[],"exit_code":0,"error":null}"#,
        Ok("report")
    )]
    #[case::not_json("{not json", Err("not JSON"))]
    #[case::array("[1,2]", Err("not a JSON object"))]
    #[case::other_schema(r#"{"schema":"x/v9"}"#, Err("unknown schema \"x/v9\""))]
    #[case::no_findings(r#"{"schema":"snat.report/v1","sections":[]}"#, Err("`findings` is missing"))]
    #[case::random_object(r#"{"a":1}"#, Err("neither"))]
    fn load_reads_reports_and_records(#[case] text: &str, #[case] want: Result<&str, &str>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("saved.json");
        std::fs::write(&path, text).unwrap();
        let (ctx, r) = run(&format!("report::load({:?}).kind", path.display().to_string()));
        match want {
            Ok(kind) => assert_eq!(r.unwrap().into_string().unwrap(), kind),
            Err(msg) => {
                let e = stage_message(&r.unwrap_err());
                assert!(e.contains(msg) && e.contains("saved.json"), "{e}");
            }
        }
        assert_eq!(ctx.stages()[0].name, "report::load");
    }

    #[test]
    fn load_names_a_missing_file() {
        let e = stage_message(&run(r#"report::load("/nonexistent/snat-report.json")"#).1.unwrap_err());
        assert!(
            e.contains("cannot read saved report /nonexistent/snat-report.json"),
            "{e}"
        );
    }
}
