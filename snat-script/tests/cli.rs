//! End-to-end tests of the `snat-run` binary: exit codes, error positions, sandbox limits,
//! signals mid-run, audit records (one per run, schema-valid, chained, tamper-evident) and
//! the JSON output contract.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_snat-run"))
}

fn data(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data").join(rel)
}

/// The repository's root, where the examples (and their test data) are.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The banner and column header of `tcptracer -t4v`.
const T4V_HEAD: &str = "Tracing TCP established connections. Ctrl-C to end.\nTIME(ns)      TYPE         PID    COMM             IP SADDR            DADDR            SPORT  DPORT  NETNS\n";

fn example(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples").join(rel)
}

struct Run {
    dir: tempfile::TempDir,
}

impl Run {
    fn new() -> Run {
        Run {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn audit(&self) -> PathBuf {
        self.dir.path().join("audit")
    }

    /// Where a run whose audit directory cannot be written records its refusal:
    /// `$SNAT_AUDIT_DIR` for the runs of [`Run::cmd`] (never the system's directory).
    fn fallback(&self) -> PathBuf {
        self.dir.path().join("fallback")
    }

    fn playbook(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn cmd(&self, playbook: &Path, args: &[&str]) -> Command {
        let mut c = Command::new(bin());
        c.arg(playbook)
            .arg("--audit-dir")
            .arg(self.audit())
            .args(args)
            .env("SNAT_AUDIT_DIR", self.fallback());
        c
    }

    fn run(&self, playbook: &Path, args: &[&str]) -> Output {
        self.cmd(playbook, args).stdin(Stdio::null()).output().unwrap()
    }

    fn records(&self) -> Vec<Value> {
        records_in(&self.audit())
    }

    /// The run's one audit record, whose outcome is `kind` (every run leaves exactly one).
    fn only_record(&self, kind: &str) -> Value {
        let mut recs = self.records();
        assert_eq!(recs.len(), 1, "exactly one record: {recs:#?}");
        assert_eq!(recs[0]["outcome"]["kind"], kind, "{:#}", recs[0]);
        recs.remove(0)
    }
}

/// The records of an audit directory, oldest first (none when it does not exist).
fn records_in(dir: &Path) -> Vec<Value> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.map(|e| e.unwrap().path())
                .filter(|p| p.extension().is_some_and(|x| x == "json"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .map(|p| serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap())
        .collect()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap_or(-1)
}

/// A copy of snat-run in a directory anyone may write, run as nobody (when the tests run
/// as root) with only the capabilities asked for: how an unprivileged operator runs it.
struct Unprivileged {
    dir: tempfile::TempDir,
    exe: PathBuf,
}

impl Unprivileged {
    fn new() -> Unprivileged {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let exe = dir.path().join("snat-run");
        std::fs::copy(bin(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        Unprivileged { dir, exe }
    }

    /// A file of this directory that nobody may read and write.
    fn file(&self, name: &str, text: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let p = self.dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).unwrap();
        p
    }

    /// Run `playbook` with an audit directory here; `caps` (e.g. `+bpf,+perfmon`) are
    /// the only capabilities kept, none when empty.
    fn run(&self, playbook: &Path, caps: &str) -> Output {
        self.run_with(playbook, caps, &self.dir.path().join("audit"), |c| {
            c.env_remove("SNAT_AUDIT_DIR");
        })
    }

    /// [`run`](Self::run) with `audit` as the audit directory and `env` setting the
    /// environment.
    fn run_with(&self, playbook: &Path, caps: &str, audit: &Path, env: impl Fn(&mut Command)) -> Output {
        // SAFETY: geteuid has no preconditions.
        let root = unsafe { libc::geteuid() } == 0;
        let mut tries = 0;
        loop {
            let mut c = Command::new(if root { Path::new("setpriv") } else { self.exe.as_path() });
            if root {
                c.args(["--reuid=65534", "--regid=65534", "--clear-groups"]);
                if !caps.is_empty() {
                    c.arg(format!("--inh-caps={caps}"))
                        .arg(format!("--ambient-caps={caps}"));
                }
                c.arg(&self.exe);
            }
            c.arg(playbook).arg("--audit-dir").arg(audit);
            env(&mut c);
            let o = c.stdin(Stdio::null()).output().expect("setpriv (util-linux) runs");
            // A process forked by a parallel test may hold the copy open for writing a moment.
            if String::from_utf8_lossy(&o.stderr).contains("Text file busy") && tries < 100 {
                tries += 1;
                std::thread::sleep(Duration::from_millis(20));
                continue;
            }
            return o;
        }
    }
}

/// The run exited with `code` and its stderr says `needle`.
fn expect_exit(o: &Output, code_want: i32, needle: &str) {
    assert_eq!(code(o), code_want, "{}", stderr(o));
    assert!(stderr(o).contains(needle), "{}", stderr(o));
}

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/audit-record.schema.json"))
            .unwrap(),
    )
    .unwrap();
    jsonschema::draft202012::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap()
}

fn assert_schema_valid(record: &Value) {
    let v = validator();
    let errs: Vec<String> = v.iter_errors(record).map(|e| e.to_string()).collect();
    assert!(
        errs.is_empty(),
        "record does not match the schema: {errs:?}\n{record:#}"
    );
}

const VERDICT_FOUND: &str = r#"
report::title("t");
report::verdict("pressure_found", "test");
"#;

#[test]
fn exit_0_when_clear_and_3_when_pressure_found() {
    let r = Run::new();
    let clear = r.playbook("clear.rhai", "report::verdict(\"clear\", \"nothing\");");
    let o = r.run(&clear, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let none = r.playbook("none.rhai", "let x = 1;");
    assert_eq!(code(&r.run(&none, &[])), 0);
    let found = r.playbook("found.rhai", VERDICT_FOUND);
    let o = r.run(&found, &[]);
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let recs = r.records();
    assert_eq!(recs.len(), 3, "one record per run");
    assert_eq!(recs[2]["verdict"], "pressure_found");
    assert_eq!(recs[2]["exit_code"], 3);
    assert_eq!(recs[0]["verdict"], "clear");
    for rec in &recs {
        assert_schema_valid(rec);
        assert_eq!(rec["outcome"]["kind"], "completed");
    }
}

#[test]
fn syntax_error_exit_2_with_position_caret_and_record() {
    let r = Run::new();
    let p = r.playbook("bad.rhai", "let a = 1;\nlet b = a +* 2;\n");
    let o = r.run(&p, &[]);
    assert_eq!(code(&o), 2);
    let e = stderr(&o);
    let expect = format!("{}:2:", p.display());
    assert!(e.contains(&expect), "{e}");
    assert!(e.contains("let b = a +* 2;"), "{e}");
    assert!(e.contains('^'), "{e}");
    let rec = r.only_record("playbook_error");
    assert_eq!(rec["exit_code"], 2);
    assert_schema_valid(&rec);
}

#[test]
fn missing_and_bad_params_exit_2() {
    let r = Run::new();
    let p = r.playbook("p.rhai", "let log = param(\"log\");\nlet n = param(\"n\", 3);\n");
    let o = r.run(&p, &[]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("missing parameter `log`: pass --param log=VALUE"),
        "{}",
        stderr(&o)
    );
    let o = r.run(&p, &["--param", "log=x", "--param", "n=lots"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains(":2:9: parameter `n`"), "{}", stderr(&o));
    // A malformed --param is a usage error before anything runs.
    let o = r.run(&p, &["--param", "novalue"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("expected KEY=VALUE"), "{}", stderr(&o));
    // Refused by clap, before anything runs: still recorded, with what was refused.
    let recs = r.records();
    assert_eq!(recs.len(), 3, "one record per invocation");
    assert_eq!(recs[2]["outcome"]["kind"], "playbook_error");
    assert_eq!(recs[2]["exit_code"], 2);
    assert!(recs[2]["stages"].as_array().unwrap().is_empty());
    let msg = recs[2]["outcome"]["message"].as_str().unwrap();
    assert!(
        msg.contains("expected KEY=VALUE") && msg.contains("--param novalue"),
        "{msg}"
    );
}

/// As a kubectl plugin the command calls itself `kubectl snat` in its version, help and
/// usage; it is the same runner.
#[test]
fn the_kubectl_plugin_names_itself_kubectl_snat() {
    let o = Command::new(env!("CARGO_BIN_EXE_kubectl-snat"))
        .arg("--version")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        format!("kubectl snat {}", env!("CARGO_PKG_VERSION"))
    );
    let o = Command::new(env!("CARGO_BIN_EXE_kubectl-snat"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("Usage: kubectl snat [OPTIONS] <PLAYBOOK.rhai>"));
    let o = Command::new(bin()).arg("--version").output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("snat-run "));
}

/// As the plugin, the whole help says `kubectl snat`: the long help's exit codes and
/// examples, the subcommands' help and usage; and its messages start with `kubectl snat:`.
/// snat-run's own help is unchanged.
#[test]
fn the_kubectl_plugin_says_kubectl_snat_in_all_its_help_and_messages() {
    let plugin = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_kubectl-snat"))
            .args(args)
            .env_remove("SNAT_AUDIT_DIR")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    // Words only: clap wraps the paragraphs to the terminal's width.
    let long = String::from_utf8_lossy(&plugin(&["--help"]).stdout)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    for want in [
        "`kubectl snat functions` lists everything a playbook can call",
        "Check the chain with `kubectl snat audit verify DIR`",
        "Examples: kubectl snat examples/tcptracer-log.rhai --param log=tcptracer.log",
        "| kubectl snat examples/tcptracer-log.rhai --param log=- --output json",
        "kubectl snat examples/census.rhai --all-nodes --image ",
        "kubectl snat functions kubectl snat audit verify /var/lib/snat/audit",
    ] {
        assert!(long.contains(want), "{want:?} not in:\n{long}");
    }
    for (args, usage) in [
        (&["--help"][..], "Usage: kubectl snat [OPTIONS] <PLAYBOOK.rhai>"),
        (&["-h"], "Usage: kubectl snat [OPTIONS] <PLAYBOOK.rhai>"),
        (&["audit", "--help"], "Usage: kubectl snat audit <COMMAND>"),
        (
            &["audit", "verify", "--help"],
            "Usage: kubectl snat audit verify [OPTIONS] <DIR>",
        ),
        (&["functions", "--help"], "Usage: kubectl snat functions [OPTIONS]"),
    ] {
        let o = plugin(args);
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
        assert!(out.contains(usage), "{args:?}: {usage:?} not in:\n{out}");
        assert!(!out.contains("snat-run"), "{args:?} still says snat-run:\n{out}");
    }
    let dir = tempfile::tempdir().unwrap();
    let o = plugin(&["audit", "verify", dir.path().to_str().unwrap()]);
    assert!(
        stderr(&o).starts_with("kubectl snat: no audit records in "),
        "{}",
        stderr(&o)
    );
    let audit = dir.path().join("audit");
    let o = plugin(&["help", "--audit-dir", audit.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "kubectl snat: error: no playbook or subcommand \"help\": for help, run kubectl snat --help (and kubectl snat functions for what a playbook can call)"
        ),
        "{}",
        stderr(&o)
    );
    let o = plugin(&["p.rhai", "--audit-dir", audit.to_str().unwrap(), "log=x"]);
    assert!(
        stderr(&o).contains("kubectl snat: hint: a playbook parameter is passed as --param log=x"),
        "{}",
        stderr(&o)
    );
    let own = String::from_utf8_lossy(&Command::new(bin()).arg("--help").output().unwrap().stdout).into_owned();
    assert!(
        own.contains("\n  snat-run functions\n") && !own.contains("kubectl snat functions"),
        "{own}"
    );
}

/// The JSON report names the host the run was on, as its audit record does, so a saved
/// report can be checked against the host it is later compared with (verify-fix).
#[test]
fn the_json_report_names_the_host_as_the_record_does() {
    let r = Run::new();
    let p = r.playbook("a.rhai", "report::verdict(\"clear\", \"nothing\");");
    let o = r.run(&p, &["-o", "json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    let rec = r.records().pop().unwrap();
    assert!(
        doc["host"]["hostname"].as_str().is_some_and(|h| !h.is_empty()),
        "{doc:#}"
    );
    assert_eq!(doc["host"]["hostname"], rec["host"]["hostname"]);
}

/// A `--kubeconfig` that is not there is refused before the run (exit 2, recorded): the
/// playbook would otherwise report "no cluster reachable" as if that were the situation.
#[test]
fn a_missing_kubeconfig_is_refused() {
    let r = Run::new();
    let p = r.playbook("a.rhai", "let x = param(\"a\", 1);");
    let missing = r.dir.path().join("no-such-kubeconfig");
    let o = r.run(&p, &["--kubeconfig", missing.to_str().unwrap()]);
    expect_exit(&o, 2, "no-such-kubeconfig: No such file or directory");
    assert!(
        stderr(&o).contains("kubectl config view --minify --raw"),
        "{}",
        stderr(&o)
    );
    r.only_record("playbook_error");
}

/// A `--context` the kubeconfig lacks is refused before the run too, naming the contexts.
#[test]
fn a_context_the_kubeconfig_lacks_is_refused() {
    let r = Run::new();
    let p = r.playbook("a.rhai", "let x = param(\"a\", 1);");
    let kc = r.dir.path().join("kubeconfig");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c\n  cluster:\n    server: http://127.0.0.1:9\ncontexts:\n- name: demo\n  context:\n    cluster: c\n    user: u\n- name: prod\n  context:\n    cluster: c\n    user: u\ncurrent-context: demo\nusers:\n- name: u\n  user:\n    token: t\n",
    )
    .unwrap();
    let o = r.run(&p, &["--kubeconfig", kc.to_str().unwrap(), "--context", "dmeo"]);
    expect_exit(&o, 2, "--context dmeo: no such context in the kubeconfig");
    assert!(stderr(&o).contains("its contexts are demo, prod"), "{}", stderr(&o));
    let o = r.run(&p, &["--kubeconfig", kc.to_str().unwrap(), "--context", "prod"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// What clap refuses (an unknown flag, a bad number) is a run too: it leaves its one record,
/// in the directory the command line names in either spelling, with the command line's
/// secrets redacted; `functions` and `audit` mistakes run no playbook and leave none.
#[test]
fn a_command_line_clap_refuses_is_recorded() {
    let r = Run::new();
    let p = r.playbook("a.rhai", "let x = param(\"a\", 1);");
    let o = r.run(&p, &["--token=hunter2", "--param", "a=2"]);
    expect_exit(&o, 2, "unexpected argument '--token'");
    assert!(stderr(&o).contains("audit record: "), "{}", stderr(&o));
    let recs = r.records();
    assert_eq!(recs.len(), 1);
    let rec = &recs[0];
    let msg = rec["outcome"]["message"].as_str().unwrap();
    assert!(msg.contains("--token=<redacted>"), "{msg}");
    assert!(!serde_json::to_string(rec).unwrap().contains("hunter2"), "{rec}");
    assert!(rec["playbook"]["path"].as_str().unwrap().ends_with("a.rhai"), "{rec}");
    assert!(rec["playbook"]["sha256"].is_string(), "{rec}");
    assert_schema_valid(rec);
    // A secret parameter's value, given with a space instead of `=` (clap quotes it back)
    // or repeated elsewhere on the command line, stays out of the record.
    for extra in [
        &["--param", "token SuperSecret123"][..],
        &["--param", "token=Hunter2PassB", "--max-operations", "Hunter2PassB"][..],
    ] {
        let o = r.run(&p, extra);
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        let last = r.records().pop().unwrap();
        let text = serde_json::to_string(&last).unwrap();
        assert!(
            !text.contains("SuperSecret123") && !text.contains("Hunter2PassB"),
            "{text}"
        );
        assert_eq!(last["params"]["token"], "<redacted>", "{last}");
    }

    // `--audit-dir=DIR`, and a number clap cannot parse, with -o json: the document names
    // the record.
    let other = r.dir.path().join("other-audit");
    let o = Command::new(bin())
        .arg(&p)
        .arg(format!("--audit-dir={}", other.display()))
        .args(["-o", "json", "--max-operations", "lots"])
        .env_remove("SNAT_AUDIT_DIR")
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!(doc["error"]["kind"], "usage_error", "{doc}");
    let rec_path = doc["audit_record"].as_str().expect("the record's path");
    assert!(Path::new(rec_path).starts_with(&other), "{rec_path}");
    assert!(doc["run_id"].is_string(), "{doc}");

    // No playbook named at all: recorded with an empty path.
    let o = Command::new(bin())
        .args(["--bogus", "--audit-dir"])
        .arg(r.audit())
        .output()
        .unwrap();
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let recs = r.records();
    assert_eq!(recs.len(), 4);
    assert_eq!(recs[3]["playbook"]["path"], "", "{}", recs[3]);
    assert_schema_valid(&recs[3]);

    // Not playbook runs: no record.
    for args in [&["functions", "--bogus"][..], &["audit", "verify"][..]] {
        let o = Command::new(bin())
            .args(args)
            .env("SNAT_AUDIT_DIR", r.audit())
            .output()
            .unwrap();
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
    }
    assert_eq!(r.records().len(), 4);
}

#[test]
fn endless_loop_stops_at_the_operation_limit() {
    let r = Run::new();
    let p = r.playbook("loop.rhai", "let i = 0;\nwhile true { i += 1; }\n");
    let t0 = Instant::now();
    let o = r.run(&p, &["--max-operations", "200000"]);
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("limit hit: too many operations"), "{}", stderr(&o));
    assert!(stderr(&o).contains("--max-operations"), "{}", stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(30));
    assert_eq!(r.records()[0]["outcome"]["kind"], "playbook_error");
}

#[test]
fn sandbox_refuses_eval_and_import() {
    let r = Run::new();
    for (name, text) in [("e.rhai", "eval(\"40 + 2\")"), ("i.rhai", "import \"other\" as o;")] {
        let p = r.playbook(name, text);
        let o = r.run(&p, &[]);
        assert_eq!(code(&o), 2, "{name}: {}", stderr(&o));
        assert!(stderr(&o).contains(&format!("{}:1:", p.display())), "{}", stderr(&o));
    }
}

#[test]
fn stage_failure_exit_1_names_the_stage() {
    let r = Run::new();
    let p = r.playbook("s.rhai", "let t = tcptracer::read(\"/nonexistent/tcptracer.log\");\n");
    let o = r.run(&p, &[]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("stage tcptracer::read failed"), "{e}");
    assert!(e.contains("/nonexistent/tcptracer.log"), "{e}");
    let rec = &r.records()[0];
    assert_eq!(rec["outcome"]["kind"], "stage_failed");
    assert_eq!(rec["stages"][0]["name"], "tcptracer::read");
    assert_eq!(rec["stages"][0]["outcome"], "failed");
    assert_schema_valid(rec);
}

/// Rhai leaves the position of a failed `namespace::function(...)` call unset; snat-run
/// must still say where in the playbook it was, as for any other error.
#[rstest::rstest]
#[case::stage_failure_at_top_level(
    "let a = 1;\nlet t = tcptracer::read(\"/nonexistent/t.log\");\n",
    1,
    "2:20: stage tcptracer::read failed: "
)]
#[case::stage_failure_inside_a_function(
    "fn load(p) {\n    let m = metrics::read(p);\n    m\n}\nload(\"/nonexistent/m.json\");\n",
    1,
    "2:22: stage metrics::read failed: "
)]
#[case::bad_option_of_a_stage(
    "// header\n\n  let t = trace::run(#{seconds: \"ten\"});\n",
    2,
    "3:18: trace::run: option `seconds` must be a number, got string"
)]
#[case::bad_argument_of_a_pure_function("let p = alloc::pressure([], -5);\n", 2, "1:16: budget must be")]
fn errors_in_namespaced_calls_name_the_call(#[case] text: &str, #[case] exit: i32, #[case] want: &str) {
    let r = Run::new();
    let p = r.playbook("pos.rhai", text);
    let o = r.run(&p, &[]);
    assert_eq!(code(&o), exit, "{}", stderr(&o));
    let want = format!("{}:{want}", p.display());
    let e = stderr(&o);
    assert!(
        e.contains(&format!("snat-run: error: {want}")),
        "want {want:?} in:\n{e}"
    );
    // The record's outcome says the same.
    let rec = &r.records()[0];
    let msg = rec["outcome"]["message"].as_str().unwrap();
    assert!(msg.starts_with(&want), "want {want:?} in the record: {msg}");
}

#[test]
fn a_playbook_error_without_a_place_prints_no_zero_position() {
    let r = Run::new();
    let p = r.dir.path().join("latin1.rhai");
    std::fs::write(&p, b"let caf\xe9 = 1;\n").unwrap();
    let o = r.run(&p, &[]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let want = format!(
        "snat-run: error: {}: not UTF-8 text (invalid byte at offset 7)",
        p.display()
    );
    assert!(stderr(&o).contains(&want), "want {want:?} in:\n{}", stderr(&o));
}

/// An audit directory that cannot be written stops the run before the playbook runs (exit
/// 1, as before), and the refusal still leaves exactly one record: in the default audit
/// directory when that is another one, else in a private directory under `$TMPDIR`. The
/// error line, the record and the JSON document name both directories; only when no
/// fallback opens is there no record, and then the error says why for each.
#[test]
fn an_unwritable_audit_dir_refuses_the_run_and_records_it_in_a_fallback() {
    let r = Run::new();
    // Under a regular file: no one, root included, can create it.
    let file = r.dir.path().join("a-file");
    std::fs::write(&file, "file").unwrap();
    let unwritable = file.join("audit");
    // Had it run: a report on stdout and exit 3.
    let p = r.playbook("x.rhai", VERDICT_FOUND);
    let run = |args: &[&str], env: &[(&str, &Path)]| {
        let mut c = Command::new(bin());
        c.arg(&p)
            .arg("--audit-dir")
            .arg(&unwritable)
            .args(args)
            .env_remove("SNAT_AUDIT_DIR")
            .env_remove("TMPDIR");
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdin(Stdio::null()).output().unwrap()
    };
    let names_both = |text: &str, fallback: &Path| {
        assert!(text.contains(&unwritable.display().to_string()), "{text}");
        assert!(text.contains("Not a directory"), "the OS error: {text}");
        assert!(
            text.contains(&format!("fallback audit directory {}", fallback.display())),
            "{text}"
        );
    };

    // The default directory ($SNAT_AUDIT_DIR) is another one: the refusal is recorded there.
    let fallback = r.fallback();
    let o = run(&[], &[("SNAT_AUDIT_DIR", &fallback)]);
    expect_exit(&o, 1, "the playbook was not run");
    names_both(&stderr(&o), &fallback);
    assert!(o.stdout.is_empty(), "nothing ran, nothing reported");
    assert!(!unwritable.exists());
    let recs = records_in(&fallback);
    assert_eq!(recs.len(), 1, "exactly one record");
    let rec = &recs[0];
    assert_schema_valid(rec);
    assert_eq!(rec["exit_code"], 1);
    assert_eq!(rec["outcome"]["kind"], "stage_failed");
    assert_eq!(rec["stages"], serde_json::json!([]), "nothing ran");
    assert!(rec["playbook"]["path"].as_str().unwrap().ends_with("x.rhai"), "{rec}");
    names_both(rec["outcome"]["message"].as_str().unwrap(), &fallback);
    let shown = stderr(&o)
        .lines()
        .find_map(|l| l.strip_prefix("audit record: ").map(PathBuf::from))
        .unwrap_or_else(|| panic!("stderr names the record: {}", stderr(&o)));
    assert!(shown.starts_with(&fallback), "{}", shown.display());
    let on_disk: Value = serde_json::from_slice(&std::fs::read(&shown).unwrap()).unwrap();
    assert_eq!(on_disk["run_id"], rec["run_id"]);

    // With -o json: one document, whose audit_record is the refusal's record.
    let o = run(&["-o", "json"], &[("SNAT_AUDIT_DIR", &fallback)]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!(doc["error"]["kind"], "audit_unwritable", "{doc}");
    assert_eq!(doc["exit_code"], 1, "{doc}");
    names_both(doc["error"]["message"].as_str().unwrap(), &fallback);
    let rec_path = PathBuf::from(doc["audit_record"].as_str().expect("the record's path"));
    assert!(rec_path.starts_with(&fallback), "{doc}");
    let rec: Value = serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    assert_eq!(rec["run_id"], doc["run_id"]);
    assert_eq!(records_in(&fallback).len(), 2);

    // The fallback directory is an audit directory like any: its chain verifies.
    let v = Command::new(bin())
        .args(["audit", "verify"])
        .arg(&fallback)
        .output()
        .unwrap();
    assert_eq!(code(&v), 0, "{}", stderr(&v));
    let out = String::from_utf8_lossy(&v.stdout);
    assert!(out.contains("ok: 2 record(s)") && out.contains("chain intact"), "{out}");

    // The default is the directory that failed: a directory of this user under $TMPDIR.
    let tmp = r.dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    // SAFETY: geteuid has no preconditions.
    let private = tmp.join(format!("snat-audit-{}", unsafe { libc::geteuid() }));
    let o = run(&[], &[("SNAT_AUDIT_DIR", &unwritable), ("TMPDIR", &tmp)]);
    expect_exit(&o, 1, "the playbook was not run");
    names_both(&stderr(&o), &private);
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&private).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700, "{mode:o}");
    }
    let recs = records_in(&private);
    assert_eq!(recs.len(), 1);
    assert_schema_valid(&recs[0]);

    // Neither can be written: no record, the document says so, the error names both failures.
    let o = run(&["-o", "json"], &[("SNAT_AUDIT_DIR", &unwritable), ("TMPDIR", &file)]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("left no audit record"), "{err}");
    assert!(err.contains(&unwritable.display().to_string()), "{err}");
    assert!(err.contains(&file.join("snat-audit-").display().to_string()), "{err}");
    let doc: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!(doc["error"]["kind"], "audit_unwritable", "{doc}");
    assert_eq!(doc["audit_record"], Value::Null, "{doc}");
    assert_eq!(doc["run_id"], Value::Null, "{doc}");
    assert_eq!(records_in(&private).len(), 1);
    assert_eq!(records_in(&fallback).len(), 2);
}

/// An ordinary user given root's audit directory (0700, owned by root): the refusal is
/// recorded in that user's private directory under `$TMPDIR`, created 0700 and owned by
/// the user; a directory of that name another user planted there is not used.
#[test]
fn an_unprivileged_run_into_roots_audit_dir_records_in_its_private_temp_dir() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !snat_testbed::require_root() {
        return;
    }
    let u = Unprivileged::new();
    let p = u.file("p.rhai", VERDICT_FOUND);
    // Root's audit directory, and root's home.
    let audit = u.dir.path().join("root-audit");
    std::fs::create_dir(&audit).unwrap();
    std::fs::set_permissions(&audit, std::fs::Permissions::from_mode(0o700)).unwrap();
    let roots = tempfile::tempdir().unwrap();
    std::fs::set_permissions(roots.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let tmp_dir = |name: &str| {
        let d = u.dir.path().join(name);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        d
    };
    let (tmp, planted_tmp) = (tmp_dir("tmp"), tmp_dir("tmp-planted"));
    // HOME as root's: the user's own default directory cannot be created either.
    let env = |tmp: &Path| {
        let (home, tmp) = (roots.path().to_path_buf(), tmp.to_path_buf());
        move |c: &mut Command| {
            c.env_remove("SNAT_AUDIT_DIR")
                .env_remove("XDG_STATE_HOME")
                .env("HOME", &home)
                .env("TMPDIR", &tmp);
        }
    };

    let o = u.run_with(&p, "", &audit, env(&tmp));
    expect_exit(&o, 1, "Permission denied");
    let private = tmp.join("snat-audit-65534");
    let meta = std::fs::metadata(&private).unwrap();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (65534, 0o700), "{meta:?}");
    assert!(stderr(&o).contains(&private.display().to_string()), "{}", stderr(&o));
    let recs = records_in(&private);
    assert_eq!(recs.len(), 1);
    assert_schema_valid(&recs[0]);
    assert_eq!(recs[0]["host"]["euid"], 65534);
    let msg = recs[0]["outcome"]["message"].as_str().unwrap();
    assert!(
        msg.contains(&audit.display().to_string()) && msg.contains("Permission denied"),
        "{msg}"
    );
    assert!(records_in(&audit).is_empty());

    // Planted by root, where the user's would go: refused, nothing written into it.
    let planted = planted_tmp.join("snat-audit-65534");
    std::fs::create_dir(&planted).unwrap();
    std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o777)).unwrap();
    let o = u.run_with(&p, "", &audit, env(&planted_tmp));
    expect_exit(&o, 1, "not owned by this user");
    assert!(stderr(&o).contains("left no audit record"), "{}", stderr(&o));
    assert!(
        std::fs::read_dir(&planted).unwrap().next().is_none(),
        "nothing written into it"
    );
}

#[test]
fn json_output_is_exactly_one_document() {
    let r = Run::new();
    let p = r.playbook(
        "j.rhai",
        "print(\"to stderr\");\nreport::table(\"t\", [\"a\"], [[1]]);\nreport::verdict(\"clear\", \"ok\");\n",
    );
    let o = r.run(&p, &["--output", "json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).expect("stdout is one JSON document");
    assert_eq!(doc["schema"], "snat.report/v1");
    assert_eq!(doc["verdict"], "clear");
    assert_eq!(doc["sections"][0]["rows"][0][0], 1);
    assert!(stderr(&o).contains("to stderr"));
    let rec_path = doc["audit_record"].as_str().unwrap();
    let rec: Value = serde_json::from_slice(&std::fs::read(rec_path).unwrap()).unwrap();
    assert_eq!(rec["run_id"], doc["run_id"]);
    // Failures still print one document, with the error.
    let bad = r.playbook("b.rhai", "let x = ;");
    let o = r.run(&bad, &["--output", "json"]);
    assert_eq!(code(&o), 2);
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["error"]["kind"], "playbook_error");
    assert_eq!(doc["exit_code"], 2);
}

#[test]
fn records_chain_and_tampering_is_named() {
    let r = Run::new();
    let p = r.playbook("c.rhai", VERDICT_FOUND);
    for _ in 0..3 {
        assert_eq!(code(&r.run(&p, &[])), 3);
    }
    let verify = |dir: &Path| Command::new(bin()).args(["audit", "verify"]).arg(dir).output().unwrap();
    let o = verify(&r.audit());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("3 record(s)"));
    let mut files: Vec<PathBuf> = std::fs::read_dir(r.audit())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    // Change the middle record's exit code: the third record's prev_sha256 no longer matches.
    let text = std::fs::read_to_string(&files[1])
        .unwrap()
        .replace("\"exit_code\": 3", "\"exit_code\": 0");
    std::fs::write(&files[1], text).unwrap();
    let o = verify(&r.audit());
    assert_eq!(code(&o), 1);
    let e = stderr(&o);
    let third = files[2].file_name().unwrap().to_string_lossy().into_owned();
    assert!(e.contains(&third), "names the record that breaks the chain: {e}");
}

/// `audit verify --json` for scripts: one document per check, whatever the result, with a
/// status that tells a broken chain from an empty or unreadable directory.
#[test]
fn audit_verify_json_tells_intact_broken_empty_and_unreadable_apart() {
    let r = Run::new();
    let p = r.playbook("c.rhai", VERDICT_FOUND);
    for _ in 0..2 {
        assert_eq!(code(&r.run(&p, &[])), 3);
    }
    let verify = |dir: &Path| {
        let o = Command::new(bin())
            .args(["audit", "verify", "--json"])
            .arg(dir)
            .output()
            .unwrap();
        let doc: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("one JSON document ({e}): {}", String::from_utf8_lossy(&o.stdout)));
        (code(&o), doc)
    };
    let (c, doc) = verify(&r.audit());
    assert_eq!((c, doc["status"].as_str()), (0, Some("intact")), "{doc:#}");
    assert_eq!(doc["records"], 2);
    assert_eq!(doc["head_sha256"].as_str().unwrap().len(), 64);
    let mut files: Vec<PathBuf> = std::fs::read_dir(r.audit())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    std::fs::remove_file(&files[0]).unwrap();
    let (c, doc) = verify(&r.audit());
    assert_eq!((c, doc["status"].as_str()), (1, Some("broken")), "{doc:#}");
    assert!(doc["break"]["reason"].is_string(), "{doc:#}");
    let empty = r.dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let (c, doc) = verify(&empty);
    assert_eq!((c, doc["status"].as_str()), (1, Some("empty")), "{doc:#}");
    let (c, doc) = verify(&r.dir.path().join("nope"));
    assert_eq!((c, doc["status"].as_str()), (1, Some("unreadable")), "{doc:#}");
    assert!(doc["error"].is_string(), "{doc:#}");
}

#[test]
fn a_param_the_playbook_never_reads_is_refused_before_anything_runs() {
    let r = Run::new();
    // The typo would otherwise leave `seconds` at its default, silently.
    let p = r.playbook(
        "t.rhai",
        "let s = param(\"seconds\", 10);\nlet t = tcptracer::read(\"/nonexistent/t.log\");\n",
    );
    let o = r.run(&p, &["--param", "secnds=60", "--param", "api_token=hunter2"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("--param secnds: the playbook never reads a parameter `secnds` (did you mean `seconds`?); it reads `seconds`"),
        "{e}"
    );
    assert!(e.contains("--param api_token: "), "{e}");
    assert!(!e.contains("hunter2"), "values are not echoed: {e}");
    // One record, of a playbook error, and no stage ran.
    let rec = r.only_record("playbook_error");
    assert_eq!(rec["stages"].as_array().unwrap().len(), 0);
    assert!(!serde_json::to_string(&rec).unwrap().contains("hunter2"));
    assert_schema_valid(&rec);
    // Read, the same parameters are fine; a playbook that reads params() may get any.
    let ok = r.playbook("ok.rhai", "let s = param(\"seconds\", 10); let all = params();");
    assert_eq!(code(&r.run(&ok, &["--param", "secnds=60"])), 0);
}

#[test]
fn params_with_secret_names_are_redacted() {
    let r = Run::new();
    let p = r.playbook("s.rhai", "let t = param(\"token\"); let l = param(\"log\");");
    assert_eq!(
        code(&r.run(&p, &["--param", "token=hunter2", "--param", "log=x.log"])),
        0
    );
    let rec = &r.records()[0];
    assert_eq!(rec["params"]["token"], "<redacted>");
    assert_eq!(rec["params"]["log"], "x.log");
    assert!(!serde_json::to_string(rec).unwrap().contains("hunter2"));
}

/// `--param-file`: one KEY=VALUE per line, the value exactly (spaces and `=` kept), its
/// secret values hidden in the record and the output as --param's are; comments and blank
/// lines skipped.
#[test]
fn param_file_gives_params_exactly_and_hides_secrets() {
    let r = Run::new();
    let p = r.playbook(
        "pf.rhai",
        "let t = param(\"token\"); let n = param(\"note\");\nreport::title(\"note: \" + n);\nreport::text(\"t\", \"token \" + t);\n",
    );
    let file = r.dir.path().join("params.env");
    std::fs::write(
        &file,
        "# the run's parameters\n\ntoken=s3cret tok=en value\r\nnote= a b=c \n",
    )
    .unwrap();
    let o = r.run(&p, &["--param-file", file.to_str().unwrap(), "-o", "json"]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    let doc: Value = serde_json::from_str(&out).unwrap();
    // The value exactly as written (leading/trailing spaces and '=' kept).
    assert_eq!(doc["title"], "note:  a b=c ", "{doc}");
    assert_eq!(doc["sections"][0]["text"], "token <redacted>", "{doc}");
    let rec = r.only_record("completed");
    assert_eq!(rec["params"]["token"], "<redacted>", "{rec}");
    assert_eq!(rec["params"]["note"], " a b=c ", "{rec}");
    for text in [out, stderr(&o), serde_json::to_string(&rec).unwrap()] {
        for word in ["s3cret", "tok=en"] {
            assert!(!text.contains(word), "{word} in {text}");
        }
    }
}

/// A missing file, a line without `=`, a bad key and a key given twice are refused (exit 2)
/// naming the file and line, without the line's text.
#[rstest::rstest]
#[case::missing(None, &[], "cannot read it")]
#[case::no_equals(Some("top=5\nhunter2hunter2\n"), &[], "params.env:2: expected KEY=VALUE")]
#[case::bad_key(Some("\n#c\nbad key=hunter2hunter2\n"), &[], "params.env:3: bad parameter name")]
#[case::twice(Some("token=hunter2hunter2\n"), &["-p", "token=x"], "parameter token given twice")]
fn a_bad_param_file_is_refused_naming_file_and_line(
    #[case] content: Option<&str>,
    #[case] more: &[&str],
    #[case] want: &str,
) {
    let r = Run::new();
    let p = r.playbook(
        "pf.rhai",
        "let t = param(\"token\", \"\"); let n = param(\"top\", 1);\n",
    );
    let file = r.dir.path().join("params.env");
    if let Some(c) = content {
        std::fs::write(&file, c).unwrap();
    }
    let mut args = vec!["--param-file", file.to_str().unwrap()];
    args.extend(more);
    let o = r.run(&p, &args);
    expect_exit(&o, 2, want);
    assert!(
        stderr(&o).contains(&file.display().to_string()) || want.contains("twice"),
        "{}",
        stderr(&o)
    );
    let rec = r.only_record("playbook_error");
    let text = format!("{}{rec}", stderr(&o));
    assert!(!text.contains("hunter2"), "{text}");
}

/// The reviewer's runs: a secret parameter quoted by a playbook error, a secret path in a
/// stage error (and in the `-vv` debug line of the stage's arguments), a JWT inside a
/// finding's summary. None of them is anywhere in the record files' bytes, and the
/// records still match the schema.
#[test]
fn secrets_copied_into_messages_never_reach_the_record() {
    const JWT: &str = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0In0.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
    let r = Run::new();

    let int = r.playbook("int.rhai", "let t = param(\"token\", 1);\n");
    let o = r.run(&int, &["-p", "token=SuperSecretValue123"]);
    expect_exit(&o, 2, "is not an integer");

    let log = r.playbook("log.rhai", "let t = tcptracer::read(param(\"log\"));\n");
    let o = r.run(&log, &["-vv", "-p", "log=/nonexistent?sig=SECRETSIG"]);
    expect_exit(&o, 1, "tcptracer::read");
    let err = stderr(&o);
    let start = err
        .lines()
        .find(|l| l.contains("stage start"))
        .unwrap_or_else(|| panic!("no stage start line with -vv:\n{err}"));
    assert!(!start.contains("SECRETSIG"), "{start}");
    assert!(start.contains("<redacted>"), "{start}");

    let finding = r.playbook(
        "finding.rhai",
        &format!("report::finding(#{{kind: \"k\", severity: \"info\", summary: \"note={JWT} seen\"}});\n"),
    );
    assert_eq!(code(&r.run(&finding, &[])), 0);

    let mut files: Vec<PathBuf> = std::fs::read_dir(r.audit())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    assert_eq!(files.len(), 3, "{files:?}");
    for f in &files {
        let bytes = std::fs::read_to_string(f).unwrap();
        for secret in ["SuperSecretValue123", "SECRETSIG", JWT] {
            assert!(!bytes.contains(secret), "{secret} in {}:\n{bytes}", f.display());
        }
    }
    let recs = r.records();
    for rec in &recs {
        assert_schema_valid(rec);
    }
    assert_eq!(recs[0]["params"]["token"], "<redacted>");
    let msg = recs[0]["outcome"]["message"].as_str().unwrap();
    assert!(
        msg.contains("parameter `token`: \"<redacted>\" is not an integer"),
        "{msg}"
    );
    let error = recs[1]["stages"][0]["error"].as_str().unwrap();
    // The whole value of `log` looks secret (a signature): gone whole, as from `params`.
    assert!(error.contains("tcptracer log <redacted>: "), "{error}");
    assert_eq!(recs[2]["findings"][0]["summary"], "note=<redacted> seen");
}

/// A playbook that copies its secret parameter into every part of its report and into its
/// error.
const LEAKY: &str = r#"let t = param("token");
report::title("run for " + t);
report::text("notes", "token " + t);
report::table("rows", ["value"], [[t]]);
report::finding(#{kind: "k", severity: "info", summary: "seen " + t});
print("print " + t);
debug("debug " + t);
log("log " + t);
warn("warn " + t);
throw "bad token " + t;
"#;

/// A secret parameter's value that the playbook copied into its report, its error and its
/// lines on stderr stays out of each channel a CI log keeps (stderr, the tables, the JSON
/// document, the HTML report), as it stays out of the record; a command line clap refuses
/// does not print it back either. A value of several words goes whole, none of its words
/// left.
#[rstest::rstest]
fn a_secret_param_stays_out_of_every_output(
    #[values("stderr", "table", "json", "html", "clap")] channel: &str,
    #[values("supersecretvalue", "Sup3r secr3t\tVALU3")] secret: &str,
) {
    let r = Run::new();
    let p = r.playbook("leak.rhai", LEAKY);
    let html = r.dir.path().join("r.html");
    let given = format!("token={secret}");
    let words: Vec<&str> = secret.split_whitespace().collect();
    let leaks = |text: &str| words.iter().any(|w| text.contains(w));
    let mut args = vec!["-p", given.as_str()];
    match channel {
        "json" => args.extend(["-o", "json"]),
        "html" => args.extend(["--html", html.to_str().unwrap()]),
        _ => {}
    }
    if channel == "clap" {
        // Given with a space (clap quotes it back), and without --param (a hint shows how).
        let spaced = format!("token {secret}");
        for args in [vec!["--param", spaced.as_str()], vec![given.as_str()]] {
            let o = r.run(&p, &args);
            assert_eq!(code(&o), 2, "{}", stderr(&o));
            let err = stderr(&o);
            assert!(!leaks(&err), "{args:?}: {err}");
            assert!(err.contains("<redacted>"), "{args:?}: {err}");
            let rec = serde_json::to_string(&r.records().pop().unwrap()).unwrap();
            assert!(!leaks(&rec), "{args:?}: {rec}");
        }
        return;
    }
    let o = r.run(&p, &args);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    let recorded = r.records()[0]["outcome"]["message"].as_str().unwrap().to_string();
    assert!(recorded.contains("bad token <redacted>"), "{recorded}");
    let shown = match channel {
        "stderr" => {
            let err = stderr(&o);
            assert!(
                err.contains(&format!("snat-run: error: {recorded}")),
                "the record's message: {recorded}\nstderr: {err}"
            );
            for want in [
                "print <redacted>",
                "debug <redacted>",
                "log <redacted>",
                "warning: warn <redacted>",
            ] {
                assert!(err.contains(want), "{want}: {err}");
            }
            err
        }
        "table" => {
            let out = String::from_utf8(o.stdout).unwrap();
            for want in ["run for <redacted>", "token <redacted>", "- [info] seen <redacted>"] {
                assert!(out.contains(want), "{want}: {out}");
            }
            out
        }
        "json" => {
            let doc: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
            assert_eq!(doc["error"]["message"], recorded.as_str(), "{doc}");
            assert_eq!(doc["title"], "run for <redacted>", "{doc}");
            assert_eq!(doc["findings"][0]["summary"], "seen <redacted>", "{doc}");
            assert_eq!(doc["sections"][1]["rows"][0][0], "<redacted>", "{doc}");
            String::from_utf8(o.stdout).unwrap()
        }
        "html" => {
            let page = std::fs::read_to_string(&html).expect("the HTML report is written");
            assert!(page.contains("seen &lt;redacted&gt;"), "{page}");
            page
        }
        other => unreachable!("{other}"),
    };
    assert!(!leaks(&shown), "{channel}: {shown}");
    let rec = serde_json::to_string(&r.records()[0]).unwrap();
    assert!(!leaks(&rec), "{rec}");
}

fn wait_for_start(child: &mut Child, audit: &Path) {
    // The audit directory is created before the playbook runs; give the engine a moment.
    let t0 = Instant::now();
    while !audit.exists() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "still running");
}

fn signal(child: &Child, sig: i32) {
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0);
}

#[test]
fn sigint_mid_run_still_writes_the_record() {
    let r = Run::new();
    let p = r.playbook("l.rhai", "let i = 0;\nloop { i += 1; }\n");
    let mut child = r
        .cmd(&p, &["--max-operations", "0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_start(&mut child, &r.audit());
    signal(&child, libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 130, "{}", stderr(&o));
    let rec = r.only_record("interrupted");
    assert_eq!(rec["exit_code"], 130);
    assert_schema_valid(&rec);
}

#[test]
fn sigterm_while_a_stage_blocks_still_writes_the_record() {
    let r = Run::new();
    // Reading a log from stdin that never ends: the stage blocks in read(2).
    let p = r.playbook("b.rhai", "let t = tcptracer::read(\"-\");\n");
    let mut child = r
        .cmd(&p, &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"Tracing TCP established connections. Ctrl-C to end.\n")
        .unwrap();
    wait_for_start(&mut child, &r.audit());
    signal(&child, libc::SIGTERM);
    let o = child.wait_with_output().unwrap();
    drop(stdin);
    assert_eq!(code(&o), 143, "{}", stderr(&o));
    let rec = r.only_record("interrupted");
    assert_eq!(rec["exit_code"], 143);
    // The stage that was blocked is in the record, interrupted, with its arguments and
    // how long it ran (from before the signal to the end of the grace period).
    let stages = rec["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 1, "{stages:?}");
    assert_eq!(stages[0]["name"], "tcptracer::read");
    assert_eq!(stages[0]["outcome"], "interrupted");
    assert_eq!(stages[0]["args"]["path"], "-");
    assert!(stages[0]["duration_ms"].as_f64().unwrap() > 300.0, "{}", stages[0]);
    assert_schema_valid(&rec);
}

#[test]
fn functions_lists_every_namespace_and_writes_definitions() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(bin())
        .args(["functions", "--definitions"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout);
    for needle in [
        "tcptracer::read(",
        "policy::azure(",
        "report::verdict(",
        "Trace.events",
        "param(name: &str",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
    let defs: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(
        defs.iter().any(|n| n.to_string_lossy().ends_with(".d.rhai")),
        "{defs:?}"
    );
}

#[test]
fn tcptracer_example_ranks_the_sample_log() {
    let r = Run::new();
    let log = data("tcptracer/sample-t4v.log");
    let o = r.run(
        &example("tcptracer-log.rhai"),
        &["--param", &format!("log={}", log.display()), "--output", "json"],
    );
    assert!(matches!(code(&o), 0 | 3), "{}", stderr(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    // The first table is the article's ranking by (SADDR, NETNS); recompute it the way the
    // article does and compare.
    let text = std::fs::read_to_string(&log).unwrap();
    let mut counts: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() >= 10 && f[1].chars().all(|c| c.is_ascii_lowercase()) && f[0].chars().all(|c| c.is_ascii_digit()) {
            // TIME TYPE PID COMM(no spaces in the sample's first columns is not assumed) ...:
            // the sample's last five fields are IP SADDR DADDR SPORT DPORT NETNS.
            let n = f.len();
            *counts
                .entry((
                    f[n - 5].trim_matches(|c| c == '[' || c == ']').to_string(),
                    f[n - 1].to_string(),
                ))
                .or_default() += 1;
        }
    }
    let mut expect: Vec<(u64, (String, String))> = counts.into_iter().map(|(k, v)| (v, k)).collect();
    expect.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
    let table = &doc["sections"][0];
    let top = &table["rows"][0];
    assert_eq!(top[0].as_u64().unwrap(), expect[0].0, "top count");
    assert_eq!(top[1].as_str().unwrap(), expect[0].1.0, "top saddr");
    let rec = &r.records()[0];
    assert_eq!(rec["stages"][0]["name"], "tcptracer::read");
    assert_schema_valid(rec);
}

#[test]
fn hooks_are_called_for_stages_findings_and_errors() {
    let r = Run::new();
    let log = data("tcptracer/sample-t4v.log");
    let p = r.playbook(
        "h.rhai",
        r#"
fn on_stage_end(st) { report::text("stage " + st.name, `${st.outcome} items=${st.items}`); }
fn on_finding(f) { print(`hook finding: ${f.kind} ${f.severity}`); }
fn on_error(e) { print(`hook error: ${e.kind} exit=${e.exit_code}`); }
let t = tcptracer::read(param("log"));
report::finding(#{kind: "k", severity: "warning", summary: "s"});
let missing = tcptracer::read("/nonexistent.log");
"#,
    );
    let o = r.run(&p, &["--param", &format!("log={}", log.display()), "--output", "json"]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("hook finding: k warning"), "{e}");
    assert!(e.contains("hook error: stage_failed exit=1"), "{e}");
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    let titles: Vec<&str> = doc["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["title"].as_str().unwrap())
        .collect();
    assert_eq!(
        titles,
        ["stage tcptracer::read", "stage tcptracer::read"],
        "one on_stage_end per stage call"
    );
    assert!(doc["sections"][0]["text"].as_str().unwrap().starts_with("ok items="));
    assert!(doc["sections"][1]["text"].as_str().unwrap().starts_with("failed"));
}

#[test]
fn tcptracer_example_finds_the_culprit_not_the_busier_private_decoy() {
    let r = Run::new();
    let log = data("tcptracer/incident-t4v.log");
    let o = r.run(
        &example("tcptracer-log.rhai"),
        &["--param", &format!("log={}", log.display()), "--output", "json"],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(doc["verdict"], "pressure_found");
    let findings = doc["findings"].as_array().unwrap();
    assert_eq!(
        findings.len(),
        1,
        "only the public destination is pressure: {findings:#?}"
    );
    assert_eq!(findings[0]["destination"], "203.0.113.10:443");
    assert_eq!(findings[0]["evidence"]["connects"], 880);
    // The article's ranking puts the decoy (2,400 lines, all to a private database) first;
    // the namespaces-by-public-connects table puts the culprit first.
    let sections = doc["sections"].as_array().unwrap();
    assert_eq!(sections[0]["rows"][0][1], "10.244.1.23");
    let by_public = sections
        .iter()
        .find(|s| s["title"].as_str().unwrap().starts_with("Network namespaces by"))
        .unwrap();
    assert_eq!(
        by_public["rows"][0],
        serde_json::json!([880, 4026532785_u64]),
        "netns is a number in every table"
    );
    assert_eq!(
        by_public["rows"].as_array().unwrap().len(),
        5,
        "decoy and nginx have no public connects"
    );
}

#[test]
fn unknown_allow_action_is_a_usage_error() {
    let r = Run::new();
    let p = r.playbook("a.rhai", "let x = 1;");
    let o = r.run(&p, &["--allow", "evnt"]);
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("--allow evnt: no such action (known: event"),
        "{}",
        stderr(&o)
    );
    // The playbook does not run, but the invocation is recorded, as every run is.
    let rec = r.only_record("playbook_error");
    assert!(rec["stages"].as_array().unwrap().is_empty(), "nothing ran");
    assert_eq!(rec["exit_code"], 2);
    assert!(
        rec["outcome"]["message"]
            .as_str()
            .unwrap()
            .contains("--allow evnt: no such action"),
        "{}",
        rec["outcome"]
    );
    assert_schema_valid(&rec);
}

/// find-node.rhai has no default metrics file: run from the repository's root (where the
/// test data lives), without `metrics` and without `az`, it must ask for the file, not
/// analyse sample data as if it were the load balancer's.
#[test]
fn find_node_without_metrics_asks_for_them() {
    let r = Run::new();
    let o = r
        .cmd(&example("find-node.rhai"), &[])
        .current_dir(repo())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    expect_exit(&o, 2, "missing parameter `metrics`: pass --param metrics=VALUE");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("SNAT pressure found"));
}

/// A numeric parameter outside its range is a parameter error (exit 2) naming the range,
/// not a silently absurd threshold (`alert=75` read as 7,500 %).
#[test]
fn out_of_range_parameters_of_the_examples_are_refused() {
    let r = Run::new();
    let playbook = example("tcptracer-log.rhai");
    let log = data("tcptracer/sample-t4v.log");
    for (p, want) in [
        (
            "alert=75",
            "parameter `alert`: 75 is out of range: pass a value from 0.01 to 1.0",
        ),
        (
            "top=-1",
            "parameter `top`: -1 is out of range: pass a value from 1 to 100000",
        ),
        ("ports=0", "parameter `ports`: 0 is out of range"),
    ] {
        let o = r.run(&playbook, &["--param", &format!("log={}", log.display()), "--param", p]);
        assert_eq!(code(&o), 2, "{p}: {}", stderr(&o));
        assert!(stderr(&o).contains(want), "{p}: {}", stderr(&o));
    }
}

/// `snat-run functions --json | head -c 100`: a reader that goes away ends the output
/// quietly (the listing is larger than a pipe's buffer, so the write does fail).
#[test]
fn functions_into_a_closed_pipe_does_not_panic() {
    let mut child = Command::new(bin())
        .args(["functions", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 100];
    use std::io::Read as _;
    child.stdout.as_mut().unwrap().read_exact(&mut first).unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{:?}: {}", o.status, stderr(&o));
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}

/// `audit verify` of a directory without records fails: it is the wrong directory, or
/// every record was removed, and "chain intact" would hide both.
#[test]
fn audit_verify_of_a_directory_without_records_fails() {
    let dir = tempfile::tempdir().unwrap();
    let o = Command::new(bin())
        .args(["audit", "verify"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("no audit records in"), "{}", stderr(&o));
    assert!(o.stdout.is_empty());
}

/// A trace that cannot start (no privileges) leaves an existing `text_out` file as it was
/// and creates no `jsonl_out` file: the output files are emptied only once the tracer is
/// attached. Run as nobody when root, so the attach fails either way.
#[test]
fn a_trace_that_cannot_start_leaves_its_output_files_alone() {
    let u = Unprivileged::new();
    let old = u.file("old.txt", "yesterday's trace\n");
    let new = u.dir.path().join("new.jsonl");
    let playbook = u.file(
        "t.rhai",
        &format!(
            "trace::run(#{{seconds: 1, mode: \"stream\", text_out: {:?}, jsonl_out: {:?}}});\n",
            old.display().to_string(),
            new.display().to_string()
        ),
    );
    let o = u.run(&playbook, "");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("stage trace::run failed"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&old).unwrap(), "yesterday's trace\n");
    assert!(!new.exists(), "a file the failed trace created is removed");
}

/// A playbook that reports what a trace or a log read saw: its event count and notes.
const REPORTS_WHAT_IT_SAW: &str = r#"let t = TRACE;
report::text("notes", t.notes.reduce(|acc, n| acc + n + "\n", ""));
report::verdict("clear", `${t.totals.events} events`);
"#;

/// The sample log's lines, and a snat-run reading `tcptracer::read("-")` from a pipe that
/// already holds the first 100 of them (started: its audit directory exists).
fn reading_a_pipe(r: &Run) -> (Vec<String>, std::process::Child, std::process::ChildStdin) {
    let lines: Vec<String> = std::fs::read_to_string(data("tcptracer/sample-t4v.log"))
        .unwrap()
        .lines()
        .map(|l| format!("{l}\n"))
        .collect();
    let p = r.playbook(
        "pipe.rhai",
        &REPORTS_WHAT_IT_SAW.replace("TRACE", r#"tcptracer::read("-")"#),
    );
    let mut child = r
        .cmd(&p, &[])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(lines[..100].concat().as_bytes()).unwrap();
    wait_for_start(&mut child, &r.audit());
    (lines, child, stdin)
}

/// A SIGINT sent to snat-run alone (`timeout -s INT`, an orchestrator) while the writer of
/// its stdin lives on: what the pipe held is read, and once the pipe has been silent for a
/// second the playbook reports, exit 0, instead of waiting for a writer that may never stop.
#[test]
fn sigint_while_a_live_writer_is_silent_ends_the_read() {
    let r = Run::new();
    let (_, child, stdin) = reading_a_pipe(&r);
    let t0 = Instant::now();
    signal(&child, libc::SIGINT);
    // The writer stays, silent, with the pipe open (for 25 s: long enough to tell).
    let writer = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(25));
        drop(stdin);
    });
    let o = child.wait_with_output().unwrap();
    let took = t0.elapsed();
    drop(writer);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(took < Duration::from_secs(20), "took {took:?}");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("98 events"), "{out}");
    assert!(out.contains("or fell silent for 1 s"), "{out}");
    assert_eq!(r.records()[0]["outcome"]["kind"], "completed");
}

/// `tcptracer -t4v | snat-run ... log=-` stopped with Ctrl-C: the SIGINT reaches snat-run
/// too. The first one must not throw the log away: stdin is read to its end (what the
/// pipe still holds) and the playbook reports, exit 0. A second SIGINT stops the run.
#[test]
fn sigint_while_reading_a_pipe_reads_it_to_the_end_and_reports() {
    for twice in [false, true] {
        let r = Run::new();
        let (lines, child, mut stdin) = reading_a_pipe(&r);
        signal(&child, libc::SIGINT);
        std::thread::sleep(Duration::from_millis(300));
        if twice {
            signal(&child, libc::SIGINT);
            let o = child.wait_with_output().unwrap();
            drop(stdin);
            assert_eq!(code(&o), 130, "a second SIGINT stops the run: {}", stderr(&o));
            assert_eq!(r.records()[0]["outcome"]["kind"], "interrupted");
            continue;
        }
        // What tcptracer wrote before it died is still in the pipe.
        stdin.write_all(lines[100..].concat().as_bytes()).unwrap();
        drop(stdin);
        let o = child.wait_with_output().unwrap();
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        let events = lines.len() - 2; // the banner and the header are not events
        assert!(out.contains(&format!("{events} events")), "{out}");
        assert!(out.contains("Ctrl-C (SIGINT) came while stdin was read"), "{out}");
        assert!(
            stderr(&o).contains("ending the observation window now"),
            "{}",
            stderr(&o)
        );
        r.only_record("completed");
    }
}

/// Ctrl-C during a live trace ends the trace window, like tcptracer's: the playbook
/// reports what was traced until then (exit 0) and the trace says it was cut short.
#[test]
fn sigint_during_a_live_trace_ends_the_window_and_reports() {
    if !snat_testbed::require_root() {
        return;
    }
    let r = Run::new();
    let p = r.playbook(
        "live.rhai",
        &REPORTS_WHAT_IT_SAW.replace("TRACE", "trace::run(#{seconds: 60})"),
    );
    let t0 = Instant::now();
    let mut child = r
        .cmd(&p, &[])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the tracer is attached: the child holds an eBPF link.
    let fds = format!("/proc/{}/fd", child.id());
    let attached = || {
        std::fs::read_dir(&fds).is_ok_and(|d| {
            d.filter_map(Result::ok)
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().contains("bpf_link")))
        })
    };
    while !attached() {
        assert!(t0.elapsed() < Duration::from_secs(30), "the tracer never attached");
        assert!(child.try_wait().unwrap().is_none(), "snat-run ended before attaching");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    signal(&child, libc::SIGINT);
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(t0.elapsed() < Duration::from_secs(45), "the window ended early");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("the trace window was ended by Ctrl-C (SIGINT) after"),
        "{out}"
    );
    r.only_record("completed");
}

/// `tcptracer -t4v | snat-run examples/tcptracer-log.rhai --param log=-` where tcptracer
/// failed to start (no kprobes, say): an empty pipe is a failed stage, not "clear".
#[test]
fn an_empty_pipe_is_not_a_clear_node() {
    let r = Run::new();
    let o = r.run(&example("tcptracer-log.rhai"), &["--param", "log=-"]);
    expect_exit(
        &o,
        1,
        "stage tcptracer::read failed: -: not a tcptracer log: it is empty",
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("Verdict: clear"));
    assert_eq!(r.records()[0]["outcome"]["kind"], "stage_failed");
}

/// `--host-proc` naming an empty directory (a hostPath mount that failed) fails the
/// census; it used to find no namespace and report "clear".
#[test]
fn an_empty_host_proc_is_not_a_clear_node() {
    let r = Run::new();
    let empty = r.dir.path().join("fakeproc");
    std::fs::create_dir(&empty).unwrap();
    let o = r.run(&example("census.rhai"), &["--host-proc", empty.to_str().unwrap()]);
    expect_exit(&o, 1, "no process directory (a number) in");
    assert!(!String::from_utf8_lossy(&o.stdout).contains("Verdict: clear"));
}

/// An hour of tcptracer -t4v log with one connect every 3.6 s to one destination: 1,000
/// connects, but at most 67 within the 240 s a SNAT port stays held, so no pressure. Read
/// from stdin (no second pass for the TIME column) the whole log's count is used, and the
/// notes say it overstates.
#[test]
fn tcptracer_log_weighs_connects_by_the_time_a_port_is_held() {
    let r = Run::new();
    let mut log = String::from(T4V_HEAD);
    for i in 0..1000u64 {
        let t = i * 3_600_000_000;
        log += &format!(
            "{t:<13} connect      100    app              4  10.244.0.5       20.50.60.70      {:<6} 443    4026532001\n",
            30000 + i
        );
    }
    let path = r.dir.path().join("hour.log");
    std::fs::write(&path, &log).unwrap();
    let playbook = example("tcptracer-log.rhai");
    let o = r.run(&playbook, &["--param", &format!("log={}", path.display())]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("most connects in 240 s"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("67 ") && l.contains("1000") && l.contains("20.50.60.70")),
        "{out}"
    );
    // From stdin: all 1,000 count, with the note.
    let mut child = r
        .cmd(&playbook, &["--param", "log=-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(log.as_bytes()).unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("the log came from stdin, which cannot be read twice"),
        "{out}"
    );
}

/// tcptracer-log.rhai names the namespace behind the hot destination, not the namespace
/// with the most public connects overall: 800 connects from A to one destination are SNAT
/// pressure; 900 from B to 900 destinations are not.
#[test]
fn tcptracer_log_names_the_namespace_behind_the_hot_destination() {
    let r = Run::new();
    let mut log = String::from(T4V_HEAD);
    let line = |t: u64, pid: u32, saddr: &str, daddr: &str, sport: u32, netns: u64| {
        format!(
            "{t:<13} connect      {pid:<6} {:<16} 4  {saddr:<16} {daddr:<16} {sport:<6} {:<6} {netns}\n",
            "app", 443
        )
    };
    for i in 0..800u32 {
        log += &line(
            u64::from(i) * 1000,
            100,
            "10.244.0.5",
            "20.50.60.70",
            30000 + i,
            4026532001,
        );
    }
    for i in 0..900u32 {
        let daddr = format!("52.{}.{}.9", 1 + i / 200, i % 200);
        log += &line(
            900_000 + u64::from(i) * 1000,
            200,
            "10.244.0.6",
            &daddr,
            30000 + i,
            4026532002,
        );
    }
    let path = r.dir.path().join("mislead.log");
    std::fs::write(&path, log).unwrap();
    let o = r.run(
        &example("tcptracer-log.rhai"),
        &["--param", &format!("log={}", path.display()), "--output", "json"],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let rep: Value = serde_json::from_slice(&o.stdout).unwrap();
    let findings = rep["findings"].as_array().unwrap();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(findings[0]["netns"], 4026532001u64, "{findings:?}");
    assert_eq!(findings[0]["destination"], "20.50.60.70:443");
    assert!(
        rep["summary"]
            .as_str()
            .unwrap()
            .ends_with("mostly from netns 4026532001"),
        "{}",
        rep["summary"]
    );
}

/// `--output json` keeps its promise of one JSON document on stdout also when the
/// invocation is refused before the playbook runs (clap's errors, snat-run's own checks,
/// an audit directory that cannot be written).
#[test]
fn refused_invocations_still_print_one_json_document() {
    let r = Run::new();
    let p = r.playbook("a.rhai", "let x = param(\"a\", 1);");
    let unwritable = r.dir.path().join("file-not-dir");
    std::fs::write(&unwritable, "").unwrap();
    for (args, kind, code_want, msg) in [
        (
            vec!["--allow", "nuke"],
            "usage_error",
            2,
            "--allow nuke: no such action",
        ),
        (
            vec!["--param", "a=1", "--param", "a=2"],
            "usage_error",
            2,
            "--param a given twice",
        ),
        (vec!["--param", "novalue"], "usage_error", 2, "novalue"),
        (vec!["--bogus-flag"], "usage_error", 2, "--bogus-flag"),
    ] {
        let mut all = vec!["-o", "json"];
        all.extend(args.iter().copied());
        let o = r.run(&p, &all);
        assert_eq!(code(&o), code_want, "{args:?}: {}", stderr(&o));
        let doc: Value = serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("{args:?}: stdout is not one JSON document ({e}): {:?}", o.stdout));
        assert_eq!(doc["error"]["kind"], kind, "{args:?}: {doc}");
        assert_eq!(doc["exit_code"], code_want, "{args:?}");
        assert!(
            doc["error"]["message"].as_str().unwrap().contains(msg),
            "{args:?}: {doc}"
        );
    }
    let o = Command::new(bin())
        .arg(&p)
        .args(["-o", "json", "--audit-dir"])
        .arg(unwritable.join("sub"))
        .env("SNAT_AUDIT_DIR", r.fallback())
        .output()
        .unwrap();
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let doc: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!(doc["error"]["kind"], "audit_unwritable", "{doc}");
    // A command line clap refuses, into that directory: one document too (not a second
    // one for the refusal), and the exit code it names.
    let o = Command::new(bin())
        .arg(&p)
        .args(["-o", "json", "--bogus-flag", "--audit-dir"])
        .arg(unwritable.join("sub"))
        .env("SNAT_AUDIT_DIR", r.fallback())
        .output()
        .unwrap();
    let doc: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    assert_eq!(doc["error"]["kind"], "audit_unwritable", "{doc}");
    assert_eq!(doc["exit_code"], code(&o), "{doc}");
    let rec_path = PathBuf::from(doc["audit_record"].as_str().expect("recorded in the fallback"));
    assert!(rec_path.starts_with(r.fallback()), "{doc}");
    // Its record names the command line's mistake as well as the directory.
    let rec: Value = serde_json::from_slice(&std::fs::read(&rec_path).unwrap()).unwrap();
    let msg = rec["outcome"]["message"].as_str().unwrap();
    assert!(msg.contains("--bogus-flag") && msg.contains("file-not-dir"), "{msg}");
    // The four refused command lines are recorded (clap's too); the two runs into the
    // unwritable directory in the fallback.
    assert_eq!(r.records().len(), 4);
    assert_eq!(records_in(&r.fallback()).len(), 2);
}

/// A playbook's `warn()` is one plain line on stderr: not twice (once through the log
/// subscriber), and without terminal colour codes when stderr is a file.
#[test]
fn a_warning_is_one_plain_line() {
    let r = Run::new();
    let p = r.playbook("w.rhai", "warn(\"disk is hot\");\nlog(\"step 1\");\n");
    let o = r.run(&p, &[]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.matches("disk is hot").count(), 1, "{err}");
    assert!(err.lines().any(|l| l == "warning: disk is hot"), "{err}");
    assert_eq!(err.matches("step 1").count(), 1, "{err}");
    assert!(!err.contains('\u{1b}'), "no ANSI escapes: {err:?}");
    let o = r.run(&p, &["-v"]);
    assert_eq!(stderr(&o).matches("step 1").count(), 1, "{}", stderr(&o));
}

/// A failed connect to a public destination is pressure however few connects it had
/// (snat's own `text_out` records them): found past the rows the table shows.
#[test]
fn tcptracer_log_flags_a_failed_connect_to_a_quiet_destination() {
    let r = Run::new();
    let mut log = String::from(T4V_HEAD);
    for i in 0..30u32 {
        log += &format!(
            "{:<13} connect      100    app              4  10.244.0.5       20.1.1.{:<8} {:<6} 443    4026532001\n",
            u64::from(i) * 1000,
            i + 1,
            30000 + i
        );
    }
    log += "99000         failed_connect 200  job              4  10.244.0.6       20.9.9.9         31000  443    4026532002\n";
    let path = r.dir.path().join("failed.log");
    std::fs::write(&path, log).unwrap();
    let o = r.run(
        &example("tcptracer-log.rhai"),
        &[
            "--param",
            &format!("log={}", path.display()),
            "--param",
            "top=3",
            "-o",
            "json",
        ],
    );
    assert_eq!(code(&o), 3, "{}", stderr(&o));
    let rep: Value = serde_json::from_slice(&o.stdout).unwrap();
    let f = &rep["findings"][0];
    assert_eq!(f["destination"], "20.9.9.9:443", "{rep}");
    assert_eq!(f["netns"], 4026532002u64, "{rep}");
    assert_eq!(f["severity"], "critical");
}

/// verify-fix compares flows held: two runs of tcptracer-log (whose findings count connects
/// in a log) are refused, not reported as "pressure dropped" from 0 to 0.
#[test]
fn verify_fix_refuses_runs_without_flows_to_compare() {
    let r = Run::new();
    let log = format!("log={}", data("tcptracer/incident-t4v.log").display());
    for _ in 0..2 {
        let o = r.run(&example("tcptracer-log.rhai"), &["--param", &log]);
        assert_eq!(code(&o), 3, "{}", stderr(&o));
    }
    let o = r.run(&example("verify-fix.rhai"), &["--param", "playbook=tcptracer-log"]);
    assert_ne!(code(&o), 0, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("whose findings count connects in a log, not the flows a node holds"),
        "{}",
        stderr(&o)
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("dropped"));
}

/// `--html` into a directory that does not exist is refused before the run (a trace of
/// minutes would otherwise end with a warning and no HTML report), with nothing run.
#[test]
fn an_html_report_that_cannot_be_written_is_refused_up_front() {
    let r = Run::new();
    let p = r.playbook("h.rhai", "report::verdict(\"clear\", \"fine\");");
    let html = r.dir.path().join("no-such-dir").join("r.html");
    let o = r.run(&p, &["--html", html.to_str().unwrap()]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("--html"), "{}", stderr(&o));
    assert!(stderr(&o).contains("cannot write into"), "{}", stderr(&o));
    assert!(
        !stderr(&o).contains("cannot write the HTML report"),
        "the refusal is the only word on it: {}",
        stderr(&o)
    );
    r.only_record("playbook_error");
    let ok = r.dir.path().join("r.html");
    let o = r.run(&p, &["--html", ok.to_str().unwrap()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert!(ok.exists());
}

/// `-q` keeps stderr for what needs a reader: a run that went well, with an HTML report and
/// a playbook that logs, prints nothing there; a warning and an error still do. Without
/// `-q` the same run says where the HTML report went and shows the log line.
#[rstest::rstest]
#[case::quiet_and_well(&["-q"], "log(\"counting\");", 0, &[])]
#[case::quiet_long_flag(&["--quiet"], "log(\"counting\");", 0, &[])]
#[case::chatty(&[], "log(\"counting\");", 0, &["HTML report: ", "counting"])]
#[case::quiet_keeps_warnings(&["-q"], "warn(\"half the pods unread\");", 0, &["warning: half the pods unread"])]
#[case::quiet_keeps_errors(&["-q"], "throw \"boom\";", 2, &["snat-run: error: ", "boom"])]
fn quiet_prints_only_warnings_and_errors(
    #[case] flags: &[&str],
    #[case] body: &str,
    #[case] want_code: i32,
    #[case] want_stderr: &[&str],
) {
    let r = Run::new();
    let p = r.playbook("q.rhai", &format!("{body}\nreport::verdict(\"clear\", \"fine\");\n"));
    let html = r.dir.path().join("out.html");
    let mut args = flags.to_vec();
    args.extend(["--html", html.to_str().unwrap()]);
    let o = r.run(&p, &args);
    assert_eq!(code(&o), want_code, "{}", stderr(&o));
    assert!(html.exists(), "the HTML report is written all the same");
    let err = stderr(&o);
    if want_stderr.is_empty() {
        assert_eq!(err, "", "nothing on stderr");
    }
    for want in want_stderr {
        assert!(err.contains(want), "{want:?} in {err:?}");
    }
}

/// The example playbook of `deploy/reference/job-template.yaml` (what a reader replaces
/// with theirs) is a working playbook once YAML has read it: it runs here as the node Job
/// would run it (a stage may fail without root, but the playbook itself is never wrong).
#[test]
fn the_job_template_example_playbook_runs() {
    let text = std::fs::read_to_string(repo().join("deploy/reference/job-template.yaml")).unwrap();
    let job: k8s_openapi::api::batch::v1::Job = serde_saphyr::from_str(&text).unwrap();
    let container = &job.spec.unwrap().template.spec.unwrap().containers[0];
    let env = &container.env.as_ref().unwrap()[0];
    assert_eq!(env.name, "SNAT_PLAYBOOK");
    let example = env.value.clone().unwrap();
    let r = Run::new();
    let p = r.playbook("example.rhai", &example);
    let o = r.run(&p, &["-o", "json"]);
    let doc: Value = serde_json::from_slice(&o.stdout).expect("one JSON document");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        assert_eq!(doc["verdict"], "clear", "{doc}");
        assert_eq!(
            doc["sections"][0]["title"], "ESTABLISHED sockets per network namespace",
            "{doc}"
        );
    } else {
        assert_ne!(code(&o), 2, "the playbook is not wrong: {}", stderr(&o));
    }
}

/// The HTML page of a run that failed, or that the playbook ended with `report::fail`,
/// says why (as the JSON document's `error` does), not only "No verdict".
#[test]
fn an_html_report_of_a_failed_run_says_why() {
    let r = Run::new();
    let missing = r.dir.path().join("no-such.log");
    let p = r.playbook("f.rhai", &format!("tcptracer::read({:?});", missing.to_str().unwrap()));
    let html = r.dir.path().join("f.html");
    let o = r.run(&p, &["--html", html.to_str().unwrap()]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("The run failed (stage_failed)"), "{page}");
    assert!(page.contains("cannot open tcptracer log"), "{page}");
    let p = r.playbook("g.rhai", "report::fail(\"the API said 503 & gave up\");");
    let o = r.run(&p, &["--html", html.to_str().unwrap()]);
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("the API said 503 &amp; gave up"), "{page}");
}

/// Command-line slips an SRE makes get a pointer: a subcommand typo is not run as a
/// missing playbook (no audit record), and `KEY=VALUE` without `--param` says how.
#[test]
fn command_line_slips_say_what_was_meant() {
    let r = Run::new();
    let o = r.run(Path::new("funtions"), &[]);
    expect_exit(
        &o,
        2,
        "no playbook or subcommand \"funtions\" (did you mean `functions`?)",
    );
    r.only_record("playbook_error");
    let o = r.run(Path::new("help"), &[]);
    expect_exit(&o, 2, "for help, run snat-run --help");
    let p = r.playbook("p.rhai", "let l = param(\"log\");");
    let o = r.run(&p, &["log=x"]);
    expect_exit(
        &o,
        2,
        "hint: a playbook parameter is passed as --param log=x (or -p log=x)",
    );
    // A real --param next to another mistake gets no such hint.
    let o = r.run(&p, &["--param", "log=x", "--bogus"]);
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(!stderr(&o).contains("hint:"), "{}", stderr(&o));
}

/// Without root's file access (a user with CAP_BPF and CAP_PERFMON only), the classic
/// tracepoint cannot be found in tracefs, which is mounted 0700: the error says that,
/// not "tracefs is not mounted" (mounting it again would not help).
#[test]
fn tracefs_that_cannot_be_read_is_not_called_unmounted() {
    if !snat_testbed::require_root() {
        return;
    }
    let u = Unprivileged::new();
    let playbook = u.file("tp.rhai", "trace::run(#{seconds: 1, attach: \"tracepoint\"});\n");
    let o = u.run(&playbook, "+bpf,+perfmon");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        stderr(&o).contains(
            "tracefs is mounted but this process may not read /sys/kernel/tracing/events/sock/inet_sock_set_state (permission denied"
        ),
        "{}",
        stderr(&o)
    );
    assert!(!stderr(&o).contains("not mounted"), "{}", stderr(&o));
}
