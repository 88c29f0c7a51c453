//! Real enforcement on real children: each test prepares a `ChildSandbox`, spawns a process
//! with `apply()` (as agent mode does) and checks from inside the child what it may do.
//! Needs root (the supervisor drops to uid 65534) and a kernel with Landlock and seccomp,
//! as on this machine and in CI.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use openshell_sandbox::config::SeccompChoice;
use openshell_sandbox::policy::Policy;
use openshell_sandbox::policy::model::{Compatibility, FilesystemPolicy, LandlockPolicy, ProcessPolicy};
use openshell_sandbox::sandbox::ChildSandbox;

use crate::support::agent as agent_support;
use crate::support::agent::terminal;

use agent_support::{inherit_fd, only_stdio};
use terminal::Terminal;

const PYTHON: &str = "/usr/bin/python3";

fn policy(read_only: &[&Path], read_write: &[&Path], compatibility: Compatibility) -> Policy {
    Policy {
        version: 1,
        filesystem_policy: FilesystemPolicy {
            include_workdir: false,
            read_only: read_only.iter().map(|p| p.to_path_buf()).collect(),
            read_write: read_write.iter().map(|p| p.to_path_buf()).collect(),
        },
        landlock: LandlockPolicy { compatibility },
        process: ProcessPolicy { run_as_user: Some("nobody".into()), run_as_group: Some("nogroup".into()) },
        network_policies: BTreeMap::new(),
        ignored_binaries: 0,
    }
}

/// What a child needs to start a shell or Python at all.
fn system_paths() -> Vec<&'static Path> {
    ["/usr", "/bin", "/lib", "/lib64", "/etc", "/proc", "/dev"].into_iter().map(Path::new).collect()
}

/// Runs `program args` under `sandbox` (bounded to 30 s); returns (exit code, stdout, stderr).
fn run(sandbox: &Arc<ChildSandbox>, program: &str, args: &[&str]) -> (Option<i32>, String, String) {
    let mut command = Command::new(program);
    command.args(args).stdin(Stdio::null());
    run_command(sandbox, command)
}

/// Runs `command` (its own stdin and `pre_exec` hooks kept) under `sandbox`, from `/`.
fn run_command(sandbox: &Arc<ChildSandbox>, mut command: Command) -> (Option<i32>, String, String) {
    command.current_dir("/").stdout(Stdio::piped()).stderr(Stdio::piped());
    sandbox.apply(&mut command);
    let mut child = command.spawn().expect("spawn the sandboxed child");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("{command:?} did not finish in 30 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// A fresh directory under /tmp, world-writable so that only Landlock can deny the child.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("openshell-sandbox-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    for sub in ["", "ro", "rw", "outside"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        std::fs::set_permissions(dir.join(sub), std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    std::fs::write(dir.join("ro/file"), "read-only content\n").unwrap();
    std::fs::write(dir.join("outside/secret"), "outside content\n").unwrap();
    for file in ["ro/file", "outside/secret"] {
        std::fs::set_permissions(dir.join(file), std::fs::Permissions::from_mode(0o666)).unwrap();
    }
    dir
}

const FS_SCRIPT: &str = r#"
cat ro/file
echo x > ro/new 2>/dev/null && echo ro-written || echo ro-denied
echo x > rw/new && echo rw-written
echo x > outside/new 2>/dev/null && echo outside-written || echo outside-denied
cat outside/secret 2>/dev/null || echo outside-read-denied
"#;

#[test]
fn landlock_denies_writes_outside_read_write_paths_and_reads_outside_the_policy() {
    let dir = scratch("landlock");
    let script = format!("cd {} && {FS_SCRIPT}", dir.display());

    // Control: the same user without Landlock may do everything (the dirs are 0777).
    let open =
        ChildSandbox::prepare(&policy(&[], &[], Compatibility::BestEffort), &SeccompChoice::Off, &dir, false).unwrap();
    assert!(!open.landlock_enabled());
    let (code, out, err) = run(&open, "/bin/sh", &["-c", &script]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("ro-written") && out.contains("outside-written") && out.contains("outside content"), "{out}");
    for written in ["outside/new", "ro/new", "rw/new"] {
        std::fs::remove_file(dir.join(written)).unwrap();
    }

    let mut read_only = system_paths();
    let ro = dir.join("ro");
    let rw = dir.join("rw");
    read_only.push(&ro);
    let policy = policy(&read_only, &[&rw], Compatibility::HardRequirement);
    let sandbox = ChildSandbox::prepare(&policy, &SeccompChoice::Off, &dir, false).unwrap();
    assert!(sandbox.landlock_enabled());
    let (code, out, err) = run(&sandbox, "/bin/sh", &["-c", &script]);
    assert_eq!(code, Some(0), "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines, ["read-only content", "ro-denied", "rw-written", "outside-denied", "outside-read-denied"]);
    assert!(!dir.join("outside/new").exists() && !dir.join("ro/new").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn include_workdir_makes_the_working_directory_writable() {
    let dir = scratch("workdir");
    let mut policy = policy(&system_paths(), &[], Compatibility::BestEffort);
    let script = format!(
        "echo x > {0}/rw/new && echo workdir-written; echo x > /tmp/openshell-x || echo tmp-denied",
        dir.display()
    );
    policy.filesystem_policy.include_workdir = true;
    let sandbox = ChildSandbox::prepare(&policy, &SeccompChoice::Off, &dir, false).unwrap();
    let (_, out, _) = run(&sandbox, "/bin/sh", &["-c", &script]);
    assert!(out.contains("workdir-written") && out.contains("tmp-denied"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

const SYSCALLS: &str = r#"
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
def show(name, ret):
    print(name, "ok" if ret >= 0 else errno.errorcode[ctypes.get_errno()])
show("ptrace", libc.ptrace(0, 0, None, None))  # PTRACE_TRACEME
show("mount", libc.mount(b"none", b"/tmp", b"tmpfs", 0, None))
show("unshare_user", libc.unshare(0x10000000))
show("clone3", libc.syscall(435, None, 0))
show("x32_getpid", libc.syscall(0x40000000 | 39))
show("packet_socket", libc.socket(17, 3, 0))
show("raw_socket", libc.socket(2, 3 | 0x80000, 1))
show("personality_no_aslr", libc.personality(0x0040000))
show("getpid", libc.getpid())
"#;

fn syscall_results(seccomp: &SeccompChoice) -> BTreeMap<String, String> {
    let sandbox =
        ChildSandbox::prepare(&policy(&[], &[], Compatibility::BestEffort), seccomp, Path::new("/"), false).unwrap();
    let (code, out, err) = run(&sandbox, PYTHON, &["-c", SYSCALLS]);
    assert_eq!(code, Some(0), "{err}");
    out.lines().filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

#[test]
fn baseline_seccomp_fails_dangerous_calls_with_eperm() {
    let filtered = syscall_results(&SeccompChoice::Baseline);
    for call in ["ptrace", "mount", "unshare_user", "packet_socket", "raw_socket", "personality_no_aslr"] {
        assert_eq!(filtered[call], "EPERM", "{call}: {filtered:?}");
    }
    assert_eq!(filtered["clone3"], "ENOSYS", "clone3 must fall back to clone: {filtered:?}");
    if cfg!(target_arch = "x86_64") {
        assert_eq!(filtered["x32_getpid"], "EPERM", "{filtered:?}");
    }
    assert_eq!(filtered["getpid"], "ok");

    // Control: the filter, not the privilege drop, is what refuses these.
    let open = syscall_results(&SeccompChoice::Off);
    assert_eq!(open["ptrace"], "ok", "{open:?}");
    assert_eq!(open["unshare_user"], "ok", "{open:?}");
    assert_eq!(open["clone3"], "EINVAL", "{open:?}");
    assert_ne!(open["x32_getpid"], "EPERM", "{open:?}");
    assert_eq!(open["personality_no_aslr"], "ok", "{open:?}");
}

#[test]
fn child_runs_as_the_policy_identity_with_no_capabilities() {
    let sandbox = ChildSandbox::prepare(
        &policy(&system_paths(), &[], Compatibility::BestEffort),
        &SeccompChoice::Baseline,
        Path::new("/"),
        false,
    )
    .unwrap();
    let user = sandbox.user().unwrap();
    assert_eq!((user.name.as_str(), user.uid, user.gid), ("nobody", 65534, 65534));
    let (code, status, err) = run(&sandbox, "/bin/cat", &["/proc/self/status"]);
    assert_eq!(code, Some(0), "{err}");
    let field = |name: &str| -> String {
        let line = status.lines().find(|l| l.starts_with(&format!("{name}:"))).unwrap_or_else(|| panic!("{name}"));
        line.split_whitespace().skip(1).collect::<Vec<_>>().join(" ")
    };
    assert_eq!(field("Uid"), "65534 65534 65534 65534");
    assert_eq!(field("Gid"), "65534 65534 65534 65534");
    assert_eq!(field("Groups"), "65534");
    for caps in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        assert_eq!(field(caps), "0000000000000000", "{caps}");
    }
    assert_eq!(field("NoNewPrivs"), "1");
    assert_eq!(field("Seccomp"), "2");
    assert_eq!(field("Seccomp_filters"), sandbox.seccomp_filters().to_string());
}

#[test]
fn nested_mode_enforces_nothing() {
    let sandbox = ChildSandbox::prepare(
        &policy(&system_paths(), &[], Compatibility::HardRequirement),
        &SeccompChoice::Baseline,
        Path::new("/"),
        true,
    )
    .unwrap();
    assert!(sandbox.user().is_none() && !sandbox.landlock_enabled() && sandbox.seccomp_filters() == 0);
    let (_, out, _) = run(&sandbox, "/bin/sh", &["-c", "id -u; grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status"]);
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["0", "NoNewPrivs:", "0", "Seccomp:", "0"]);
}

#[test]
#[allow(unsafe_code)]
fn a_failing_step_fails_the_spawn_and_names_the_step() {
    let sandbox =
        ChildSandbox::prepare(&policy(&[], &[], Compatibility::BestEffort), &SeccompChoice::Off, Path::new("/"), false)
            .unwrap();
    let log = std::env::temp_dir().join(format!("openshell-sandbox-failed-step-{}", std::process::id()));
    let stderr = std::fs::File::create(&log).unwrap();
    // Credentials are per thread: a thread that gave up root spawns children that cannot
    // change groups, so the first step fails, as it would in a supervisor without privileges.
    let err = std::thread::spawn(move || {
        // SAFETY: integer arguments only; raw setresuid changes this (test) thread alone.
        assert_eq!(unsafe { libc::syscall(libc::SYS_setresuid, 1000, 1000, 1000) }, 0);
        let mut command = Command::new("/bin/true");
        command.stderr(stderr);
        sandbox.apply(&mut command);
        command.spawn().expect_err("a child that cannot drop privileges must not run")
    })
    .join()
    .unwrap();
    assert_eq!(err.raw_os_error(), Some(libc::EPERM), "{err}");
    let note = std::fs::read_to_string(&log).unwrap();
    assert_eq!(note, "openshell-sandbox: child enforcement failed at setgroups\n");
    std::fs::remove_file(&log).unwrap();
}

#[test]
fn children_get_stdio_and_no_inherited_descriptor_enforced_or_not() {
    let enforced = ChildSandbox::prepare(
        &policy(&system_paths(), &[], Compatibility::BestEffort),
        &SeccompChoice::Baseline,
        Path::new("/"),
        false,
    )
    .unwrap();
    for sandbox in [ChildSandbox::unenforced(), enforced] {
        let mut command = Command::new("/bin/ls");
        command.args(["-l", "/proc/self/fd"]).stdin(Stdio::null());
        // As this test process holds them without close-on-exec (a supervisor's inheritance).
        inherit_fd(&mut command, std::fs::File::open("/etc/passwd").unwrap().into(), 50);
        inherit_fd(&mut command, std::os::unix::net::UnixStream::pair().unwrap().0.into(), 51);
        let (code, out, err) = run_command(&sandbox, command);
        assert_eq!(code, Some(0), "{err}");
        only_stdio(&out);
    }
}

const INJECT: &str = include_str!("../support/agent/inject.py");

/// Runs the injection script under `sandbox` as the session leader of a pty the test holds
/// (its controlling terminal and stdin); returns its results and how many bytes it left
/// waiting in that terminal's input.
fn inject_into_own_terminal(sandbox: &Arc<ChildSandbox>) -> (BTreeMap<String, String>, usize) {
    let tty = Terminal::new(24, 80);
    let mut command = Command::new(PYTHON);
    command.args(["-c", INJECT, "-", "/nonexistent/typed"]).stdin(tty.slave.try_clone().unwrap());
    // SAFETY: setsid(2) and ioctl(2) only, async-signal-safe; registered before the
    // sandbox's hook, as agent mode does.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut command, || {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let (code, out, err) = run_command(sandbox, command);
    assert_eq!(code, Some(0), "{err}");
    let results = out.lines().filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    (results, tty.pending_input())
}

#[test]
fn baseline_seccomp_refuses_tiocsti_and_tioclinux_whatever_the_high_bits() {
    let sandbox = |seccomp| {
        ChildSandbox::prepare(&policy(&[], &[], Compatibility::BestEffort), seccomp, Path::new("/"), false).unwrap()
    };
    let (got, pending) = inject_into_own_terminal(&sandbox(&SeccompChoice::Baseline));
    for name in ["stdin", "high_bits", "dev_tty", "tioclinux"] {
        assert_eq!(got[name], "EPERM", "{name}: {got:?}");
    }
    assert_eq!((got["own_input"].as_str(), pending), ("none", 0), "{got:?}");

    // Control: without the filter the same unprivileged child types into its controlling
    // terminal (unless the kernel refuses TIOCSTI to everyone, dev.tty.legacy_tiocsti = 0).
    let legacy = std::fs::read_to_string("/proc/sys/dev/tty/legacy_tiocsti").map_or(true, |v| v.trim() != "0");
    let typed = if legacy { "ok" } else { "EIO" };
    let (got, pending) = inject_into_own_terminal(&sandbox(&SeccompChoice::Off));
    for name in ["stdin", "high_bits", "dev_tty"] {
        assert_eq!(got[name], typed, "{name}: {got:?}");
    }
    assert_eq!(got["tioclinux"], "ENOTTY", "a pty is not a virtual console: {got:?}");
    if legacy {
        assert_eq!(got["own_input"], "touch /nonexistent/typed", "{got:?}");
        assert!(pending > 0, "two more typed lines wait: {got:?}");
    }
}
