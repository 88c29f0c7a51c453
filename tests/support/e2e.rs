//! Shared pieces of the end-to-end tests: bounded commands, named network namespaces
//! with a sweep of dead runs, a socket bound inside a namespace from a `setns` thread,
//! and the HTTP + HTTPS upstream (rcgen CA, certificate for an IP address).

#![allow(dead_code)]

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The test's own binary, as `cargo test` built it.
pub const BIN: &str = env!("CARGO_BIN_EXE_openshell-sandbox");

/// Body of every upstream answer.
pub const HELLO: &str = "hello-from-upstream";

/// The output of a finished command.
#[derive(Debug)]
pub struct Output {
    /// Exit code; `None` when a signal ended it.
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

impl Output {
    /// Whether it exited 0.
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// Both streams, for assertion messages.
    pub fn all(&self) -> String {
        format!("exit {:?}\nstdout: {}\nstderr: {}", self.code, self.stdout, self.stderr)
    }
}

/// Runs `cmd` to completion, killing it after `limit`; never hangs.
pub fn run(cmd: &mut Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = Vec::new();
            let _ = pipe.read_to_end(&mut text);
            String::from_utf8_lossy(&text).into_owned()
        })
    };
    let out = drain(Box::new(child.stdout.take().unwrap()));
    let err = drain(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{cmd:?} did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output { code: status.code(), stdout: out.join().unwrap(), stderr: err.join().unwrap() }
}

/// Runs `cmd` and panics unless it exits 0.
pub fn must(cmd: &mut Command, limit: Duration) -> Output {
    let out = run(cmd, limit);
    assert!(out.ok(), "{cmd:?} failed: {}", out.all());
    out
}

/// Why this machine cannot run the namespace tests, if it cannot: they need root and
/// `ip` (iproute2).
pub fn netns_unsupported() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root: network namespaces need CAP_SYS_ADMIN".into());
    }
    if !has_command("ip") {
        return Some("`ip` (iproute2) is not installed".into());
    }
    None
}

/// Whether `name` is on PATH.
pub fn has_command(name: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(name).is_file()))
        .unwrap_or(false)
}

/// Whether the process `pid` still exists.
pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Held by each end-to-end test for its whole run, so the tests of the one `e2e` binary run
/// one after the other (namespaces, addresses and the host's CPU to themselves), as they did
/// as binaries of their own.
pub fn one_at_a_time() -> MutexGuard<'static, ()> {
    static ONE: Mutex<()> = Mutex::new(());
    ONE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Named namespaces whose name is `{prefix}{pid}-...` with a dead pid: leftovers of a
/// killed run. Live runs (another `cargo test` at the same time) are left alone.
pub fn stale_names(names: impl IntoIterator<Item = String>, prefix: &str) -> Vec<String> {
    names
        .into_iter()
        .filter(|name| {
            let Some(rest) = name.strip_prefix(prefix) else { return false };
            let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
            pid.parse::<u32>().is_ok_and(|pid| !alive(pid))
        })
        .collect()
}

/// Every named network namespace.
pub fn netns_list() -> Vec<String> {
    let out = run(Command::new("ip").args(["netns", "list"]), Duration::from_secs(10));
    out.stdout.lines().filter_map(|line| line.split_whitespace().next()).map(str::to_owned).collect()
}

/// Kills every process in the named namespace `name`, then deletes it.
pub fn netns_delete(name: &str) {
    let pids = run(Command::new("ip").args(["netns", "pids", name]), Duration::from_secs(10));
    for pid in pids.stdout.split_whitespace().filter_map(|p| p.parse::<i32>().ok()) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
    }
    let _ = run(Command::new("ip").args(["netns", "del", name]), Duration::from_secs(10));
}

/// Creates the named namespace `name` with loopback up.
pub fn netns_add(name: &str) {
    must(Command::new("ip").args(["netns", "add", name]), Duration::from_secs(10));
    must(Command::new("ip").args(["-n", name, "link", "set", "lo", "up"]), Duration::from_secs(10));
}

/// Runs `f` on a fresh thread that has joined the named namespace `name` (setns affects
/// only that thread; sockets it opens stay in that namespace).
pub fn in_netns<T: Send + 'static>(name: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{name}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .unwrap()
}

/// The errno a direct TCP connect from inside `netns` gives, bounded to 3 s.
pub fn direct_connect_error(netns: &str, target: SocketAddr) -> std::io::Error {
    in_netns(netns, move || match std::net::TcpStream::connect_timeout(&target, Duration::from_secs(3)) {
        Ok(_) => panic!("a direct connection from the agent side to {target} succeeded"),
        Err(e) => e,
    })
}

/// A test CA and an upstream certificate for `ip`, as PEM; plus the rustls server config.
pub struct UpstreamTls {
    /// The CA certificate (PEM): the "system roots" the proxy bundles.
    pub ca_pem: String,
    /// The server configuration with the leaf certificate.
    pub config: Arc<rustls::ServerConfig>,
}

impl UpstreamTls {
    /// A fresh CA and a leaf for `ip`.
    pub fn new(ip: IpAddr) -> Self {
        Self::for_names(&[&ip.to_string()])
    }

    /// A fresh CA and a leaf for each of `names` (DNS names or IP addresses).
    pub fn for_names(names: &[&str]) -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "e2e upstream root");
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let mut leaf_params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>()).unwrap();
        leaf_params.distinguished_name.push(DnType::CommonName, names[0]);
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone()], key)
            .unwrap();
        UpstreamTls { ca_pem: ca_cert.pem(), config: Arc::new(config) }
    }
}

/// The upstream: plain HTTP and HTTPS listeners bound inside a namespace, each answering
/// every request with `200` and [`HELLO`] and recording the request head. It stops when
/// dropped.
pub struct Upstream {
    runtime: Option<tokio::runtime::Runtime>,
    heads: Arc<std::sync::Mutex<Vec<String>>>,
}

impl Upstream {
    /// Binds `http` and `https` inside the named namespace `netns` and serves them.
    pub fn start(netns: &str, http: SocketAddr, https: SocketAddr, tls: Arc<rustls::ServerConfig>) -> Self {
        let (plain, secure) = in_netns(netns, move || {
            let bind = |addr| {
                let listener = std::net::TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                listener.set_nonblocking(true).unwrap();
                listener
            };
            (bind(http), bind(https))
        });
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let heads = Arc::default();
        runtime.spawn(serve(plain, None, Arc::clone(&heads)));
        runtime.spawn(serve(secure, Some(tokio_rustls::TlsAcceptor::from(tls)), Arc::clone(&heads)));
        Upstream { runtime: Some(runtime), heads }
    }

    /// Every request head received so far (both listeners), as text.
    pub fn heads(&self) -> Vec<String> {
        self.heads.lock().unwrap().clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

type Heads = Arc<std::sync::Mutex<Vec<String>>>;

async fn serve(listener: std::net::TcpListener, tls: Option<tokio_rustls::TlsAcceptor>, heads: Heads) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    loop {
        let Ok((stream, _)) = listener.accept().await else { return };
        let tls = tls.clone();
        let heads = Arc::clone(&heads);
        tokio::spawn(async move {
            let answer = async move {
                match tls {
                    Some(acceptor) => answer(acceptor.accept(stream).await.ok()?, heads).await,
                    None => answer(stream, heads).await,
                }
            };
            let _ = tokio::time::timeout(Duration::from_secs(10), answer).await;
        });
    }
}

/// Reads one request head, records it, and answers `200` with [`HELLO`], or with N zero
/// bytes for `GET /bytes/N` (downloads for the figures).
async fn answer(mut stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin, heads: Heads) -> Option<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.ok()? == 0 || head.len() > 16 * 1024 {
            return None;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let size = head.strip_prefix("GET /bytes/").and_then(|rest| rest.split(' ').next()?.parse::<usize>().ok());
    heads.lock().unwrap().push(head);
    let length = size.unwrap_or(HELLO.len());
    let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {length}\r\nConnection: close\r\n\r\n");
    stream.write_all(answer.as_bytes()).await.ok()?;
    match size {
        None => stream.write_all(HELLO.as_bytes()).await.ok()?,
        Some(size) => {
            let chunk = vec![0u8; 64 * 1024];
            let mut left = size;
            while left > 0 {
                let n = left.min(chunk.len());
                stream.write_all(&chunk[..n]).await.ok()?;
                left -= n;
            }
        }
    }
    stream.shutdown().await.ok()
}

/// Polls `check` every 20 ms until it returns `Some`, or panics naming `what` after `limit`.
pub fn wait_for<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The L4 policy the end-to-end tests use: the upstream's address on both ports, named
/// exactly (a private address is allowed only when the endpoint names it).
pub fn policy(upstream: IpAddr, http: u16, https: u16) -> String {
    format!(
        "version: 1\nnetwork_policies:\n  upstream:\n    name: e2e upstream\n    endpoints:\n      \
         - host: \"{upstream}\"\n        ports: [{http}, {https}]\n"
    )
}

/// [`policy`] plus `inspected`, an HTTPS port of the same address the proxy terminates
/// (`protocol: rest`, read-write, bound to provider `e2e`): the port where credential
/// placeholders are swapped.
pub fn policy_inspected(upstream: IpAddr, http: u16, https: u16, inspected: u16) -> String {
    format!(
        "{}      - {{host: \"{upstream}\", port: {inspected}, protocol: rest, access: read-write, credential_binding: {{provider: e2e}}}}\n",
        policy(upstream, http, https)
    )
}
