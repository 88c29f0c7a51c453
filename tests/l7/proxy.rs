//! L7 inspection through the real proxy on 127.0.0.1: CONNECT tunnels to `protocol: rest`
//! endpoints are intercepted with a leaf from the proxy's CA, judged per request and
//! forwarded over TLS verified against a test CA given as `OPENSHELL_UPSTREAM_CA_FILE`;
//! credentials come from `OPENSHELL_PROVIDER_ENV_FILE`. Clients trust only the proxy's
//! `ca.pem` (rustls) or `ca-bundle.pem` (the real `curl`).

use crate::support::l7 as l7_support;
use crate::support::l7::session as rig;
use crate::support::l7::through;
use crate::support::proxy as proxy_support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::StatusCode;
use hyper_util::rt::TokioIo;
use l7_support::{Ca, ca, write_pem};
use openshell_sandbox::proxy::credentials::placeholder;
use proxy_support::{EchoServer, TestProxy, exchange as raw_exchange, json_body};
use rig::{NoSecretLogged, SECRET, Seen, logs, upstream_named};
use through::{client_through, connect_raw, exchange, request, tls_through};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const USER: &str = "svc-UPSTREAM-USER-17";
const PASSWORD: &str = "pw-UPSTREAM-ONLY-9191";

/// The proxy with every kind of endpoint, and the servers behind it.
struct Rig {
    proxy: TestProxy,
    upstream_ca: Ca,
    /// `protocol: rest`, read-only, deny rules for `/admin` and `?q=forbidden*`.
    main: (SocketAddr, Arc<Seen>),
    /// Read-only in `enforcement: audit`.
    audit: (SocketAddr, Arc<Seen>),
    /// `tls: skip`.
    skip: (SocketAddr, Arc<Seen>),
    /// `protocol: websocket`, read-only.
    ws: (SocketAddr, Arc<Seen>),
    /// A certificate from a CA the proxy does not trust.
    untrusted: SocketAddr,
    /// Plain HTTP, `protocol: rest`, read-only.
    echo: EchoServer,
    /// Plain HTTP that no policy allows.
    denied: EchoServer,
    env_dir: tempfile::TempDir,
}

impl Rig {
    async fn start() -> Rig {
        let upstream_ca = ca("Upstream CA");
        let main = upstream_named(&upstream_ca, "localhost").await;
        let audit = upstream_named(&upstream_ca, "localhost").await;
        let skip = upstream_named(&upstream_ca, "localhost").await;
        let ws = upstream_named(&upstream_ca, "localhost").await;
        let untrusted = upstream_named(&ca("Rogue CA"), "localhost").await.0;
        let (echo, denied) = (EchoServer::start().await, EchoServer::start().await);
        let policy = format!(
            "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n\
             \x20     - {{host: localhost, port: {}, protocol: rest, access: read-only, credential_binding: {{provider: test}}, deny_rules: [{{path: /admin}}, {{method: GET, path: /search, query: {{q: \"forbidden*\"}}}}]}}\n\
             \x20     - {{host: localhost, port: {}, protocol: rest, access: read-only}}\n\
             \x20     - {{host: localhost, port: {}, protocol: rest, access: read-only, credential_binding: {{provider: test}}}}\n\
             \x20 watched:\n    endpoints:\n\
             \x20     - {{host: localhost, port: {}, protocol: rest, access: read-only, enforcement: audit, credential_binding: {{provider: test}}}}\n\
             \x20 opaque:\n    endpoints:\n\
             \x20     - {{host: localhost, port: {}, protocol: rest, access: read-only, tls: skip}}\n\
             \x20 chat:\n    endpoints:\n\
             \x20     - {{host: localhost, port: {}, protocol: websocket, access: read-only}}\n",
            main.0.port(),
            untrusted.port(),
            echo.addr.port(),
            audit.0.port(),
            skip.0.port(),
            ws.0.port(),
        );
        let env_dir = tempfile::tempdir().unwrap();
        let env_file = env_dir.path().join("provider.env");
        std::fs::write(&env_file, format!("[test]\nAPI_KEY={SECRET}\nBASIC_USER={USER}\nBASIC_PASSWORD={PASSWORD}\n"))
            .unwrap();
        let ca_file = write_pem(env_dir.path(), "upstream-ca.pem", &upstream_ca);
        let proxy = TestProxy::start(&policy, |c| {
            c.provider_env_file = Some(env_file);
            c.upstream_ca_file = Some(ca_file);
        })
        .await;
        Rig { proxy, upstream_ca, main, audit, skip, ws, untrusted, echo, denied, env_dir }
    }

    /// One request on a new inspected tunnel to `localhost:port`.
    async fn once(
        &self,
        port: u16,
        method: &str,
        target: &str,
        headers: &[(&str, String)],
    ) -> (StatusCode, serde_json::Value) {
        let mut c = client_through(self.proxy.addr, "localhost", port, &self.proxy.tls_dir()).await;
        exchange(&mut c, request(method, target, headers, "")).await
    }
}

/// Asserts that no credential value of the rig reached the captured logs.
fn assert_no_secret_logged() {
    let logs = logs();
    for value in [SECRET, USER, PASSWORD] {
        assert!(!logs.contains(value), "`{value}` reached the logs:\n{logs}");
    }
}

#[tokio::test]
async fn l7_rules_judge_each_request_of_an_intercepted_tunnel() {
    let _check = NoSecretLogged::start();
    let rig = Rig::start().await;
    let port = rig.main.0.port();
    let (status, echo) = rig.once(port, "GET", "/items", &[]).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(echo["target"], "/items");
    assert_eq!(echo["host"], format!("localhost:{port}"), "the proxy sets Host to the CONNECT host");

    let (status, body) = rig.once(port, "DELETE", "/items/1", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "read-only refuses DELETE: {body}");
    assert_eq!((body["error"].as_str(), body["policy"].as_str()), (Some("policy_denied"), Some("api")), "{body}");
    assert_eq!((body["method"].as_str(), body["path"].as_str()), (Some("DELETE"), Some("/items/1")));

    let (status, body) = rig.once(port, "GET", "/a/../admin", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "a deny rule beats read-only's GET: {body}");
    assert_eq!(body["path"], "/admin", "judged as the canonical path");

    let (status, body) = rig.once(port, "GET", "/a%2Fb", &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "an encoded slash is refused: {body}");

    let (status, echo) = rig.once(port, "GET", "/search?q=fine", &[]).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    let (status, body) = rig.once(port, "GET", "/search?q=forbidden-topic", &[]).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "the deny rule's query matcher: {body}");

    let seen: Vec<String> =
        rig.main.1.requests.lock().unwrap().iter().map(|r| r["target"].as_str().unwrap().to_owned()).collect();
    assert_eq!(seen, ["/items", "/search?q=fine"], "only allowed requests reach the upstream");
}

#[tokio::test]
async fn audit_mode_forwards_a_would_be_denial_and_logs_it() {
    let _check = NoSecretLogged::start();
    let rig = Rig::start().await;
    let port = rig.audit.0.port();
    let (status, echo) = rig.once(port, "DELETE", "/items/1", &[]).await;
    assert_eq!(status, StatusCode::OK, "{echo}");
    assert_eq!(rig.audit.1.requests.lock().unwrap()[0]["method"], "DELETE");
    let logs = logs();
    let line = logs.lines().find(|l| l.contains("action=\"audit\"") && l.contains(&format!("port={port}")));
    assert!(line.is_some_and(|l| l.contains("method=\"DELETE\"") && l.contains("path=\"/items/1\"")), "{logs}");
}

#[tokio::test]
async fn placeholders_are_swapped_only_in_allowed_inspected_requests() {
    let _check = NoSecretLogged::start();
    let rig = Rig::start().await;
    let port = rig.main.0.port();
    let upstream_saw = |i: usize| rig.main.1.requests.lock().unwrap()[i].clone();
    let bearer = [("authorization", format!("Bearer {}", placeholder("API_KEY")))];
    let (status, echo) = rig.once(port, "GET", "/bearer", &bearer).await;
    assert_eq!(upstream_saw(0)["authorization"], format!("Bearer {SECRET}"));
    assert_eq!((status, echo["authorization"].as_str()), (StatusCode::OK, Some(&*bearer[0].1)), "scrubbed echo");

    let (_, echo) = rig.once(port, "GET", "/whole", &[("x-api-key", placeholder("API_KEY"))]).await;
    assert_eq!(
        (upstream_saw(1)["x-api-key"].as_str(), echo["x-api-key"].as_str()),
        (Some(SECRET), Some(&*placeholder("API_KEY")))
    );

    let basic = format!(
        "Basic {}",
        STANDARD.encode(format!("{}:{}", placeholder("BASIC_USER"), placeholder("BASIC_PASSWORD")))
    );
    let (_, echo) = rig.once(port, "GET", "/basic", &[("authorization", basic.clone())]).await;
    assert_eq!(upstream_saw(2)["authorization"], format!("Basic {}", STANDARD.encode(format!("{USER}:{PASSWORD}"))));
    assert_eq!(echo["authorization"], basic, "the echoed Basic blob is the one the agent sent");

    let (_, echo) = rig.once(port, "GET", &format!("/query?key={}&x=1", placeholder("API_KEY")), &[]).await;
    assert_eq!(upstream_saw(3)["target"], format!("/query?key={SECRET}&x=1"));
    assert_eq!(echo["target"], format!("/query?key={}&x=1", placeholder("API_KEY")));

    let before = rig.main.1.requests.lock().unwrap().len();
    let (status, body) = rig.once(port, "GET", "/x", &[("x-api-key", placeholder("NOT_CONFIGURED"))]).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("credential_unresolved")), "{body}");
    assert_eq!(rig.main.1.requests.lock().unwrap().len(), before, "an unresolved placeholder is never forwarded");

    // Another allowed endpoint the provider is not bound to: refused before any upstream byte.
    let (status, body) = rig.once(rig.untrusted.port(), "GET", "/x", &bearer).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("credential_not_bound")), "{body}");
    assert!(body["reason"].as_str().unwrap().contains("credential_binding: {provider: test}"), "{body}");

    // An audited would-be denial is forwarded with its placeholders as they are.
    let audit_port = rig.audit.0.port();
    let (status, _) = rig.once(audit_port, "DELETE", "/items/1", &bearer).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(rig.audit.1.requests.lock().unwrap()[0]["authorization"], bearer[0].1, "literal, never the secret");

    // Plain HTTP to a bound `rest` endpoint: judged the same, but a placeholder is refused.
    let echo_port = rig.echo.addr.port();
    let get = format!(
        "GET http://localhost:{echo_port}/p?key={} HTTP/1.1\r\nHost: localhost:{echo_port}\r\nConnection: close\r\n\r\n",
        placeholder("API_KEY")
    );
    let answer = raw_exchange(rig.proxy.addr, get.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    assert!(json_body(&answer)["reason"].as_str().unwrap().contains("never sent over plain http://"), "{answer}");
    let plain = format!(
        "GET http://localhost:{echo_port}/p HTTP/1.1\r\nHost: localhost:{echo_port}\r\nConnection: close\r\n\r\n"
    );
    assert!(raw_exchange(rig.proxy.addr, plain.as_bytes()).await.starts_with("HTTP/1.1 200 "));
    let delete = format!("DELETE http://localhost:{echo_port}/p HTTP/1.1\r\nHost: localhost:{echo_port}\r\n\r\n");
    assert_eq!(json_body(&raw_exchange(rig.proxy.addr, delete.as_bytes()).await)["error"], "policy_denied");
    let echoed = rig.echo.connections.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(echoed, 1, "only the request without a placeholder left");

    // A placeholder for a host no policy allows reaches nothing, in either form.
    let denied_port = rig.denied.addr.port();
    let leak =
        format!("GET http://localhost:{denied_port}/?key={} HTTP/1.1\r\nHost: x\r\n\r\n", placeholder("API_KEY"));
    assert_eq!(json_body(&raw_exchange(rig.proxy.addr, leak.as_bytes()).await)["error"], "policy_denied");
    let (_, head) = connect_raw(rig.proxy.addr, &format!("localhost:{denied_port}")).await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    assert_eq!(rig.denied.connections.load(std::sync::atomic::Ordering::SeqCst), 0);
    assert_no_secret_logged();
}

#[tokio::test]
async fn a_websocket_echo_passes_a_websocket_endpoint() {
    let _check = NoSecretLogged::start();
    let rig = Rig::start().await;
    let mut c = client_through(rig.proxy.addr, "localhost", rig.ws.0.port(), &rig.proxy.tls_dir()).await;
    // Judged as a GET on a read-only endpoint, then relayed as bytes after the 101.
    let upgrade =
        [("connection", "Upgrade".into()), ("upgrade", "websocket".into()), ("sec-websocket-version", "13".into())];
    tokio::time::timeout(Duration::from_secs(5), c.ready()).await.unwrap().unwrap();
    let response = c.send_request(request("GET", "/ws", &upgrade, "")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    let frame = [0x81, 0x85, 1, 2, 3, 4, b'h' ^ 1, b'e' ^ 2, b'l' ^ 3, b'l' ^ 4, b'o' ^ 1];
    io.write_all(&frame).await.unwrap();
    let mut back = [0u8; 11];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, frame);
}

#[tokio::test]
async fn tls_skip_is_relayed_untouched_with_the_upstreams_own_certificate() {
    let rig = Rig::start().await;
    let port = rig.skip.0.port();
    // Trusting only the upstream's CA: a leaf from the proxy's CA would fail this handshake.
    let tls = tls_through(rig.proxy.addr, &format!("localhost:{port}"), "localhost", &rig.upstream_ca).await;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection);
    let host = [("host", format!("localhost:{port}"))];
    let (status, echo) = exchange(&mut sender, request("DELETE", "/anything", &host, "")).await;
    assert_eq!(status, StatusCode::OK, "not judged: a skipped tunnel is bytes: {echo}");
    assert_eq!(rig.skip.1.requests.lock().unwrap()[0]["method"], "DELETE");
}

#[tokio::test]
async fn an_upstream_that_does_not_verify_gets_a_502_json() {
    let rig = Rig::start().await;
    let (status, body) = rig.once(rig.untrusted.port(), "GET", "/", &[]).await;
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_GATEWAY, Some("upstream_unreachable")), "{body}");
    assert!(body["reason"].as_str().unwrap().contains("did not verify"), "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_with_ca_bundle_is_inspected_over_http2() {
    let _check = NoSecretLogged::start();
    let rig = Rig::start().await;
    let port = rig.main.0.port();
    let bundle = rig.proxy.tls_dir().join("ca-bundle.pem");
    let curl = |method: &'static str, path: &'static str| {
        let (proxy, bundle) = (format!("http://{}", rig.proxy.addr), bundle.clone());
        let url = format!("https://localhost:{port}{path}");
        async move {
            let mut cmd = tokio::process::Command::new("curl");
            cmd.args([
                "-sS",
                "--max-time",
                "10",
                "--noproxy",
                "",
                "-w",
                "\n%{http_code} %{http_version}",
                "-X",
                method,
            ]);
            cmd.args(["-x", &proxy, "-H", &format!("authorization: Bearer {}", placeholder("API_KEY")), "--cacert"]);
            let output = cmd.arg(bundle).arg(url).output().await.unwrap();
            let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
            assert!(output.status.success(), "curl failed: {stderr}");
            String::from_utf8_lossy(&output.stdout).into_owned()
        }
    };
    let allowed = curl("GET", "/zen").await;
    assert!(allowed.ends_with("\n200 2"), "HTTP/2 between curl and the proxy: {allowed}");
    assert!(allowed.contains("\"target\":\"/zen\"") && !allowed.contains(SECRET), "{allowed}");
    let saw = rig.main.1.requests.lock().unwrap()[0].clone();
    assert_eq!(saw["authorization"], format!("Bearer {SECRET}"), "the upstream got the secret, curl the placeholder");
    let denied = curl("DELETE", "/zen").await;
    assert!(denied.contains("\"policy_denied\"") && denied.ends_with("\n403 2"), "{denied}");
}

#[tokio::test]
async fn child_env_json_maps_keys_to_placeholders_and_follows_reloads() {
    let rig = Rig::start().await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while !rig.proxy.tls_dir().join(".ready").exists() {
        assert!(tokio::time::Instant::now() < deadline, "no .ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let path = rig.proxy.tls_dir().join("child-env.json");
    let read = || std::fs::read_to_string(&path).unwrap();
    let env: serde_json::Value = serde_json::from_str(&read()).unwrap();
    assert_eq!(env["API_KEY"], placeholder("API_KEY"));
    assert_eq!(env["BASIC_PASSWORD"], placeholder("BASIC_PASSWORD"));
    assert!(!read().contains(SECRET) && !read().contains(PASSWORD));

    let env_file = rig.env_dir.path().join("provider.env");
    std::fs::write(&env_file, format!("[test]\nAPI_KEY={SECRET}\nNEW_KEY=fresh-value-123\n")).unwrap();
    while !read().contains("NEW_KEY") {
        assert!(tokio::time::Instant::now() < deadline, "child-env.json was not rewritten: {}", read());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!read().contains("fresh-value-123") && !read().contains("BASIC_USER"), "{}", read());
}

#[test]
fn an_invalid_env_file_stops_startup_naming_the_file_and_line_never_the_value() {
    use openshell_sandbox::ExitStatus;
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("provider.env");
    std::fs::write(&env_file, "[p]\nGOOD=1\nsk-live-hunter2-no-equals\n").unwrap();
    let mut config = proxy_support::config(dir.path(), &proxy_support::allow(&[("localhost", 443)]));
    config.provider_env_file = Some(env_file.clone());
    let e = openshell_sandbox::proxy::prepare(config).unwrap_err();
    assert_eq!(e.exit_status().code(), 64, "{e}");
    let message = format!("{:#}", anyhow::Error::new(e));
    assert!(message.contains("OPENSHELL_PROVIDER_ENV_FILE"), "{message}");
    assert!(message.contains(&env_file.display().to_string()) && message.contains("line 3"), "{message}");
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn a_key_the_policy_binds_nowhere_stops_startup_saying_how_to_bind_it() {
    use openshell_sandbox::ExitStatus;
    let dir = tempfile::tempdir().unwrap();
    let env_file = dir.path().join("provider.env");
    let policy = "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - {host: localhost, port: 443, protocol: rest, access: full, credential_binding: {provider: github}}\n";
    for (text, hint) in [
        ("[slack]\nSLACK_TOKEN=xoxb-hunter2\n", "add `credential_binding: {provider: slack}` to the policy endpoints"),
        ("SLACK_TOKEN=xoxb-hunter2\n", "put it under a `[NAME]` line"),
    ] {
        std::fs::write(&env_file, text).unwrap();
        let mut config = proxy_support::config(dir.path(), policy);
        config.provider_env_file = Some(env_file.clone());
        let e = openshell_sandbox::proxy::prepare(config).unwrap_err();
        assert_eq!(e.exit_status().code(), 64, "{e}");
        let message = format!("{:#}", anyhow::Error::new(e));
        assert!(message.contains("`SLACK_TOKEN`") && message.contains(hint), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
    }
}

#[tokio::test]
async fn connect_to_inference_local_without_routes_is_403() {
    let _inference = l7_support::INFERENCE_LOCAL.lock().await;
    let proxy = TestProxy::start(&proxy_support::allow(&[("localhost", 443)]), |_| {}).await;
    let (_, head) = connect_raw(proxy.addr, "inference.local:443").await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
}

#[tokio::test]
async fn an_inspected_endpoint_resolving_to_loopback_is_refused_at_connect() {
    let policy = "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - {host: localhost, port: 443, protocol: rest, access: read-only}\n";
    let proxy = TestProxy::start(policy, |c| c.allow_loopback_upstreams = false).await;
    let (mut tcp, head) = connect_raw(proxy.addr, "localhost:443").await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    let body = proxy_support::read_all(&mut tcp).await;
    assert!(body.contains("\"ssrf_denied\"") && body.contains("loopback"), "{body}");
}
