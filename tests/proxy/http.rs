//! Absolute-form HTTP through the in-process proxy, and the listener's limits: GET and
//! POST forwarded with bodies, keep-alive reuse, `https://` refused with 400, an
//! oversized head (431), a slowloris client cut at the header timeout, the connection
//! cap (503), and the response timeout counted from the end of an upload.

use crate::support::proxy as proxy_support;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use proxy_support::{EchoServer, STEP, TestProxy, allow, exchange, json_body, read_all, read_head};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads one response with a Content-Length body from a kept-alive connection.
async fn response(stream: &mut TcpStream) -> (String, String) {
    let head = read_head(stream).await;
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse::<usize>().unwrap())
        })
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    let mut body = vec![0u8; length];
    tokio::time::timeout(STEP, stream.read_exact(&mut body)).await.unwrap().unwrap();
    (head, String::from_utf8(body).unwrap())
}

#[tokio::test]
async fn get_and_post_are_forwarded_with_bodies_and_without_proxy_headers() {
    let echo = EchoServer::start().await;
    let port = echo.addr.port();
    let proxy = TestProxy::start(&allow(&[("127.0.0.1", port)]), |_| {}).await;
    let get = format!(
        "GET http://127.0.0.1:{port}/path?q=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nProxy-Authorization: Basic c2VjcmV0\r\nConnection: close\r\n\r\n"
    );
    let answer = exchange(proxy.addr, get.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.contains(&format!("GET /path?q=1|host=127.0.0.1:{port}|")), "origin-form upstream: {answer}");
    assert!(answer.contains("proxyauth=false"), "Proxy-Authorization is stripped: {answer}");

    let body = "x".repeat(100_000);
    let post = format!(
        "POST http://127.0.0.1:{port}/upload HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let answer = exchange(proxy.addr, post.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{}", &answer[..200.min(answer.len())]);
    assert!(answer.ends_with(&format!("body={body}")), "the whole body arrives");

    let chunked = format!(
        "POST http://127.0.0.1:{port}/c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    );
    let answer = exchange(proxy.addr, chunked.as_bytes()).await;
    assert!(answer.ends_with("body=hello world"), "{answer}");
}

#[tokio::test]
async fn keep_alive_reuses_the_client_and_the_upstream_connection() {
    let echo = EchoServer::start().await;
    let port = echo.addr.port();
    let proxy = TestProxy::start(&allow(&[("127.0.0.1", port)]), |_| {}).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    for i in 0..3 {
        let get = format!("GET http://127.0.0.1:{port}/{i} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
        stream.write_all(get.as_bytes()).await.unwrap();
        let (head, body) = response(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        assert!(body.starts_with(&format!("GET /{i}|")), "{body}");
        assert!(body.contains("|conn=1|"), "one upstream connection serves every request: {body}");
    }
    assert_eq!(echo.connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn https_absolute_form_gets_400_naming_connect() {
    let proxy = TestProxy::start(&allow(&[("example.com", 443)]), |_| {}).await;
    let answer = exchange(proxy.addr, b"GET https://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(json_body(&answer)["reason"].as_str().unwrap().contains("CONNECT"), "{answer}");
    let answer = exchange(proxy.addr, b"GET /index.html HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
}

#[tokio::test]
async fn a_denied_request_names_method_and_path() {
    let proxy = TestProxy::start(&allow(&[("example.com", 80)]), |_| {}).await;
    let answer = exchange(proxy.addr, b"DELETE http://other.example/x HTTP/1.1\r\nHost: other.example\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
    let body = json_body(&answer);
    assert_eq!(
        (body["error"].as_str(), body["method"].as_str(), body["path"].as_str()),
        (Some("policy_denied"), Some("DELETE"), Some("/x"))
    );
}

#[tokio::test]
async fn an_oversized_head_gets_431() {
    let proxy = TestProxy::start(&allow(&[("example.com", 80)]), |c| c.limits.max_head_bytes = 16 * 1024).await;
    let big = "a".repeat(40 * 1024);
    let request = format!("GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\nX-Big: {big}\r\n\r\n");
    let answer = exchange(proxy.addr, request.as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{}", &answer[..answer.len().min(200)]);
}

#[tokio::test]
async fn a_slowloris_client_is_cut_at_the_header_timeout() {
    let proxy =
        TestProxy::start(&allow(&[("example.com", 80)]), |c| c.limits.header_timeout = Duration::from_secs(1)).await;
    let stream = TcpStream::connect(proxy.addr).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    let started = Instant::now();
    let drip = tokio::spawn(async move {
        writer.write_all(b"GET http://example.com/ HTTP/1.1\r\n").await?;
        for i in 0..50 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            writer.write_all(format!("X-Drip-{i}: 1\r\n").as_bytes()).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    let mut buf = [0u8; 1024];
    let closed = tokio::time::timeout(Duration::from_secs(6), async {
        loop {
            match reader.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the proxy must close a client that never finishes its head");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(4), "{elapsed:?}");
    drip.abort();
}

#[tokio::test]
async fn beyond_the_connection_cap_the_answer_is_a_fast_503() {
    let proxy = TestProxy::start(&allow(&[("example.com", 80)]), |c| c.limits.max_connections = 1).await;
    let holder = TcpStream::connect(proxy.addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    let answer = exchange(proxy.addr, b"GET http://example.com/ HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 503 "), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(2));
    drop(holder);
    // The slot comes back once the holder is gone.
    let mut freed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let answer = exchange(proxy.addr, b"GET http://other.example/ HTTP/1.1\r\nHost: other.example\r\n\r\n").await;
        if answer.starts_with("HTTP/1.1 403 ") {
            freed = true;
            break;
        }
    }
    assert!(freed, "the connection slot is released when the client leaves");
}

#[tokio::test]
async fn reading_all_of_a_denial_ends() {
    // The proxy closes after a denial, so a client reading to EOF does not hang.
    let proxy = TestProxy::start(&allow(&[("example.com", 80)]), |_| {}).await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    stream.write_all(b"GET http://denied.example/ HTTP/1.1\r\nHost: denied.example\r\n\r\n").await.unwrap();
    let answer = read_all(&mut stream).await;
    assert!(answer.starts_with("HTTP/1.1 403 "), "{answer}");
}

#[tokio::test]
async fn a_stalled_upstream_body_is_cut_at_the_idle_timeout() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (mut stream, _) = upstream.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = stream.read(&mut buf).await;
        stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nstart").await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    });
    let proxy =
        TestProxy::start(&allow(&[("127.0.0.1", port)]), |c| c.limits.idle_timeout = Duration::from_secs(1)).await;
    let started = Instant::now();
    let answer =
        exchange(proxy.addr, format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 200 ") && answer.ends_with("start"), "{answer}");
    let elapsed = started.elapsed();
    assert!(elapsed >= Duration::from_millis(900) && elapsed < Duration::from_secs(5), "{elapsed:?}");
}

#[tokio::test]
async fn an_upstream_that_never_answers_gets_504() {
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = upstream.local_addr().unwrap().port();
    tokio::spawn(async move {
        let (stream, _) = upstream.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(stream);
    });
    let proxy =
        TestProxy::start(&allow(&[("127.0.0.1", port)]), |c| c.limits.response_timeout = Duration::from_secs(1)).await;
    let answer =
        exchange(proxy.addr, format!("GET http://127.0.0.1:{port}/ HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await;
    assert!(answer.starts_with("HTTP/1.1 504 "), "{answer}");
    assert_eq!(json_body(&answer)["error"], "upstream_timeout");
}

#[tokio::test]
async fn an_upload_longer_than_the_response_timeout_is_not_cut() {
    let echo = EchoServer::start().await;
    let port = echo.addr.port();
    let answer_within = Duration::from_secs(1);
    let proxy = TestProxy::start(&allow(&[("127.0.0.1", port)]), |c| c.limits.response_timeout = answer_within).await;
    let mut client = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!("POST http://127.0.0.1:{port}/up HTTP/1.1\r\nHost: x\r\nContent-Length: 30\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    for i in 0..3 {
        if i > 0 {
            tokio::time::sleep(Duration::from_millis(700)).await;
        }
        client.write_all(&[b'u'; 10]).await.unwrap();
    }
    let (head, body) = response(&mut client).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "the response timeout counts from the end of the body: {head}");
    assert!(body.ends_with(&format!("body={}", "u".repeat(30))), "{body}");
    assert!(started.elapsed() > answer_within, "the upload took longer than the response timeout");
}
