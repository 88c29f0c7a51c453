use http::HeaderValue;

use super::*;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(HeaderName::try_from(*k).unwrap(), HeaderValue::from_str(v).unwrap());
    }
    map
}

#[test]
fn upgrades_need_both_headers() {
    assert!(wants_upgrade(&headers(&[("connection", "keep-alive, Upgrade"), ("upgrade", "websocket")])));
    assert!(!wants_upgrade(&headers(&[("upgrade", "websocket")])));
    assert!(!wants_upgrade(&headers(&[("connection", "upgrade")])));
}

#[test]
fn hop_by_hop_headers_are_removed_with_those_connection_lists() {
    let mut h = headers(&[
        ("connection", "keep-alive, x-hop"),
        ("keep-alive", "timeout=5"),
        ("x-hop", "1"),
        ("te", "gzip"),
        ("proxy-authorization", "Basic x"),
        ("upgrade", "h2c"),
        ("http2-settings", "AAMAAABkAAQAAP__"),
        ("authorization", "Bearer t"),
        ("content-length", "3"),
    ]);
    strip_hop_by_hop(&mut h, false);
    let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
    assert_eq!(left, ["authorization", "content-length"]);
}

#[test]
fn te_trailers_is_kept_for_grpc() {
    let mut h = headers(&[("te", "trailers")]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h["te"], "trailers");
}

#[test]
fn a_connection_list_never_removes_host() {
    let mut h = headers(&[("connection", "host, x-hop"), ("host", "api.test"), ("x-hop", "1")]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["host"]);
}

#[test]
fn a_websocket_upgrade_keeps_upgrade_websocket_and_connection() {
    let mut h = headers(&[
        ("connection", "Upgrade, keep-alive, HTTP2-Settings"),
        ("upgrade", "WebSocket"),
        ("http2-settings", "x"),
        ("sec-websocket-key", "k"),
    ]);
    strip_hop_by_hop(&mut h, true);
    assert_eq!(h["connection"], "upgrade");
    assert_eq!(h["upgrade"], "websocket");
    assert!(h.get("http2-settings").is_none());
    assert_eq!(h["sec-websocket-key"], "k");
    assert!(h.get("keep-alive").is_none());
}

#[test]
fn hop_by_hop_and_proxy_headers_are_stripped() {
    let mut h = headers(&[
        ("connection", "keep-alive, x-secret-hop"),
        ("x-secret-hop", "1"),
        ("keep-alive", "timeout=5"),
        ("proxy-authorization", "Basic abc"),
        ("proxy-connection", "keep-alive"),
        ("proxy-anything", "x"),
        ("transfer-encoding", "chunked"),
        ("trailer", "x-checksum"),
        ("accept", "*/*"),
    ]);
    strip_hop_by_hop(&mut h, false);
    assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["accept"]);
}
