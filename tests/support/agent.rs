//! Shared harness of the agent-mode tests: a shared TLS dir as the proxy leaves it, the
//! real binary in `agent --nested` mode, and the real OpenSSH client pointed at its Unix
//! socket (through a small python3 relay as ProxyCommand) or at its TCP listener.

#![allow(dead_code)]

pub mod terminal;

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use openshell_sandbox::volume::{self, ChildEnv, Ready};

/// The placeholder every test agent's `child-env.json` holds.
pub const PLACEHOLDER: (&str, &str) = ("API_KEY", "openshell:resolve:env:API_KEY");
/// The proxy the supervisor's environment names.
pub const PROXY: &str = "http://10.200.0.2:3128";

const RELAY: &str = r#"
import os, socket, sys, threading
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
def up():
    while True:
        d = os.read(0, 65536)
        if not d:
            s.shutdown(socket.SHUT_WR)
            return
        s.sendall(d)
threading.Thread(target=up, daemon=True).start()
while True:
    d = s.recv(65536)
    if not d:
        break
    os.write(1, d)
"#;

/// The binary with an empty environment.
pub fn bin() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_openshell-sandbox"));
    cmd.env_clear().env("PATH", "/usr/local/bin:/usr/bin:/bin");
    cmd
}

/// A temporary directory with a ready shared TLS dir, a policy and a work dir.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    /// Whether the agent runs with `--nested` (no enforcement). Default true.
    pub nested: bool,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let tls = dir.path().join("tls");
        std::fs::create_dir_all(&tls).unwrap();
        std::fs::create_dir_all(dir.path().join("work")).unwrap();
        std::fs::write(tls.join(volume::CA_BUNDLE_FILE), "-----BEGIN CERTIFICATE-----\n").unwrap();
        let env: ChildEnv = [(PLACEHOLDER.0.to_owned(), PLACEHOLDER.1.to_owned())].into();
        volume::write_child_env(&tls, &env).unwrap();
        let ready = Ready {
            pid: 1,
            proxy_listen: "10.200.0.2:3128".parse().unwrap(),
            forward_listen: None,
            ca_sha256: "AB".into(),
            time: volume::now_rfc3339(),
        };
        volume::write_ready(&tls, &ready).unwrap();
        std::fs::write(dir.path().join("policy.yaml"), "version: 1\n").unwrap();
        std::fs::write(dir.path().join("relay.py"), RELAY).unwrap();
        Fixture { dir, nested: true }
    }

    /// The fixture with enforcement (not nested): a policy that runs children as `user`
    /// (`uid`, also the group) and a work dir they own. `None`, said on stderr, unless
    /// the test runs as root (CAP_SETUID, CAP_SETGID, CAP_SETPCAP).
    pub fn enforced_as(user: &str, uid: u32) -> Option<Self> {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: enforcement needs root (CAP_SETUID, CAP_SETGID, CAP_SETPCAP)");
            return None;
        }
        let mut fixture = Fixture::new();
        fixture.nested = false;
        let policy = format!("version: 1\nprocess:\n  run_as_user: \"{user}\"\n  run_as_group: \"{uid}\"\n");
        std::fs::write(fixture.path().join("policy.yaml"), policy).unwrap();
        nix::unistd::chown(&fixture.work(), Some(uid.into()), Some(uid.into())).unwrap();
        Some(fixture)
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn tls(&self) -> PathBuf {
        self.path().join("tls")
    }

    pub fn work(&self) -> PathBuf {
        self.path().join("work")
    }

    pub fn socket(&self) -> PathBuf {
        self.path().join("run/ssh.sock")
    }

    /// `agent --nested` with this fixture's files and the test proxy in its environment.
    pub fn agent_command(&self) -> Command {
        self.agent_command_in(&self.tls())
    }

    /// `agent` (`--nested` unless told otherwise) with `tls` as the shared TLS dir.
    pub fn agent_command_in(&self, tls: &Path) -> Command {
        let mut cmd = bin();
        cmd.arg("agent");
        if self.nested {
            cmd.arg("--nested");
        }
        cmd.arg("--tls-dir")
            .arg(tls)
            .arg("--policy")
            .arg(self.path().join("policy.yaml"))
            .arg("--ssh-socket")
            .arg(self.socket())
            .arg("--workdir")
            .arg(self.work())
            .env("HTTP_PROXY", PROXY)
            .env("https_proxy", PROXY)
            .env("SSL_CERT_FILE", self.tls().join(volume::CA_BUNDLE_FILE))
            .env("OPENSHELL_SANDBOX_TOKEN", "secret-token-value")
            .env("OPENSHELL_LOG_LEVEL", "info");
        cmd
    }

    /// Starts the agent and waits until its SSH socket answers.
    pub fn start(&self, extra: impl FnOnce(&mut Command)) -> Agent {
        self.start_logging(Stdio::inherit(), extra)
    }

    /// Like [`Fixture::start`], with the agent's stderr (its log) going to `log`.
    pub fn start_logging(&self, log: impl Into<Stdio>, extra: impl FnOnce(&mut Command)) -> Agent {
        let mut cmd = self.agent_command();
        extra(&mut cmd);
        self.serving(cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).spawn().unwrap())
    }

    /// Waits until the agent started as `child` (with this fixture's socket) answers.
    pub fn serving(&self, child: Child) -> Agent {
        let mut agent = Agent { child: Some(child), socket: self.socket(), relay: self.path().join("relay.py") };
        agent.wait_listening();
        agent
    }
}

/// Makes `fd` the child's descriptor `at`, without close-on-exec: a descriptor the
/// supervisor inherits and never asked for, as a careless parent would leave it.
#[allow(unsafe_code)]
pub fn inherit_fd(cmd: &mut Command, fd: std::os::fd::OwnedFd, at: i32) {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    // SAFETY: dup2(2) only, async-signal-safe; `fd` stays open, owned by the hook, until
    // the command is dropped.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd.as_raw_fd(), at) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// The descriptors `ls -l /proc/self/fd` listed, as (number, target); panics unless the
/// listing holds exactly 0, 1, 2 and `ls`'s own handle on the directory it reads.
pub fn only_stdio(listing: &str) -> Vec<(u32, String)> {
    let mut fds: Vec<(u32, String)> = listing
        .lines()
        .filter_map(|l| l.split_once(" -> "))
        .map(|(left, target)| (left.rsplit(' ').next().unwrap().parse().unwrap(), target.trim_end().to_owned()))
        .collect();
    fds.sort();
    let numbers: Vec<u32> = fds.iter().map(|(n, _)| *n).collect();
    assert_eq!(numbers, [0, 1, 2, 3], "{listing}");
    let dir = &fds[3].1;
    let pid = dir.strip_prefix("/proc/").and_then(|d| d.strip_suffix("/fd")).unwrap_or_default();
    assert!(pid.parse::<u32>().is_ok(), "descriptor 3 is ls's own directory handle, not {dir}: {listing}");
    fds
}

/// The port the agent's SSH TCP listener is bound to (`--ssh-listen 127.0.0.1:0`), read
/// from the `serving SSH` line of its JSON log in `log` (bounded wait).
pub fn ssh_tcp_port(log: &Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let bound = text.lines().filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok()).find_map(|e| {
            let tcp = e["tcp"].as_str().filter(|_| e["message"] == "serving SSH")?;
            tcp.strip_prefix("Some(")?.strip_suffix(')')?.parse::<std::net::SocketAddr>().ok()
        });
        if let Some(addr) = bound {
            return addr.port();
        }
        assert!(Instant::now() < deadline, "no `serving SSH` line with the TCP address: {text}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running `agent --nested`; SIGTERM and a bounded wait when dropped.
pub struct Agent {
    child: Option<Child>,
    pub socket: PathBuf,
    relay: PathBuf,
}

impl Agent {
    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while UnixStream::connect(&self.socket).is_err() {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("the agent exited early: {status}");
            }
            assert!(Instant::now() < deadline, "the agent's SSH socket never answered");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The OpenSSH client options every test uses, through the Unix socket.
    pub fn ssh_base(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.args(common_options()).arg("-o").arg(format!(
            "ProxyCommand=/usr/bin/python3 {} {}",
            self.relay.display(),
            self.socket.display()
        ));
        cmd
    }

    /// `ssh sandbox@agent ARGS...` through the Unix socket.
    pub fn ssh(&self, args: &[&str]) -> Command {
        let mut cmd = self.ssh_base("ssh");
        cmd.args(args);
        cmd
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::SIGTERM);
        wait_exit(&mut child, Duration::from_secs(10))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Waits (bounded) for `child` to exit; its exit code. Past `limit` it is killed and the
/// test fails.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Option<i32> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// OpenSSH options: no config, no known hosts, never a prompt, quiet.
pub fn common_options() -> Vec<String> {
    [
        "-F",
        "/dev/null",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "BatchMode=yes",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "ConnectTimeout=10",
    ]
    .map(String::from)
    .to_vec()
}

/// Runs `cmd` with a deadline; returns (exit code, stdout, stderr).
pub fn run(cmd: &mut Command) -> (i32, String, String) {
    let child = cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let Output { status, stdout, stderr } = wait_output(child, Duration::from_secs(30));
    (status.code().unwrap_or(-1), String::from_utf8_lossy(&stdout).into(), String::from_utf8_lossy(&stderr).into())
}

/// `wait_with_output` bounded by `limit` (the child is killed after it).
pub fn wait_output(child: Child, limit: Duration) -> Output {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(output) => output.unwrap(),
        Err(_) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::SIGKILL);
            panic!("the command did not finish within {limit:?}");
        }
    }
}
