//! The audit `close` event of inspected connections through the real proxy on 127.0.0.1:
//! exactly one per connection, with requests, bytes both ways as on the client's wire,
//! duration, and how it ended (`eof`, `idle`, `shutdown`), captured as JSON lines.

use crate::support::l7 as l7_support;
use crate::support::l7::lifecycle;
use crate::support::l7::session as rig;
use crate::support::l7::through;

use std::time::Duration;

use http::StatusCode;
use hyper_util::rt::TokioIo;
use l7_support::ca;
use lifecycle::*;
use through::{client_through, exchange, request};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn an_inspected_keep_alive_connection_ends_with_one_close_event() {
    audit_events();
    let upstream_ca = ca("Upstream CA");
    let (addr, _seen) = h1_upstream(&upstream_ca).await;
    let (proxy, _dir) = proxy(&upstream_ca, addr.port(), |_| {}).await;
    {
        let mut c = client_through(proxy.addr, "localhost", addr.port(), &proxy.tls_dir()).await;
        for _ in 0..2 {
            let (status, body) = exchange(&mut c, request("GET", "/data", &[], "")).await;
            assert_eq!((status, body.as_str().map(str::len)), (StatusCode::OK, Some(DATA)));
        }
    }
    let port = addr.port();
    let closes = wait_for_events(|e| e["action"] == "close" && e["port"] == port).await;
    assert_eq!(closes.len(), 1, "exactly one close event for the connection: {closes:#?}");
    let close = &closes[0];
    assert_eq!((close["kind"].as_str(), close["host"].as_str()), (Some("connect"), Some("localhost")), "{close}");
    assert_eq!(close["requests"], 2, "{close}");
    assert_eq!(close["outcome"], "eof", "{close}");
    let (sent, received) = (close["bytes_sent"].as_u64().unwrap(), close["bytes_received"].as_u64().unwrap());
    assert!(sent > 0, "{close}");
    assert!(received >= 2 * DATA as u64, "the client got both bodies, TLS records included: {close}");
    assert!(close["duration_ms"].is_u64(), "{close}");
}

#[tokio::test]
async fn an_idle_inspected_connection_is_closed_with_an_idle_close_event() {
    audit_events();
    let upstream_ca = ca("Upstream CA");
    let (addr, _seen) = h1_upstream(&upstream_ca).await;
    let (proxy, _dir) = proxy(&upstream_ca, addr.port(), |c| c.limits.idle_timeout = Duration::from_secs(1)).await;
    let mut c = client_through(proxy.addr, "localhost", addr.port(), &proxy.tls_dir()).await;
    let (status, _) = exchange(&mut c, request("GET", "/data", &[], "")).await;
    assert_eq!(status, StatusCode::OK);
    let port = addr.port();
    let closes = wait_for_events(|e| e["action"] == "close" && e["port"] == port).await;
    assert_eq!(closes.len(), 1, "{closes:#?}");
    assert_eq!((closes[0]["outcome"].as_str(), closes[0]["requests"].as_u64()), (Some("idle"), Some(1)), "{closes:#?}");
    drop(c);
}

#[tokio::test]
async fn an_inspected_connection_open_at_shutdown_gets_a_shutdown_close_event() {
    audit_events();
    let upstream_ca = ca("Upstream CA");
    let (addr, _seen) = h1_upstream(&upstream_ca).await;
    let (proxy, _dir) = proxy(&upstream_ca, addr.port(), |_| {}).await;
    let mut c = client_through(proxy.addr, "localhost", addr.port(), &proxy.tls_dir()).await;
    let (status, _) = exchange(&mut c, request("GET", "/data", &[], "")).await;
    assert_eq!(status, StatusCode::OK);
    proxy.shutdown.trigger();
    let port = addr.port();
    let closes = wait_for_events(|e| e["action"] == "close" && e["port"] == port).await;
    assert_eq!(closes.len(), 1, "{closes:#?}");
    assert_eq!(closes[0]["outcome"], "shutdown", "{closes:#?}");
    drop(c);
}

#[tokio::test]
async fn a_websocket_connection_is_closed_once_when_its_relay_ends() {
    audit_events();
    let upstream_ca = ca("Upstream CA");
    let (addr, _seen) = rig::upstream_named(&upstream_ca, "localhost").await;
    let (proxy, _dir) = proxy_speaking("websocket", &upstream_ca, addr.port(), |_| {}).await;
    let mut c = client_through(proxy.addr, "localhost", addr.port(), &proxy.tls_dir()).await;
    let upgrade =
        [("connection", "Upgrade".into()), ("upgrade", "websocket".into()), ("sec-websocket-version", "13".into())];
    tokio::time::timeout(Duration::from_secs(5), c.ready()).await.unwrap().unwrap();
    let response = c.send_request(request("GET", "/ws", &upgrade, "")).await.unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut io = TokioIo::new(hyper::upgrade::on(response).await.unwrap());
    let echoed = vec![b'w'; 5000];
    io.write_all(&echoed).await.unwrap();
    let mut back = vec![0u8; echoed.len()];
    tokio::time::timeout(Duration::from_secs(5), io.read_exact(&mut back)).await.unwrap().unwrap();
    let port = addr.port();
    let is_close = |e: &serde_json::Value| e["action"] == "close" && e["port"] == port;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!audit_events().iter().any(is_close), "no close event while the WebSocket is open");
    drop(io);
    let closes = wait_for_events(is_close).await;
    assert_eq!(closes.len(), 1, "{closes:#?}");
    let close = &closes[0];
    assert_eq!(close["requests"], 1, "{close}");
    let (sent, received) = (close["bytes_sent"].as_u64().unwrap(), close["bytes_received"].as_u64().unwrap());
    assert!(sent >= 5000 && received >= 5000, "the relayed bytes are counted: {close}");
}

#[tokio::test]
async fn the_requests_and_the_close_of_one_connection_share_its_ocsf_uid_over_http1_and_http2() {
    audit_events();
    let upstream_ca = ca("Upstream CA");
    let (addr, _seen) = h1_upstream(&upstream_ca).await;
    let (proxy, _dir) = proxy(&upstream_ca, addr.port(), |_| {}).await;
    let port = addr.port();
    {
        let mut c = client_through(proxy.addr, "localhost", port, &proxy.tls_dir()).await;
        for _ in 0..2 {
            assert_eq!(exchange(&mut c, request("GET", "/data", &[], "")).await.0, StatusCode::OK);
        }
    }
    {
        let mut h2 = through::h2_client_through(proxy.addr, "localhost", port, &proxy.tls_dir()).await;
        for _ in 0..2 {
            let get = request("GET", &format!("https://localhost:{port}/data"), &[], "");
            let (status, _) = crate::support::l7::hardened::h2_exchange(&mut h2, get).await.unwrap();
            assert_eq!(status, StatusCode::OK);
        }
    }
    events_after(0, 2, |e| e["action"] == "close" && e["port"] == port).await;

    let events: Vec<serde_json::Value> = crate::support::capture::ocsf()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| e["dst_endpoint"]["port"] == port)
        .collect();
    events.iter().for_each(crate::support::ocsf::assert_valid);
    let uids: std::collections::BTreeSet<&str> = events
        .iter()
        .map(|e| e["metadata"]["correlation_uid"].as_str().expect("every event has its connection's uid"))
        .collect();
    assert_eq!(uids.len(), 2, "two connections, two uids: {events:#?}");
    for uid in uids {
        let of: Vec<&serde_json::Value> = events.iter().filter(|e| e["metadata"]["correlation_uid"] == uid).collect();
        let gets = of.iter().filter(|e| e["class_uid"] == 4002 && e["activity_id"] == 3).count();
        let close = of.iter().find(|e| e["class_uid"] == 4001 && e["activity_id"] == 2).expect("the close");
        assert_eq!((gets, close["unmapped"]["requests"].as_u64()), (2, Some(2)), "{of:#?}");
        assert!(of.iter().all(|e| e["connection_info"]["uid"] == uid), "{of:#?}");
    }
}
