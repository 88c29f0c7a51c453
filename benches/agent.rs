//! Exec round trip of the agent's SSH server (`agent --nested`, the release binary): a
//! new connection, authentication, `exec true` and its exit status, measured (1) with an
//! in-process russh client over the Unix socket and (2) with the real `ssh … true` over
//! the TCP listener (includes the OpenSSH client's own start). Prints median and p99.
//! Target on the CI machine kind: median at most 15 ms over the Unix socket.
//! Under `cargo test` (no `--bench` argument) it runs a few rounds as a smoke test.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use russh::ChannelMsg;
use russh::keys::PublicKeyOrCertificate;

struct AcceptAny;

impl russh::client::Handler for AcceptAny {
    type Error = russh::Error;

    async fn check_server_key(&mut self, _key: &PublicKeyOrCertificate) -> Result<bool, Self::Error> {
        Ok(true)
    }
}

/// One connection, `none` authentication, `exec true`, exit status 0.
async fn exec_true(socket: &Path, config: Arc<russh::client::Config>) {
    let stream = tokio::net::UnixStream::connect(socket).await.unwrap();
    let mut handle = russh::client::connect_stream(config, stream, AcceptAny).await.unwrap();
    assert!(handle.authenticate_none("bench").await.unwrap().success());
    let mut channel = handle.channel_open_session().await.unwrap();
    channel.exec(true, "true").await.unwrap();
    loop {
        match channel.wait().await {
            Some(ChannelMsg::ExitStatus { exit_status }) => {
                assert_eq!(exit_status, 0);
                break;
            }
            Some(_) => {}
            None => panic!("the channel closed without an exit status"),
        }
    }
    let _ = handle.disconnect(russh::Disconnect::ByApplication, "", "").await;
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!("{what}: n={} median={:.2?} p99={:.2?}", samples.len(), at(0.5), at(0.99));
}

fn main() {
    let rounds = if std::env::args().any(|a| a == "--bench") { 200 } else { 3 };
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    std::fs::write(tls.join("ca-bundle.pem"), "pem").unwrap();
    let ready = r#"{"pid":1,"proxy_listen":"127.0.0.1:1","forward_listen":null,"ca_sha256":"AB","time":"now"}"#;
    std::fs::write(tls.join(".ready"), ready).unwrap();
    std::fs::write(dir.path().join("policy.yaml"), "version: 1\n").unwrap();
    let key = dir.path().join("key");
    let keygen = Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&key).status();
    assert!(keygen.unwrap().success());
    std::fs::copy(key.with_extension("pub"), dir.path().join("authorized_keys")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let socket = dir.path().join("ssh.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_openshell-sandbox"))
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .args(["agent", "--nested", "--log-level", "warn", "--tls-dir"])
        .arg(&tls)
        .arg("--policy")
        .arg(dir.path().join("policy.yaml"))
        .arg("--ssh-socket")
        .arg(&socket)
        .arg("--ssh-listen")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--authorized-keys")
        .arg(dir.path().join("authorized_keys"))
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "the agent never listened");
        std::thread::sleep(Duration::from_millis(20));
    }

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let config = Arc::new(russh::client::Config::default());
    let unix: Vec<Duration> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            runtime.block_on(exec_true(&socket, config.clone()));
            started.elapsed()
        })
        .collect();
    report("exec round trip, russh client, Unix socket", unix);

    let tcp: Vec<Duration> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            let status = Command::new("ssh")
                .args(["-F", "/dev/null", "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null"])
                .args(["-o", "BatchMode=yes", "-o", "LogLevel=ERROR", "-o", "IdentitiesOnly=yes", "-i"])
                .arg(&key)
                .args(["-p", &port.to_string(), "bench@127.0.0.1", "true"])
                .status()
                .unwrap();
            assert!(status.success());
            started.elapsed()
        })
        .collect();
    report("exec round trip, OpenSSH `ssh … true`, TCP", tcp);

    let _ = agent.kill();
    let _ = agent.wait();
}
