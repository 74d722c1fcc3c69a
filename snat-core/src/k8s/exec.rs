//! Socket census inside a pod, for users who may `kubectl exec` but cannot reach the node.
//!
//! The article's Step 3 installs netstat in the pod; this stage installs nothing. It runs
//! `cat /proc/net/tcp /proc/net/tcp6` in one of the pod's containers through the exec API
//! (the WebSocket `v4`/`v5.channel.k8s.io` protocol: stdout on channel 1, the exit status on
//! channel 3), splits the output into its two tables and parses them into [`Socket`]s with
//! the same format rules the node-side census uses. The container only needs `cat`; a pod
//! without IPv6 has no `/proc/net/tcp6`, which is reported as a warning, not a failure.
//! Output without a table's header line (empty output included) is a failure, never "no
//! sockets": `cat` prints the header of every file it reads.

use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncReadExt;

use super::{Kube, Op, Scope};
use crate::error::Error;
use crate::model::{Family, Socket};

/// The command run in the pod.
pub const PROC_NET_COMMAND: [&str; 3] = ["cat", "/proc/net/tcp", "/proc/net/tcp6"];

/// Largest output read from the pod (a pod with ~1.5 million sockets).
pub const MAX_OUTPUT: u64 = 256 << 20;

/// What a census in a pod found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PodCensus {
    /// `namespace/name`.
    pub pod: String,
    /// The container the command ran in (`None`: the pod's default container).
    pub container: Option<String>,
    /// Every TCP socket of the pod's network namespace.
    pub sockets: Vec<Socket>,
    /// Things that did not stop the census (e.g. no IPv6 table).
    pub warnings: Vec<String>,
}

/// The tables of `cat /proc/net/tcp /proc/net/tcp6` output, by family, in output order.
///
/// Each table starts with its header line (`sl local_address rem_address ...` for IPv4,
/// `sl local_address remote_address ...` for IPv6); text before the first header is an error.
pub fn split_proc_net(text: &str) -> Result<Vec<(Family, String)>, String> {
    let mut tables: Vec<(Family, String)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with("sl ") && t.contains("local_address") {
            let fam = if t.contains("remote_address") {
                Family::Ipv6
            } else {
                Family::Ipv4
            };
            tables.push((fam, String::new()));
            continue;
        }
        if t.is_empty() {
            continue;
        }
        match tables.last_mut() {
            Some((_, body)) => {
                body.push_str(line);
                body.push('\n');
            }
            None => {
                return Err(format!(
                    "line {}: expected a /proc/net/tcp header (\"sl local_address ...\"), got {:?}",
                    i + 1,
                    line.chars().take(80).collect::<String>()
                ));
            }
        }
    }
    Ok(tables)
}

/// What `cat /proc/net/tcp /proc/net/tcp6` sent back through the exec API.
#[derive(Debug, Clone, Copy, Default)]
pub struct CatOutput<'a> {
    /// Everything on stdout.
    pub stdout: &'a str,
    /// Everything on stderr, trimmed.
    pub stderr: &'a str,
    /// Whether the exec status says the command failed (non-zero exit).
    pub failed: bool,
    /// The exec status's message, if any.
    pub status_message: &'a str,
}

/// Split and parse what `cat /proc/net/tcp /proc/net/tcp6` sent back.
///
/// Each file `cat` read must show its header line: real `cat /proc/net/tcp` always prints
/// it, so output without the IPv4 header (empty output included) is an error, never zero
/// sockets. The IPv6 table may only be missing when `cat` said it could not read the file
/// (a pod without IPv6 has no `/proc/net/tcp6`: `cat` complains on stderr and exits 1, a
/// warning here); a `cat` that reported success without it sent incomplete output.
pub fn parse_output(out: &CatOutput<'_>) -> Result<(Vec<Socket>, Vec<String>), String> {
    let tables = split_proc_net(out.stdout).map_err(|m| format!("unexpected output: {m}"))?;
    let has = |fam: Family| tables.iter().any(|(f, _)| *f == fam);
    let cat_complained = out.failed || !out.stderr.is_empty();
    let said = match (out.status_message.trim(), out.stderr) {
        ("", "") => String::new(),
        (m, "") => format!(" (exec status: {m})"),
        ("", e) => format!(" (stderr: {e})"),
        (m, e) => format!(" (exec status: {m}; stderr: {e})"),
    };
    if tables.is_empty() && cat_complained {
        return Err(format!(
            "`cat /proc/net/tcp /proc/net/tcp6` failed{said}: the container needs `cat`; pick another container with the container option"
        ));
    }
    if !has(Family::Ipv4) {
        let got = if out.stdout.trim().is_empty() {
            "the output was empty".to_string()
        } else {
            format!("{} bytes of output without it", out.stdout.len())
        };
        return Err(format!(
            "no /proc/net/tcp header (\"sl local_address rem_address ...\", which `cat /proc/net/tcp` always prints): {got}{said}; the pod's sockets are unknown"
        ));
    }
    if !has(Family::Ipv6) && !cat_complained {
        return Err(
            "no /proc/net/tcp6 header, yet `cat` reported no error (a missing /proc/net/tcp6 makes it fail): the output is incomplete"
                .to_string(),
        );
    }
    let mut sockets = Vec::new();
    for (family, body) in &tables {
        sockets.extend(crate::census::parse_proc_net_tcp(body, *family).map_err(|e| e.to_string())?);
    }
    let mut warnings = Vec::new();
    if !has(Family::Ipv6) {
        warnings.push("no /proc/net/tcp6 table (IPv6 disabled in the pod?): IPv4 sockets only".to_string());
    }
    if !out.stderr.is_empty() {
        warnings.push(format!("stderr: {}", out.stderr));
    }
    Ok((sockets, warnings))
}

/// Run the census in `namespace/pod` (in `container`, else the pod's default container).
///
/// Needs RBAC `create` (and, for older API servers, `get`) on `pods/exec` in the namespace.
pub async fn census_in_pod(
    kube: &Kube,
    namespace: &str,
    pod: &str,
    container: Option<&str>,
) -> Result<PodCensus, Error> {
    let who = match container {
        Some(c) => format!("{namespace}/{pod}/{c}"),
        None => format!("{namespace}/{pod}"),
    };
    let exec_err = |message: String| Error::KubeExec {
        pod: who.clone(),
        message,
    };
    let op = Op {
        verb: "create",
        resource: "pods/exec",
        scope: Scope::Namespace(namespace.to_string()),
        name: Some(pod.to_string()),
    };
    let api: Api<Pod> = Api::namespaced(kube.client().clone(), namespace);
    let mut ap = AttachParams::default().stdin(false).stdout(true).stderr(true);
    if let Some(c) = container {
        ap = ap.container(c);
    }
    let limit: Duration = kube.options().connect_timeout + kube.options().read_timeout;
    let run = async {
        let mut proc = match api.exec(pod, PROC_NET_COMMAND, &ap).await {
            Ok(p) => p,
            Err(kube::Error::Api(st)) => {
                let code = http::StatusCode::from_u16(st.code).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
                let body = serde_json::to_vec(&*st).unwrap_or_default();
                return Err(super::api_error(&op, code, &body, 1));
            }
            Err(e) => return Err(exec_err(format!("cannot open the exec stream: {e}"))),
        };
        let mut stdout = proc.stdout().ok_or_else(|| exec_err("no stdout stream".into()))?;
        let mut stderr = proc.stderr().ok_or_else(|| exec_err("no stderr stream".into()))?;
        let status = proc.take_status().ok_or_else(|| exec_err("no status channel".into()))?;
        let mut out = Vec::new();
        let mut err = Vec::new();
        let mut out_lim = (&mut stdout).take(MAX_OUTPUT);
        let mut err_lim = (&mut stderr).take(1 << 20);
        let (r1, r2) = tokio::join!(out_lim.read_to_end(&mut out), err_lim.read_to_end(&mut err));
        r1.map_err(|e| exec_err(format!("reading stdout: {e}")))?;
        r2.map_err(|e| exec_err(format!("reading stderr: {e}")))?;
        let status = status.await;
        drop((stdout, stderr));
        let _ = proc.join().await;
        Ok((out, err, status))
    };
    let (out, err, status) = tokio::time::timeout(limit, run)
        .await
        .map_err(|_| Error::KubeTimeout {
            op: format!("exec `cat /proc/net/tcp /proc/net/tcp6` in {who}"),
            server: kube.server().to_string(),
            timeout: format!("{limit:?}"),
        })??;
    let text = String::from_utf8_lossy(&out);
    let stderr = String::from_utf8_lossy(&err);
    let failed = status.as_ref().is_some_and(|s| s.status.as_deref() == Some("Failure"));
    let status_message = status.and_then(|s| s.message).unwrap_or_default();
    let (sockets, warnings) = parse_output(&CatOutput {
        stdout: &text,
        stderr: stderr.trim(),
        failed,
        status_message: &status_message,
    })
    .map_err(exec_err)?;
    Ok(PodCensus {
        pod: format!("{namespace}/{pod}"),
        container: container.map(str::to_string),
        sockets,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rstest::rstest;

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 2100E00A:A0C6 0500A8C0:01BB 01 00000000:00000000 00:00000000 00000000  1000        0 12345 1 0000000000000000 20 4 30 10 -1\n";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 777 1 0000000000000000 100 0 0 10 0\n";

    static BOTH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| format!("{TCP}{TCP6}"));
    const CAT_NO_TCP6: &str = "cat: can't open '/proc/net/tcp6': No such file or directory";

    fn ok(stdout: &str) -> CatOutput<'_> {
        CatOutput {
            stdout,
            ..Default::default()
        }
    }

    fn cat_failed<'a>(stdout: &'a str, stderr: &'a str) -> CatOutput<'a> {
        CatOutput {
            stdout,
            stderr,
            failed: true,
            status_message: "command terminated with non-zero exit code",
        }
    }

    #[rstest]
    #[case::both(ok(&BOTH), 2, 0)]
    #[case::v4_only_cat_said_why(cat_failed(TCP, CAT_NO_TCP6), 1, 2)]
    #[case::headers_only(
        ok("  sl  local_address rem_address   st\n  sl  local_address remote_address st\n"),
        0,
        0
    )]
    fn splits_and_parses(#[case] out: CatOutput<'_>, #[case] sockets: usize, #[case] warnings: usize) {
        let (s, w) = parse_output(&out).unwrap();
        assert_eq!(s.len(), sockets);
        assert_eq!(w.len(), warnings, "{w:?}");
    }

    #[test]
    fn decodes_addresses() {
        let (s, _) = parse_output(&ok(&BOTH)).unwrap();
        assert_eq!(s[0].local.to_string(), "10.224.0.33:41158");
        assert_eq!(s[0].remote.to_string(), "192.168.0.5:443");
        assert_eq!(s[0].uid, 1000);
        assert_eq!(s[0].inode, 12345);
        assert_eq!(s[1].local.to_string(), "[::1]:8080");
        assert_eq!(s[1].state, crate::model::TcpState::Listen);
    }

    #[rstest]
    #[case::no_header(cat_failed("cat: /proc/net/tcp: No such file\n", ""), "unexpected output")]
    #[case::short_row(ok("  sl  local_address rem_address\n 0: 0100007F:0050\n"), "")]
    #[case::bad_state(
        ok("  sl  local_address rem_address\n 0: 0100007F:0050 00000000:0000 FF 0:0 0:0 0 0 0 1\n"),
        ""
    )]
    // Exec answered with nothing at all: not a pod without sockets.
    #[case::empty(ok(""), "no /proc/net/tcp header")]
    #[case::blank_lines(ok("\n\n"), "no /proc/net/tcp header")]
    #[case::only_tcp6(
        cat_failed(TCP6, "cat: can't open '/proc/net/tcp': Permission denied"),
        "no /proc/net/tcp header"
    )]
    // cat read both files (no error) but the IPv6 table is not in the output.
    #[case::tcp6_missing_without_an_error(ok(TCP), "no /proc/net/tcp6 header")]
    #[case::no_cat(
        cat_failed("", "exec: \"cat\": executable file not found in $PATH"),
        "the container needs `cat`"
    )]
    fn rejects_garbage(#[case] out: CatOutput<'_>, #[case] want: &str) {
        let err = parse_output(&out).unwrap_err();
        assert!(err.contains(want), "{err}");
    }
}
