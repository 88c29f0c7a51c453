//! Policy hot reload and the client allow-list, on the in-process proxy: a new valid
//! file applies to new requests; a broken one quarantines the proxy under `fail_closed`
//! (every connection opened before is closed, all egress is denied naming the failure,
//! until a valid file loads) or keeps the last good policy under `retain_last_valid`; a
//! client outside `allowed_clients` is closed at accept without an answer.

use crate::support::l7 as l7_support;
use crate::support::l7::lifecycle;
use crate::support::l7::session as rig;
use crate::support::l7::through;
use crate::support::proxy as proxy_support;

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use l7_support::{ca, client_config, write_pem};
use openshell_sandbox::config::ValidationFailureMode;
use proxy_support::{EchoServer, STEP, TestProxy, allow, exchange, json_body, read_head};
use rig::ClientBody;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A policy that fails validation (a host of `*` alone).
const BROKEN: &str = "version: 1\nnetwork_policies:\n  x:\n    endpoints: [{host: \"*\", port: 443}]\n";

/// The status line's code for an absolute-form GET to `host:port`.
async fn status(proxy: &TestProxy, host: &str, port: u16) -> String {
    let request = format!("GET http://{host}:{port}/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    answer.get(9..12).unwrap_or("").to_owned()
}

/// Polls until `status` gives `want`, at most five seconds.
async fn eventually(proxy: &TestProxy, host: &str, port: u16, want: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if status(proxy, host, port).await == want {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// `CONNECT` to the echo server, then one request through the tunnel; returns the open tunnel.
async fn echo_tunnel(proxy: &TestProxy, echo: &EchoServer) -> TcpStream {
    let (mut tunnel, head) = through::connect_raw(proxy.addr, &echo.addr.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    tunnel.write_all(b"GET /through HTTP/1.1\r\nHost: echo\r\n\r\n").await.unwrap();
    let head = read_head(&mut tunnel).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let mut body = vec![0u8; 64];
    let n = tunnel.read(&mut body).await.unwrap();
    assert!(String::from_utf8_lossy(&body[..n]).starts_with("GET /through|"), "the tunnel carries bytes");
    tunnel
}

/// How soon after a quarantine is seen the connections opened before it must be closed
/// (well under the 10 s header and 300 s idle timeouts that would close them anyway).
const CLOSED_WITHIN: Duration = Duration::from_secs(3);

/// Whether `stream` is closed by the proxy within [`CLOSED_WITHIN`] (EOF or reset on a read).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 256];
    let read = async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(CLOSED_WITHIN, read).await.is_ok()
}

/// Polls `check` every 20 ms for at most [`CLOSED_WITHIN`].
async fn soon(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + CLOSED_WITHIN;
    while !check() {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rewrites the policy file and waits until `ready` says the proxy has taken it.
async fn rewrite<F: Future<Output = bool>>(proxy: &TestProxy, yaml: &str, ready: impl Fn() -> F) {
    std::fs::write(&proxy.policy_path, yaml).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ready().await {
        assert!(Instant::now() < deadline, "the proxy did not take the new policy file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_retain_last_valid_a_broken_policy_file_keeps_the_last_good_policy() {
    let echo = EchoServer::start().await;
    let port = echo.addr.port();
    let retain = |c: &mut openshell_sandbox::config::ProxyConfig| {
        c.policy_validation_failure_mode = ValidationFailureMode::RetainLastValid;
    };
    let proxy = TestProxy::start(&allow(&[("127.0.0.1", port)]), retain).await;
    assert_eq!(status(&proxy, "127.0.0.1", port).await, "200");
    let mut tunnel = echo_tunnel(&proxy, &echo).await;

    // Broken: the old policy stays (well past the settle time and several polls).
    std::fs::write(&proxy.policy_path, BROKEN).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(status(&proxy, "127.0.0.1", port).await, "200");
    tunnel.write_all(b"GET /still HTTP/1.1\r\nHost: echo\r\n\r\n").await.unwrap();
    assert!(read_head(&mut tunnel).await.starts_with("HTTP/1.1 200 "), "the open tunnel stays");

    // Valid again, without the upstream: the new generation denies it.
    std::fs::write(&proxy.policy_path, allow(&[("api.example.com", 443)])).unwrap();
    assert!(eventually(&proxy, "127.0.0.1", port, "403").await, "the new policy applies to new requests");

    // And back: allowed once more.
    std::fs::write(&proxy.policy_path, allow(&[("127.0.0.1", port)])).unwrap();
    assert!(eventually(&proxy, "127.0.0.1", port, "200").await);
}

/// The policy of the quarantine test: the echo server (L4) and two inspected HTTPS upstreams.
fn three_endpoints(echo: u16, h1: u16, h2: u16) -> String {
    format!(
        "version: 1\nnetwork_policies:\n  test:\n    endpoints:\n      - {{host: \"127.0.0.1\", port: {echo}}}\n      - {{host: localhost, port: {h1}, protocol: rest, access: full}}\n      - {{host: localhost, port: {h2}, protocol: rest, access: full}}\n"
    )
}

/// An HTTP/2 client on an inspected tunnel to `localhost:port`, trusting the proxy's CA.
async fn h2_client_through(proxy: &TestProxy, port: u16) -> hyper::client::conn::http2::SendRequest<ClientBody> {
    let (tcp, head) = through::connect_raw(proxy.addr, &format!("localhost:{port}")).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    let config = client_config(&through::proxy_ca(&proxy.tls_dir()), &[b"h2"]);
    let tls = tokio_rustls::TlsConnector::from(config).connect(ServerName::try_from("localhost").unwrap(), tcp);
    let tls = tokio::time::timeout(STEP, tls).await.unwrap().unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    sender
}

fn get(uri: &str) -> Request<ClientBody> {
    Request::get(uri).body(Full::new(Bytes::new()).boxed()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_fail_closed_a_broken_policy_file_quarantines_until_a_good_one_loads() {
    lifecycle::audit_events(); // starts the capture
    let echo = EchoServer::start().await;
    let upstream_ca = ca("Upstream CA");
    let (h1, _) = lifecycle::h1_upstream(&upstream_ca).await;
    let (h2, _) = lifecycle::h2_upstream(&upstream_ca).await;
    let dir = tempfile::tempdir().unwrap();
    let ca_file = write_pem(dir.path(), "upstream-ca.pem", &upstream_ca);
    let good = three_endpoints(echo.addr.port(), h1.port(), h2.port());
    let proxy = TestProxy::start(&good, |c| c.upstream_ca_file = Some(ca_file)).await;

    // Open before the quarantine: a tunnel, an absolute-form keep-alive connection, and
    // inspected connections over HTTP/1.1 and HTTP/2.
    let mut tunnel = echo_tunnel(&proxy, &echo).await;
    let mut plain = TcpStream::connect(proxy.addr).await.unwrap();
    let target = format!("http://{}/kept", echo.addr);
    plain.write_all(format!("GET {target} HTTP/1.1\r\nHost: {}\r\n\r\n", echo.addr).as_bytes()).await.unwrap();
    assert!(read_head(&mut plain).await.starts_with("HTTP/1.1 200 "));
    let mut inspected = through::client_through(proxy.addr, "localhost", h1.port(), &proxy.tls_dir()).await;
    let (code, _) = through::exchange(&mut inspected, through::request("GET", "/data", &[], "")).await;
    assert_eq!(code, StatusCode::OK);
    let mut inspected_h2 = h2_client_through(&proxy, h2.port()).await;
    let response = inspected_h2.send_request(get(&format!("https://localhost:{}/slow", h2.port()))).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    rewrite(&proxy, BROKEN, || async { status(&proxy, "127.0.0.1", echo.addr.port()).await == "403" }).await;

    // New egress is denied, naming the validation failure: CONNECT and absolute form.
    let (_, head) = through::connect_raw(proxy.addr, &echo.addr.to_string()).await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let (mut denied, _) = through::connect_raw(proxy.addr, &format!("localhost:{}", h1.port())).await;
    let body: serde_json::Value = serde_json::from_str(proxy_support::read_all(&mut denied).await.trim()).unwrap();
    let reason = body["reason"].as_str().unwrap_or_default().to_owned();
    assert_eq!(body["error"], "policy_denied", "{body}");
    assert!(reason.starts_with("policy quarantined until a valid policy loads: invalid policy "), "{reason}");
    assert!(reason.contains("network_policies.x.endpoints[0].host (line 4)"), "the failure is named: {reason}");
    let request = format!("GET http://{}/new HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", echo.addr);
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(json_body(&answer)["reason"], reason.as_str(), "{answer}");

    // Everything opened before is closed.
    assert!(closed(&mut tunnel).await, "the tunnel is closed");
    assert!(closed(&mut plain).await, "the keep-alive connection is closed");
    soon("the inspected HTTP/1.1 connection is closed", || inspected.is_closed()).await;
    soon("the inspected HTTP/2 connection is closed", || inspected_h2.is_closed()).await;
    let events = lifecycle::audit_events();
    // This binary's capture holds other tests' events too: these are this proxy's.
    let quarantined = events.iter().find(|e| e["action"] == "quarantine" && e["reason"] == reason.as_str());
    assert!(quarantined.is_some(), "a quarantine audit event naming the failure: {events:#?}");
    let ours = [echo.addr.port(), h1.port()];
    let cut = |e: &&serde_json::Value| e["action"] == "close" && e["outcome"] == "quarantined";
    assert!(events.iter().filter(cut).any(|e| ours.iter().any(|p| e["port"] == *p)), "{events:#?}");

    // A valid file ends the quarantine.
    let recoveries = || lifecycle::audit_events().iter().filter(|e| e["action"] == "recover").count();
    let before = recoveries();
    rewrite(&proxy, &good, || async { status(&proxy, "127.0.0.1", echo.addr.port()).await == "200" }).await;
    let mut tunnel = echo_tunnel(&proxy, &echo).await;
    let mut inspected = through::client_through(proxy.addr, "localhost", h1.port(), &proxy.tls_dir()).await;
    let (code, _) = through::exchange(&mut inspected, through::request("GET", "/data", &[], "")).await;
    assert_eq!(code, StatusCode::OK);
    assert!(recoveries() > before, "a recover audit event");
    tunnel.write_all(b"GET /again HTTP/1.1\r\nHost: echo\r\n\r\n").await.unwrap();
    assert!(read_head(&mut tunnel).await.starts_with("HTTP/1.1 200 "), "a tunnel after the recovery stays open");
}

#[tokio::test]
async fn a_client_outside_the_allow_list_is_closed_without_an_answer() {
    let echo = EchoServer::start().await;
    let port = echo.addr.port();
    let policy = allow(&[("127.0.0.1", port)]);
    let closed = TestProxy::start(&policy, |c| c.allowed_clients = vec!["10.0.0.0/8".parse().unwrap()]).await;
    assert_eq!(status(&closed, "127.0.0.1", port).await, "", "no answer at all");
    let open = TestProxy::start(&policy, |c| c.allowed_clients = vec!["127.0.0.0/8".parse().unwrap()]).await;
    assert_eq!(status(&open, "127.0.0.1", port).await, "200");
}
