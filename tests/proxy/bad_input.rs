//! Hostile and malformed input on the proxy listener, written as raw bytes (a client
//! library would fix them): request smuggling shapes, a URI host that disagrees with
//! `Host`, odd CONNECT targets (trailing dot, mixed case, IPv6 literal, IDN), an
//! over-long header name, non-ASCII in a path. Each test asserts the answer and that a
//! fresh request on a new connection is still served afterwards. The upstream records
//! the exact bytes it receives, so what the proxy forwards is checked too.

use crate::support::proxy as proxy_support;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use proxy_support::{STEP, TestProxy, allow, exchange, json_body, read_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// An upstream that records every request's raw bytes (head and body, framed by
/// `Content-Length` or chunked) and answers each with `200` and the body `ok`.
struct Recorder {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Recorder {
    async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let log = requests.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut stream, _)) = listener.accept().await else { return };
                let log = log.clone();
                tokio::spawn(async move {
                    let mut pending = Vec::new();
                    while let Some(request) = read_request(&mut stream, &mut pending).await {
                        log.lock().unwrap().push(request);
                        if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok").await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        Recorder { addr, requests }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().iter().map(|r| String::from_utf8_lossy(r).into_owned()).collect()
    }
}

/// Reads one whole request from `stream` (bytes beyond it stay in `pending`).
async fn read_request(stream: &mut TcpStream, pending: &mut Vec<u8>) -> Option<Vec<u8>> {
    let mut buf = [0u8; 4096];
    loop {
        if let Some(len) = complete(pending) {
            return Some(pending.drain(..len).collect());
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

/// The length of the first complete request in `bytes`, if there is one.
fn complete(bytes: &[u8]) -> Option<usize> {
    let head_end = bytes.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&bytes[..head_end]).to_ascii_lowercase();
    if head.contains("\r\ntransfer-encoding: chunked\r\n") {
        let end = bytes[head_end..].windows(5).position(|w| w == b"0\r\n\r\n")?;
        return Some(head_end + end + 5);
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap()))
        .unwrap_or(0);
    (bytes.len() >= head_end + length).then_some(head_end + length)
}

/// Every line of a request head ends with CRLF, and no bare CR or LF is left.
fn well_formed_head(request: &str) -> bool {
    let head = &request[..request.find("\r\n\r\n").map_or(request.len(), |i| i + 4)];
    head.ends_with("\r\n\r\n") && !head.replace("\r\n", "").contains(['\r', '\n'])
}

/// A fresh connection still gets a forwarded answer.
async fn still_serves(proxy: &TestProxy, upstream: &Recorder) {
    let port = upstream.port();
    let request = format!("GET http://127.0.0.1:{port}/fresh HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("ok"), "a fresh request after: {answer}");
}

/// The proxy with `upstream` allowed, plus `extra` entries.
async fn proxy_for(upstream: &Recorder, extra: &[(&str, u16)]) -> TestProxy {
    let mut entries = vec![("127.0.0.1", upstream.port())];
    entries.extend_from_slice(extra);
    TestProxy::start(&allow(&entries), |_| {}).await
}

/// The status code of a raw answer.
fn status(answer: &str) -> &str {
    answer.get(9..12).unwrap_or("")
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_framed_by_chunked_alone_and_closed() {
    let upstream = Recorder::start().await;
    let port = upstream.port();
    let proxy = proxy_for(&upstream, &[]).await;
    // CL.TE: by Content-Length the body would end inside the chunks and the rest would
    // be a second, smuggled request; by chunked, the GET after is more bytes on a
    // connection that must close.
    let smuggled = format!("GET http://127.0.0.1:{port}/smuggled HTTP/1.1\r\nHost: x\r\n\r\n");
    let request = format!(
        "POST http://127.0.0.1:{port}/a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n{smuggled}"
    );
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(status(&answer), "200", "{answer}");
    assert_eq!(answer.matches("HTTP/1.1 ").count(), 1, "one answer, then the connection closes: {answer}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "nothing smuggled upstream: {seen:?}");
    let forwarded = seen[0].to_ascii_lowercase();
    assert!(forwarded.starts_with("post /a http/1.1\r\n"), "{forwarded}");
    assert!(!forwarded.contains("content-length: 4"), "the conflicting length is not forwarded: {forwarded}");
    assert!(forwarded.contains("transfer-encoding: chunked\r\n"), "{forwarded}");
    assert!(forwarded.ends_with("\r\n5\r\nhello\r\n0\r\n\r\n"), "{forwarded}");
    assert!(well_formed_head(&seen[0]));
    still_serves(&proxy, &upstream).await;
}

#[tokio::test]
async fn a_transfer_encoding_other_than_chunked_gets_400() {
    let upstream = Recorder::start().await;
    let port = upstream.port();
    let proxy = proxy_for(&upstream, &[]).await;
    for te in ["identity", "chunked, gzip", "xchunked"] {
        let request = format!(
            "POST http://127.0.0.1:{port}/a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {te}\r\nContent-Length: 5\r\n\r\nhello"
        );
        let answer = exchange(proxy.addr, request.as_bytes()).await;
        assert_eq!(status(&answer), "400", "Transfer-Encoding: {te}: {answer}");
    }
    assert!(upstream.requests().is_empty());
    still_serves(&proxy, &upstream).await;
}

#[tokio::test]
async fn two_different_content_lengths_get_400_and_nothing_is_forwarded() {
    let upstream = Recorder::start().await;
    let port = upstream.port();
    let proxy = proxy_for(&upstream, &[]).await;
    let request = format!(
        "POST http://127.0.0.1:{port}/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!"
    );
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(status(&answer), "400", "{answer}");
    let request = format!("POST http://127.0.0.1:{port}/a HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 6\r\n\r\nhello!");
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(status(&answer), "400", "a list of lengths: {answer}");
    for length in ["+5", "-5", "0x5", "5 5"] {
        let request =
            format!("POST http://127.0.0.1:{port}/a HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\nhello");
        let answer = exchange(proxy.addr, request.as_bytes()).await;
        assert_eq!(status(&answer), "400", "Content-Length: {length}: {answer}");
    }
    assert!(upstream.requests().is_empty());
    still_serves(&proxy, &upstream).await;
}

#[tokio::test]
async fn obsolete_line_folding_and_space_before_the_colon_get_400() {
    let upstream = Recorder::start().await;
    let port = upstream.port();
    let proxy = proxy_for(&upstream, &[]).await;
    let request = format!("GET http://127.0.0.1:{port}/a HTTP/1.1\r\nHost: x\r\nX-Folded: first\r\n  second\r\n\r\n");
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(status(&answer), "400", "{answer}");
    // A folded Transfer-Encoding, and one with whitespace before its colon: both are
    // ways to make two parsers disagree on framing.
    for header in ["Transfer-Encoding:\r\n chunked", "Transfer-Encoding : chunked"] {
        let request =
            format!("POST http://127.0.0.1:{port}/a HTTP/1.1\r\nHost: x\r\n{header}\r\nContent-Length: 5\r\n\r\nhello");
        let answer = exchange(proxy.addr, request.as_bytes()).await;
        assert_eq!(status(&answer), "400", "{header:?}: {answer}");
    }
    assert!(upstream.requests().is_empty());
    still_serves(&proxy, &upstream).await;
}

#[tokio::test]
async fn bare_lf_line_endings_reach_the_upstream_as_crlf() {
    // The head parser (httparse) accepts bare LF, as RFC 9112 section 2.2 allows a
    // recipient to; the proxy re-serialises the head, so the upstream never sees one.
    let upstream = Recorder::start().await;
    let port = upstream.port();
    let proxy = proxy_for(&upstream, &[]).await;
    let request = format!(
        "POST http://127.0.0.1:{port}/lf HTTP/1.1\nHost: x\nX-Lf: 1\nContent-Length: 5\nConnection: close\n\nhello"
    );
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(status(&answer), "200", "{answer}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(well_formed_head(&seen[0]), "{:?}", seen[0]);
    assert!(seen[0].starts_with("POST /lf HTTP/1.1\r\n") && seen[0].ends_with("\r\n\r\nhello"), "{:?}", seen[0]);
    assert!(seen[0].to_ascii_lowercase().contains("\r\nx-lf: 1\r\n"), "{:?}", seen[0]);
    still_serves(&proxy, &upstream).await;
}

#[tokio::test]
async fn the_uri_host_wins_over_the_host_header() {
    let upstream = Recorder::start().await;
    let port = upstream.port();
    let proxy = proxy_for(&upstream, &[]).await;
    // Allowed URI, a denied Host: forwarded, with a Host that names the URI's host.
    let request =
        format!("GET http://127.0.0.1:{port}/a HTTP/1.1\r\nHost: denied.example\r\nConnection: close\r\n\r\n");
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(status(&answer), "200", "{answer}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let hosts: Vec<&str> = seen[0].lines().filter(|l| l.to_ascii_lowercase().starts_with("host:")).collect();
    assert_eq!(hosts, [format!("host: 127.0.0.1:{port}")], "{:?}", seen[0]);
    // Denied URI, an allowed Host: refused, naming the URI's host.
    let request = format!("GET http://denied.example/a HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(status(&answer), "403", "{answer}");
    assert_eq!(json_body(&answer)["host"], "denied.example");
    assert_eq!(upstream.requests().len(), 1);
    still_serves(&proxy, &upstream).await;
}

/// Opens a CONNECT tunnel to `target`; returns the answer head and the stream.
async fn connect(proxy: &TestProxy, target: &str) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    (head, stream)
}

#[tokio::test]
async fn connect_with_a_trailing_dot_or_mixed_case_matches_and_dials_the_normal_name() {
    let upstream = Recorder::start().await;
    let port = upstream.port();
    let proxy = proxy_for(&upstream, &[("localhost", port)]).await;
    for target in [format!("localhost.:{port}"), format!("LocalHost:{port}"), format!("LOCALHOST.:{port}")] {
        let (head, mut stream) = connect(&proxy, &target).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "CONNECT {target}: {head}");
        stream.write_all(b"GET /in-tunnel HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
        let mut answer = vec![0u8; 40];
        let n = tokio::time::timeout(STEP, stream.read(&mut answer)).await.unwrap().unwrap();
        assert!(answer[..n].starts_with(b"HTTP/1.1 200 OK"), "through {target}");
    }
    still_serves(&proxy, &upstream).await;
}

#[tokio::test]
async fn connect_to_an_ipv6_loopback_literal_is_refused_by_the_ssrf_rules() {
    let upstream = Recorder::start().await;
    let policy = allow(&[("127.0.0.1", upstream.port()), ("::1", 443)]);
    let proxy = TestProxy::start(&policy, |c| c.allow_loopback_upstreams = false).await;
    let (head, mut stream) = connect(&proxy, "[::1]:443").await;
    assert!(head.starts_with("HTTP/1.1 403 "), "{head}");
    assert!(head.to_ascii_lowercase().contains("x-openshell-policy: deny"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
        .unwrap();
    let mut body = vec![0u8; length];
    tokio::time::timeout(STEP, stream.read_exact(&mut body)).await.unwrap().unwrap();
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(body["error"], "ssrf_denied", "{body}");
    assert_eq!((body["host"].as_str(), body["port"].as_u64()), (Some("::1"), Some(443)), "{body}");
    assert!(body["reason"].as_str().unwrap().contains("loopback"), "{body}");
    // The absolute form names the host the same way.
    let answer = exchange(proxy.addr, b"GET http://[::1]:443/ HTTP/1.1\r\nHost: [::1]:443\r\n\r\n").await;
    assert_eq!((status(&answer), json_body(&answer)["host"].as_str()), ("403", Some("::1")), "{answer}");
    // Loopback is refused here, so the fresh request goes to a denied name instead.
    let answer = exchange(proxy.addr, b"GET http://other.example/ HTTP/1.1\r\nHost: other.example\r\n\r\n").await;
    assert_eq!(json_body(&answer)["error"], "policy_denied", "{answer}");
}

#[tokio::test]
async fn idn_targets_match_the_policy_in_punycode_and_raw_utf8_is_400() {
    let upstream = Recorder::start().await;
    // `.invalid` never resolves: an allowed decision ends in 502, a denied one in 403.
    let proxy = TestProxy::start(&allow(&[("127.0.0.1", upstream.port()), ("xn--bcher-kva.invalid", 443)]), |c| {
        c.limits.connect_timeout = Duration::from_secs(3)
    })
    .await;
    for target in ["xn--bcher-kva.invalid:443", "XN--BCHER-KVA.invalid.:443"] {
        let (head, _) = connect(&proxy, target).await;
        assert!(head.starts_with("HTTP/1.1 502 ") || head.starts_with("HTTP/1.1 504 "), "{target}: {head}");
    }
    // The raw UTF-8 form is not a valid request target: refused before any policy.
    let started = Instant::now();
    let answer =
        exchange(proxy.addr, "CONNECT bücher.invalid:443 HTTP/1.1\r\nHost: bücher.invalid:443\r\n\r\n".as_bytes())
            .await;
    assert_eq!(status(&answer), "400", "{answer}");
    let answer = exchange(proxy.addr, "GET http://bücher.invalid/ HTTP/1.1\r\nHost: x\r\n\r\n".as_bytes()).await;
    assert_eq!(status(&answer), "400", "{answer}");
    assert!(started.elapsed() < STEP);
    still_serves(&proxy, &upstream).await;
}

#[tokio::test]
async fn an_over_long_header_name_gets_431() {
    let upstream = Recorder::start().await;
    let port = upstream.port();
    let proxy = TestProxy::start(&allow(&[("127.0.0.1", port)]), |c| c.limits.max_head_bytes = 16 * 1024).await;
    let name = "X".repeat(32 * 1024);
    let request = format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n{name}: 1\r\n\r\n");
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(status(&answer), "431", "{}", &answer[..answer.len().min(200)]);
    assert!(upstream.requests().is_empty());
    still_serves(&proxy, &upstream).await;
}

#[tokio::test]
async fn non_ascii_bytes_in_a_path_get_400_and_percent_encoding_passes_verbatim() {
    let upstream = Recorder::start().await;
    let port = upstream.port();
    let proxy = proxy_for(&upstream, &[]).await;
    let mut request = format!("GET http://127.0.0.1:{port}/caf").into_bytes();
    request.extend_from_slice(b"\xc3\xa9/\xff HTTP/1.1\r\nHost: x\r\n\r\n");
    let answer = exchange(proxy.addr, &request).await;
    assert_eq!(status(&answer), "400", "{answer}");
    assert!(upstream.requests().is_empty());
    let request = format!("GET http://127.0.0.1:{port}/caf%C3%A9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(status(&answer), "200", "{answer}");
    assert!(upstream.requests()[0].starts_with("GET /caf%C3%A9 HTTP/1.1\r\n"));
    still_serves(&proxy, &upstream).await;
}

#[tokio::test]
async fn userinfo_in_a_target_gets_400_before_any_policy() {
    let upstream = Recorder::start().await;
    let port = upstream.port();
    let proxy = proxy_for(&upstream, &[]).await;
    // An allowed host:port in front of `@` (the host is the part after it): a target
    // carries no userinfo, so both forms are refused before any policy.
    let (head, _) = connect(&proxy, &format!("127.0.0.1:{port}@denied.example:443")).await;
    assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
    let request = format!("GET http://127.0.0.1:{port}@denied.example/ HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    assert_eq!(status(&answer), "400", "{answer}");
    assert!(json_body(&answer)["reason"].as_str().unwrap().contains("user@"), "{answer}");
    assert!(upstream.requests().is_empty(), "nothing reached the allowed upstream");
    still_serves(&proxy, &upstream).await;
}

#[tokio::test]
async fn connect_targets_without_a_usable_host_or_port_get_400() {
    let upstream = Recorder::start().await;
    let proxy = proxy_for(&upstream, &[("example.com", 443)]).await;
    for target in ["example.com", "example.com:99999", ":443", "a..b:443", "example.com:https", "/path"] {
        let answer =
            exchange(proxy.addr, format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await;
        assert_eq!(status(&answer), "400", "CONNECT {target}: {answer}");
    }
    let answer = exchange(proxy.addr, b"GET http://a..b/ HTTP/1.1\r\nHost: a..b\r\n\r\n").await;
    assert_eq!(status(&answer), "400", "{answer}");
    assert!(json_body(&answer)["reason"].as_str().unwrap().contains("xn--"), "{answer}");
    still_serves(&proxy, &upstream).await;
}
