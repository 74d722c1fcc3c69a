//! The audit directory as the runner uses it: writing chained records, verifying the chain
//! after edits and removals, concurrent writers, unusable directories, and the JSON Schema.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use snat_core::Error;
use snat_core::audit::{
    ActionRecord, ActionState, AuditDir, AuditRecord, HostInfo, OutcomeKind, PlaybookInfo, REDACTED, SCHEMA_VERSION,
    StageCall, StageOutcome, ToolInfo, Verdict, now_rfc3339, record_file_name, sha256_hex, verify,
};

const SCHEMA: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../schemas/audit-record.schema.json"
));

fn record(started_at: &str) -> AuditRecord {
    AuditRecord {
        schema_version: SCHEMA_VERSION,
        run_id: uuid::Uuid::new_v4().to_string(),
        tool: ToolInfo {
            name: "snat-run".into(),
            version: "0.1.0".into(),
        },
        playbook: PlaybookInfo {
            path: "examples/triage.rhai".into(),
            sha256: Some(sha256_hex(b"let x = 1;")),
        },
        params: BTreeMap::from([("node".to_owned(), "aks-nodepool1-0".to_owned())]),
        started_at: started_at.into(),
        ended_at: started_at.into(),
        host: HostInfo::current(),
        stages: vec![StageCall {
            name: "tcptracer::read".into(),
            args: json!({"path": "tcptracer.log"}),
            started_at: started_at.into(),
            duration_ms: 1.5,
            items: Some(42),
            outcome: StageOutcome::Ok,
            error: None,
        }],
        actions: vec![],
        outcome: snat_core::audit::Outcome {
            kind: OutcomeKind::Completed,
            message: None,
        },
        verdict: Some(Verdict::Clear),
        exit_code: 0,
        prev_sha256: None,
        findings: vec![finding("checkout", 120)],
        findings_truncated: 0,
        secret_values: Default::default(),
    }
}

/// A finding as triage.rhai makes it (the JSON of `snat_core::model::Finding`).
fn finding(pod: &str, flows: u64) -> Value {
    let f = snat_core::model::Finding {
        kind: "snat_culprit".into(),
        severity: snat_core::model::Severity::Critical,
        summary: format!("{pod}: {flows} public ESTABLISHED flows"),
        node: None,
        pod: None,
        process: None,
        netns: Some(4026532001),
        destination: Some("198.18.0.1:443".parse().unwrap()),
        evidence: json!({
            "public_established": flows, "public_syn_sent": 4, "failed_connects": 145,
            "failed_by_destination": [{"destination": "198.18.0.1:443", "count": 145}],
        })
        .as_object()
        .unwrap()
        .clone(),
    };
    let mut v = serde_json::to_value(f).unwrap();
    v["pod"] = json!({"uid": "aaaaaaaa-0000-0000-0000-000000000001", "namespace": "shop", "name": pod,
                      "qos": null, "host_network": false, "owner": {"kind": "Deployment", "name": pod}});
    v
}

/// Writes records started at the given times, in that order; returns their paths.
fn write_all(dir: &AuditDir, times: &[&str]) -> Vec<PathBuf> {
    times.iter().map(|t| dir.write(&mut record(t)).unwrap()).collect()
}

fn name(p: &Path) -> String {
    p.file_name().unwrap().to_string_lossy().into_owned()
}

const T1: &str = "2026-11-21T05:00:00.000000001Z";
const T2: &str = "2026-11-21T05:00:01.000000000Z";
const T3: &str = "2026-11-21T05:00:02.500000000Z";

fn chain_of_three() -> (tempfile::TempDir, AuditDir, Vec<PathBuf>) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = AuditDir::open(tmp.path().join("audit")).unwrap();
    let paths = write_all(&dir, &[T1, T2, T3]);
    (tmp, dir, paths)
}

#[test]
fn chain_of_three_verifies_and_links_each_file_to_the_previous() {
    let (_tmp, dir, paths) = chain_of_three();
    let report = dir.verify().unwrap();
    assert_eq!(report.records, 3);
    assert_eq!(report.first_break, None);
    assert_eq!(report.head.as_deref(), Some(paths[2].as_path()));
    assert_eq!(report.head_sha256, Some(sha256_hex(&fs::read(&paths[2]).unwrap())));

    let mut prev: Option<String> = None;
    for p in &paths {
        let bytes = fs::read(p).unwrap();
        assert!(bytes.ends_with(b"}\n"), "pretty JSON with a trailing newline");
        let rec: AuditRecord = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(rec.prev_sha256, prev);
        assert_eq!(name(p), record_file_name(&rec).unwrap());
        assert_eq!(fs::metadata(p).unwrap().permissions().mode() & 0o777, 0o600);
        prev = Some(sha256_hex(&bytes));
    }
    assert!(name(&paths[0]).starts_with("20261121T050000.000000001Z-"));
    assert!(name(&paths[2]).starts_with("20261121T050002.500000000Z-"));
    // Only the records, the lock file, nothing else (no probe or temporary file left).
    let mut names: Vec<String> = fs::read_dir(dir.path())
        .unwrap()
        .map(|e| name(&e.unwrap().path()))
        .collect();
    names.sort();
    let mut want: Vec<String> = paths.iter().map(|p| name(p)).collect();
    want.insert(0, ".lock".into());
    assert_eq!(names, want);
}

#[test]
fn editing_a_byte_of_the_middle_record_names_the_third() {
    let (_tmp, dir, paths) = chain_of_three();
    let mut bytes = fs::read(&paths[1]).unwrap();
    let at = String::from_utf8_lossy(&bytes).find("\"exit_code\": 0").unwrap() + "\"exit_code\": ".len();
    bytes[at] = b'1'; // still a valid record: only the chain can tell
    fs::write(&paths[1], &bytes).unwrap();

    let report = verify(dir.path()).unwrap();
    let brk = report.first_break.expect("the edit is detected");
    assert_eq!(brk.file, paths[2]);
    let edited_hash = sha256_hex(&bytes);
    assert!(brk.reason.contains(&edited_hash), "{}", brk.reason);
    assert!(brk.reason.contains(&name(&paths[1])), "{}", brk.reason);
    assert!(brk.reason.contains("a record was edited or removed"), "{}", brk.reason);
    assert_eq!(report.records, 3);
}

#[test]
fn a_middle_record_made_invalid_json_is_named_with_line_and_column() {
    let (_tmp, dir, paths) = chain_of_three();
    let text = fs::read_to_string(&paths[1])
        .unwrap()
        .replacen("\"run_id\":", "\"run_id\"", 1);
    fs::write(&paths[1], text).unwrap();
    let brk = dir.verify().unwrap().first_break.unwrap();
    assert_eq!(brk.file, paths[1]);
    assert!(brk.reason.starts_with("not valid JSON at 3:"), "{}", brk.reason);
}

#[test]
fn editing_the_last_record_is_seen_only_through_a_pinned_head_hash() {
    let (_tmp, dir, paths) = chain_of_three();
    let pinned = dir.verify().unwrap().head_sha256.unwrap();
    let text = fs::read_to_string(&paths[2])
        .unwrap()
        .replace("\"exit_code\": 0", "\"exit_code\": 3");
    fs::write(&paths[2], text).unwrap();
    let report = dir.verify().unwrap();
    // The documented limitation: nothing in the directory vouches for the newest record...
    assert_eq!(report.first_break, None);
    // ...but its hash changed, which a caller that pinned it sees.
    assert_ne!(report.head_sha256.unwrap(), pinned);
}

#[test]
fn removing_the_middle_record_is_detected_at_the_next() {
    let (_tmp, dir, paths) = chain_of_three();
    fs::remove_file(&paths[1]).unwrap();
    let report = dir.verify().unwrap();
    assert_eq!(report.records, 2);
    let brk = report.first_break.unwrap();
    assert_eq!(brk.file, paths[2]);
    assert!(brk.reason.contains(&name(&paths[0])), "{}", brk.reason);
}

#[test]
fn removing_the_first_record_is_detected() {
    let (_tmp, dir, paths) = chain_of_three();
    fs::remove_file(&paths[0]).unwrap();
    let brk = dir.verify().unwrap().first_break.unwrap();
    assert_eq!(brk.file, paths[1]);
    assert!(
        brk.reason.starts_with("first record has prev_sha256 set"),
        "{}",
        brk.reason
    );
    assert!(brk.reason.contains("earlier records were removed"), "{}", brk.reason);
}

#[test]
fn a_renamed_record_is_detected() {
    let (_tmp, dir, paths) = chain_of_three();
    let other = uuid::Uuid::new_v4().to_string();
    let renamed = dir.path().join(format!("{}-{other}.json", &name(&paths[2])[..26]));
    fs::rename(&paths[2], &renamed).unwrap();
    let brk = dir.verify().unwrap().first_break.unwrap();
    assert_eq!(brk.file, renamed);
    assert!(brk.reason.contains("the file was renamed"), "{}", brk.reason);
}

#[test]
fn stray_json_is_a_break_and_dot_files_are_ignored() {
    let (_tmp, dir, paths) = chain_of_three();
    fs::write(dir.path().join(".tmp-leftover-1-2"), "partial").unwrap();
    fs::write(dir.path().join("notes.txt"), "not json").unwrap();
    assert!(dir.verify().unwrap().is_ok());

    let stray = dir.path().join("notes.json");
    fs::write(&stray, "{}").unwrap();
    // The next record chains to the last real record, not to the stray file.
    let fourth = dir.write(&mut record(T3)).unwrap();
    let rec: AuditRecord = serde_json::from_slice(&fs::read(&fourth).unwrap()).unwrap();
    assert_eq!(rec.prev_sha256, Some(sha256_hex(&fs::read(&paths[2]).unwrap())));

    let report = dir.verify().unwrap();
    assert_eq!(report.records, 5);
    let brk = report.first_break.unwrap();
    assert_eq!(brk.file, stray);
    assert!(brk.reason.contains("not named like a record"), "{}", brk.reason);
    assert_eq!(report.head.as_deref(), Some(fourth.as_path()));
}

#[test]
fn an_unsupported_schema_version_is_a_break() {
    let (_tmp, dir, paths) = chain_of_three();
    let text = fs::read_to_string(&paths[0])
        .unwrap()
        .replace("\"schema_version\": 2", "\"schema_version\": 99");
    fs::write(&paths[0], text).unwrap();
    let brk = dir.verify().unwrap().first_break.unwrap();
    assert_eq!(brk.file, paths[0]);
    assert!(
        brk.reason.contains("schema_version 99 is not supported"),
        "{}",
        brk.reason
    );
}

#[test]
fn a_record_that_started_earlier_but_ends_later_still_sorts_last() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = AuditDir::open(tmp.path()).unwrap();
    let later = dir.write(&mut record(T3)).unwrap();
    let mut early = record(T1);
    let p = dir.write(&mut early).unwrap();
    assert!(name(&p) > name(&later), "{} sorts after {}", name(&p), name(&later));
    assert!(name(&p).starts_with("20261121T050002.500000001Z-"), "{}", name(&p));
    assert_eq!(early.started_at, T1, "the record keeps its true start");
    assert!(dir.verify().unwrap().is_ok());
}

#[test]
fn concurrent_writers_make_one_linear_chain() {
    const THREADS: usize = 8;
    const EACH: usize = 10;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("audit");
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let path = &path;
            s.spawn(move || {
                // Each thread opens the directory itself, as separate processes would.
                let dir = AuditDir::open(path).unwrap();
                for i in 0..EACH {
                    // Half the threads use one fixed start time, so names collide on time.
                    let started = if t % 2 == 0 { T1.to_owned() } else { now_rfc3339() };
                    let mut r = record(&started);
                    r.exit_code = i32::try_from(t * 100 + i).unwrap();
                    dir.write(&mut r).unwrap();
                }
            });
        }
    });
    let report = verify(&path).unwrap();
    assert_eq!(report.records, THREADS * EACH);
    assert_eq!(report.first_break, None, "{:?}", report.first_break);
    let mut exit_codes: Vec<i32> = fs::read_dir(&path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .map(|p| {
            serde_json::from_slice::<AuditRecord>(&fs::read(p).unwrap())
                .unwrap()
                .exit_code
        })
        .collect();
    exit_codes.sort();
    let mut want: Vec<i32> = (0..THREADS)
        .flat_map(|t| (0..EACH).map(move |i| i32::try_from(t * 100 + i).unwrap()))
        .collect();
    want.sort();
    assert_eq!(exit_codes, want, "every record written exactly once");
}

/// Tells [`child_writer`] which directory to write to.
const CHILD_ENV: &str = "SNAT_AUDIT_TEST_CHILD_DIR";
const CHILD_RECORDS: usize = 10;

/// Not a test by itself: run in child processes by
/// [`concurrent_processes_make_one_linear_chain`] (without the variable it does nothing).
#[test]
#[ignore = "helper run by concurrent_processes_make_one_linear_chain"]
fn child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let dir = AuditDir::open(PathBuf::from(path)).unwrap();
    for _ in 0..CHILD_RECORDS {
        dir.write(&mut record(T1)).unwrap();
    }
}

#[test]
fn concurrent_processes_make_one_linear_chain() {
    const CHILDREN: usize = 4;
    let tmp = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..CHILDREN)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--ignored", "--exact", "child_writer", "--test-threads=1"])
                .env(CHILD_ENV, tmp.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("1 passed"),
            "the helper ran"
        );
    }
    let report = verify(tmp.path()).unwrap();
    assert_eq!(report.records, CHILDREN * CHILD_RECORDS);
    assert_eq!(report.first_break, None, "{:?}", report.first_break);
}

#[test]
fn open_creates_missing_parents_with_mode_0700_and_leaves_no_probe() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("a/b/audit");
    let dir = AuditDir::open(&path).unwrap();
    assert_eq!(dir.path(), path);
    for p in [tmp.path().join("a"), tmp.path().join("a/b"), path.clone()] {
        let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", p.display());
    }
    let names: Vec<_> = fs::read_dir(&path).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, [".lock"]);
    // Opening an existing directory works too, and keeps its permissions.
    fs::set_permissions(&path, fs::Permissions::from_mode(0o750)).unwrap();
    AuditDir::open(&path).unwrap();
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o750);
}

fn assert_unusable(result: Result<AuditDir, Error>, dir: &Path, what: &str) {
    let err = result.expect_err("the directory cannot take records");
    assert!(matches!(err, Error::AuditDirUnusable { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains(&dir.display().to_string()), "{msg}");
    assert!(msg.contains(what), "{msg}");
    assert!(msg.contains("--audit-dir DIR"), "{msg}");
    assert!(std::error::Error::source(&err).is_some(), "the cause is chained");
}

#[test]
fn a_directory_under_a_regular_file_is_refused_even_for_root() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("plain-file");
    fs::write(&file, "x").unwrap();
    let dir = file.join("audit");
    assert_unusable(AuditDir::open(&dir), &dir, "one of its parents is not a directory");
}

#[test]
fn a_path_that_is_a_regular_file_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("audit");
    fs::write(&file, "x").unwrap();
    assert_unusable(AuditDir::open(&file), &file, "it exists and is not a directory");
}

#[test]
fn a_read_only_filesystem_is_refused_even_for_root() {
    // /proc/self/fdinfo is a directory nobody, root included, can create files in.
    let dir = Path::new("/proc/self/fdinfo");
    assert_unusable(AuditDir::open(dir), dir, "cannot create a file in it");
}

#[test]
fn a_directory_that_cannot_be_created_is_refused_even_for_root() {
    let dir = Path::new("/proc/self/fdinfo/snat-audit/audit");
    assert_unusable(AuditDir::open(dir), dir, "cannot create it");
}

#[test]
fn a_directory_without_write_permission_is_refused() {
    // SAFETY: no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        println!(
            "skipped: running as root, permission bits do not stop root (the other unusable-directory tests cover root)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ro");
    fs::create_dir(&dir).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o500)).unwrap();
    assert_unusable(AuditDir::open(&dir), &dir, "cannot create a file in it");
}

/// The private fallback directory (under the system's temporary directory, which every
/// user can write) is created 0700 and then used; one that another user could have planted
/// or can write is refused, whatever it holds.
#[test]
fn a_private_directory_is_created_0700_and_refused_when_others_control_it() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("snat-audit-test");
    let dir = AuditDir::open_private(&path).unwrap();
    assert_eq!(dir.path(), path);
    assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o700);
    // Again, existing and ours: fine.
    AuditDir::open_private(&path).unwrap();

    let link = tmp.path().join("link");
    symlink(&path, &link).unwrap();
    assert_unusable(AuditDir::open_private(&link), &link, "symbolic link");

    let shared = tmp.path().join("shared");
    fs::create_dir(&shared).unwrap();
    fs::set_permissions(&shared, fs::Permissions::from_mode(0o777)).unwrap();
    assert_unusable(AuditDir::open_private(&shared), &shared, "other users may write it");
    assert!(
        fs::read_dir(&shared).unwrap().next().is_none(),
        "nothing written into it"
    );

    let file = tmp.path().join("file");
    fs::write(&file, "").unwrap();
    assert_unusable(AuditDir::open_private(&file), &file, "not a directory");

    if !snat_testbed::require_root() {
        return;
    }
    let theirs = tmp.path().join("theirs");
    fs::create_dir(&theirs).unwrap();
    fs::set_permissions(&theirs, fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    assert_unusable(AuditDir::open_private(&theirs), &theirs, "not owned by this user");
    assert!(
        fs::read_dir(&theirs).unwrap().next().is_none(),
        "nothing written into it"
    );
}

#[test]
fn verify_of_an_empty_directory_is_ok_and_of_a_missing_one_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let report = verify(tmp.path()).unwrap();
    assert_eq!((report.records, report.first_break, report.head), (0, None, None));
    let err = verify(&tmp.path().join("missing")).unwrap_err();
    assert!(matches!(err, Error::AuditIo { .. }), "{err:?}");
}

#[test]
fn the_writer_redacts_secrets_and_normalises_times() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = AuditDir::open(tmp.path()).unwrap();
    let mut r = record("2026-11-21T07:00:00.25+02:00");
    r.params.insert("api-token".into(), "s3cr3t-value".into());
    r.params.insert(
        "kubeconfig".into(),
        "apiVersion: v1\nusers: [{user: {token: abc}}]".into(),
    );
    r.stages[0].args = json!({"path": "x", "password": "s3cr3t-value"});
    let p = dir.write(&mut r).unwrap();
    let text = fs::read_to_string(&p).unwrap();
    assert!(!text.contains("s3cr3t-value"), "{text}");
    assert!(!text.contains("token: abc"), "{text}");
    assert_eq!(r.params["api-token"], REDACTED);
    assert_eq!(r.params["node"], "aks-nodepool1-0");
    assert_eq!(r.started_at, "2026-11-21T05:00:00.250000000Z");
    let on_disk: AuditRecord = serde_json::from_str(&text).unwrap();
    assert_eq!(on_disk, r, "the caller's record is what was written");
    let value: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(errors(&validator(), &value), Vec::<String>::new());
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Whatever replaces a record file, verify reports a break (or, for the newest record,
    /// a new head hash) and never fails or panics.
    #[test]
    fn verify_survives_any_record_content(
        which in 0usize..3,
        content in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300),
    ) {
        let (_tmp, dir, paths) = chain_of_three();
        let before = dir.verify().unwrap();
        let original = fs::read(&paths[which]).unwrap();
        fs::write(&paths[which], &content).unwrap();
        let report = dir.verify().unwrap();
        proptest::prop_assert_eq!(report.records, 3);
        if content != original {
            if which == 2 {
                proptest::prop_assert_ne!(report.head_sha256, before.head_sha256);
            } else {
                let brk = report.first_break.unwrap();
                proptest::prop_assert!(brk.file == paths[which] || brk.file == paths[which + 1], "{:?}", brk);
            }
        }
    }
}

#[test]
fn invalid_records_are_refused_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = AuditDir::open(tmp.path()).unwrap();
    let mut bad_id = record(T1);
    bad_id.run_id = "../../etc/passwd".into();
    let mut bad_time = record("yesterday");
    bad_time.ended_at = T1.into();
    let mut bad_end = record(T1);
    bad_end.ended_at = String::new();
    let mut nan = record(T1);
    nan.stages[0].duration_ms = f64::NAN;
    let mut upper = record(T1);
    upper.run_id = upper.run_id.to_uppercase();
    for (mut r, what) in [
        (bad_id, "run_id"),
        (bad_time, "started_at"),
        (bad_end, "ended_at"),
        (nan, "duration_ms"),
        (upper, "run_id"),
    ] {
        let err = dir.write(&mut r).unwrap_err();
        assert!(matches!(err, Error::AuditRecordInvalid { .. }), "{err:?}");
        assert!(err.to_string().contains(what), "{err}");
    }
    let names: Vec<_> = fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, [".lock"]);
}

// ----- JSON Schema ------------------------------------------------------------------------

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

fn errors(v: &jsonschema::Validator, instance: &Value) -> Vec<String> {
    v.iter_errors(instance).map(|e| e.to_string()).collect()
}

#[test]
fn the_schema_is_valid_draft_2020_12() {
    let schema: Value = serde_json::from_str(SCHEMA).unwrap();
    jsonschema::meta::validate(&schema).unwrap();
    assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
}

/// A record using every variant of every enum and every optional field both ways.
fn full_records() -> Vec<AuditRecord> {
    let stage_outcomes = [StageOutcome::Ok, StageOutcome::Failed, StageOutcome::Interrupted];
    let states = [
        ActionState::Planned,
        ActionState::Applied,
        ActionState::Unchanged,
        ActionState::Failed,
    ];
    let kinds = [
        OutcomeKind::Completed,
        OutcomeKind::PlaybookError,
        OutcomeKind::StageFailed,
        OutcomeKind::Interrupted,
    ];
    let verdicts = [Some(Verdict::PressureFound), Some(Verdict::Clear), None];
    (0..4)
        .map(|i| {
            let mut r = record(&now_rfc3339());
            r.stages = stage_outcomes
                .iter()
                .map(|&outcome| StageCall {
                    name: "pressure::sample".into(),
                    args: json!([1, {"by": ["saddr", "netns"]}]),
                    started_at: now_rfc3339(),
                    duration_ms: 0.0,
                    items: if outcome == StageOutcome::Ok { Some(0) } else { None },
                    outcome,
                    error: (outcome != StageOutcome::Ok).then(|| "boom".to_owned()),
                })
                .collect();
            r.actions = states
                .iter()
                .map(|&state| ActionRecord {
                    action: "annotate".into(),
                    target: "pod/default/api-7d9f".into(),
                    request: json!({"method": "PATCH", "path": "/api/v1/namespaces/default/pods/api-7d9f", "body": {}}),
                    state,
                    result: (state != ActionState::Planned).then(|| "200 OK".to_owned()),
                    cluster: None,
                })
                .collect();
            r.outcome = snat_core::audit::Outcome {
                kind: kinds[i],
                message: (kinds[i] != OutcomeKind::Completed).then(|| "stopped".to_owned()),
            };
            r.verdict = verdicts[i % verdicts.len()];
            r.playbook.sha256 = (i % 2 == 0).then(|| sha256_hex(b"playbook"));
            r.exit_code = -1;
            r
        })
        .collect()
}

#[test]
fn records_written_by_the_writer_validate_against_the_schema() {
    let v = validator();
    let tmp = tempfile::tempdir().unwrap();
    let dir = AuditDir::open(tmp.path()).unwrap();
    let mut seen_prev = false;
    for mut r in full_records() {
        let p = dir.write(&mut r).unwrap();
        let written: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        seen_prev |= !written["prev_sha256"].is_null();
        assert_eq!(errors(&v, &written), Vec::<String>::new(), "{written:#}");
    }
    assert!(seen_prev, "records with and without prev_sha256 were checked");
    assert!(dir.verify().unwrap().is_ok());
}

fn written_record() -> Value {
    let tmp = tempfile::tempdir().unwrap();
    let dir = AuditDir::open(tmp.path()).unwrap();
    let mut r = full_records().remove(0);
    let p = dir.write(&mut r).unwrap();
    serde_json::from_slice(&fs::read(p).unwrap()).unwrap()
}

#[rstest::rstest]
#[case::missing_run_id("/run_id", None)]
#[case::missing_prev("/prev_sha256", None)]
#[case::missing_host_caps("/host/capabilities", None)]
#[case::bad_outcome_kind("/outcome/kind", Some(json!("crashed")))]
#[case::bad_verdict("/verdict", Some(json!("maybe")))]
#[case::bad_stage_outcome("/stages/0/outcome", Some(json!("OK")))]
#[case::bad_action_state("/actions/0/state", Some(json!("done")))]
#[case::upper_hex_sha("/prev_sha256", Some(json!("E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855")))]
#[case::short_sha("/playbook/sha256", Some(json!("abc")))]
#[case::bad_time("/started_at", Some(json!("2026-13-45T99:00:00.000000000Z")))]
#[case::not_a_time("/ended_at", Some(json!("yesterday")))]
#[case::local_time("/stages/0/started_at", Some(json!("2026-11-21T07:00:00.000000000+02:00")))]
#[case::schema_version("/schema_version", Some(json!(3)))]
#[case::v2_without_findings("/findings", None)]
#[case::v2_without_truncated("/findings_truncated", None)]
#[case::finding_not_object("/findings/0", Some(json!("x")))]
#[case::finding_bad_severity("/findings/0/severity", Some(json!("fatal")))]
#[case::finding_extra("/findings/0/environment", Some(json!({})))]
#[case::negative_truncated("/findings_truncated", Some(json!(-1)))]
#[case::negative_uid("/host/uid", Some(json!(-1)))]
#[case::bad_cap("/host/capabilities/0", Some(json!("net_admin")))]
#[case::negative_duration("/stages/0/duration_ms", Some(json!(-0.5)))]
#[case::extra_top_level("/environment", Some(json!({"HOME": "/home/someone"})))]
#[case::extra_in_host("/host/token", Some(json!("x")))]
#[case::param_not_string("/params/node", Some(json!(3)))]
fn schema_rejects_broken_records(#[case] pointer: &str, #[case] replacement: Option<Value>) {
    let v = validator();
    let mut rec = written_record();
    assert!(v.is_valid(&rec), "the unbroken record is valid");
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    let parent = rec.pointer_mut(parent).unwrap();
    match (parent, replacement) {
        (Value::Object(m), None) => assert!(m.remove(key).is_some(), "{pointer} exists"),
        (Value::Object(m), Some(r)) => {
            m.insert(key.to_owned(), r);
        }
        (Value::Array(a), Some(r)) => a[key.parse::<usize>().unwrap()] = r,
        (other, _) => panic!("{pointer}: unexpected parent {other}"),
    }
    assert!(!v.is_valid(&rec), "{pointer} broken but still valid: {rec:#}");
}

// ----- findings (schema version 2) ----------------------------------------------------------

/// A version 1 record, as snat wrote before findings were recorded: the written form of
/// `r` without `findings` and `findings_truncated`.
fn v1_json(r: &AuditRecord) -> Value {
    let mut v = serde_json::to_value(r).unwrap();
    let m = v.as_object_mut().unwrap();
    m.remove("findings");
    m.remove("findings_truncated");
    m.insert("schema_version".into(), json!(1));
    v
}

/// Puts a version 1 record at the head of `dir`'s chain, as the old writer did.
fn write_v1(dir: &AuditDir, started_at: &str) -> PathBuf {
    let mut r = record(started_at);
    r.prev_sha256 = dir.verify().unwrap().head_sha256;
    let path = dir.path().join(record_file_name(&r).unwrap());
    let mut bytes = serde_json::to_vec_pretty(&v1_json(&r)).unwrap();
    bytes.push(b'\n');
    fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn findings_round_trip_through_the_record_file() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = AuditDir::open(tmp.path()).unwrap();
    let mut r = record(T1);
    r.findings.push(finding("api", 7));
    let p = dir.write(&mut r).unwrap();
    let back = snat_core::audit::read_record(&p).unwrap();
    assert_eq!(back, r);
    assert_eq!(back.schema_version, 2);
    assert!(back.holds_findings() && back.completed());
    let f: snat_core::model::Finding = serde_json::from_value(back.findings[0].clone()).unwrap();
    assert_eq!(f.evidence["public_established"], 120);
    assert_eq!(f.destination, Some("198.18.0.1:443".parse().unwrap()));
    assert_eq!(back.findings[0]["evidence"]["failed_by_destination"][0]["count"], 145);
}

#[test]
fn the_writer_redacts_findings() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = AuditDir::open(tmp.path()).unwrap();
    let mut r = record(T1);
    r.findings[0]["process"] = json!({"pid": 9, "comm": "app", "cmdline": "app --db-password s3cr3t-value --port 80",
                                      "netns": null, "cgroup": null});
    r.findings[0]["evidence"]["api_token"] = json!("s3cr3t-value");
    r.findings[0]["summary"] = json!("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJl");
    let p = dir.write(&mut r).unwrap();
    let text = fs::read_to_string(&p).unwrap();
    assert!(!text.contains("s3cr3t-value") && !text.contains("eyJhbGci"), "{text}");
    assert_eq!(
        r.findings[0]["process"]["cmdline"],
        "app --db-password <redacted> --port 80"
    );
    assert_eq!(r.findings[0]["evidence"]["api_token"], REDACTED);
    assert_eq!(r.findings[0]["evidence"]["public_established"], 120, "figures are kept");
    assert_eq!(
        errors(&validator(), &serde_json::from_str(&text).unwrap()),
        Vec::<String>::new()
    );
}

#[test]
fn findings_are_bounded_by_count_and_bytes() {
    use snat_core::audit::{MAX_FINDINGS, MAX_FINDINGS_BYTES};
    let tmp = tempfile::tempdir().unwrap();
    let dir = AuditDir::open(tmp.path()).unwrap();

    let mut many = record(T1);
    many.findings = (0..MAX_FINDINGS as u64 + 37).map(|i| finding("p", i)).collect();
    let p = dir.write(&mut many).unwrap();
    let on_disk = snat_core::audit::read_record(&p).unwrap();
    assert_eq!((on_disk.findings.len(), on_disk.findings_truncated), (MAX_FINDINGS, 37));
    assert_eq!(
        on_disk.findings[MAX_FINDINGS - 1]["evidence"]["public_established"],
        MAX_FINDINGS - 1,
        "the first ones are kept, in order"
    );

    // Three findings of 400 KiB each: two fit in 1 MiB, the third does not.
    let mut big = record(T2);
    let blob = "x".repeat(400 * 1024);
    big.findings = (0..3)
        .map(|_| json!({"kind": "k", "severity": "info", "summary": blob, "evidence": {}}))
        .collect();
    let p = dir.write(&mut big).unwrap();
    let on_disk = snat_core::audit::read_record(&p).unwrap();
    assert_eq!((on_disk.findings.len(), on_disk.findings_truncated), (2, 1));
    assert!(fs::metadata(&p).unwrap().len() < (MAX_FINDINGS_BYTES + 64 * 1024) as u64);

    // A single finding over the bound leaves none, and says so.
    let mut huge = record(T3);
    huge.findings =
        vec![json!({"kind": "k", "severity": "info", "summary": "x".repeat(MAX_FINDINGS_BYTES), "evidence": {}})];
    let p = dir.write(&mut huge).unwrap();
    let on_disk = snat_core::audit::read_record(&p).unwrap();
    assert_eq!((on_disk.findings.len(), on_disk.findings_truncated), (0, 1));
    assert!(dir.verify().unwrap().is_ok());
    for p in snat_core::audit::record_paths(dir.path()).unwrap() {
        let v: Value = serde_json::from_slice(&fs::read(&p).unwrap()).unwrap();
        assert_eq!(errors(&validator(), &v), Vec::<String>::new());
    }
}

#[test]
fn a_finding_that_is_not_an_object_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = AuditDir::open(tmp.path()).unwrap();
    let mut r = record(T1);
    r.findings.push(json!([1, 2]));
    let err = dir.write(&mut r).unwrap_err();
    assert!(err.to_string().contains("finding #1 is not a JSON object"), "{err}");
}

#[test]
fn a_chain_mixing_version_1_and_2_records_verifies_and_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = AuditDir::open(tmp.path()).unwrap();
    let v1_first = write_v1(&dir, T1);
    let v2 = dir.write(&mut record(T2)).unwrap();
    let v1_mid = write_v1(&dir, T3);
    let v2_last = dir.write(&mut record("2026-11-21T05:00:03Z")).unwrap();
    let report = dir.verify().unwrap();
    assert_eq!((report.records, &report.first_break), (4, &None), "{report:?}");
    assert_eq!(report.head.as_deref(), Some(v2_last.as_path()));

    let v = validator();
    for (p, version) in [(&v1_first, 1), (&v2, 2), (&v1_mid, 1), (&v2_last, 2)] {
        let json: Value = serde_json::from_slice(&fs::read(p).unwrap()).unwrap();
        assert_eq!(json["schema_version"], version);
        assert_eq!(errors(&v, &json), Vec::<String>::new(), "{}", p.display());
        let r = snat_core::audit::read_record(p).unwrap();
        assert_eq!(r.holds_findings(), version == 2);
        assert_eq!(r.findings.is_empty(), version == 1);
    }
    // Editing the old record is still seen by the next one.
    let text = fs::read_to_string(&v1_mid)
        .unwrap()
        .replace("aks-nodepool1-0", "aks-nodepool1-9");
    fs::write(&v1_mid, text).unwrap();
    assert_eq!(dir.verify().unwrap().first_break.unwrap().file, v2_last);
}

#[test]
fn the_schema_keeps_version_1_records_free_of_findings() {
    let mut v1 = v1_json(&record(&now_rfc3339()));
    v1["prev_sha256"] = Value::Null;
    let v = validator();
    assert_eq!(errors(&v, &v1), Vec::<String>::new());
    v1["findings"] = json!([]);
    assert!(!v.is_valid(&v1), "a version 1 record with findings is not one");
}

// ----- picking records --------------------------------------------------------------------

use snat_core::audit::{Selector, select};

/// Writes a record of `playbook` started at second `s`, ending as `kind`.
fn write_run(dir: &AuditDir, s: u32, playbook: &str, kind: OutcomeKind, flows: u64) -> AuditRecord {
    let mut r = record(&format!("2026-11-21T06:00:{s:02}Z"));
    r.playbook.path = playbook.into();
    r.outcome.kind = kind;
    if kind != OutcomeKind::Completed {
        r.outcome.message = Some("stage tcptracer::read failed".into());
    }
    r.findings = vec![finding("checkout", flows)];
    dir.write(&mut r).unwrap();
    r
}

fn pick(dir: &AuditDir, sel: &str) -> Result<AuditRecord, Error> {
    select(dir.path(), &sel.parse::<Selector>()?).map(|s| s.record)
}

#[test]
fn select_picks_by_position_and_playbook_and_skips_what_cannot_be_compared() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = AuditDir::open(tmp.path()).unwrap();
    let t1 = write_run(&dir, 1, "examples/triage.rhai", OutcomeKind::Completed, 120);
    write_v1(&dir, "2026-11-21T06:00:02Z");
    let t2 = write_run(&dir, 3, "/opt/snat/triage.rhai", OutcomeKind::Completed, 4);
    let failed = write_run(&dir, 4, "examples/triage.rhai", OutcomeKind::StageFailed, 0);
    let vf = write_run(&dir, 5, "examples/verify-fix.rhai", OutcomeKind::Completed, 0);

    assert_eq!(pick(&dir, "last").unwrap().run_id, vf.run_id);
    assert_eq!(
        pick(&dir, "prev").unwrap().run_id,
        t2.run_id,
        "the failed run and the v1 record are skipped"
    );
    assert_eq!(pick(&dir, "last:triage").unwrap().run_id, t2.run_id);
    assert_eq!(pick(&dir, "prev:triage.rhai").unwrap().run_id, t1.run_id);
    assert_eq!(pick(&dir, "last~2").unwrap().run_id, t1.run_id);
    assert_eq!(pick(&dir, &t2.run_id).unwrap().run_id, t2.run_id);
    assert_eq!(
        pick(&dir, &format!("{}~1:triage", &t2.run_id[..8])).unwrap().run_id,
        t1.run_id
    );
    // From the failed run, the one before it.
    assert_eq!(
        pick(&dir, &format!("{}~:triage", failed.run_id)).unwrap().run_id,
        t2.run_id
    );

    // Clear errors.
    let e = pick(&dir, "last~2:triage").unwrap_err().to_string();
    assert!(
        e.contains("only 2 completed run(s) of playbook \"triage\" with findings, and this asks for the 3rd")
            && e.contains("1 record(s) of runs that did not complete")
            && e.contains("1 record(s) written before snat recorded findings")
            && e.contains("1 record(s) of other playbooks")
            && e.contains(&tmp.path().display().to_string())
            && e.contains("audit:last~2:triage"),
        "{e}"
    );
    let e = pick(&dir, "last:find-node").unwrap_err().to_string();
    assert!(e.contains("no completed run of playbook \"find-node\""), "{e}");
    let e = pick(&dir, &format!("{}:triage", vf.run_id)).unwrap_err().to_string();
    assert!(
        e.contains("is of playbook examples/verify-fix.rhai, not \"triage\""),
        "{e}"
    );
    let e = pick(&dir, &failed.run_id).unwrap_err();
    assert!(matches!(e, Error::AuditNoFindings { .. }), "{e:?}");
    assert!(
        e.to_string()
            .contains("the run did not complete (stage_failed: stage tcptracer::read failed)"),
        "{e}"
    );
    let old = snat_core::audit::record_paths(dir.path()).unwrap()[3].clone();
    let old_id = snat_core::audit::read_record(&old).unwrap().run_id;
    let e = pick(&dir, &old_id).unwrap_err().to_string();
    assert!(e.contains("did not record findings (schema version 1)"), "{e}");
    let e = pick(&dir, "00000000").unwrap_err().to_string();
    assert!(e.contains("no record has a run id starting with 00000000"), "{e}");
}

#[test]
fn select_in_an_empty_directory_says_to_run_the_playbook_first() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = AuditDir::open(tmp.path()).unwrap();
    let e = pick(&dir, "prev:triage").unwrap_err().to_string();
    assert!(e.contains("holds no records yet: run the playbook first"), "{e}");
}

#[test]
fn an_ambiguous_run_id_prefix_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = AuditDir::open(tmp.path()).unwrap();
    for (s, id) in [
        (1, "aaaaaaaa-0000-4000-8000-000000000001"),
        (2, "aaaaaaaa-0000-4000-8000-000000000002"),
    ] {
        let mut r = record(&format!("2026-11-21T06:00:0{s}Z"));
        r.run_id = id.into();
        dir.write(&mut r).unwrap();
    }
    let e = pick(&dir, "aaaaaaaa").unwrap_err().to_string();
    assert!(
        e.contains("2 records have a run id starting with aaaaaaaa: give more of it"),
        "{e}"
    );
    assert_eq!(
        pick(&dir, "aaaaaaaa-0000-4000-8000-000000000002").unwrap().run_id,
        "aaaaaaaa-0000-4000-8000-000000000002"
    );
}
