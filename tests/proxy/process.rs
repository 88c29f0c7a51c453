//! The built binary in proxy mode as a real process: `.ready` only once both listeners
//! are bound, with their addresses; `healthcheck`; SIGTERM removes `.ready` and exits 0;
//! the CA survives a restart; an invalid policy exits 65 listing every error; the
//! gateway forward falls back through the fallback hosts, logging each address.

use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use openshell_sandbox::volume::{self, READY_FILE, Ready};

const BIN: &str = env!("CARGO_BIN_EXE_openshell-sandbox");

pub(crate) struct Proc {
    child: Child,
    stderr: PathBuf,
}

impl Proc {
    pub(crate) fn terminate(&mut self) -> ExitStatus {
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        self.wait()
    }

    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the proxy did not exit: {}", self.log());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Arguments shared by `proxy` and `healthcheck proxy`.
fn args(dir: &Path, listen: u16, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--policy".into(),
        dir.join("policy.yaml").display().to_string(),
        "--listen".into(),
        format!("127.0.0.1:{listen}"),
        "--tls-dir".into(),
        dir.join("tls").display().to_string(),
        "--state-dir".into(),
        dir.join("state").display().to_string(),
        "--shutdown-grace-secs".into(),
        "2".into(),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    args
}

/// Starts the proxy on 127.0.0.1 port 0: [`wait_ready`] gives the bound addresses.
pub(crate) fn spawn(dir: &Path, extra: &[&str]) -> Proc {
    static SPAWNED: AtomicUsize = AtomicUsize::new(0);
    let stderr = dir.join(format!("stderr-{}.log", SPAWNED.fetch_add(1, Ordering::Relaxed)));
    let child = Command::new(BIN)
        .arg("proxy")
        .args(args(dir, 0, extra))
        .env_clear()
        .env("OPENSHELL_SANDBOX_TOKEN", "test-token")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    Proc { child, stderr }
}

fn healthcheck(dir: &Path, listen: u16) -> i32 {
    Command::new(BIN)
        .args(["healthcheck", "proxy"])
        .args(args(dir, listen, &[]))
        .env_clear()
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .code()
        .unwrap()
}

pub(crate) fn wait_ready(dir: &Path, proc: &mut Proc) -> Ready {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("tls").join(READY_FILE).exists() {
        if let Some(status) = proc.child.try_wait().unwrap() {
            panic!("the proxy exited ({status}) before .ready: {}", proc.log());
        }
        assert!(Instant::now() < deadline, "no .ready: {}", proc.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    volume::read_ready(&dir.join("tls")).unwrap()
}

fn policy(dir: &Path) {
    std::fs::write(
        dir.join("policy.yaml"),
        "version: 1\nnetwork_policies:\n  gh:\n    endpoints:\n      - host: api.github.com\n        port: 443\n",
    )
    .unwrap();
}

fn gateway_args(port: u16, fallbacks: &str, forward: u16) -> Vec<String> {
    vec![
        "--endpoint".into(),
        format!("http://nonexistent-gateway.invalid:{port}"),
        "--sandbox-id".into(),
        "sb-1".into(),
        "--gateway-fallback-hosts".into(),
        fallbacks.into(),
        "--forward-listen".into(),
        format!("127.0.0.1:{forward}"),
    ]
}

#[test]
fn ready_after_both_listeners_then_gone_after_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    policy(dir.path());
    // The gateway's port: held, never answered (the forward is only bound here).
    let held = TcpListener::bind("127.0.0.1:0").unwrap();
    let gateway = gateway_args(held.local_addr().unwrap().port(), "127.0.0.1", 0);
    let gateway: Vec<&str> = gateway.iter().map(String::as_str).collect();
    let mut proc = spawn(dir.path(), &gateway);
    let ready = wait_ready(dir.path(), &mut proc);
    assert_eq!(ready.pid, proc.child.id());
    // Both listeners asked for port 0: `.ready` holds the ports they are bound to.
    let forward = ready.forward_listen.expect("the forward's address");
    for bound in [ready.proxy_listen, forward] {
        assert!(bound.ip() == IpAddr::from([127, 0, 0, 1]) && bound.port() != 0, "{ready:?}");
    }
    assert_ne!(ready.proxy_listen, forward);
    let listen = ready.proxy_listen.port();
    // When .ready exists, both listeners already accept.
    std::net::TcpStream::connect(ready.proxy_listen).unwrap();
    std::net::TcpStream::connect(ready.forward_listen.unwrap()).unwrap();
    let ca = std::fs::read_to_string(dir.path().join("tls/ca.pem")).unwrap();
    let bundle = std::fs::read_to_string(dir.path().join("tls/ca-bundle.pem")).unwrap();
    assert!(bundle.ends_with(&ca), "ca-bundle.pem ends with the sandbox CA");
    assert!(!dir.path().join("tls/ca-key.pem").exists(), "the key stays out of the shared dir");
    assert_eq!(healthcheck(dir.path(), listen), 0);

    let status = proc.terminate();
    assert_eq!(status.code(), Some(0), "{}", proc.log());
    assert!(!dir.path().join("tls").join(READY_FILE).exists(), ".ready is removed at shutdown");
    assert_eq!(healthcheck(dir.path(), listen), 1);
}

#[test]
fn no_ready_when_a_listener_cannot_bind() {
    let dir = tempfile::tempdir().unwrap();
    policy(dir.path());
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let forward = taken.local_addr().unwrap().port();
    // The endpoint's port too: nothing is dialled before the bind fails.
    let gateway = gateway_args(forward, "127.0.0.1", forward);
    let gateway: Vec<&str> = gateway.iter().map(String::as_str).collect();
    let mut proc = spawn(dir.path(), &gateway);
    let status = proc.wait();
    assert_eq!(status.code(), Some(64), "{}", proc.log());
    assert!(proc.log().contains("OPENSHELL_FORWARD_LISTEN"), "{}", proc.log());
    assert!(!dir.path().join("tls").join(READY_FILE).exists());
}

#[test]
fn the_ca_is_reused_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    policy(dir.path());
    let mut first = spawn(dir.path(), &[]);
    let before = wait_ready(dir.path(), &mut first).ca_sha256;
    assert_eq!(first.terminate().code(), Some(0));
    let key = dir.path().join("state/ca-key.pem");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    let mut second = spawn(dir.path(), &[]);
    let after = wait_ready(dir.path(), &mut second).ca_sha256;
    assert_eq!(before, after);
    assert_eq!(second.terminate().code(), Some(0));
}

#[test]
fn an_invalid_policy_exits_65_listing_every_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        "version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - host: \"*\"\n        port: 443\n      - host: ok.example.com\n        port: 443\n        bogus_key: 1\n",
    )
    .unwrap();
    let mut proc = spawn(dir.path(), &[]);
    let status = proc.wait();
    let log = proc.log();
    assert_eq!(status.code(), Some(65), "{log}");
    assert!(log.contains("2 errors"), "{log}");
    assert!(log.contains("bogus_key") && log.contains("every host"), "{log}");
    assert!(!dir.path().join("tls").join(READY_FILE).exists());
}

#[test]
fn the_gateway_forward_falls_back_and_logs_each_address() {
    use std::io::{Read, Write};
    let gateway = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = gateway.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in gateway.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut buf = [0u8; 64];
            let n = stream.read(&mut buf).unwrap_or(0);
            let _ = stream.write_all(&buf[..n]);
        }
    });
    let dir = tempfile::tempdir().unwrap();
    policy(dir.path());
    // The endpoint's host does not resolve, nor the first fallback; 127.0.0.2 refuses
    // (the gateway listens on 127.0.0.1 only); 127.0.0.1 answers.
    let mut gateway = gateway_args(port, "also-missing.invalid,127.0.0.2,127.0.0.1", 0);
    // Bounds each lookup of the .invalid names should a resolver be slow to say no.
    gateway.extend(["--connect-timeout-secs".to_owned(), "2".to_owned()]);
    let gateway: Vec<&str> = gateway.iter().map(String::as_str).collect();
    let mut proc = spawn(dir.path(), &gateway);
    let forward = wait_ready(dir.path(), &mut proc).forward_listen.expect("the forward's address");
    let mut client = std::net::TcpStream::connect(forward).unwrap();
    client.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    client.write_all(b"ping").unwrap();
    let mut answer = [0u8; 4];
    client.read_exact(&mut answer).unwrap();
    assert_eq!(&answer, b"ping");
    assert_eq!(proc.terminate().code(), Some(0));
    let log = proc.log();
    // Only the forward's lines: the gateway client's own warnings name the host too.
    let lines = |needle: &str| log.lines().filter(|l| l.contains("gateway forward") && l.contains(needle)).count();
    assert_eq!(lines("nonexistent-gateway.invalid"), 1, "{log}");
    assert_eq!(lines("also-missing.invalid"), 1, "{log}");
    assert!(log.lines().any(|l| l.contains("127.0.0.2") && l.contains("refused")), "{log}");
    assert!(log.lines().any(|l| l.contains(&format!("127.0.0.1:{port}")) && l.contains("connected")), "{log}");
}

#[test]
fn audit_events_are_json_lines_with_decision_and_bytes() {
    let up_port = hello_upstream();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("policy.yaml"),
        format!("version: 1\nnetwork_policies:\n  local:\n    endpoints:\n      - host: 127.0.0.1\n        port: {up_port}\n"),
    )
    .unwrap();
    let mut proc = spawn(dir.path(), &["--allow-loopback-upstreams", "--log-format", "json"]);
    let listen = wait_ready(dir.path(), &mut proc).proxy_listen;
    let send = |request: String| send(listen, &request).1;
    let ok = send(format!("GET http://127.0.0.1:{up_port}/a HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"));
    assert!(ok.ends_with("hello"), "{ok}");
    let denied = send("CONNECT blocked.example:443 HTTP/1.1\r\nHost: blocked.example:443\r\n\r\n".into());
    assert!(denied.starts_with("HTTP/1.1 403 "), "{denied}");
    assert_eq!(proc.terminate().code(), Some(0));

    let log = proc.log();
    let events: Vec<serde_json::Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| e["target"] == "openshell::audit")
        .collect();
    let find = |action: &str, host: &str| {
        events
            .iter()
            .find(|e| e["action"] == action && e["host"] == host)
            .unwrap_or_else(|| panic!("no {action} event for {host}: {log}"))
    };
    let allow = find("allow", "127.0.0.1");
    assert_eq!((allow["policy"].as_str(), allow["rule"].as_str()), (Some("local"), Some("local.endpoints[0]")));
    assert_eq!((allow["method"].as_str(), allow["path"].as_str()), (Some("GET"), Some("/a")));
    let close = find("close", "127.0.0.1");
    assert_eq!(close["bytes_received"], 5, "{close}");
    assert_eq!(close["status"], 200, "{close}");
    assert!(close["duration_ms"].is_u64(), "{close}");
    let deny = find("deny", "blocked.example");
    assert_eq!(deny["port"], 443);
    assert_eq!(deny["error"], "policy_denied");
    assert!(deny["reason"].as_str().is_some_and(|r| !r.is_empty()), "{deny}");
}

/// An upstream on 127.0.0.1 that answers every request head with `200` and `hello`; its port.
pub(crate) fn hello_upstream() -> u16 {
    use std::io::{Read, Write};
    let upstream = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = upstream.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for stream in upstream.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
                head.push(byte[0]);
            }
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello");
        }
    });
    port
}

/// Sends `request` to the proxy at `listen` on a new connection and reads until it closes
/// (bounded): the client's local port and the answer.
pub(crate) fn send(listen: std::net::SocketAddr, request: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(listen).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    (stream.local_addr().unwrap().port(), answer)
}
