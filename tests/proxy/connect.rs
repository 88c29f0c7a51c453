//! CONNECT through the in-process proxy on real sockets: an allowed tunnel to a local
//! TLS server driven by the real `curl -x`, a denied host, the SSRF refusals and an
//! unreachable upstream (inspected tunnels: tests/l7/proxy.rs).

use crate::support::proxy as proxy_support;

use proxy_support::{TestProxy, TlsServer, allow, exchange, json_body, read_head};

fn connect(target: &str) -> Vec<u8> {
    format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_reaches_an_allowed_tls_server_through_a_tunnel() {
    let server = TlsServer::start().await;
    let port = server.addr.port();
    let proxy = TestProxy::start(&allow(&[("localhost", port)]), |_| {}).await;
    let ca = proxy.dir.path().join("upstream-ca.pem");
    std::fs::write(&ca, &server.ca_pem).unwrap();
    let output = tokio::process::Command::new("curl")
        .args(["-sS", "--max-time", "10", "-x", &format!("http://{}", proxy.addr), "--cacert"])
        .arg(&ca)
        .arg(format!("https://localhost:{port}/"))
        .env_remove("NO_PROXY")
        .env_remove("no_proxy")
        .output()
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "curl failed: {stderr}");
    assert_eq!(String::from_utf8_lossy(&output.stdout), "hello over tls");
}

#[tokio::test]
async fn a_host_no_policy_allows_gets_403_json_and_the_connection_closes() {
    let proxy = TestProxy::start(&allow(&[("api.example.com", 443)]), |_| {}).await;
    let response = exchange(proxy.addr, &connect("evil.example.com:443")).await;
    assert!(response.starts_with("HTTP/1.1 403 "), "{response}");
    let lower = response.to_ascii_lowercase();
    assert!(lower.contains("x-openshell-policy: deny"), "{response}");
    assert!(lower.contains("content-type: application/json"), "{response}");
    assert!(lower.contains("connection: close"), "{response}");
    let body = json_body(&response);
    assert_eq!(body["error"], "policy_denied");
    assert_eq!(body["host"], "evil.example.com");
    assert_eq!(body["port"], 443);
    assert!(body["reason"].as_str().unwrap().contains("no network policy"), "{body}");
}

#[tokio::test]
async fn loopback_is_refused_without_the_development_flag() {
    let server = TlsServer::start().await;
    let port = server.addr.port();
    let proxy = TestProxy::start(&allow(&[("127.0.0.1", port)]), |c| c.allow_loopback_upstreams = false).await;
    let body = json_body(&exchange(proxy.addr, &connect(&format!("127.0.0.1:{port}"))).await);
    assert_eq!(body["error"], "ssrf_denied", "{body}");
    assert!(body["reason"].as_str().unwrap().contains("loopback"), "{body}");
}

#[tokio::test]
async fn cloud_metadata_is_refused_even_with_the_flag_and_an_exact_host() {
    let proxy = TestProxy::start(&allow(&[("169.254.169.254", 80)]), |c| c.allow_loopback_upstreams = true).await;
    let body = json_body(&exchange(proxy.addr, &connect("169.254.169.254:80")).await);
    assert_eq!(body["error"], "ssrf_denied", "{body}");
    assert!(body["reason"].as_str().unwrap().contains("link-local"), "{body}");
}

#[tokio::test]
async fn a_private_address_needs_allowed_ips() {
    // `*.0.0.5` matches the literal 10.0.0.5 without naming it exactly.
    let proxy = TestProxy::start(&allow(&[("*.0.0.5", 80)]), |_| {}).await;
    let body = json_body(&exchange(proxy.addr, &connect("10.0.0.5:80")).await);
    assert_eq!(body["error"], "ssrf_denied", "{body}");
    assert!(body["reason"].as_str().unwrap().contains("allowed_ips"), "{body}");

    // With allowed_ips the address passes the SSRF check and the proxy dials it: 200 when
    // something answers there, 502/504 when not; never a 403.
    let policy = format!("{}        allowed_ips: [\"10.0.0.0/8\"]\n", allow(&[("*.0.0.5", 80)]));
    let proxy = TestProxy::start(&policy, |c| c.limits.connect_timeout = std::time::Duration::from_secs(1)).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(&mut stream, &connect("10.0.0.5:80")).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(["200", "502", "504"].iter().any(|s| head.starts_with(&format!("HTTP/1.1 {s} "))), "{head}");
}

#[tokio::test]
async fn a_refusing_upstream_gets_502() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let proxy = TestProxy::start(&allow(&[("127.0.0.1", port)]), |_| {}).await;
    let response = exchange(proxy.addr, &connect(&format!("127.0.0.1:{port}"))).await;
    assert!(response.starts_with("HTTP/1.1 502 "), "{response}");
    assert_eq!(json_body(&response)["error"], "upstream_unreachable");
}

#[tokio::test]
async fn a_tunnel_carries_a_half_close_and_the_reply_after_it() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // The upstream reads to EOF, then answers with what it got, reversed.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut stream, _) = upstream.accept().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        got.reverse();
        stream.write_all(&got).await.unwrap();
    });
    let proxy = TestProxy::start(&allow(&[("127.0.0.1", port)]), |_| {}).await;
    let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(&connect(&format!("127.0.0.1:{port}"))).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    stream.write_all(b"half-close").await.unwrap();
    stream.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(proxy_support::STEP, stream.read_to_end(&mut back)).await.unwrap().unwrap();
    assert_eq!(back, b"esolc-flah");
}
