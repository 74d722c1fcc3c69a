//! `audit::` — finding earlier runs in the audit directory, so that a playbook can compare
//! runs without anyone saving `--output json` or knowing file names.
//!
//! Every `snat-run` run leaves exactly one record in its audit directory (`--audit-dir`,
//! default `$SNAT_AUDIT_DIR`, `/var/lib/snat/audit` for root, else
//! `~/.local/state/snat/audit`), and since record schema version 2 the record holds the
//! run's findings. A record is named by a *selector*, the same text everywhere:
//!
//! | selector | record |
//! | --- | --- |
//! | `last` | the newest comparable record |
//! | `prev` | the one before it (`last~1`) |
//! | `last~N` | N before the newest |
//! | `3f2b8c1e` | the run with that id (or unique prefix of at least 8 characters) |
//! | `3f2b8c1e~1` | the comparable record before that run |
//! | `…:triage` | any of the above, counting only runs of that playbook (`triage`, `triage.rhai` or `examples/triage.rhai`) |
//!
//! *Comparable* means the record holds findings (written by a snat that records them) and
//! its run completed: interrupted or failed runs have partial findings and are skipped by
//! `last`/`prev`/`~N`, and refused when named by run id. The run that is reading is never
//! among them (its record is written when it ends).
//!
//! - `report::load("audit:prev:triage")` loads the record's findings like a saved report
//!   (see `report::load`); a file path of a record works too.
//! - `audit::latest(#{playbook: "triage", skip: 1})` and `audit::find("prev:triage")` say
//!   which record a selector names (path, run id, times, verdict, number of findings)
//!   without loading its findings.
//! - `audit::records(#{playbook: "triage"})` lists the records, newest first, with whether
//!   each can be compared and why not.
//! - `audit::dir()` is the directory searched: the run's `--audit-dir`.
//!
//! Errors say what was searched and what was skipped: an empty directory ("run the
//! playbook first"), no run of that playbook, a run id of another playbook, a record of a
//! run that did not complete, a record written before findings were recorded.

use std::path::{Path, PathBuf};

use rhai::{Array, Dynamic, EvalAltResult, Map, Module};
use snat_core::audit::{self, AuditRecord, Selector};

use super::{func, usage};
use crate::ctx::{Ctx, StageError};

/// The audit directory a run's stages read: the runner's `--audit-dir`, else the default.
pub(crate) fn dir_of(ctx: &Ctx) -> PathBuf {
    ctx.options().audit_dir.clone().unwrap_or_else(audit::default_dir)
}

/// The record `selector` (the text after `audit:`) names in the run's audit directory.
pub(crate) fn resolve(ctx: &Ctx, selector: &str) -> Result<audit::Selected, StageError> {
    let sel: Selector = selector.parse()?;
    Ok(audit::select(&dir_of(ctx), &sel)?)
}

/// A record's summary as a script sees it (no findings, their count).
fn summary(path: &Path, r: &AuditRecord) -> Map {
    let json = serde_json::json!({
        "path": path.display().to_string(),
        "run_id": r.run_id,
        "playbook": r.playbook.path,
        "started_at": r.started_at,
        "ended_at": r.ended_at,
        "outcome": r.outcome.kind,
        "verdict": r.verdict,
        "exit_code": r.exit_code,
        "schema_version": r.schema_version,
        "findings": if r.holds_findings() { serde_json::Value::from(r.findings.len()) } else { serde_json::Value::Null },
        "findings_truncated": r.findings_truncated,
        "comparable": r.findings_problem().is_none(),
        "why_not": r.findings_problem(),
    });
    rhai::serde::to_dynamic(json)
        .ok()
        .and_then(|d| d.try_cast::<Map>())
        .unwrap_or_default()
}

/// `#{playbook?: string, skip?: int}` as a selector.
fn latest_selector(opts: &Map) -> Result<Selector, Box<EvalAltResult>> {
    let mut playbook = None;
    let mut back = 0usize;
    for (k, v) in opts {
        match k.as_str() {
            "playbook" if v.is_unit() => {}
            "playbook" => match v.clone().into_string() {
                Ok(p) if !p.trim().is_empty() => playbook = Some(p.trim().to_owned()),
                _ => return usage("audit::latest: `playbook` must be a playbook name, e.g. \"triage\""),
            },
            "skip" => match v.as_int() {
                Ok(n) if n >= 0 => back = usize::try_from(n).unwrap_or(usize::MAX),
                _ => return usage("audit::latest: `skip` must be a count of records to skip (0 = the newest)"),
            },
            other => {
                return usage(format!(
                    "audit::latest: unknown option {other:?}{} (expected playbook, skip)",
                    super::did_you_mean(other, ["playbook", "skip"])
                ));
            }
        }
    }
    Ok(Selector {
        reference: audit::Reference::Last,
        back,
        playbook,
    })
}

/// The `audit` module.
pub fn create_module(ctx: &Ctx) -> Module {
    let mut m = Module::new();
    let c = ctx.clone();
    func(
        "dir",
        &["String"],
        "The audit directory this run writes its record to (--audit-dir), where `audit:` selectors look.",
    )
    .set_into_module(&mut m, move || dir_of(&c).display().to_string());

    let c = ctx.clone();
    func(
        "find",
        &["selector: &str", "Map"],
        "The record a selector names (last, prev, last~N, a run id; :PLAYBOOK to count only that playbook's runs):\n#{path, run_id, playbook, started_at, ended_at, outcome, verdict, exit_code, findings (count), findings_truncated}.\nA stage: fails, saying what was skipped, when no record answers.",
    )
    .set_into_module(&mut m, move |selector: &str| -> Result<Map, Box<EvalAltResult>> {
        let selector = selector.strip_prefix("audit:").unwrap_or(selector);
        c.stage("audit::find", serde_json::json!({ "selector": selector }), || {
            let s = resolve(&c, selector)?;
            Ok((summary(&s.path, &s.record), Some(1)))
        })
    });

    let c = ctx.clone();
    func(
        "latest",
        &["options: Map", "Map"],
        "The newest comparable record (holds findings, run completed), skipping `skip` of them, of `playbook` when given:\naudit::latest(#{playbook: \"triage\", skip: 1}) is the triage run before the last. Returns what audit::find returns.",
    )
    .set_into_module(&mut m, move |opts: Map| -> Result<Map, Box<EvalAltResult>> {
        let sel = latest_selector(&opts)?;
        c.stage("audit::latest", serde_json::json!({ "selector": sel.to_string() }), || {
            let s = audit::select(&dir_of(&c), &sel)?;
            Ok((summary(&s.path, &s.record), Some(1)))
        })
    });

    let c = ctx.clone();
    func(
        "records",
        &["options: Map", "Array"],
        "Records of the audit directory, newest first, as audit::find returns them plus `comparable` and `why_not`:\noptions #{playbook?: \"triage\", limit?: 20 (default 20)}. Unreadable files are left out (snat-run audit verify names them).",
    )
    .set_into_module(&mut m, move |opts: Map| -> Result<Array, Box<EvalAltResult>> {
        let mut playbook = None;
        let mut limit = 20usize;
        for (k, v) in &opts {
            match (k.as_str(), v) {
                ("playbook", v) if v.is_string() => playbook = v.clone().into_string().ok(),
                ("limit", v) if v.as_int().is_ok_and(|n| n > 0) => {
                    limit = usize::try_from(v.as_int().unwrap_or(1)).unwrap_or(usize::MAX)
                }
                (other, _) => {
                    return usage(format!(
                        "audit::records: bad option {other:?} (expected playbook: a name, limit: a count above 0)"
                    ));
                }
            }
        }
        c.stage("audit::records", serde_json::json!({ "playbook": playbook, "limit": limit }), || {
            let mut out = Array::new();
            for path in audit::record_paths(&dir_of(&c))? {
                if out.len() == limit {
                    break;
                }
                let Ok(r) = audit::read_record(&path) else { continue };
                if playbook.as_deref().is_some_and(|p| !audit::playbook_matches(&r.playbook.path, p)) {
                    continue;
                }
                out.push(Dynamic::from_map(summary(&path, &r)));
            }
            let n = out.len() as u64;
            Ok((out, Some(n)))
        })
    });
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use snat_core::audit::{AuditDir, HostInfo, Outcome, OutcomeKind, PlaybookInfo, ToolInfo, Verdict};

    /// Writes a record of `playbook` started at second `s` with one culprit of `flows` flows.
    fn write(dir: &AuditDir, s: u32, playbook: &str, kind: OutcomeKind, flows: u64) -> String {
        let t = format!("2026-11-21T06:00:{s:02}Z");
        let mut r = AuditRecord {
            schema_version: audit::SCHEMA_VERSION,
            run_id: uuid::Uuid::new_v4().to_string(),
            tool: ToolInfo {
                name: "snat-run".into(),
                version: "0".into(),
            },
            playbook: PlaybookInfo {
                path: playbook.into(),
                sha256: None,
            },
            params: Default::default(),
            started_at: t.clone(),
            ended_at: t,
            host: HostInfo::current(),
            stages: vec![],
            actions: vec![],
            outcome: Outcome {
                kind,
                message: (kind != OutcomeKind::Completed).then(|| "SIGINT received".into()),
            },
            verdict: Some(Verdict::PressureFound),
            exit_code: 3,
            prev_sha256: None,
            findings: vec![json!({"kind": "snat_culprit", "severity": "critical", "summary": "s",
                                  "pod": {"uid": "u1", "namespace": "shop", "name": "checkout-1", "qos": null,
                                          "host_network": false, "owner": {"kind": "Deployment", "name": "checkout"}},
                                  "netns": 1, "destination": "198.18.0.1:443",
                                  "evidence": {"public_established": flows, "failed_by_destination": [{"destination": "198.18.0.1:443", "count": 2}]}})],
            findings_truncated: 0,
            secret_values: Default::default(),
        };
        dir.write(&mut r).unwrap();
        r.run_id
    }

    fn eval(dir: &Path, script: &str) -> Result<Dynamic, String> {
        let ctx = Ctx::new(
            crate::ctx::RunOptions {
                audit_dir: Some(dir.to_path_buf()),
                ..Default::default()
            },
            Default::default(),
        );
        let mut e = rhai::Engine::new();
        e.register_static_module("report", super::super::report::create_module(&ctx).into());
        e.register_static_module("audit", create_module(&ctx).into());
        e.eval::<Dynamic>(script).map_err(|err| match err.unwrap_inner() {
            EvalAltResult::ErrorRuntime(d, _) => d
                .clone()
                .try_cast::<crate::ctx::StageFailure>()
                .map_or_else(|| d.to_string(), |f| f.to_string()),
            other => other.to_string(),
        })
    }

    struct Fixture {
        _tmp: tempfile::TempDir,
        dir: AuditDir,
        before: String,
        after: String,
        failed: String,
    }

    /// triage (120 flows), triage (4 flows), a triage run interrupted, a verify-fix run.
    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let dir = AuditDir::open(tmp.path().join("audit")).unwrap();
        let before = write(&dir, 1, "examples/triage.rhai", OutcomeKind::Completed, 120);
        let after = write(&dir, 2, "examples/triage.rhai", OutcomeKind::Completed, 4);
        let failed = write(&dir, 3, "examples/triage.rhai", OutcomeKind::Interrupted, 1);
        write(&dir, 4, "examples/verify-fix.rhai", OutcomeKind::Completed, 0);
        Fixture {
            _tmp: tmp,
            dir,
            before,
            after,
            failed,
        }
    }

    #[rstest::rstest]
    #[case::last_triage(r#"report::load("audit:last:triage")"#, 4, "after")]
    #[case::prev_triage(r#"report::load("audit:prev:triage")"#, 120, "before")]
    #[case::prev_by_file_name(r#"report::load("audit:prev:triage.rhai")"#, 120, "before")]
    #[case::back_two(r#"report::load("audit:last~2")"#, 120, "before")]
    #[case::latest_skip(r#"report::load(audit::latest(#{playbook: "triage", skip: 1}).path)"#, 120, "before")]
    fn load_picks_audit_records(#[case] load: &str, #[case] flows: i64, #[case] which: &str) {
        let f = fixture();
        let r = eval(
            f.dir.path(),
            &format!("let r = {load}; [r.kind, r.run_id, r.findings[0].evidence.public_established, r.findings[0].pod.owner.name, r.file]"),
        )
        .unwrap()
        .cast::<Array>();
        let want_id = if which == "after" { &f.after } else { &f.before };
        assert_eq!(r[0].clone().into_string().unwrap(), "audit_record");
        assert_eq!(&r[1].clone().into_string().unwrap(), want_id);
        assert_eq!(r[2].as_int().unwrap(), flows);
        assert_eq!(r[3].clone().into_string().unwrap(), "checkout");
        assert!(
            r[4].clone()
                .into_string()
                .unwrap()
                .ends_with(&format!("{want_id}.json"))
        );
    }

    #[test]
    fn load_by_run_id_and_find_and_records() {
        let f = fixture();
        let id8 = &f.after[..8];
        let got = eval(
            f.dir.path(),
            &format!(
                r#"let a = report::load("audit:{id8}"); let b = report::load("audit:{id8}~1"); let x = audit::find("audit:prev:triage");
                   [a.run_id, b.run_id, x.run_id, x.findings, x.verdict, audit::records(#{{}}).len(), audit::records(#{{playbook: "triage", limit: 2}}).len(),
                    audit::records(#{{playbook: "triage"}})[0].comparable, audit::records(#{{playbook: "triage"}})[0].why_not, audit::dir()]"#
            ),
        )
        .unwrap()
        .cast::<Array>();
        let s = |i: usize| got[i].to_string();
        assert_eq!(
            (s(0), s(1), s(2)),
            (f.after.clone(), f.before.clone(), f.before.clone())
        );
        assert_eq!(got[3].as_int().unwrap(), 1);
        assert_eq!(s(4), "pressure_found");
        assert_eq!((got[5].as_int().unwrap(), got[6].as_int().unwrap()), (4, 2));
        assert!(
            !got[7].as_bool().unwrap(),
            "the newest triage record is the interrupted one"
        );
        assert!(
            s(8).contains("the run did not complete (interrupted: SIGINT received)"),
            "{}",
            s(8)
        );
        assert_eq!(s(9), f.dir.path().display().to_string());
    }

    #[rstest::rstest]
    #[case::failed_run_by_id("failed", "has no findings to compare: the run did not complete (interrupted")]
    #[case::other_playbook("last:find-node", "no completed run of playbook \"find-node\" with findings")]
    #[case::too_far(
        "last~9:triage",
        "only 2 completed run(s) of playbook \"triage\" with findings, and this asks for the 10th"
    )]
    #[case::bad_selector("tomorrow", "bad audit record selector \"tomorrow\"")]
    fn load_errors_say_what_to_do(#[case] selector: &str, #[case] want: &str) {
        let f = fixture();
        let selector = if selector == "failed" {
            f.failed.clone()
        } else {
            selector.to_owned()
        };
        let e = eval(f.dir.path(), &format!(r#"report::load("audit:{selector}")"#)).unwrap_err();
        assert!(e.contains(want), "{e}");
    }

    #[test]
    fn an_empty_directory_says_to_run_the_playbook_first() {
        let tmp = tempfile::tempdir().unwrap();
        let e = eval(tmp.path(), r#"report::load("audit:prev:triage")"#).unwrap_err();
        assert!(e.contains("holds no records yet: run the playbook first"), "{e}");
        let e = eval(tmp.path(), r#"audit::latest(#{playbook: "triage"})"#).unwrap_err();
        assert!(e.contains("audit:last:triage"), "{e}");
        let e = eval(tmp.path(), r#"audit::latest(#{skip: -1})"#).unwrap_err();
        assert!(e.contains("`skip` must be a count"), "{e}");
    }

    #[test]
    fn a_version_1_record_file_is_recognised_and_refused_for_lack_of_findings() {
        let f = fixture();
        let path = audit::record_paths(f.dir.path()).unwrap()[0].clone();
        let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let m = v.as_object_mut().unwrap();
        m.remove("findings");
        m.remove("findings_truncated");
        m.insert("schema_version".into(), json!(1));
        let old = f.dir.path().join("old.json");
        std::fs::write(&old, serde_json::to_vec(&v).unwrap()).unwrap();
        let e = eval(f.dir.path(), &format!("report::load({:?})", old.display().to_string())).unwrap_err();
        assert!(
            e.contains("old.json")
                && e.contains("did not record findings (schema version 1)")
                && e.contains("--output json"),
            "{e}"
        );
    }
}
