//! The playbook's report: what `snat-run` prints when the playbook ends, as a human table
//! (`--output table`) or as exactly one JSON document on stdout (`--output json`).
//!
//! JSON document, field by field:
//!
//! | field | type | meaning |
//! | --- | --- | --- |
//! | `schema` | string | `"snat.report/v1"` |
//! | `playbook` | string | playbook path as given |
//! | `run_id` | string | the run's id, also in the audit record |
//! | `audit_record` | string or null | path of the run's audit record |
//! | `host` | object or null | where the run happened: `{hostname}`, the host name its audit record holds as `host.hostname` (`uname -n`); null when no run could be recorded. Reports saved before this field have none: a playbook comparing runs (verify-fix.rhai) then cannot tell which host an earlier run was on. In a fleet report (`fleet` not null) it is the machine that launched the node Jobs, not where the findings come from: each finding's `node.name` says that |
//! | `fleet` | object or null | null for a run on this host; for a run on cluster nodes (`--on-node`, `--all-nodes`), what marks the report as a fleet report: `{run_id, record, nodes, skipped}`. `run_id` is the fleet run's id (the report's `run_id`), `record` the path of its fleet record (`schemas/fleet-record.schema.json`), `nodes` one `{node, hostname, outcome, exit_code, verdict}` per node the run covered (as in the fleet record: `outcome` is `completed`, `failed` or `cancelled`; `hostname` the host name the node's run reported, or null), `skipped` the `{node, unfit, detail}` nodes `--all-nodes` left out. Every finding of a fleet report names the node it was found on in `node.name`. Reports saved before this field have none |
//! | `title` | string or null | set by `report::title` |
//! | `verdict` | `"pressure_found"`, `"clear"` or null | set by `report::verdict` |
//! | `summary` | string or null | one line, set with the verdict |
//! | `findings` | array | [`snat_core::model::Finding`] objects, in the order added |
//! | `sections` | array | `{title, kind: "table", columns, rows}`, `{title, kind: "text", text}`, `{title, kind: "data", data}` or `{title, kind: "chart", x_label, y_label, series: [{name, points: [[x, y]...]}]}` |
//! | `exit_code` | integer | what the process exits with |
//! | `error` | object, on failure only | `{kind, message}`: `kind` is `playbook_error`, `usage_error`, `stage_failed`, `audit_unwritable` or `interrupted` ([`crate::Error::kind`]); `message` is the error with its causes. With `audit_unwritable` the playbook did not run: `audit_record` is the record of that refusal in a fallback directory (named in `message`), or, when none could be written, null with `run_id` ([`refused_json`]) |
//!
//! Every value of a secret `--param` is replaced by `<redacted>` wherever it occurs in the
//! document, as in the audit record ([`Report::redacted`], and the error's message).

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use snat_core::audit::{SecretValues, Verdict};
use snat_core::model::Finding;

/// One section of a report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Section {
    /// Heading.
    pub title: String,
    /// Content.
    #[serde(flatten)]
    pub body: SectionBody,
}

/// The content of a section.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SectionBody {
    /// A table.
    Table {
        /// Column headings.
        columns: Vec<String>,
        /// Rows, one value per column.
        rows: Vec<Vec<Value>>,
    },
    /// Free text.
    Text {
        /// The text.
        text: String,
    },
    /// Structured data (printed as indented JSON in table output).
    Data {
        /// The data.
        data: Value,
    },
    /// Lines over time (a chart in the HTML report, a summary per series in tables).
    Chart {
        /// What the x axis measures, e.g. "seconds into the trace".
        x_label: String,
        /// What the y axis measures, e.g. "open connections".
        y_label: String,
        /// `[{name, points: [[x, y], ...]}, ...]`.
        series: Vec<Value>,
    },
}

/// What a playbook reports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Title.
    pub title: Option<String>,
    /// Verdict.
    pub verdict: Option<Verdict>,
    /// One-line summary.
    pub summary: Option<String>,
    /// Findings, in the order added.
    pub findings: Vec<Finding>,
    /// Sections, in the order added.
    pub sections: Vec<Section>,
    /// For a run on cluster nodes: the fleet run's summary (the JSON document's `fleet`,
    /// see [`crate::fleet`]); `None` for a run on this host.
    pub fleet: Option<Value>,
}

/// Facts about the run that the report carries besides what the playbook added.
#[derive(Debug, Clone)]
pub struct RunFacts<'a> {
    /// Playbook path.
    pub playbook: &'a str,
    /// Run id.
    pub run_id: &'a str,
    /// Audit record path.
    pub audit_record: Option<&'a str>,
    /// Host name of the host the run happened on (the audit record's `host.hostname`).
    pub host: Option<&'a str>,
    /// Exit code.
    pub exit_code: u8,
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Align `rows` under `columns`, two spaces between columns.
pub fn render_table(columns: &[String], rows: &[Vec<Value>]) -> String {
    let text: Vec<Vec<String>> = rows.iter().map(|r| r.iter().map(cell).collect()).collect();
    let widths: Vec<usize> = (0..columns.len())
        .map(|i| {
            text.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .chain(std::iter::once(columns[i].chars().count()))
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            let w = widths.get(i).copied().unwrap_or(0);
            s.push_str(&format!("{c:<w$}  "));
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(columns);
    for r in &text {
        out.push_str(&line(r));
    }
    out
}

/// One chart series as a table row: name, number of points, total, peak, the x of the
/// first peak, and the last value. The total is the series' own numeric `total` when it
/// has one (`timeline.grouped` gives one that fits its metric: for `open`, a level per
/// bucket, the last level, which a sum of the points would not be), else the sum of the
/// points.
fn chart_summary(s: &Value) -> Vec<Value> {
    let pts: Vec<(f64, f64)> = s["points"]
        .as_array()
        .map(|p| {
            p.iter()
                .filter_map(|pt| Some((pt.get(0)?.as_f64()?, pt.get(1)?.as_f64()?)))
                .collect()
        })
        .unwrap_or_default();
    let num = |x: f64| {
        if x.fract() == 0.0 && x.abs() < 9e15 {
            json!(x as i64)
        } else {
            json!((x * 10.0).round() / 10.0)
        }
    };
    let peak = pts.iter().copied().fold(None, |m: Option<(f64, f64)>, p| match m {
        Some(b) if b.1 >= p.1 => Some(b),
        _ => Some(p),
    });
    vec![
        s["name"].clone(),
        Value::from(pts.len()),
        s.get("total")
            .filter(|t| t.is_number())
            .cloned()
            .unwrap_or_else(|| num(pts.iter().map(|p| p.1).sum())),
        peak.map_or(Value::Null, |p| num(p.1)),
        peak.map_or(Value::Null, |p| num(p.0)),
        pts.last().map_or(Value::Null, |p| num(p.1)),
    ]
}

/// A finding with [`SecretValues::redact`] applied to each of its strings; a typed part
/// that would no longer parse once redacted (an address) is left out.
fn redact_finding(f: &Finding, secrets: &SecretValues) -> Finding {
    fn part<T: Serialize + DeserializeOwned>(x: &Option<T>, secrets: &SecretValues) -> Option<T> {
        let v = serde_json::to_value(x.as_ref()?).ok()?;
        serde_json::from_value(secrets.redact_json(&v)).ok()
    }
    let evidence = match secrets.redact_json(&Value::Object(f.evidence.clone())) {
        Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    Finding {
        kind: secrets.redact(&f.kind),
        severity: f.severity,
        summary: secrets.redact(&f.summary),
        node: part(&f.node, secrets),
        pod: part(&f.pod, secrets),
        process: part(&f.process, secrets),
        netns: f.netns,
        destination: part(&f.destination, secrets),
        evidence,
    }
}

/// The JSON document of an invocation refused before a run could be recorded (an audit
/// directory that cannot be opened, a command line naming no playbook): the fields of
/// [`Report::to_json`] with no run id, no audit record and nothing reported, and `error`.
pub fn refused_json(playbook: Option<&str>, kind: &str, message: &str, exit_code: u8) -> Value {
    json!({
        "schema": "snat.report/v1",
        "playbook": playbook,
        "run_id": null,
        "audit_record": null,
        "host": null,
        "fleet": null,
        "title": null,
        "verdict": null,
        "summary": null,
        "findings": [],
        "sections": [],
        "exit_code": exit_code,
        "error": { "kind": kind, "message": message },
    })
}

impl Report {
    /// The report with every occurrence of `secrets` (the values of a run's secret
    /// parameters) replaced by `<redacted>` in every string it holds: title, summary, each
    /// finding's strings (its `evidence` at any depth), each section's title, columns,
    /// cells, text, data and chart labels and series. What `snat-run` prints and writes as
    /// HTML, so that a secret a playbook copied into its report stays out of CI logs as it
    /// stays out of the audit record. A typed part of a finding that would no longer parse
    /// once redacted (a `destination` or a node's address holding a secret value) is left
    /// out rather than shown.
    pub fn redacted(&self, secrets: &SecretValues) -> Report {
        if secrets.is_empty() {
            return self.clone();
        }
        let text = |t: &str| secrets.redact(t);
        let values = |v: &[Value]| v.iter().map(|x| secrets.redact_json(x)).collect::<Vec<_>>();
        Report {
            title: self.title.as_deref().map(text),
            verdict: self.verdict,
            summary: self.summary.as_deref().map(text),
            findings: self.findings.iter().map(|f| redact_finding(f, secrets)).collect(),
            sections: self
                .sections
                .iter()
                .map(|s| Section {
                    title: text(&s.title),
                    body: match &s.body {
                        SectionBody::Table { columns, rows } => SectionBody::Table {
                            columns: columns.iter().map(|c| text(c)).collect(),
                            rows: rows.iter().map(|r| values(r)).collect(),
                        },
                        SectionBody::Text { text: t } => SectionBody::Text { text: text(t) },
                        SectionBody::Data { data } => SectionBody::Data {
                            data: secrets.redact_json(data),
                        },
                        SectionBody::Chart {
                            x_label,
                            y_label,
                            series,
                        } => SectionBody::Chart {
                            x_label: text(x_label),
                            y_label: text(y_label),
                            series: values(series),
                        },
                    },
                })
                .collect(),
            fleet: self.fleet.as_ref().map(|f| secrets.redact_json(f)),
        }
    }

    /// The JSON document printed with `--output json`.
    pub fn to_json(&self, facts: &RunFacts<'_>) -> Value {
        json!({
            "schema": "snat.report/v1",
            "playbook": facts.playbook,
            "run_id": facts.run_id,
            "audit_record": facts.audit_record,
            "host": facts.host.map(|h| json!({ "hostname": h })),
            "fleet": self.fleet,
            "title": self.title,
            "verdict": self.verdict,
            "summary": self.summary,
            "findings": self.findings,
            "sections": self.sections,
            "exit_code": facts.exit_code,
        })
    }

    /// The human rendering printed with `--output table`.
    pub fn to_text(&self, facts: &RunFacts<'_>) -> String {
        let mut out = String::new();
        if let Some(t) = &self.title {
            out.push_str(&format!("{t}\n{}\n\n", "=".repeat(t.chars().count())));
        }
        for s in &self.sections {
            out.push_str(&format!("## {}\n", s.title));
            match &s.body {
                SectionBody::Table { columns, rows } => {
                    if rows.is_empty() {
                        out.push_str("(no rows)\n");
                    } else {
                        out.push_str(&render_table(columns, rows));
                    }
                }
                SectionBody::Text { text } => {
                    out.push_str(text);
                    if !text.ends_with('\n') {
                        out.push('\n');
                    }
                }
                SectionBody::Data { data } => {
                    out.push_str(&serde_json::to_string_pretty(data).unwrap_or_default());
                    out.push('\n');
                }
                SectionBody::Chart {
                    x_label,
                    y_label,
                    series,
                } => {
                    let rows: Vec<Vec<Value>> = series.iter().map(chart_summary).collect();
                    out.push_str(&format!(
                        "({y_label} over {x_label}; the chart is in the HTML report)\n"
                    ));
                    let cols = [
                        "series".to_string(),
                        "points".into(),
                        "total".into(),
                        format!("peak {y_label}"),
                        format!("at {x_label}"),
                        "last".into(),
                    ];
                    out.push_str(&render_table(&cols, &rows));
                }
            }
            out.push('\n');
        }
        if !self.findings.is_empty() {
            out.push_str("## Findings\n");
            for f in &self.findings {
                let sev = serde_json::to_value(f.severity)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string));
                out.push_str(&format!("- [{}] {}\n", sev.unwrap_or_default(), f.summary));
            }
            out.push('\n');
        }
        let verdict = match self.verdict {
            Some(Verdict::PressureFound) => "SNAT pressure found",
            Some(Verdict::Clear) => "clear: no SNAT pressure found",
            None => "no verdict",
        };
        out.push_str(&format!("Verdict: {verdict}"));
        if let Some(s) = &self.summary {
            out.push_str(&format!(" ({s})"));
        }
        out.push('\n');
        out.push_str(&format!("Run {} exit {}", facts.run_id, facts.exit_code));
        if let Some(a) = facts.audit_record {
            out.push_str(&format!(", audit record {a}"));
        }
        out.push('\n');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every string of the report loses the secret values; a typed part of a finding that a
    /// secret value would break (an address) is left out, the rest of the finding kept.
    #[test]
    fn redacted_replaces_secret_values_in_every_string() {
        let params = [("token", "s3cr3tvalue"), ("pin", "4430")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let secrets = SecretValues::from_params(&params);
        let finding: Finding = serde_json::from_value(json!({
            "kind": "k", "severity": "warning", "summary": "to 10.0.0.1:4430 with s3cr3tvalue",
            "destination": "10.0.0.1:4430", "node": {"name": "n-s3cr3tvalue", "ip": "10.0.0.2"},
            "netns": 4026531992u64, "evidence": {"args": ["--token", "s3cr3tvalue"], "n": 3},
        }))
        .unwrap();
        let report = Report {
            fleet: Some(json!({"nodes": [{"node": "n-s3cr3tvalue"}]})),
            title: Some("for s3cr3tvalue".into()),
            verdict: Some(Verdict::Clear),
            summary: Some("s3cr3tvalue".into()),
            findings: vec![finding],
            sections: vec![
                Section {
                    title: "t".into(),
                    body: SectionBody::Table {
                        columns: vec!["s3cr3tvalue".into()],
                        rows: vec![vec![json!("x s3cr3tvalue"), json!(4430)]],
                    },
                },
                Section {
                    title: "d".into(),
                    body: SectionBody::Data {
                        data: json!({"nested": [{"v": "s3cr3tvalue"}]}),
                    },
                },
            ],
        };
        let r = report.redacted(&secrets);
        let text = format!("{r:?}");
        assert!(!text.contains("s3cr3tvalue") && !text.contains("\"4430"), "{text}");
        assert_eq!(r.title.as_deref(), Some("for <redacted>"));
        let f = &r.findings[0];
        assert_eq!(f.summary, "to 10.0.0.1:<redacted> with <redacted>");
        assert_eq!(f.destination, None, "left out: its port is the secret");
        assert_eq!(f.node.as_ref().unwrap().name.as_deref(), Some("n-<redacted>"));
        assert_eq!((f.netns, f.severity), (Some(4026531992), report.findings[0].severity));
        assert_eq!(f.evidence["args"], json!(["--token", "<redacted>"]));
        assert_eq!(f.evidence["n"], 3);
        assert_eq!(
            r.sections[0].body,
            SectionBody::Table {
                columns: vec!["<redacted>".into()],
                rows: vec![vec![json!("x <redacted>"), json!(4430)]],
            },
            "numbers are not strings: kept"
        );
        assert_eq!(
            r.sections[1].body,
            SectionBody::Data {
                data: json!({"nested": [{"v": "<redacted>"}]})
            }
        );
        assert_eq!(report.redacted(&SecretValues::default()), report, "nothing to hide");
    }

    #[test]
    fn table_aligns_columns() {
        let t = render_table(
            &["Count".into(), "SADDR".into()],
            &[vec![json!(387), json!("1.2.3.4")], vec![json!(8), json!(null)]],
        );
        assert_eq!(t, "Count  SADDR\n387    1.2.3.4\n8      -\n");
    }

    #[test]
    fn chart_in_text_gives_total_and_peak_with_its_time() {
        let r = Report {
            sections: vec![Section {
                title: "c".into(),
                body: SectionBody::Chart {
                    x_label: "s".into(),
                    y_label: "connects".into(),
                    series: vec![
                        json!({"name": "pod-a", "points": [[0, 2], [1.5, 9], [3, 9], [4.5, 1]]}),
                        json!({"name": "other", "points": []}),
                    ],
                },
            }],
            ..Report::default()
        };
        let text = r.to_text(&RunFacts {
            playbook: "p",
            run_id: "r",
            audit_record: None,
            host: None,
            exit_code: 0,
        });
        assert!(
            text.contains("series  points  total  peak connects  at s  last"),
            "{text}"
        );
        assert!(text.contains("pod-a   4       21     9              1.5   1"), "{text}");
        assert!(text.contains("other   0       0      -              -     -"), "{text}");
    }

    /// The total column: a series' own total when it has one (a timeline's `open` series
    /// gives its last level), else the sum of its points.
    #[rstest::rstest]
    #[case::counts_sum_their_points(json!({"name": "a", "points": [[0, 2], [1, 3]]}), json!(5))]
    #[case::a_series_total_wins(json!({"name": "open", "points": [[0, 5], [1, 2], [2, 4]], "total": 4}), json!(4))]
    #[case::a_total_that_is_no_number_is_ignored(json!({"name": "a", "points": [[0, 1]], "total": "x"}), json!(1))]
    fn chart_totals(#[case] series: Value, #[case] want: Value) {
        assert_eq!(chart_summary(&series)[2], want);
    }

    #[test]
    fn json_has_documented_fields() {
        let r = Report {
            verdict: Some(Verdict::PressureFound),
            ..Report::default()
        };
        let j = r.to_json(&RunFacts {
            playbook: "p.rhai",
            run_id: "x",
            audit_record: None,
            host: Some("aks-nodepool1-12345678-vmss000003"),
            exit_code: 3,
        });
        for k in [
            "schema",
            "playbook",
            "run_id",
            "audit_record",
            "host",
            "fleet",
            "title",
            "verdict",
            "summary",
            "findings",
            "sections",
            "exit_code",
        ] {
            assert!(j.get(k).is_some(), "{k}");
        }
        assert_eq!(j["verdict"], "pressure_found");
        assert_eq!(j["host"]["hostname"], "aks-nodepool1-12345678-vmss000003");
    }
}
