//! `demo-node` (the simulated node of `scripts/demo`, root): one killed with SIGKILL leaves
//! its network namespaces and cgroups behind, and the next one to start removes them and
//! says so, without touching those of an instance that still runs.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use snat_testbed::{DEMO_NETNS_PREFIX, DEMO_RECORD_DIR, remove_dead_demo_nodes, require_root};

/// The `demo-node` example next to this test's binary, built (or brought up to date) first:
/// `cargo test --test demo_node` alone does not build examples.
fn demo_node_exe() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().unwrap();
            // target/<profile>/deps/demo_node-<hash>
            let profile_dir = exe.parent().and_then(Path::parent).unwrap().to_path_buf();
            let mut build = Command::new(env!("CARGO"));
            build.args(["build", "-q", "-p", "snat-testbed", "--example", "demo-node"]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            let status = build.current_dir(env!("CARGO_MANIFEST_DIR")).status().unwrap();
            assert!(status.success(), "cannot build the demo-node example: {status}");
            let path = profile_dir.join("examples").join("demo-node");
            assert!(path.exists(), "{} not built", path.display());
            path
        })
        .clone()
}

/// A running `demo-node`. Dropped, it closes the node's stdin (the node removes everything
/// and exits), waits for it, and removes what a killed one left, so that a failing test
/// leaves nothing behind either.
struct DemoNode {
    child: Child,
    stdin: Option<ChildStdin>,
    dir: tempfile::TempDir,
}

impl DemoNode {
    fn start() -> DemoNode {
        let dir = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
        let mut child = Command::new(demo_node_exe())
            .arg(dir.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let stdin = child.stdin.take();
        let mut node = DemoNode { child, stdin, dir };
        let mut line = String::new();
        let out = node.child.stdout.take().unwrap();
        BufReader::new(out).read_line(&mut line).unwrap();
        assert!(
            line.starts_with("READY "),
            "no READY line: {line:?}; log: {}",
            node.log()
        );
        node
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the node wrote on stderr.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("node.log")).unwrap_or_default()
    }

    /// The node's network namespaces, by the pid in their names.
    fn netns(&self) -> Vec<PathBuf> {
        let prefix = format!("{DEMO_NETNS_PREFIX}{}-", self.pid());
        let mut v: Vec<PathBuf> = std::fs::read_dir("/run/netns")
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .map(|e| e.path())
            .collect();
        v.sort();
        v
    }

    /// The node's pod cgroup directories, as its record lists them.
    fn cgroups(&self) -> Vec<PathBuf> {
        let record = Path::new(DEMO_RECORD_DIR).join(self.pid().to_string());
        std::fs::read_to_string(record)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.strip_prefix("cgroup "))
            .filter_map(|l| l.split_whitespace().next())
            .map(|rel| Path::new(snat_testbed::CGROUP2_ROOT).join(rel.trim_start_matches('/')))
            .collect()
    }

    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for DemoNode {
    fn drop(&mut self) {
        drop(self.stdin.take());
        for _ in 0..300 {
            if self.child.try_wait().ok().flatten().is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        remove_dead_demo_nodes();
    }
}

#[test]
fn a_killed_demo_node_is_cleaned_up_by_the_next_one() {
    if !require_root() {
        return;
    }
    let live = DemoNode::start();
    let mut killed = DemoNode::start();
    let (live_netns, live_cgroups) = (live.netns(), live.cgroups());
    let (dead_netns, dead_cgroups) = (killed.netns(), killed.cgroups());
    assert_eq!(live_netns.len(), 11, "the world and ten pods");
    assert_eq!(live_cgroups.len(), 10);
    assert_eq!(dead_netns.len(), 11);
    assert_eq!(dead_cgroups.len(), 10);
    killed.kill();
    // The leftovers, as SIGKILL leaves them: nothing removed them.
    assert!(dead_netns.iter().chain(&dead_cgroups).all(|p| p.exists()));

    let next = DemoNode::start();
    let log = next.log();
    for p in dead_netns.iter().chain(&dead_cgroups) {
        assert!(!p.exists(), "{} left behind; log: {log}", p.display());
    }
    let dead_record = Path::new(DEMO_RECORD_DIR).join(killed.pid().to_string());
    assert!(!dead_record.exists(), "{}", dead_record.display());
    // Said, namespace by namespace and cgroup by cgroup.
    for p in dead_netns.iter().chain(&dead_cgroups) {
        let name = p.file_name().unwrap().to_string_lossy();
        assert!(log.contains(&*name), "{name} not named in: {log}");
    }
    assert!(log.contains(&format!("dead demo-node {}\n", killed.pid())), "{log}");
    // The running instance keeps all of its own, its pods' processes included.
    assert_eq!(live.netns(), live_netns);
    for cg in &live_cgroups {
        let procs = std::fs::read_to_string(cg.join("cgroup.procs")).unwrap_or_default();
        assert!(!procs.trim().is_empty(), "{} lost its processes", cg.display());
    }
    assert!(!log.contains(&format!("demo-node {}\n", live.pid())), "{log}");
    // Ended normally, an instance removes its own.
    drop(next);
    let (gone_netns, gone_cgroups) = (live_netns.clone(), live_cgroups.clone());
    drop(live);
    for p in gone_netns.iter().chain(&gone_cgroups) {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}
