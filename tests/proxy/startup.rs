//! Startup checks of the built binary. It refuses to start (exit 64, naming both settings
//! and both resolved paths) when its private state dir, which holds the CA key, is the
//! shared TLS dir, lies inside it, or contains it, however the paths spell it (`..`,
//! symbolic links, a link to a directory not created yet); no `ca-key.pem` is written into
//! the TLS dir. Sibling directories, even with a common name prefix, start. Listening
//! beyond loopback with no client allow-list is warned about once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_openshell-sandbox");

struct Proxy {
    child: Child,
    stderr: PathBuf,
}

impl Proxy {
    fn start(dir: &Path, state: &Path, tls: &Path) -> Proxy {
        Proxy::start_listening(dir, state, tls, "127.0.0.1", &[])
    }

    fn start_listening(dir: &Path, state: &Path, tls: &Path, ip: &str, extra: &[&str]) -> Proxy {
        let listen = std::net::TcpListener::bind((ip, 0)).unwrap().local_addr().unwrap();
        let policy = dir.join("policy.yaml");
        std::fs::write(
            &policy,
            "version: 1\nnetwork_policies:\n  a:\n    endpoints: [{host: a.example.com, port: 443}]\n",
        )
        .unwrap();
        let stderr = dir.join(format!("stderr-{}.log", listen.port()));
        let child = Command::new(BIN)
            .arg("proxy")
            .arg("--policy")
            .arg(&policy)
            .args(["--listen", &listen.to_string(), "--shutdown-grace-secs", "1"])
            .args(extra)
            .env_clear()
            .env("OPENSHELL_PROXY_STATE_DIR", state)
            .env("OPENSHELL_TLS_DIR", tls)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .unwrap();
        Proxy { child, stderr }
    }

    /// The exit code, or `None` if still running after `within`.
    fn exit_within(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.code();
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every `ca-key.pem` under `dir`, following no link.
fn keys_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let path = entry.path();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            found.extend(keys_under(&path));
        } else if path.file_name().is_some_and(|n| n == "ca-key.pem") {
            found.push(path);
        }
    }
    found
}

#[test]
fn a_state_dir_that_is_in_or_around_the_tls_dir_is_refused() {
    use std::os::unix::fs::symlink;
    let tmp = tempfile::tempdir().unwrap();
    let base = std::fs::canonicalize(tmp.path()).unwrap();
    // (case, state dir, TLS dir, the state dir resolved, the TLS dir resolved, prepare)
    type Prepare = fn(&Path);
    let cases: &[(&str, &str, &str, &str, &str, Prepare)] = &[
        ("equal", "shared", "shared", "shared", "shared", |_| {}),
        ("equal, trailing slash", "shared/", "shared", "shared", "shared", |_| {}),
        ("inside", "shared/keys", "shared", "shared/keys", "shared", |_| {}),
        ("dot-dot", "state/../shared/keys", "shared", "shared/keys", "shared", |_| {}),
        ("symlink to the TLS dir", "link/keys", "shared", "shared/keys", "shared", |b| {
            std::fs::create_dir(b.join("shared")).unwrap();
            symlink(b.join("shared"), b.join("link")).unwrap();
        }),
        ("symlink to a TLS dir not created yet", "link", "shared", "shared", "shared", |b| {
            symlink(b.join("shared"), b.join("link")).unwrap();
        }),
        ("TLS dir inside the state dir", "state", "state/shared", "state", "state/shared", |_| {}),
        ("TLS dir linked into the state dir", "state", "tls-link", "state", "state/shared", |b| {
            symlink("state/shared", b.join("tls-link")).unwrap();
        }),
    ];
    for (case, state, tls, state_resolved, tls_resolved, prepare) in cases {
        let dir = base.join(case.replace([' ', ','], "-"));
        std::fs::create_dir(&dir).unwrap();
        prepare(&dir);
        let mut proxy = Proxy::start(&dir, &dir.join(state), &dir.join(tls));
        let code = proxy.exit_within(Duration::from_secs(20));
        let log = proxy.log();
        assert_eq!(code, Some(64), "{case}: {log}");
        for named in [
            "OPENSHELL_PROXY_STATE_DIR",
            "OPENSHELL_TLS_DIR",
            &dir.join(state_resolved).display().to_string(),
            &dir.join(tls_resolved).display().to_string(),
        ] {
            assert!(log.contains(named), "{case}: `{named}` is not named: {log}");
        }
        assert_eq!(keys_under(&dir.join(tls_resolved)), Vec::<PathBuf>::new(), "{case}");
        assert!(!dir.join(tls_resolved).join("ca.pem").exists(), "{case}: nothing written to the TLS dir");
    }
}

/// Waits for `.ready` in `tls`, failing if the proxy exits first.
fn wait_ready(proxy: &mut Proxy, tls: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !tls.join(".ready").exists() {
        assert!(proxy.exit_within(Duration::ZERO).is_none(), "the proxy exited: {}", proxy.log());
        assert!(Instant::now() < deadline, "no .ready: {}", proxy.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn sibling_dirs_start_even_with_a_common_name_prefix() {
    let dir = tempfile::tempdir().unwrap();
    let (state, tls) = (dir.path().join("tls-state"), dir.path().join("tls"));
    let mut proxy = Proxy::start(dir.path(), &state, &tls);
    wait_ready(&mut proxy, &tls);
    assert!(state.join("ca-key.pem").exists());
    assert!(keys_under(&tls).is_empty());
}

#[test]
fn listening_beyond_loopback_without_a_client_list_is_warned_about_once() {
    let warned = |ip: &str, extra: &[&str]| {
        let dir = tempfile::tempdir().unwrap();
        let (state, tls) = (dir.path().join("state"), dir.path().join("tls"));
        let mut proxy = Proxy::start_listening(dir.path(), &state, &tls, ip, extra);
        wait_ready(&mut proxy, &tls);
        let log = proxy.log();
        let lines: Vec<&str> = log.lines().filter(|l| l.contains("OPENSHELL_PROXY_ALLOWED_CLIENTS")).collect();
        assert!(lines.iter().all(|l| l.contains("WARN") && l.contains("beyond loopback")), "{log}");
        lines.len()
    };
    assert_eq!(warned("0.0.0.0", &[]), 1);
    assert_eq!(warned("::", &[]), 1);
    assert_eq!(warned("0.0.0.0", &["--allowed-clients", "10.89.10.0/24,127.0.0.1/32"]), 0);
    assert_eq!(warned("127.0.0.1", &[]), 0);
    assert_eq!(warned("::1", &[]), 0);
}
