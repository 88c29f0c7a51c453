//! Proxy mode with only the test gateway (no local policy file), as the real binary:
//! the contract's startup order with `.ready` last, CONNECT decided by the gateway's
//! policy, updates applied and reported LOADED, a bad update reported FAILED and either
//! kept out (`retain_last_valid`) or quarantining the proxy (`fail_closed`), the global
//! policy applied without a status, a provider revision change swaps the credentials, a
//! gateway that goes away neither slows the proxy nor floods its log, a TLS gateway that
//! wants a client certificate named as the cause; in process: config retries on
//! UNAVAILABLE and inference routes following the gateway's bundle.

use crate::support::gateway as gateway_support;
use crate::support::proxy as proxy_support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use gateway_support::{Payload, SANDBOX_ID, TOKEN, TestGateway, eventually};
use openshell_sandbox::gateway::backoff::RetrySchedule;
use openshell_sandbox::gateway::proto::inference::{GetInferenceBundleResponse, ResolvedRoute};
use openshell_sandbox::gateway::proto::sandbox::{NetworkEndpoint, NetworkPolicyRule, SandboxPolicy};
use openshell_sandbox::gateway::proto::{GetSandboxProviderEnvironmentResponse, PolicyStatus};
use openshell_sandbox::policy::RegoRules;
use openshell_sandbox::proxy::gateway_source;
use openshell_sandbox::proxy::policy_source::PolicyHandle;
use openshell_sandbox::shutdown::Shutdown;
use openshell_sandbox::volume::{self, READY_FILE};
use proxy_support::EchoServer;

const BIN: &str = env!("CARGO_BIN_EXE_openshell-sandbox");
const WAIT: Duration = Duration::from_secs(20);

/// A policy allowing each `host:port` (L4), with protocol `protocol` ("" for none).
fn policy(entries: &[(&str, u16)], protocol: &str) -> SandboxPolicy {
    let endpoints = entries
        .iter()
        .map(|(host, port)| NetworkEndpoint {
            host: (*host).into(),
            port: u32::from(*port),
            protocol: protocol.into(),
            ..Default::default()
        })
        .collect();
    let rule = NetworkPolicyRule { name: "test".into(), endpoints, ..Default::default() };
    SandboxPolicy { version: 1, network_policies: [("test".to_owned(), rule)].into(), ..Default::default() }
}

struct Proxy {
    child: Child,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Proxy {
    /// Starts the binary against `gateway` and waits for `.ready`; returns the calls the
    /// gateway had recorded when `.ready` was first seen.
    fn start(gateway: &TestGateway, log_level: &str) -> (Self, Vec<gateway_support::Call>) {
        let dir = tempfile::tempdir().unwrap();
        let child = Command::new(BIN)
            .args(["proxy", "--listen", "127.0.0.1:0", "--forward-listen", "127.0.0.1:0", "--allow-loopback-upstreams"])
            .args(["--policy-poll-interval-secs", "1", "--log-level", log_level, "--endpoint", &gateway.url()])
            .args(["--sandbox-id", SANDBOX_ID, "--tls-dir"])
            .arg(dir.path().join("tls"))
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .env_clear()
            .env("OPENSHELL_SANDBOX_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
            .spawn()
            .unwrap();
        let mut proxy = Proxy { child, dir, addr: "127.0.0.1:1".parse().unwrap() };
        let deadline = Instant::now() + WAIT;
        let calls = loop {
            let calls = gateway.state.calls();
            if proxy.tls().join(READY_FILE).exists() {
                break calls;
            }
            if let Some(status) = proxy.child.try_wait().unwrap() {
                panic!("the proxy exited ({status}) before .ready: {}", proxy.log());
            }
            assert!(Instant::now() < deadline, "no .ready: {}", proxy.log());
            std::thread::sleep(Duration::from_millis(2));
        };
        proxy.addr = volume::read_ready(&proxy.tls()).unwrap().proxy_listen;
        (proxy, calls)
    }

    fn tls(&self) -> PathBuf {
        self.dir.path().join("tls")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    async fn connect_status(&self, target: SocketAddr) -> String {
        let (_, head) = self.connect(target).await;
        head.lines().next().unwrap_or_default().to_owned()
    }

    /// `CONNECT target`: the stream after the answer head, and the head.
    async fn connect(&self, target: SocketAddr) -> (TcpStream, String) {
        let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        let mut stream = TcpStream::connect(self.addr).await.unwrap();
        stream.write_all(request.as_bytes()).await.unwrap();
        let head = proxy_support::read_head(&mut stream).await;
        (stream, head)
    }

    /// A tunnel to the echo server at `target` that has carried one request.
    async fn tunnel(&self, target: SocketAddr) -> TcpStream {
        let (mut tunnel, head) = self.connect(target).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}: {}", self.log());
        assert!(round_trip(&mut tunnel).await, "the tunnel carries a request");
        tunnel
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn statuses(gateway: &TestGateway) -> Vec<(u32, i32, String)> {
    gateway
        .state
        .calls_of("ReportPolicyStatus")
        .into_iter()
        .filter_map(|c| match c.payload {
            Payload::PolicyStatus(r) => Some((r.version, r.status, r.load_error)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_follows_the_contract_order_and_the_gateway_policy_decides() {
    let allowed = EchoServer::start().await;
    let denied = EchoServer::start().await;
    let gateway = TestGateway::start().await;
    gateway.state.set_policy(policy(&[("127.0.0.1", allowed.addr.port())], ""), 1, "h1", 1);
    let (proxy, at_ready) = tokio::task::block_in_place(|| Proxy::start(&gateway, "info"));

    let order: Vec<&str> =
        at_ready.iter().map(|c| c.method).filter(|m| *m != "ReportPolicyStatus").fold(Vec::new(), |mut seen, m| {
            if !seen.contains(&m) {
                seen.push(m);
            }
            seen
        });
    // The proxy opens the log stream, waits until its request has gone out, and only then
    // calls GetSandboxConfig. The gateway runs each HTTP/2 stream's handler as its own task,
    // so it may record those two in either order (seen 0.2 ms apart); the rest is strict.
    let (first, rest) = order.split_at(order.len().min(2));
    let mut first = first.to_vec();
    first.sort_unstable();
    assert_eq!(first, ["GetSandboxConfig", "PushSandboxLogs"], "the calls before .ready: {at_ready:?}");
    assert_eq!(rest, ["GetSandboxProviderEnvironment", "GetInferenceBundle"], "the calls before .ready: {at_ready:?}");
    assert!(at_ready[..2].iter().any(|c| matches!(c.payload, Payload::LogsOpened)), "the log stream is opened first");
    assert!(at_ready.iter().all(|c| c.token.as_deref() == Some(&format!("Bearer {TOKEN}"))), "{at_ready:?}");
    assert_eq!(statuses(&gateway), [(1, PolicyStatus::Loaded as i32, String::new())]);

    assert!(proxy.connect_status(allowed.addr).await.starts_with("HTTP/1.1 200"), "{}", proxy.log());
    assert!(proxy.connect_status(denied.addr).await.starts_with("HTTP/1.1 403"), "{}", proxy.log());
    let lines = eventually(WAIT, "the proxy's log lines at the gateway", || {
        let lines = gateway.state.log_lines();
        let denial = lines.iter().any(|l| l.message.starts_with("NET:REFUSE [MED] DENIED "));
        (lines.iter().any(|l| l.message.contains("proxy ready")) && denial).then_some(lines)
    })
    .await;
    assert!(lines.iter().all(|l| l.sandbox_id == SANDBOX_ID && l.source == "sandbox"), "{lines:?}");
    // Audit events arrive as OpenShell's supervisor sends them: the OCSF shorthand, level
    // OCSF, target ocsf, ranked by ocsf.severity_id; never as ordinary audit lines.
    let ocsf: Vec<_> = lines.iter().filter(|l| l.level == "OCSF").collect();
    assert!(ocsf.iter().all(|l| l.target == "ocsf" && l.fields.contains_key("ocsf.severity_id")), "{ocsf:?}");
    assert!(!lines.iter().any(|l| l.target == "openshell::audit"), "{lines:?}");
    let allowed = ocsf.iter().find(|l| l.message.starts_with("NET:OPEN [INFO] ALLOWED ")).expect("the allowed CONNECT");
    assert_eq!(allowed.fields["ocsf.severity_id"], "1", "{allowed:?}");
    let denied = ocsf.iter().find(|l| l.message.starts_with("NET:REFUSE [MED] DENIED ")).expect("the denied CONNECT");
    assert_eq!(denied.fields["ocsf.severity_id"], "3", "{denied:?}");
    assert!(denied.message.contains(" [reason:"), "{denied:?}");
    let loaded = ocsf.iter().find(|l| l.message.starts_with("CONFIG:ENABLED [INFO] policy generation installed"));
    assert!(loaded.is_some(), "the policy's installation is a config event: {ocsf:?}");
}

/// One request through a tunnel to an echo server; `false` when the tunnel is closed.
async fn round_trip(tunnel: &mut TcpStream) -> bool {
    if tunnel.write_all(b"GET /t HTTP/1.1\r\nHost: echo\r\n\r\n").await.is_err() {
        return false;
    }
    let head = proxy_support::read_head(tunnel).await;
    let mut body = [0u8; 256];
    head.starts_with("HTTP/1.1 200 ") && tunnel.read(&mut body).await.is_ok_and(|n| n > 0)
}

/// Whether the proxy closes `tunnel` within a few seconds (EOF or reset).
async fn closed(tunnel: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    let read = async { while tunnel.read(&mut buf).await.is_ok_and(|n| n > 0) {} };
    tokio::time::timeout(Duration::from_secs(3), read).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_retain_last_valid_updates_apply_and_bad_ones_are_reported_failed_and_kept_out() {
    let first = EchoServer::start().await;
    let second = EchoServer::start().await;
    let gateway = TestGateway::start().await;
    gateway.state.set_failure_mode("retain_last_valid");
    gateway.state.set_policy(policy(&[("127.0.0.1", first.addr.port())], ""), 1, "h1", 1);
    let (proxy, _) = tokio::task::block_in_place(|| Proxy::start(&gateway, "info"));
    assert!(proxy.connect_status(first.addr).await.contains(" 200 "));

    gateway.state.set_policy(policy(&[("127.0.0.1", second.addr.port())], ""), 2, "h2", 2);
    eventually(WAIT, "LOADED for version 2", || statuses(&gateway).iter().any(|s| s.0 == 2).then_some(())).await;
    assert_eq!(statuses(&gateway).last().unwrap(), &(2, PolicyStatus::Loaded as i32, String::new()));
    assert!(proxy.connect_status(second.addr).await.contains(" 200 "), "{}", proxy.log());
    assert!(proxy.connect_status(first.addr).await.starts_with("HTTP/1.1 403"));
    let mut tunnel = proxy.tunnel(second.addr).await;

    gateway.state.set_policy(policy(&[("127.0.0.1", first.addr.port())], "gopher"), 3, "h3", 3);
    eventually(WAIT, "a status for version 3", || statuses(&gateway).iter().any(|s| s.0 == 3).then_some(())).await;
    let (version, status, error) = statuses(&gateway).last().unwrap().clone();
    assert_eq!((version, status), (3, PolicyStatus::Failed as i32));
    assert!(
        error.starts_with("invalid policy from the gateway: network_policies.test.endpoints[0].protocol"),
        "{error}"
    );
    assert!(proxy.connect_status(second.addr).await.contains(" 200 "), "the last good policy stays");
    assert!(proxy.connect_status(first.addr).await.starts_with("HTTP/1.1 403"));
    assert!(round_trip(&mut tunnel).await, "an open tunnel stays open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_fail_closed_a_rejected_policy_quarantines_until_a_valid_one_loads() {
    let echo = EchoServer::start().await;
    let gateway = TestGateway::start().await;
    gateway.state.set_policy(policy(&[("127.0.0.1", echo.addr.port())], ""), 1, "h1", 1);
    let (proxy, _) = tokio::task::block_in_place(|| Proxy::start(&gateway, "info"));
    let mut tunnel = proxy.tunnel(echo.addr).await;

    // The gateway's default mode (empty) is fail_closed.
    gateway.state.set_policy(policy(&[("127.0.0.1", echo.addr.port())], "gopher"), 2, "h2", 2);
    eventually(WAIT, "FAILED for version 2", || statuses(&gateway).iter().any(|s| s.0 == 2).then_some(())).await;
    let (_, status, error) = statuses(&gateway).last().unwrap().clone();
    assert_eq!(status, PolicyStatus::Failed as i32);
    let (mut denied, head) = proxy.connect(echo.addr).await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let body: serde_json::Value = serde_json::from_str(proxy_support::read_all(&mut denied).await.trim()).unwrap();
    assert_eq!(body["error"], "policy_denied");
    assert_eq!(body["reason"], format!("policy quarantined until a valid policy loads: {error}"), "{body}");
    assert!(closed(&mut tunnel).await, "the tunnel of the deactivated policy is closed");
    assert!(proxy.log().contains("policy quarantined"), "{}", proxy.log());

    gateway.state.set_policy(policy(&[("127.0.0.1", echo.addr.port())], ""), 3, "h3", 3);
    eventually(WAIT, "LOADED for version 3", || statuses(&gateway).iter().any(|s| s.0 == 3).then_some(())).await;
    let mut tunnel = proxy.tunnel(echo.addr).await;
    assert!(round_trip(&mut tunnel).await);
    assert!(proxy.log().contains("policy recovered from quarantine"), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_global_policy_is_applied_and_no_status_is_reported_for_it() {
    let (first, second) = (EchoServer::start().await, EchoServer::start().await);
    let gateway = TestGateway::start().await;
    gateway.state.set_global(Some(4));
    gateway.state.set_policy(policy(&[("127.0.0.1", first.addr.port())], ""), 1, "h1", 1);
    let (proxy, _) = tokio::task::block_in_place(|| Proxy::start(&gateway, "info"));
    assert!(proxy.connect_status(first.addr).await.contains(" 200 "));

    gateway.state.set_policy(policy(&[("127.0.0.1", second.addr.port())], ""), 1, "h2", 2);
    let deadline = Instant::now() + WAIT;
    while !proxy.connect_status(second.addr).await.contains(" 200 ") {
        assert!(Instant::now() < deadline, "the new global policy was not applied: {}", proxy.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(proxy.connect_status(first.addr).await.starts_with("HTTP/1.1 403"));
    assert!(statuses(&gateway).is_empty(), "no sandbox version is reported for the global policy");
    assert!(proxy.log().contains("the gateway's global policy version 4"), "{}", proxy.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_wants_a_client_certificate_is_named_as_the_cause() {
    use gateway_support::certs::{TestCa, client_files, server_tls};
    let ca = TestCa::new("gateway CA");
    let gateway = TestGateway::start_tls(server_tls(&ca, &["127.0.0.1"], &ca)).await;
    let dir = tempfile::tempdir().unwrap();
    let tls = client_files(dir.path(), &ca, None);
    let mut command = Command::new(BIN);
    command
        .args(["proxy", "--listen", "127.0.0.1:0", "--endpoint", &gateway.url(), "--sandbox-id", SANDBOX_ID])
        .arg("--gateway-tls-ca")
        .arg(&tls.ca)
        .arg("--tls-dir")
        .arg(dir.path().join("tls"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .env_clear()
        .env("OPENSHELL_SANDBOX_TOKEN", TOKEN);
    let output = tokio::task::block_in_place(|| command.output().unwrap());
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(69), "{err}");
    // The alert (`certificate_required`) reaches the probe unless the gateway's close
    // overtakes it (a broken pipe on the first write): either way the cause and the fix.
    let last = err.lines().last().unwrap_or_default();
    let asked = "TLS with the gateway failed: the gateway asked for a client certificate and none is configured; set OPENSHELL_TLS_CERT and OPENSHELL_TLS_KEY";
    let closed = [
        "TLS with the gateway failed: the gateway closed the connection (",
        ") and no client certificate is configured, which is how a gateway that requires one answers; set OPENSHELL_TLS_CERT and OPENSHELL_TLS_KEY",
    ];
    let named = last.contains(asked) || closed.iter().all(|part| last.contains(part));
    assert!(named, "the exit message names the cause: {err}");
}

async fn timed_connects(proxy: &Proxy, target: SocketAddr, n: usize) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        assert!(proxy.connect_status(target).await.contains(" 200 "));
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_gateway_gone_the_proxy_serves_as_fast_and_logs_the_outage_once() {
    let upstream = EchoServer::start().await;
    let mut gateway = TestGateway::start().await;
    gateway.state.set_policy(policy(&[("127.0.0.1", upstream.addr.port())], ""), 1, "h1", 1);
    let (proxy, _) = tokio::task::block_in_place(|| Proxy::start(&gateway, "warn"));
    let before = timed_connects(&proxy, upstream.addr, 100).await;

    gateway.stop().await;
    let lines_at_stop = proxy.log().lines().count();
    // Several poll intervals (1 s) and log flushes pass while the gateway is gone.
    let mut during = Duration::ZERO;
    for _ in 0..6 {
        during += timed_connects(&proxy, upstream.addr, 100).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let per_request_before = before / 100;
    let per_request_during = during / 600;
    assert!(
        per_request_during < per_request_before * 3 + Duration::from_millis(2),
        "{per_request_before:?} per CONNECT before, {per_request_during:?} with the gateway gone"
    );
    let log = proxy.log();
    let outage_lines = log.lines().count() - lines_at_stop;
    assert!(outage_lines <= 6, "the outage is logged once per poller, not per poll or request:\n{log}");
}

/// `REGION`, when given, is not secret.
fn provider_env(revision: u64, entries: &[(&str, &str)]) -> GetSandboxProviderEnvironmentResponse {
    GetSandboxProviderEnvironmentResponse {
        environment: entries.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        provider_env_revision: revision,
        non_secret_environment_keys: vec!["REGION".into()],
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_revision_change_swaps_the_credentials_and_child_env() {
    let gateway = TestGateway::start().await;
    gateway.state.set_policy(policy(&[("127.0.0.1", 9)], ""), 1, "h1", 1);
    gateway.state.set_provider_revision(1);
    gateway.state.set_provider_env(provider_env(1, &[("API_KEY", "first-secret-value"), ("REGION", "eu-west-1")]));
    let (proxy, _) = tokio::task::block_in_place(|| Proxy::start(&gateway, "info"));
    let env = volume::read_child_env(&proxy.tls()).unwrap();
    let want = [("API_KEY", "openshell:resolve:env:API_KEY"), ("REGION", "eu-west-1")];
    assert_eq!(env, want.map(|(k, v)| (k.to_owned(), v.to_owned())).into(), "a non-secret key is given as its value");

    gateway.state.set_provider_env(provider_env(2, &[("OTHER_KEY", "second-secret-value")]));
    gateway.state.set_provider_revision(2);
    let env = eventually(WAIT, "child-env.json with the new key", || {
        volume::read_child_env(&proxy.tls()).ok().filter(|env| env.contains_key("OTHER_KEY"))
    })
    .await;
    assert_eq!(env.len(), 1, "{env:?}");
    assert_eq!(gateway.state.calls_of("GetSandboxProviderEnvironment").len(), 2);
    let log = proxy.log();
    assert!(!log.contains("first-secret-value") && !log.contains("second-secret-value"), "{log}");
    let tls_files = std::fs::read_dir(proxy.tls()).unwrap().map(|e| std::fs::read(e.unwrap().path()).unwrap());
    for contents in tls_files {
        assert!(!String::from_utf8_lossy(&contents).contains("secret-value"), "a secret in the shared TLS dir");
    }
}

#[test]
fn an_endpoint_without_a_token_stops_the_proxy_with_64() {
    let output = Command::new(BIN)
        .args(["proxy", "--endpoint", "http://127.0.0.1:9", "--sandbox-id", "sb-1", "--tls-dir", "/nonexistent/tls"])
        .env_clear()
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(64), "{err}");
    assert!(err.contains("no sandbox token") && err.contains("OPENSHELL_SANDBOX_TOKEN"), "{err}");
}

fn bundle(revision: &str, route: &str) -> GetInferenceBundleResponse {
    let route = ResolvedRoute { name: route.into(), base_url: "https://llm.example".into(), ..Default::default() };
    GetInferenceBundleResponse { routes: vec![route], revision: revision.into(), generated_at_ms: 1 }
}

/// In process: `GetSandboxConfig` is tried again on UNAVAILABLE, and the inference
/// routes handed to the proxy follow the gateway's bundle (polled every 5 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_retries_the_config_and_the_routes_follow_the_bundle() {
    let dir = tempfile::tempdir().unwrap();
    let gateway = TestGateway::start().await;
    gateway.state.set_policy(policy(&[("127.0.0.1", 9)], ""), 1, "h1", 1);
    gateway.state.set_bundle(bundle("r1", "first"));
    gateway.state.fail("GetSandboxConfig", 2, tonic::Code::Unavailable);
    let mut config = proxy_support::config(dir.path(), "version: 1\n");
    config.common.policy_file = None;
    config.gateway = Some(gateway.client_config());
    let schedule = RetrySchedule { delays: vec![Duration::from_millis(10); 4] };
    let shutdown = Shutdown::new();
    let mut started = gateway_source::start(&config, None, &schedule, &shutdown).await.unwrap().unwrap();
    assert_eq!(gateway.state.calls_of("GetSandboxConfig").len(), 3, "two UNAVAILABLE, then the answer");
    let engine = started.take_engine().expect("the gateway's policy");
    assert!(engine.network("127.0.0.1", 9).allow);
    let routes = started.routes().expect("routes from the gateway");
    let routes = move || routes.current();
    assert_eq!((routes().revision.as_str(), routes().routes[0].name.as_str()), ("r1", "first"));

    gateway.state.set_bundle(bundle("r2", "second"));
    started.spawn_pollers(&PolicyHandle::new(engine), &RegoRules::builtin(), &shutdown);
    eventually(Duration::from_secs(12), "the new bundle", || (routes().revision == "r2").then_some(())).await;
    assert_eq!(routes().routes[0].name, "second");
    shutdown.trigger();
}
