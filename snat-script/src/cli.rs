//! The `snat-run` command line (also installed as `kubectl-snat`, so that `kubectl snat ...`
//! works as a kubectl plugin): run a playbook, list the functions playbooks can call,
//! verify audit records.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use crate::ctx::RunOptions;
use crate::engine::Limits;
use crate::runner::{self, OutputFormat, RunRequest};
use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};

const EXIT_CODES: &str = "\
Exit codes:
  0  the playbook ran and found nothing (verdict \"clear\" or none)
  3  the playbook ran and its verdict is \"SNAT pressure found\"
  2  the playbook or its parameters are wrong (syntax, limit hit, a missing, bad or unknown
     --param, a bad argument), reported as PLAYBOOK:LINE:COL: message, with the source line
     and a caret
  1  a stage failed at run time (permissions, I/O, API), reported as PLAYBOOK:LINE:COL: stage
     NAME failed: cause; or the audit directory cannot be written (the playbook does not
     run)
  130/143  interrupted by SIGINT/SIGTERM (the audit record is still written); during a live
     trace or a read of a log from stdin, the first Ctrl-C only ends that window and the
     playbook reports what was seen; a second Ctrl-C stops the run

Every run of a playbook leaves exactly one JSON audit record in the audit directory:
--audit-dir, else $SNAT_AUDIT_DIR, else /var/lib/snat/audit as root, else
$XDG_STATE_HOME/snat/audit (~/.local/state/snat/audit). Check the chain with
`snat-run audit verify DIR`. If that directory cannot be written, the playbook does not
run (exit 1), and the refusal is recorded in a fallback directory: the default one above
when it is another directory, else snat-audit-<uid> in the temporary directory ($TMPDIR
or the system's; created 0700, refused if another user owns it); stderr (audit record:
PATH) and the JSON document's audit_record say where the record is. The value of a
secret --param (token=..., password=...) is replaced by <redacted> in the record and in
everything snat-run prints, whatever whitespace separates its words there; a value shorter
than 4 characters is hidden only where the parameter itself is shown (looking for it in
every text would blank every \"1\" or \"on\"). --param-file FILE gives parameters as lines of
KEY=VALUE (kept off the shell history and ps), hidden the same way. On nodes
(--on-node/--all-nodes), the secret parameters go in a Secret the node pods mount (needs the
Role snat-fleet's create/delete on secrets), never in the Jobs' command line.

Examples:
  snat-run examples/tcptracer-log.rhai --param log=tcptracer.log
  tcptracer -t4v | snat-run examples/tcptracer-log.rhai --param log=- --output json
  snat-run examples/census.rhai --all-nodes --image myregistry.azurecr.io/snat:0.1.0
  snat-run examples/census.rhai --param-file census.params
  snat-run functions
  snat-run audit verify /var/lib/snat/audit";

/// Find which pod on which node is exhausting SNAT ports: run a snat playbook.
///
/// A playbook is a Rhai script that calls snat's stages (read a tcptracer log, trace live,
/// census sockets, resolve pods, read SNAT metrics...) and builds a report. `snat-run
/// functions` lists everything a playbook can call.
#[derive(Debug, Parser)]
#[command(
    name = "snat-run",
    version,
    after_long_help = EXIT_CODES,
    after_help = "Exit codes: 0 clear, 3 SNAT pressure found, 2 playbook/param error, 1 stage failure. See --help.",
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true,
    disable_help_subcommand = true,
    arg_required_else_help = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The playbook to run (a .rhai file).
    #[arg(value_name = "PLAYBOOK.rhai", required = true)]
    playbook: Option<PathBuf>,

    /// A parameter for the playbook, read there with param("KEY"). Repeatable. A KEY the
    /// playbook never reads is refused before it runs (exit 2), so a typo cannot leave a
    /// setting at its default.
    #[arg(short = 'p', long = "param", value_name = "KEY=VALUE", value_parser = runner::parse_param)]
    params: Vec<(String, String)>,

    /// Parameters for the playbook from FILE, as --param gives them: one KEY=VALUE per line,
    /// the value taken exactly (everything after the first '=' to the end of the line,
    /// spaces and '=' included); blank lines and lines starting with # are skipped.
    /// Repeatable; a KEY given twice (in files or with --param) is refused. Keeps a token
    /// off the shell history and out of `ps`; secret values are hidden as --param's are.
    #[arg(long, value_name = "FILE")]
    param_file: Vec<PathBuf>,

    /// How to print the report: aligned tables, or exactly one JSON document on stdout
    /// (logs always go to stderr).
    #[arg(short, long, value_enum, default_value_t = Output::Table)]
    output: Output,

    /// Also write a self-contained HTML report (tables, findings, charts) to FILE. Its
    /// directory is checked before the run starts.
    #[arg(long, value_name = "FILE")]
    html: Option<PathBuf>,

    /// Where the run's audit record goes [default: $SNAT_AUDIT_DIR, else /var/lib/snat/audit
    /// as root, else ~/.local/state/snat/audit]. If it cannot be written, the playbook does
    /// not run (exit 1) and the refusal is recorded in a fallback directory (see --help).
    #[arg(long, value_name = "DIR")]
    audit_dir: Option<PathBuf>,

    /// Plan remediation actions and print the exact API requests, but change nothing.
    #[arg(long)]
    dry_run: bool,

    /// Allow a remediation action (event, annotate, label, restart, cordon). Repeatable.
    /// Every action is off unless named here.
    #[arg(long, value_name = "ACTION")]
    allow: Vec<String>,

    /// Root of the host's /proc (e.g. /host/proc when running in a container).
    #[arg(long, value_name = "DIR", default_value = "/proc")]
    host_proc: PathBuf,

    /// Path to the kubeconfig file to use (as kubectl's --kubeconfig).
    #[arg(long, value_name = "FILE")]
    kubeconfig: Option<PathBuf>,

    /// The kubeconfig context to use (as kubectl's --context).
    #[arg(long, value_name = "NAME")]
    context: Option<String>,

    /// More logging on stderr (-v info, -vv debug, -vvv trace).
    #[arg(short, long, action = clap::ArgAction::Count)]
    verbose: u8,

    /// Nothing informational on stderr: no progress lines, no "HTML report: FILE", no
    /// playbook log() lines, no list of the nodes --all-nodes skips. Warnings, errors, the
    /// playbook's warn() and print() lines and --dry-run's planned requests still print, so
    /// a run that went well prints nothing on stderr.
    #[arg(short, long)]
    quiet: bool,

    #[command(flatten)]
    limits: LimitArgs,

    #[command(flatten)]
    fleet: FleetArgs,
}

/// Running the playbook on cluster nodes, as Kubernetes Jobs, instead of here.
#[derive(Debug, Args)]
#[command(next_help_heading = "On cluster nodes")]
struct FleetArgs {
    /// Run the playbook on this node, as a Job pinned to it (privileged, host PID and network
    /// namespaces), instead of here. Repeatable (a node named twice runs once). Needs --image.
    #[arg(long, value_name = "NODE")]
    on_node: Vec<String>,

    /// Run the playbook on every Linux node of the cluster (Windows and virtual-kubelet nodes
    /// are skipped and named; a NotReady node fails at once, without a Job). Needs --image.
    #[arg(long, conflicts_with = "on_node")]
    all_nodes: bool,

    /// The snat image the node Jobs run (e.g. myregistry.azurecr.io/snat:0.1.0).
    #[arg(long, value_name = "IMAGE")]
    image: Option<String>,

    /// At most this many node Jobs at a time [default: 10].
    #[arg(long, value_name = "N")]
    concurrency: Option<usize>,

    /// Namespace of the node Jobs (with the snat-node ServiceAccount) [default: snat].
    #[arg(long, value_name = "NS")]
    namespace: Option<String>,
}

impl FleetArgs {
    /// `--concurrency` when not given.
    const CONCURRENCY: usize = 10;
    /// `--namespace` when not given.
    const NAMESPACE: &str = "snat";

    /// The fleet-only flags given, in the order `--help` lists them: without `--on-node`
    /// or `--all-nodes` they do nothing, which is worth a warning.
    fn given_without_nodes(&self) -> Vec<&'static str> {
        [
            ("--image", self.image.is_some()),
            ("--concurrency", self.concurrency.is_some()),
            ("--namespace", self.namespace.is_some()),
        ]
        .into_iter()
        .filter_map(|(flag, given)| given.then_some(flag))
        .collect()
    }
}

/// Sandbox limits (the defaults suit every shipped playbook).
#[derive(Debug, Args)]
#[command(next_help_heading = "Sandbox limits")]
struct LimitArgs {
    /// Operations before the playbook is stopped (endless-loop guard; 0: no limit).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_operations)]
    max_operations: u64,
    /// Nested function calls.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_call_depth)]
    max_call_depth: usize,
    /// Bytes in one string.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_string_size)]
    max_string_size: usize,
    /// Items in one array.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_array_size)]
    max_array_size: usize,
    /// Entries in one map.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_map_size)]
    max_map_size: usize,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Table,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List every function a playbook can call, with its signature and documentation.
    Functions {
        /// Print as JSON (Rhai's metadata format).
        #[arg(long)]
        json: bool,
        /// Also write Rhai definition files (.d.rhai) for editors into DIR.
        #[arg(long, value_name = "DIR")]
        definitions: Option<PathBuf>,
    },
    /// Work with audit records.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Recompute the hash chain of the records in DIR; exit 1 and name the first record
    /// that breaks it.
    Verify {
        /// The audit directory.
        dir: PathBuf,
        /// Print one JSON document on stdout instead of text: `status` ("intact", "broken",
        /// "empty" or "unreadable"), `dir`, `records`, `head`, `head_sha256`, `break`
        /// ({file, reason} or null) and `error` (or null). The exit code is the same.
        #[arg(long)]
        json: bool,
    },
}

fn init_tracing(verbose: u8) {
    // kube_client logs each failed request as an ERROR; snat's stages report (and retry)
    // them already, so its lines are only shown from -vv on.
    let level = match verbose {
        0 => "warn,kube_client=off",
        1 => "info,kube_client=off",
        2 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SNAT_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(runner::stderr_is_terminal())
        .try_init();
}

fn print_chain(err: &(dyn std::error::Error + 'static)) {
    eprintln!("{}: error: {}", crate::program_name(), crate::ctx::error_chain(err));
}

/// Whether this process may create files in `dir` (an existing directory, with write and
/// search permission).
fn writable_dir(dir: &std::path::Path) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    match std::fs::metadata(dir) {
        Err(e) => return Err(e.to_string()),
        Ok(m) if !m.is_dir() => return Err("not a directory".into()),
        Ok(_) => {}
    }
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).map_err(|e| e.to_string())?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().to_string())
    }
}

/// Whether the command line asks for `--output json` (read before clap, whose errors come
/// before any parsed option).
fn wants_json(args: &[String]) -> bool {
    args.windows(2)
        .any(|w| (w[0] == "-o" || w[0] == "--output") && w[1] == "json")
        || args.iter().any(|a| a == "--output=json" || a == "-ojson")
}

/// With `--output json`, an invocation refused before a run could be recorded (no usable
/// audit directory, or a mistake in `functions`/`audit`) still prints its one JSON document,
/// with no run id and no audit record.
fn refused_json(playbook: Option<&std::path::Path>, kind: &str, message: &str, code: u8) {
    let playbook = playbook.map(|p| p.display().to_string());
    let doc = crate::report::refused_json(playbook.as_deref(), kind, message, code);
    let _ = out(&format!("{}\n", serde_json::to_string_pretty(&doc).unwrap_or_default()));
}

/// Parse the command line, run, and return the exit code (errors already printed).
pub fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // As a kubectl plugin (`kubectl snat ...` runs kubectl-snat), help, usage and
    // --version say so.
    let plugin = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .is_some_and(|n| n.to_string_lossy().starts_with("kubectl-snat"));
    let name = if plugin { "kubectl snat" } else { "snat-run" };
    crate::set_program_name(name);
    let parsed = {
        use clap::{CommandFactory, FromArgMatches};
        named(Cli::command(), name)
            .name(name)
            .bin_name(name)
            .try_get_matches_from(&args)
            .and_then(|m| Cli::from_arg_matches(&m))
    };
    let cli = match parsed {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // clap quotes the command line back: without its secrets, as in the record.
            let plain = e.render().to_string();
            let shown = redact_command_line_text(&plain, &args);
            if shown == plain {
                let _ = e.print();
            } else {
                eprint!("{shown}");
            }
            // `snat-run playbook.rhai log=x`: clap reads the KEY=VALUE as a subcommand.
            if let Some(kv) = args
                .windows(2)
                .find(|w| !matches!(w[0].as_str(), "-p" | "--param") && !w[1].starts_with('-') && w[1].contains('='))
                .map(|w| &w[1])
            {
                eprintln!(
                    "{}",
                    redact_command_line_text(
                        &format!(
                            "{}: hint: a playbook parameter is passed as --param {kv} (or -p {kv})",
                            crate::program_name()
                        ),
                        &args
                    )
                );
            }
            let text = e.render().to_string();
            let first = clap_summary(&text);
            let first = first.as_str();
            if names_a_playbook_run(&args) {
                return record_refused_command_line(&args, first);
            }
            if wants_json(&args) {
                refused_json(None, "usage_error", first, 2);
            }
            return ExitCode::from(2);
        }
    };
    match cli.command {
        Some(Command::Functions { json, definitions }) => match functions(json, definitions) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{}: error: {e:#}", crate::program_name());
                ExitCode::from(1)
            }
        },
        Some(Command::Audit {
            command: AuditCommand::Verify { dir, json },
        }) => {
            if json {
                audit_verify_json(&dir)
            } else {
                audit_verify(&dir)
            }
        }
        None => run(cli.run),
    }
}

/// `cmd` with every mention of `snat-run` in its help texts (about, after-help, exit codes,
/// examples, each argument's help), and in its subcommands', saying `name` instead: the
/// kubectl plugin's help reads `kubectl snat ...` throughout.
fn named(cmd: clap::Command, name: &str) -> clap::Command {
    if name == "snat-run" {
        return cmd;
    }
    let sub = |t: Option<&clap::builder::StyledStr>| t.map(|t| t.to_string().replace("snat-run", name));
    let mut cmd = cmd;
    if let Some(t) = sub(cmd.get_about()) {
        cmd = cmd.about(t);
    }
    if let Some(t) = sub(cmd.get_long_about()) {
        cmd = cmd.long_about(t);
    }
    if let Some(t) = sub(cmd.get_before_help()) {
        cmd = cmd.before_help(t);
    }
    if let Some(t) = sub(cmd.get_before_long_help()) {
        cmd = cmd.before_long_help(t);
    }
    if let Some(t) = sub(cmd.get_after_help()) {
        cmd = cmd.after_help(t);
    }
    if let Some(t) = sub(cmd.get_after_long_help()) {
        cmd = cmd.after_long_help(t);
    }
    let args: Vec<clap::Id> = cmd.get_arguments().map(|a| a.get_id().clone()).collect();
    for id in args {
        cmd = cmd.mut_arg(id, |a| {
            let (help, long) = (sub(a.get_help()), sub(a.get_long_help()));
            let a = match help {
                Some(h) => a.help(h),
                None => a,
            };
            match long {
                Some(h) => a.long_help(h),
                None => a,
            }
        });
    }
    let subcommands: Vec<String> = cmd.get_subcommands().map(|c| c.get_name().to_string()).collect();
    for s in subcommands {
        cmd = cmd.mut_subcommand(s, |c| named(c, name));
    }
    cmd
}

/// clap's error in one line: its first paragraph (the message and, for a missing
/// argument, the arguments it names), without the `error: ` prefix, the tips and the usage.
fn clap_summary(rendered: &str) -> String {
    rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ")
        .trim_start_matches("error: ")
        .to_string()
}

/// Whether a command line clap refused was meant to run a playbook (not `functions` or
/// `audit`, whose mistakes run nothing and are not recorded).
fn names_a_playbook_run(args: &[String]) -> bool {
    !matches!(
        args.iter().skip(1).find(|a| !a.starts_with('-')).map(String::as_str),
        Some("functions" | "audit")
    )
}

/// The value of `--NAME VALUE` or `--NAME=VALUE` on a command line clap could not parse.
fn raw_option<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    let eq = format!("{name}=");
    args.iter().enumerate().skip(1).rev().find_map(|(i, a)| {
        if a == name {
            args.get(i + 1).map(String::as_str)
        } else {
            a.strip_prefix(&eq)
        }
    })
}

/// A command line clap refused (an unknown flag, a `--param` without `=`, a bad number) is
/// still a run of snat-run: it is recorded like the mistakes snat-run finds itself, in the
/// audit directory the command line names if it can be read from it, else the default,
/// with the command line (secrets redacted) in the outcome's message. Exit 2, or 1 when
/// that directory cannot be written (recorded then in the runner's fallback directory: the
/// runner's exit code, record and JSON document, as for any run).
fn record_refused_command_line(args: &[String], clap_message: &str) -> ExitCode {
    let json = wants_json(args);
    let audit_dir = raw_option(args, "--audit-dir")
        .map(PathBuf::from)
        .unwrap_or_else(snat_core::audit::default_dir);
    let playbook = args
        .iter()
        .skip(1)
        .find(|a| !a.starts_with('-') && a.ends_with(".rhai"))
        .map(PathBuf::from)
        .unwrap_or_default();
    let name = std::path::Path::new(&args[0])
        .file_name()
        .map_or_else(|| "snat-run".into(), |n| n.to_string_lossy());
    let (message, cmdline) = redact_refused_command_line(clap_message, args);
    let message = format!("{message} (command line: {name} {cmdline})");
    let req = RunRequest {
        playbook,
        // What the command line meant as parameters: recorded (redacted), and their secret
        // values kept out of the record wherever clap's message copied them.
        params: raw_params(args),
        options: RunOptions {
            progress: false,
            ..RunOptions::default()
        },
        limits: Limits::default(),
        output: if json { OutputFormat::Json } else { OutputFormat::Table },
        html: None,
        audit_dir,
        audit_fallback: true,
        handle_signals: true,
        signal_grace: Duration::from_secs(3),
        cancel: None,
        fleet: None,
        refused: Some(message),
    };
    let r = runner::run(req);
    if r.audit_record.is_none()
        && let Some(e) = &r.error_message
    {
        eprintln!(
            "{}: note: this refused command line left no audit record: {e}",
            crate::program_name()
        );
    }
    ExitCode::from(r.exit_code)
}

/// The `--param`/`-p` values of a command line clap could not parse, as `KEY=VALUE` or, a
/// likely slip, `KEY VALUE`.
fn raw_params(args: &[String]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut it = args.iter().skip(1);
    while let Some(a) = it.next() {
        let given = match a.as_str() {
            "-p" | "--param" => it.next().map(String::as_str),
            _ => a
                .strip_prefix("--param=")
                .or_else(|| a.strip_prefix("-p").filter(|v| !v.is_empty())),
        };
        let Some(given) = given else { continue };
        let split = given
            .split_once('=')
            .or_else(|| given.trim().split_once(char::is_whitespace));
        if let Some((k, v)) = split
            && !k.trim().is_empty()
        {
            out.entry(k.trim().to_string()).or_insert_with(|| v.trim().to_string());
        }
    }
    out
}

/// The secret values of a command line clap could not parse: of its `--param`s
/// ([`raw_params`]), and of its `KEY=VALUE` arguments given without `--param`.
fn command_line_secrets(args: &[String]) -> snat_core::audit::SecretValues {
    let mut params = raw_params(args);
    for a in args.iter().skip(1).filter(|a| !a.starts_with('-')) {
        if let Some((k, v)) = a.split_once('=') {
            params.entry(k.trim().to_string()).or_insert_with(|| v.to_string());
        }
    }
    snat_core::audit::SecretValues::from_params(&params)
}

/// clap's `message` and the command line `args` it refused, both without the values of
/// secret parameters ([`command_line_secrets`], looked for first: a value of several words
/// is one argument, which the command line's word-by-word redaction would cut), then with
/// what [`redact_refused`] hides.
fn redact_refused_command_line(message: &str, args: &[String]) -> (String, String) {
    let secrets = command_line_secrets(args);
    let cmdline = args.get(1..).unwrap_or_default().join(" ");
    redact_refused(&secrets.redact(message), &secrets.redact(&cmdline))
}

/// Text that quotes the command line `args` (clap's error, a hint), without the secrets the
/// refused command line's record keeps out (see [`redact_refused_command_line`]).
fn redact_command_line_text(text: &str, args: &[String]) -> String {
    redact_refused_command_line(text, args).0
}

/// clap's message and the command line it refused, with what the command line's redaction
/// hides (`--token=abc`, `--password abc`) also hidden where the message quotes it.
fn redact_refused(message: &str, cmdline: &str) -> (String, String) {
    let redacted = snat_core::audit::redact_cmdline(cmdline);
    let mut message = message.to_string();
    for (word, red) in cmdline.split_whitespace().zip(redacted.split_whitespace()) {
        if word == red {
            continue;
        }
        let secret = match (word.split_once('='), red.split_once('=')) {
            (Some((_, value)), Some(_)) => value,
            _ => word,
        };
        if !secret.is_empty() {
            message = message.replace(secret, snat_core::audit::REDACTED);
        }
    }
    (message, redacted)
}

fn run(a: RunArgs) -> ExitCode {
    init_tracing(a.verbose);
    let json = matches!(a.output, Output::Json);
    let Some(playbook) = a.playbook.clone() else {
        let msg = "no playbook given (see --help)";
        eprintln!("{}: error: {msg}", crate::program_name());
        if json {
            refused_json(None, "usage_error", msg, 2);
        }
        return ExitCode::from(2);
    };
    // A command-line mistake found now is still a run of this playbook: the runner records
    // it (exit 2) and runs nothing.
    let mut refused = invocation_problem(&a, &playbook);
    let file_params = match read_param_files(&a.param_file) {
        Ok(p) => p,
        Err(e) => {
            refused.get_or_insert(e);
            Vec::new()
        }
    };
    let mut seen = BTreeSet::new();
    if let Some((k, _)) = a
        .params
        .iter()
        .chain(&file_params)
        .find(|(k, _)| !seen.insert(k.clone()))
    {
        refused.get_or_insert_with(|| format!("parameter {k} given twice (with --param or in a --param-file)"));
    }
    let mut params = BTreeMap::new();
    for (k, v) in a.params.into_iter().chain(file_params) {
        params.entry(k).or_insert(v);
    }
    let on_nodes = a.fleet.all_nodes || !a.fleet.on_node.is_empty();
    // The nodes read their secret parameters from a file of KEY=VALUE lines: a secret value
    // with a line break cannot travel there, which is a command-line mistake (exit 2).
    if on_nodes
        && let Some(k) = params
            .iter()
            .find(|(k, v)| v.contains(['\n', '\r']) && snat_core::audit::is_secret_param(k, v))
            .map(|(k, _)| k)
    {
        refused.get_or_insert_with(|| {
            format!(
                "--param {k}: a secret value with a line break cannot be given to the nodes (they read secret parameters from a file of KEY=VALUE lines); give it on one line"
            )
        });
    }
    let fleet = if on_nodes && refused.is_none() {
        let image = a.fleet.image.unwrap_or_default();
        // Anyone who can read Jobs or pods sees their command line: the secret parameters go
        // to the nodes in a Secret (read there with --param-file), the others as --param.
        let mut extra_args = Vec::new();
        let mut secret_params = BTreeMap::new();
        for (k, v) in &params {
            if snat_core::audit::is_secret_param(k, v) {
                secret_params.insert(k.clone(), v.clone());
            } else {
                extra_args.extend(["--param".to_string(), format!("{k}={v}")]);
            }
        }
        if a.dry_run {
            extra_args.push("--dry-run".into());
        }
        // A node named twice would get a second Job of the same name, which the API server
        // refuses (409): each node runs once.
        let (nodes, repeated) = snat_core::k8s::fleet::unique_nodes(&a.fleet.on_node);
        if !repeated.is_empty() {
            eprintln!(
                "{}: warning: --on-node {} given more than once: each node runs once",
                crate::program_name(),
                repeated.join(", ")
            );
        }
        Some(crate::fleet::FleetOptions {
            nodes,
            all_nodes: a.fleet.all_nodes,
            image,
            concurrency: a.fleet.concurrency.unwrap_or(FleetArgs::CONCURRENCY),
            namespace: a.fleet.namespace.unwrap_or_else(|| FleetArgs::NAMESPACE.into()),
            extra_args,
            secret_params: snat_core::k8s::fleet::SecretParams(secret_params),
        })
    } else {
        if !on_nodes {
            for flag in a.fleet.given_without_nodes() {
                eprintln!(
                    "{}: warning: {flag} is only used with --on-node or --all-nodes",
                    crate::program_name()
                );
            }
        }
        None
    };
    let req = RunRequest {
        playbook,
        params,
        options: RunOptions {
            dry_run: a.dry_run,
            host_proc: a.host_proc,
            allow: a.allow.into_iter().collect::<BTreeSet<_>>(),
            kubeconfig: a.kubeconfig,
            kube_context: a.context,
            progress: !a.quiet && runner::stderr_is_terminal(),
            quiet: a.quiet,
            audit_dir: None, // the runner sets the directory it opened
        },
        limits: Limits {
            max_operations: a.limits.max_operations,
            max_call_depth: a.limits.max_call_depth,
            max_string_size: a.limits.max_string_size,
            max_array_size: a.limits.max_array_size,
            max_map_size: a.limits.max_map_size,
            ..Limits::default()
        },
        output: match a.output {
            Output::Table => OutputFormat::Table,
            Output::Json => OutputFormat::Json,
        },
        html: a.html,
        audit_dir: a.audit_dir.unwrap_or_else(snat_core::audit::default_dir),
        audit_fallback: true,
        // snat-run is the program: the run handles SIGINT/SIGTERM (and may exit).
        handle_signals: true,
        // Node Jobs still running are deleted on SIGINT/SIGTERM: give that time.
        signal_grace: Duration::from_secs(if fleet.is_some() { 15 } else { 3 }),
        cancel: None,
        fleet,
        refused,
    };
    // The runner prints the report, or with --output json its one document (also when the
    // audit directory cannot be written).
    let r = runner::run(req);
    // The error without the values of secret parameters, as the record has it.
    if let Some(m) = &r.error_message {
        eprintln!("{}: error: {m}", crate::program_name());
    }
    ExitCode::from(r.exit_code)
}

/// The parameters of the `--param-file` files, in order: one `KEY=VALUE` per line (a
/// trailing `\r` is part of the line ending), the value everything after the first `=`,
/// blank lines and `#` lines skipped. The error names the file and line, never the line's
/// text (it may hold a secret).
fn read_param_files(files: &[PathBuf]) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| {
            format!(
                "--param-file {}: cannot read it: {e} (give a file of KEY=VALUE lines)",
                f.display()
            )
        })?;
        for (i, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let at = format!("{}:{}", f.display(), i + 1);
            let Some((k, v)) = line.split_once('=') else {
                return Err(format!(
                    "{at}: expected KEY=VALUE, this line has no '=' (blank lines and lines starting with # are skipped)"
                ));
            };
            let (k, _) = runner::parse_param(&format!("{k}=")).map_err(|_| {
                format!("{at}: bad parameter name before the '=': use letters, digits, '_', '-' or '.'")
            })?;
            out.push((k, v.to_string()));
        }
    }
    Ok(out)
}

/// What is wrong with a command line clap accepted, if anything: a subcommand's name
/// mistyped as a playbook, an `--html` directory that cannot be written, an unknown
/// `--allow` action, a repeated `--param`, fleet flags that do not go together (`--allow`
/// on nodes among them).
fn invocation_problem(a: &RunArgs, playbook: &std::path::Path) -> Option<String> {
    // `snat-run funtions`: a bare word that is no file and is close to a subcommand.
    if !playbook.exists() && playbook.components().count() == 1 && playbook.extension().is_none() {
        let word = playbook.to_string_lossy();
        if word == "help" {
            let me = crate::program_name();
            return Some(format!(
                "no playbook or subcommand \"help\": for help, run {me} --help (and {me} functions for what a playbook can call)"
            ));
        }
        let hint = crate::modules::did_you_mean(&word, ["functions", "audit"]);
        if !hint.is_empty() {
            return Some(format!("no playbook or subcommand {word:?}{hint}"));
        }
    }
    // The HTML report is written after the run: a directory it cannot go to would only be
    // found then, after a trace of minutes.
    if let Some(h) = &a.html {
        let dir = match h.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => std::path::Path::new("."),
        };
        if let Err(why) = writable_dir(dir) {
            return Some(format!(
                "--html {}: cannot write into {}: {why}",
                h.display(),
                dir.display()
            ));
        }
    }
    // A kubeconfig named on the command line must be there: without it every API call
    // would fail and the playbook would report "no cluster" instead.
    if let Some(k) = &a.kubeconfig
        && let Err(e) = std::fs::File::open(k)
    {
        return Some(format!(
            "--kubeconfig {}: {e}: pass the file kubectl uses (kubectl config view --minify --raw > FILE), or leave the flag out to use KUBECONFIG or ~/.kube/config",
            k.display()
        ));
    }
    // A --context the kubeconfig lacks is a typo: refused like a missing --kubeconfig, not
    // found by the first API call as "no cluster".
    if let Some(want) = &a.context
        && let Ok(Some(names)) = snat_core::k8s::kubeconfig_contexts(a.kubeconfig.as_deref())
        && !names.contains(want)
    {
        let hint = crate::modules::did_you_mean(want, names.iter().map(String::as_str));
        return Some(format!(
            "--context {want}: no such context in the kubeconfig{hint}; its contexts are {}",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ));
    }
    use snat_core::k8s::remediate::Action;
    if let Some(x) = a.allow.iter().find(|x| Action::from_name(x).is_none()) {
        let known: Vec<&str> = Action::ALL.iter().map(|x| x.name()).collect();
        return Some(format!("--allow {x}: no such action (known: {})", known.join(", ")));
    }
    let mut seen = BTreeSet::new();
    if let Some((k, _)) = a.params.iter().find(|(k, _)| !seen.insert(k.as_str())) {
        return Some(format!("--param {k} given twice"));
    }
    if a.fleet.all_nodes || !a.fleet.on_node.is_empty() {
        if a.fleet.image.as_ref().is_none_or(|i| i.trim().is_empty()) {
            return Some("--on-node/--all-nodes need --image IMAGE: the snat image the node Jobs run".into());
        }
        if a.fleet.concurrency == Some(0) {
            return Some("--concurrency must be at least 1".into());
        }
        if let Some(n) = a.fleet.on_node.iter().find(|n| n.trim().is_empty()) {
            return Some(format!("--on-node {n:?}: empty node name"));
        }
        // The node Jobs run without Kubernetes credentials (no ServiceAccount token, no
        // kubeconfig): every allowed action there would fail, recorded only on the node.
        if let Some(x) = a.allow.first() {
            return Some(format!(
                "--allow {x} cannot be used with --on-node/--all-nodes: the node Jobs run without Kubernetes credentials (no ServiceAccount token, no kubeconfig), so act:: calls there cannot reach the API. Remediation runs where your kubeconfig is: run the fleet run without --allow, then run the remediating playbook here with --allow"
            ));
        }
    }
    None
}

fn functions(json: bool, definitions: Option<PathBuf>) -> anyhow::Result<()> {
    let engine = crate::engine::build(
        &crate::Ctx::new(RunOptions::default(), BTreeMap::new()),
        &Limits::default(),
    );
    if let Some(dir) = &definitions {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        engine
            .definitions()
            .with_headers(true)
            .include_standard_packages(false)
            .write_to_dir(dir)
            .with_context(|| format!("cannot write definition files into {}", dir.display()))?;
        eprintln!("wrote Rhai definition files into {}", dir.display());
    }
    let meta = engine.gen_fn_metadata_to_json(false).context("cannot list functions")?;
    if json {
        return out(&format!("{meta}\n"));
    }
    out(&crate::modules::describe_functions(&meta)?)
}

/// Write to stdout. A reader that went away (`snat-run functions | head`) ends the output
/// quietly; `println!` would panic.
fn out(text: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut o = std::io::stdout().lock();
    match o.write_all(text.as_bytes()).and_then(|()| o.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("cannot write to stdout"),
    }
}

/// `audit verify --json`: the same checks as [`audit_verify`], as one JSON document.
fn audit_verify_json(dir: &std::path::Path) -> ExitCode {
    let (status, doc) = match snat_core::audit::verify(dir) {
        Ok(rep) => {
            let status = match (&rep.first_break, rep.records) {
                (Some(_), _) => "broken",
                (None, 0) => "empty",
                (None, _) => "intact",
            };
            (
                status,
                serde_json::json!({
                    "records": rep.records,
                    "head": rep.head.as_ref().map(|h| h.display().to_string()),
                    "head_sha256": rep.head_sha256,
                    "break": rep.first_break.as_ref().map(|b| serde_json::json!({
                        "file": b.file.display().to_string(),
                        "reason": b.reason,
                    })),
                    "error": null,
                }),
            )
        }
        Err(e) => (
            "unreadable",
            serde_json::json!({
                "records": 0, "head": null, "head_sha256": null, "break": null,
                "error": crate::ctx::error_chain(&e),
            }),
        ),
    };
    let mut doc = doc;
    doc["status"] = status.into();
    doc["dir"] = dir.display().to_string().into();
    match out(&format!("{}\n", serde_json::to_string_pretty(&doc).unwrap_or_default())) {
        Ok(()) if status == "intact" => ExitCode::SUCCESS,
        Ok(()) => ExitCode::from(1),
        Err(e) => {
            print_chain(e.as_ref());
            ExitCode::from(1)
        }
    }
}

fn audit_verify(dir: &std::path::Path) -> ExitCode {
    match snat_core::audit::verify(dir) {
        Ok(rep) => match rep.first_break {
            // No record at all: the wrong directory, or every record removed.
            None if rep.records == 0 => {
                eprintln!(
                    "{}: no audit records in {}: is it the audit directory (--audit-dir, $SNAT_AUDIT_DIR, else /var/lib/snat/audit as root)? Records are named YYYYMMDDTHHMMSS.nnnnnnnnnZ-<run id>.json; if there were some, they were all removed",
                    crate::program_name(),
                    dir.display()
                );
                ExitCode::from(1)
            }
            None => {
                let mut text = format!("ok: {} record(s) in {}, chain intact\n", rep.records, dir.display());
                if let (Some(head), Some(sha)) = (&rep.head, &rep.head_sha256) {
                    text += &format!("head: {} sha256 {sha}\n", head.display());
                    text += "(nothing in the directory vouches for the newest record: keep this hash elsewhere)\n";
                }
                match out(&text) {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        print_chain(e.as_ref());
                        ExitCode::from(1)
                    }
                }
            }
            Some(b) => {
                eprintln!(
                    "{}: audit chain broken at {}: {}",
                    crate::program_name(),
                    b.file.display(),
                    b.reason
                );
                ExitCode::from(1)
            }
        },
        Err(e) => {
            print_chain(&e);
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[rstest::rstest]
    #[case::missing(
        "error: the following required arguments were not provided:\n  <PLAYBOOK.rhai>\n\nUsage: snat-run <PLAYBOOK.rhai>\n",
        "the following required arguments were not provided: <PLAYBOOK.rhai>"
    )]
    #[case::with_tip(
        "error: unexpected argument '--x' found\n\n  tip: to pass '--x' as a value, use '-- --x'\n",
        "unexpected argument '--x' found"
    )]
    fn clap_errors_are_summed_up_in_one_line(#[case] rendered: &str, #[case] want: &str) {
        assert_eq!(clap_summary(rendered), want);
    }

    #[rstest::rstest]
    #[case::flag_value(
        "invalid value 'hunter2' for '--context <NAME>'",
        "p.rhai --password hunter2",
        "invalid value '<redacted>' for '--context <NAME>'",
        "p.rhai --password <redacted>"
    )]
    #[case::equals(
        "unexpected argument '--token' found",
        "p.rhai --token=abc",
        "unexpected argument '--token' found",
        "p.rhai --token=<redacted>"
    )]
    #[case::nothing_secret(
        "invalid value 'novalue' for '--param <KEY=VALUE>'",
        "p.rhai --param novalue",
        "invalid value 'novalue' for '--param <KEY=VALUE>'",
        "p.rhai --param novalue"
    )]
    fn refused_command_lines_keep_secrets_out(
        #[case] message: &str,
        #[case] cmdline: &str,
        #[case] want_message: &str,
        #[case] want_cmdline: &str,
    ) {
        assert_eq!(
            redact_refused(message, cmdline),
            (want_message.to_string(), want_cmdline.to_string())
        );
    }

    #[rstest::rstest]
    #[case::short(&["snat-run", "p.rhai", "-o", "json"], true)]
    #[case::long(&["snat-run", "--output", "json", "p.rhai"], true)]
    #[case::equals(&["snat-run", "--output=json"], true)]
    #[case::glued(&["snat-run", "-ojson"], true)]
    #[case::table(&["snat-run", "-o", "table"], false)]
    #[case::a_param_named_json(&["snat-run", "--param", "json"], false)]
    #[case::none(&["snat-run"], false)]
    fn json_is_seen_before_clap(#[case] args: &[&str], #[case] want: bool) {
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        assert_eq!(wants_json(&args), want);
    }
}
