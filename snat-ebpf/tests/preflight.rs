//! The loader's host checks on a real host made to lack what the tracer needs: no BTF,
//! tracefs not mounted (the tracer mounts it and traces), and tracefs impossible to mount.
//!
//! Each case runs in a child process (this test binary, re-executed for one ignored helper
//! test) that first moves into a private mount namespace whose mounts never propagate back
//! (`unshare(CLONE_NEWNS)` + `MS_REC|MS_PRIVATE` on `/`): the host's /sys is never touched,
//! and the namespace dies with the child. The parent still checks afterwards that the
//! host's tracefs is mounted as it was, and a guard remounts it if it is not.
//!
//! Without root these print `skipped: needs root` and pass, unless `CI` is set.

mod common;

use std::ffi::CString;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::need_root;
use snat_core::model::EventKind;
use snat_ebpf::{AttachPoint, Error, Mode, TracerBuilder};

const CHILD_ENV: &str = "SNAT_PREFLIGHT_CHILD";
const TRACEFS_EVENTS: &str = "/sys/kernel/tracing/events";

/// On drop, mounts tracefs again on the host if it was mounted when the guard was made and
/// is not any more (it never should be unmounted: the children work in private mount
/// namespaces).
struct HostTracefs {
    was_mounted: bool,
}

impl HostTracefs {
    fn check() -> HostTracefs {
        HostTracefs {
            was_mounted: Path::new(TRACEFS_EVENTS).exists(),
        }
    }

    fn intact(&self) -> bool {
        !self.was_mounted || Path::new(TRACEFS_EVENTS).exists()
    }
}

impl Drop for HostTracefs {
    fn drop(&mut self) {
        if !self.intact() {
            let _ = Command::new("mount")
                .args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"])
                .status();
        }
    }
}

/// Run ignored helper `helper` of this binary in a child process and return its output;
/// panics (with the output) when the helper did not run and pass.
fn run_child(helper: &str) -> String {
    let host = HostTracefs::check();
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", helper, "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, helper)
        .output()
        .expect("re-run the test binary");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "helper {helper} failed:\n{text}");
    assert!(text.contains("1 passed"), "helper {helper} did not run:\n{text}");
    assert!(host.intact(), "the host's tracefs was unmounted by helper {helper}");
    text
}

/// True in the child process started for `helper`; false (the helper then does nothing)
/// when the test binary was run with `--ignored` by hand.
fn is_child(helper: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(helper)
}

fn cstr(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn check(rc: libc::c_int, what: &str) {
    assert_eq!(rc, 0, "{what}: {}", std::io::Error::last_os_error());
}

/// Move the calling thread (and the threads it starts) into a new mount namespace whose
/// mounts stay private: nothing done from here on is seen by the host.
fn private_mount_namespace() {
    // SAFETY: unshare and mount with valid NUL-terminated strings or NULL.
    unsafe {
        check(libc::unshare(libc::CLONE_NEWNS), "unshare(CLONE_NEWNS)");
        check(
            libc::mount(
                std::ptr::null(),
                cstr("/").as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            "make / private",
        );
    }
}

fn mount(src: &str, target: &str, fstype: Option<&str>, flags: libc::c_ulong) {
    let fstype = fstype.map(cstr);
    // SAFETY: valid NUL-terminated strings or NULL.
    let rc = unsafe {
        libc::mount(
            cstr(src).as_ptr(),
            cstr(target).as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            std::ptr::null(),
        )
    };
    check(rc, &format!("mount {src} on {target}"));
}

/// Unmount (lazily) every tracefs this namespace sees.
fn unmount_tracefs() {
    for target in ["/sys/kernel/debug/tracing", "/sys/kernel/tracing"] {
        // Several tracefs may be stacked on one point: unmount until none is left.
        while Path::new(target).join("events").exists() {
            // SAFETY: valid NUL-terminated string.
            let rc = unsafe { libc::umount2(cstr(target).as_ptr(), libc::MNT_DETACH) };
            check(rc, &format!("umount {target}"));
        }
    }
    assert!(!Path::new(TRACEFS_EVENTS).exists());
}

#[test]
fn without_btf_the_error_says_what_to_do() {
    if !need_root() {
        return;
    }
    let text = run_child("child_without_btf");
    assert!(text.contains("ERROR: the kernel has no BTF"), "{text}");
}

#[test]
#[ignore = "helper run in a child process by without_btf_the_error_says_what_to_do"]
fn child_without_btf() {
    if !is_child("child_without_btf") {
        return;
    }
    private_mount_namespace();
    mount("snat-test", "/sys/kernel/btf", Some("tmpfs"), libc::MS_RDONLY);
    assert!(!Path::new("/sys/kernel/btf/vmlinux").exists());
    let err = TracerBuilder::new().attach().unwrap_err();
    assert!(matches!(err, Error::NoBtf { .. }), "{err:?}");
    let msg = err.to_string();
    println!("ERROR: {msg}");
    for needle in ["/sys/kernel/btf/vmlinux", "CONFIG_DEBUG_INFO_BTF=y", "host's /sys"] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
}

#[test]
fn without_tracefs_root_mounts_it_and_traces() {
    if !need_root() {
        return;
    }
    let text = run_child("child_without_tracefs");
    assert!(text.contains("TRACED: connect"), "{text}");
}

/// The raw tracepoint needs no tracefs: by default the tracer attaches there and leaves
/// tracefs alone.
#[test]
fn without_tracefs_the_raw_tracepoint_traces_and_mounts_nothing() {
    if !need_root() {
        return;
    }
    let text = run_child("child_raw_without_tracefs");
    assert!(text.contains("TRACED: connect"), "{text}");
}

/// Bring `lo` up in the calling thread's network namespace.
fn loopback_up() {
    // SAFETY: socket/ioctl on a zeroed ifreq naming "lo"; the socket is closed at the end.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *s as libc::c_char;
        }
        check(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req), "SIOCGIFFLAGS");
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        check(libc::ioctl(fd, libc::SIOCSIFFLAGS, &req), "SIOCSIFFLAGS");
        libc::close(fd);
    }
}

#[test]
#[ignore = "helper run in a child process by without_tracefs_root_mounts_it_and_traces"]
fn child_without_tracefs() {
    if !is_child("child_without_tracefs") {
        return;
    }
    private_mount_namespace();
    unmount_tracefs();
    let via = trace_one_connection(AttachPoint::Tracepoint);
    assert_eq!(via, AttachPoint::Tracepoint);
    assert!(Path::new(TRACEFS_EVENTS).exists(), "tracefs was not mounted");
}

#[test]
#[ignore = "helper run in a child process by without_tracefs_the_raw_tracepoint_traces_and_mounts_nothing"]
fn child_raw_without_tracefs() {
    if !is_child("child_raw_without_tracefs") {
        return;
    }
    private_mount_namespace();
    unmount_tracefs();
    let via = trace_one_connection(AttachPoint::Auto);
    assert_eq!(via, AttachPoint::RawTracepoint);
    assert!(!Path::new(TRACEFS_EVENTS).exists(), "tracefs was mounted");
}

/// Attach at `point`, trace one connection made in a new network namespace and check
/// its connect event; prints `TRACED: connect ...` and returns where the tracer attached.
fn trace_one_connection(point: AttachPoint) -> AttachPoint {
    use std::os::unix::fs::MetadataExt;

    // A thread in a new, unnamed network namespace (gone with the thread): it reports the
    // namespace's inode, waits for the tracer, then connects over loopback.
    let (tx_ns, rx_ns) = std::sync::mpsc::channel();
    let (tx_go, rx_go) = std::sync::mpsc::channel::<()>();
    let worker = std::thread::Builder::new()
        .name("snat-pf-conn".into())
        .spawn(move || {
            // SAFETY: unshare of this thread's network namespace only.
            check(unsafe { libc::unshare(libc::CLONE_NEWNET) }, "unshare(CLONE_NEWNET)");
            loopback_up();
            tx_ns
                .send(std::fs::metadata("/proc/thread-self/ns/net").unwrap().ino())
                .unwrap();
            rx_go.recv().unwrap();
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut c = TcpStream::connect(l.local_addr().unwrap()).unwrap();
            let (mut s, _) = l.accept().unwrap();
            c.write_all(b"x").unwrap();
            drop(c);
            let mut buf = [0u8; 4];
            while s.read(&mut buf).unwrap_or(0) > 0 {}
        })
        .unwrap();
    let netns = rx_ns.recv().unwrap();

    let mut tracer = TracerBuilder::new()
        .mode(Mode::Stream)
        .netns([netns])
        .attach_point(point)
        .attach()
        .expect("as root the tracer attaches (mounting tracefs itself when it needs it)");
    let via = tracer.attach_point();
    tx_go.send(()).unwrap();
    worker.join().unwrap();

    let mut events = Vec::new();
    let t0 = Instant::now();
    while tracer.stats().unwrap().counted < 4 && t0.elapsed() < Duration::from_secs(10) {
        tracer.wait(Duration::from_millis(50)).unwrap();
        tracer.drain(&mut |e| events.push(e));
    }
    let res = tracer.finish(|e| events.push(e)).unwrap();
    assert_eq!(res.stats.counted, 4, "{:?} {events:#?}", res.stats);
    let connect = events
        .iter()
        .find(|e| e.kind == EventKind::Connect)
        .unwrap_or_else(|| panic!("no connect among {events:#?}"));
    assert_eq!(
        (connect.pid, connect.comm.as_str(), connect.netns),
        (std::process::id(), "snat-pf-conn", Some(netns))
    );
    println!("TRACED: connect {connect:?}");
    via
}

#[test]
fn when_tracefs_cannot_be_mounted_the_error_gives_the_mount_command() {
    if !need_root() {
        return;
    }
    let text = run_child("child_tracefs_impossible");
    assert!(text.contains("ERROR: tracefs is not mounted"), "{text}");
}

#[test]
#[ignore = "helper run in a child process by when_tracefs_cannot_be_mounted_the_error_gives_the_mount_command"]
fn child_tracefs_impossible() {
    if !is_child("child_tracefs_impossible") {
        return;
    }
    private_mount_namespace();
    unmount_tracefs();
    // An empty read-only /sys/kernel, with only the BTF kept (bind-mounted back through a
    // temporary directory): /sys/kernel/tracing does not exist and cannot be created.
    let keep = tempfile::tempdir().unwrap();
    let keep_btf = keep.path().join("btf");
    std::fs::create_dir(&keep_btf).unwrap();
    let keep_btf = keep_btf.to_str().unwrap();
    mount("/sys/kernel/btf", keep_btf, None, libc::MS_BIND);
    mount("snat-test", "/sys/kernel", Some("tmpfs"), 0);
    std::fs::create_dir("/sys/kernel/btf").unwrap();
    mount(keep_btf, "/sys/kernel/btf", None, libc::MS_BIND);
    mount(
        "none",
        "/sys/kernel",
        None,
        libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY,
    );
    assert!(Path::new("/sys/kernel/btf/vmlinux").exists());
    assert!(!Path::new("/sys/kernel/tracing").exists());
    assert!(std::fs::create_dir("/sys/kernel/tracing").is_err());

    let err = TracerBuilder::new()
        .attach_point(AttachPoint::Tracepoint)
        .attach()
        .unwrap_err();
    assert!(matches!(err, Error::TracefsUnavailable { .. }), "{err:?}");
    let msg = err.to_string();
    println!("ERROR: {msg}");
    for needle in ["mount -t tracefs nodev /sys/kernel/tracing", "does not exist"] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
    // The default attach point does not need tracefs.
    let tracer = TracerBuilder::new()
        .attach()
        .expect("the raw tracepoint needs no tracefs");
    assert_eq!(tracer.attach_point(), AttachPoint::RawTracepoint);
}

/// With CAP_BPF and CAP_PERFMON but without CAP_SYS_ADMIN (a container granted only the
/// eBPF capabilities), tracefs cannot be mounted: the error says to mount it as root.
#[test]
fn without_cap_sys_admin_unmounted_tracefs_is_a_clear_error() {
    if !need_root() {
        return;
    }
    let text = run_child("child_tracefs_no_sys_admin");
    assert!(text.contains("ERROR: tracefs is not mounted"), "{text}");
}

/// Drop CAP_SYS_ADMIN from the calling thread's effective set, keeping the others.
fn drop_cap_sys_admin() {
    const CAP_SYS_ADMIN: u32 = 21;
    common::clear_effective_caps(1 << CAP_SYS_ADMIN);
}

#[test]
#[ignore = "helper run in a child process by without_cap_sys_admin_unmounted_tracefs_is_a_clear_error"]
fn child_tracefs_no_sys_admin() {
    if !is_child("child_tracefs_no_sys_admin") {
        return;
    }
    private_mount_namespace();
    unmount_tracefs();
    drop_cap_sys_admin();
    let err = TracerBuilder::new()
        .attach_point(AttachPoint::Tracepoint)
        .attach()
        .unwrap_err();
    assert!(matches!(err, Error::TracefsUnavailable { .. }), "{err:?}");
    let msg = err.to_string();
    println!("ERROR: {msg}");
    for needle in ["mount -t tracefs nodev /sys/kernel/tracing", "as root", "CAP_SYS_ADMIN"] {
        assert!(msg.contains(needle), "{needle:?} missing from: {msg}");
    }
}
