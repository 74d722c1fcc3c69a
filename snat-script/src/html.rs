//! The self-contained HTML report (`snat-run --html FILE`): the verdict, findings, tables,
//! text and charts of a run in one file with inline CSS and SVG, no scripts and nothing
//! fetched, to paste into an incident channel or attach to a ticket.

use std::fmt::Write as _;

use serde_json::Value;

use crate::report::{Report, RunFacts, SectionBody};

/// Escape text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => escape(s),
        other => escape(&other.to_string()),
    }
}

const DASHES: [&str; 3] = ["", "6 3", "2 2"];

const PALETTE: [&str; 8] = [
    "#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
];

/// Longest series name shown in full in a chart's legend.
const LEGEND_CHARS: usize = 60;

/// A line chart as inline SVG. `series` is `[{name, points: [[x, y], ...]}, ...]`.
pub fn svg_chart(x_label: &str, y_label: &str, series: &[Value]) -> String {
    // The legend is as wide as the longest name needs, up to LEGEND_CHARS characters.
    let longest = series
        .iter()
        .map(|s| s["name"].as_str().unwrap_or("?").chars().count().min(LEGEND_CHARS))
        .max()
        .unwrap_or(0);
    let right = (34.0 + 6.5 * longest as f64).max(160.0);
    // Tall enough for one legend line per series.
    let (left, bottom, top) = (60.0, 40.0, 10.0);
    let h = (top + 20.0 + 16.0 * series.len() as f64).max(300.0);
    let w = 560.0 + right;
    let pts = |s: &Value| -> Vec<(f64, f64)> {
        s["points"]
            .as_array()
            .map(|ps| {
                ps.iter()
                    .filter_map(|p| Some((p.get(0)?.as_f64()?, p.get(1)?.as_f64()?)))
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .collect()
            })
            .unwrap_or_default()
    };
    let all: Vec<(f64, f64)> = series.iter().flat_map(pts).collect();
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" role="img" aria-label="{}">"#,
        escape(y_label)
    );
    if all.is_empty() {
        svg.push_str(r#"<text x="20" y="40">no data</text></svg>"#);
        return svg;
    }
    let (xmin, xmax) = all
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), p| (a.min(p.0), b.max(p.0)));
    let ymax = all.iter().fold(0.0_f64, |m, p| m.max(p.1)).max(1.0);
    // Counts get whole-number ticks (four steps): an all-zero series would otherwise be
    // labelled 0, 0.25, 0.5...
    let ymax = if all.iter().all(|p| p.1.fract() == 0.0) {
        (ymax / 4.0).ceil() * 4.0
    } else {
        ymax
    };
    let xspan = if xmax > xmin { xmax - xmin } else { 1.0 };
    let pw = w - left - right;
    let ph = h - top - bottom;
    let sx = |x: f64| left + (x - xmin) / xspan * pw;
    let sy = |y: f64| top + ph - y / ymax * ph;
    let _ = write!(
        svg,
        r##"<line x1="{left}" y1="{b}" x2="{r}" y2="{b}" stroke="#444"/><line x1="{left}" y1="{top}" x2="{left}" y2="{b}" stroke="#444"/>"##,
        b = top + ph,
        r = left + pw
    );
    for i in 0..=4 {
        let y = ymax * f64::from(i) / 4.0;
        let _ = write!(
            svg,
            r##"<text x="{}" y="{}" font-size="11" text-anchor="end">{}</text><line x1="{left}" y1="{yy}" x2="{}" y2="{yy}" stroke="#eee"/>"##,
            left - 6.0,
            sy(y) + 4.0,
            escape(&format_num(y)),
            left + pw,
            yy = sy(y)
        );
    }
    // x ticks: five evenly spaced values (time into the trace, for a timeline).
    for i in 0..=4 {
        let x = xmin + xspan * f64::from(i) / 4.0;
        let anchor = match i {
            0 => "start",
            4 => "end",
            _ => "middle",
        };
        let _ = write!(
            svg,
            r##"<line x1="{xx}" y1="{b}" x2="{xx}" y2="{}" stroke="#444"/><text x="{xx}" y="{}" font-size="11" text-anchor="{anchor}">{}</text>"##,
            top + ph + 4.0,
            h - 22.0,
            escape(&format_num(x)),
            xx = sx(x),
            b = top + ph,
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{}</text><text x="12" y="{}" font-size="11" text-anchor="middle" transform="rotate(-90 12 {})">{}</text>"#,
        left + pw / 2.0,
        h - 6.0,
        escape(x_label),
        top + ph / 2.0,
        top + ph / 2.0,
        escape(y_label)
    );
    for (i, s) in series.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        // Past the palette, the same colours come back dashed.
        let dash = DASHES[(i / PALETTE.len()) % DASHES.len()];
        let dash = if dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{dash}""#)
        };
        let mut p = pts(s);
        p.sort_by(|a, b| a.0.total_cmp(&b.0));
        let path: Vec<String> = p.iter().map(|(x, y)| format!("{:.1},{:.1}", sx(*x), sy(*y))).collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
            path.join(" ")
        );
        // A lone point draws no line: mark it.
        if let [(x, y)] = p.as_slice() {
            let _ = write!(
                svg,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{color}"/>"#,
                sx(*x),
                sy(*y)
            );
        }
        let name = s["name"].as_str().unwrap_or("?");
        let ly = top + 14.0 + 16.0 * i as f64;
        let _ = write!(
            svg,
            r#"<line x1="{}" y1="{y}" x2="{}" y2="{y}" stroke="{color}" stroke-width="3"{dash}/><text x="{}" y="{}" font-size="11">{}</text>"#,
            left + pw + 6.0,
            left + pw + 20.0,
            left + pw + 24.0,
            ly,
            escape(&truncate(name, LEGEND_CHARS)),
            y = ly - 4.0,
        );
    }
    svg.push_str("</svg>");
    svg
}

fn format_num(x: f64) -> String {
    if x.fract() == 0.0 {
        format!("{}", x as i64)
    } else if x.abs() < 10.0 {
        format!("{x:.2}").trim_end_matches('0').to_string()
    } else {
        format!("{x:.1}")
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

/// The whole report as one HTML document. `error` is the run's error kind and message
/// (as the JSON document's `error` has them), shown under the verdict: a page saved from a
/// failed or interrupted run says why, not only "No verdict".
pub fn render(report: &Report, facts: &RunFacts<'_>, error: Option<(&str, &str)>) -> String {
    let title = report
        .title
        .clone()
        .unwrap_or_else(|| format!("snat run {}", facts.run_id));
    let (verdict, class) = match report.verdict {
        Some(snat_core::audit::Verdict::PressureFound) => ("SNAT pressure found", "bad"),
        Some(snat_core::audit::Verdict::Clear) => ("Clear: no SNAT pressure found", "good"),
        None => ("No verdict", "none"),
    };
    let mut h = String::new();
    let _ = write!(
        h,
        r#"<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{t}</title><style>
body{{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:1100px}}
table{{border-collapse:collapse;margin:.5em 0 1.5em}}td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left;font-variant-numeric:tabular-nums}}
th{{background:#f3f3f3}}.verdict{{padding:.6em 1em;border-radius:4px;font-weight:600}}.bad{{background:#fde2e2}}.good{{background:#e3f6e3}}.none{{background:#eee}}
.critical{{color:#b00020;font-weight:600}}.warning{{color:#a15c00}}pre{{background:#f7f7f7;padding:.6em;overflow:auto}}.meta{{color:#666;font-size:.9em}}
</style></head><body><h1>{t}</h1><p class="verdict {class}">{v}{s}</p><p class="meta">playbook {pb} · run {id} · exit {code}{audit}</p>"#,
        t = escape(&title),
        v = verdict,
        s = report
            .summary
            .as_deref()
            .map(|s| format!(": {}", escape(s)))
            .unwrap_or_default(),
        pb = escape(facts.playbook),
        id = escape(facts.run_id),
        code = facts.exit_code,
        audit = facts
            .audit_record
            .map(|a| format!(" · audit record {}", escape(a)))
            .unwrap_or_default(),
    );
    if let Some((kind, message)) = error {
        let what = if kind == "interrupted" {
            "The run was interrupted"
        } else {
            "The run failed"
        };
        let _ = write!(
            h,
            r#"<p class="verdict bad">{what} ({k})</p><pre class="error">{m}</pre>"#,
            k = escape(kind),
            m = escape(message),
        );
    }
    if !report.findings.is_empty() {
        h.push_str("<h2>Findings</h2><ul>");
        for f in &report.findings {
            let sev = serde_json::to_value(f.severity)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default();
            let _ = write!(
                h,
                r#"<li><span class="{sev}">[{sev}]</span> {}</li>"#,
                escape(&f.summary)
            );
        }
        h.push_str("</ul>");
    }
    for s in &report.sections {
        let _ = write!(h, "<h2>{}</h2>", escape(&s.title));
        match &s.body {
            SectionBody::Table { columns, rows } => {
                h.push_str("<table><thead><tr>");
                for c in columns {
                    let _ = write!(h, "<th>{}</th>", escape(c));
                }
                h.push_str("</tr></thead><tbody>");
                for r in rows {
                    h.push_str("<tr>");
                    for v in r {
                        let _ = write!(h, "<td>{}</td>", cell(v));
                    }
                    h.push_str("</tr>");
                }
                h.push_str("</tbody></table>");
            }
            SectionBody::Text { text } => {
                let _ = write!(h, "<pre>{}</pre>", escape(text));
            }
            SectionBody::Data { data } => {
                let _ = write!(
                    h,
                    "<pre>{}</pre>",
                    escape(&serde_json::to_string_pretty(data).unwrap_or_default())
                );
            }
            SectionBody::Chart {
                x_label,
                y_label,
                series,
            } => {
                h.push_str(&svg_chart(x_label, y_label, series));
            }
        }
    }
    h.push_str("</body></html>\n");
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::Section;
    use serde_json::json;

    #[test]
    fn escapes_everything_the_playbook_wrote() {
        let r = Report {
            title: Some("<script>alert(1)</script>".into()),
            sections: vec![Section {
                title: "t&t".into(),
                body: SectionBody::Table {
                    columns: vec!["<c>".into()],
                    rows: vec![vec![json!("<b>x</b>")]],
                },
            }],
            ..Report::default()
        };
        let html = render(
            &r,
            &RunFacts {
                playbook: "p",
                run_id: "r",
                audit_record: None,
                host: None,
                exit_code: 0,
            },
            Some(("stage_failed", "p:1:1: stage x failed: <img src=x onerror=y>")),
        );
        assert!(!html.contains("<script>"));
        assert!(!html.contains("<img"));
        assert!(html.contains("The run failed (stage_failed)"), "{html}");
        assert!(html.contains("stage x failed: &lt;img"), "{html}");
        assert!(!html.contains("<b>x"));
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(html.contains("t&amp;t"));
    }

    #[test]
    fn chart_has_one_line_per_series_and_a_legend() {
        let svg = svg_chart(
            "seconds",
            "open connections",
            &[
                json!({"name": "pod-a", "points": [[0, 1], [1, 5], [2, 9]]}),
                json!({"name": "pod-b", "points": [[0, 0], [2, 2]]}),
            ],
        );
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(">pod-a<") && svg.contains(">pod-b<"));
        assert!(svg_chart("x", "y", &[]).contains("no data"));
        // time ticks on x: 0 to 2 in quarters
        for t in [">0<", ">0.5<", ">1<", ">1.5<", ">2<"] {
            assert!(svg.contains(t), "{t} in {svg}");
        }
        // Many series: the chart grows to fit the legend, and colours repeat dashed.
        let many: Vec<Value> = (0..20)
            .map(|i| json!({"name": format!("pod-{i}"), "points": [[0, i], [1, i]]}))
            .collect();
        let big = svg_chart("s", "n", &many);
        assert!(big.contains(r#"height="350""#), "{big}");
        assert_eq!(big.matches("<polyline").count(), 20);
        assert_eq!(big.matches(r#"stroke-dasharray="6 3""#).count(), 2 * 8);
        assert!(big.contains(">pod-19<"));
        // Counts: whole-number y ticks, also when every value is 0.
        for (points, want) in [
            (json!([[0, 0], [1, 0]]), ["0", "1", "2", "3", "4"]),
            (json!([[0, 3], [1, 6]]), ["0", "2", "4", "6", "8"]),
        ] {
            let svg = svg_chart("s", "n", &[json!({"name": "c", "points": points})]);
            // The y labels are the texts right of the axis (x = left - 6).
            let labels: Vec<&str> = svg
                .split(r#"<text x="54" "#)
                .skip(1)
                .filter_map(|t| {
                    t.split_once('>')
                        .and_then(|(_, rest)| rest.split_once('<'))
                        .map(|(v, _)| v)
                })
                .collect();
            assert_eq!(labels, want, "{svg}");
        }
        let one = svg_chart("s", "n", &[json!({"name": "lone", "points": [[3, 4]]})]);
        assert!(one.contains("<circle"), "{one}");
    }
}
