use http::Request;

use super::super::deny::Refused;

use super::*;

const HOST: &str = "api.example.com";

fn parts(method: &str, target: &str, headers: &[(&str, &str)]) -> Parts {
    let mut b = Request::builder().method(method).uri(target);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn bad(method: &str, target: &str, headers: &[(&str, &str)], websocket: bool) -> HeadError {
    match check(&mut parts(method, target, headers), HOST, 443, websocket) {
        Err(HeadRefusal::Bad(e)) => e,
        other => panic!("{method} {target} {headers:?}: expected a 400, got {other:?}"),
    }
}

/// The `Host` values the upstream would get.
fn hosts_after(target: &str, headers: &[(&str, &str)], port: u16) -> Vec<String> {
    let mut p = parts("GET", target, headers);
    check(&mut p, HOST, port, false).unwrap_or_else(|e| panic!("{target} {headers:?}: {e:?}"));
    p.headers.get_all(header::HOST).iter().map(|v| v.to_str().unwrap().to_owned()).collect()
}

#[test]
fn the_upstream_gets_exactly_one_host_the_judged_one() {
    assert_eq!(hosts_after("/x", &[("host", "API.Example.com.")], 443), [HOST]);
    assert_eq!(hosts_after("/x", &[("host", "api.example.com:443")], 443), [HOST]);
    assert_eq!(hosts_after("/x", &[], 443), [HOST], "a missing Host is set");
    assert_eq!(hosts_after("https://api.example.com/x", &[("host", "api.example.com")], 443), [HOST]);
    assert_eq!(hosts_after("/x", &[("host", "api.example.com:8443")], 8443), ["api.example.com:8443"]);
    let mut p = parts("GET", "/x", &[]);
    check(&mut p, "::1", 8443, false).unwrap();
    assert_eq!(p.headers[header::HOST], "[::1]:8443");
}

#[test]
fn ambiguous_hosts_are_a_400() {
    let two = [("host", HOST), ("host", "evil.example")];
    assert_eq!(bad("GET", "/x", &two, false), HeadError::ManyHosts { count: 2 });
    assert_eq!(bad("GET", "/x", &[("host", HOST), ("host", HOST)], false), HeadError::ManyHosts { count: 2 });
    for host in ["user@api.example.com", "api.example.com@evil.example", "u:p@api.example.com:443"] {
        assert_eq!(bad("GET", "/x", &[("host", host)], false), HeadError::Userinfo { field: "Host header" }, "{host}");
    }
    let target = "https://user@api.example.com/x";
    assert_eq!(bad("GET", target, &[], false), HeadError::Userinfo { field: "request target" });
    for host in ["", "api example", "api.example.com:port"] {
        assert_eq!(
            bad("GET", "/x", &[("host", host)], false),
            HeadError::InvalidHost { field: "Host header" },
            "{host}"
        );
    }
    for (target, host) in [
        ("https://api.example.com/x", "evil.example"),
        ("https://evil.example/x", HOST),
        ("https://api.example.com:443/x", "api.example.com:8443"),
    ] {
        assert_eq!(bad("GET", target, &[("host", host)], false), HeadError::HostsDiffer, "{target} {host}");
    }
}

#[test]
fn one_other_host_is_a_403() {
    for (target, headers) in [
        ("/x", vec![("host", "evil.example")]),
        ("/x", vec![("host", "api.example.com:8443")]),
        ("https://evil.example/x", vec![]),
        ("https://evil.example/x", vec![("host", "EVIL.example")]),
    ] {
        match check(&mut parts("GET", target, &headers), HOST, 443, false) {
            Err(HeadRefusal::OtherHost(named)) => {
                assert!(named.to_lowercase().contains("evil") || named.contains("8443"))
            }
            other => panic!("{target} {headers:?}: {other:?}"),
        }
    }
}

#[test]
fn a_connection_list_naming_host_is_a_400() {
    for connection in ["host", "Host, Authorization", "keep-alive, HOST"] {
        let headers = [("host", HOST), ("connection", connection)];
        assert_eq!(bad("GET", "/x", &headers, false), HeadError::ConnectionNamesHost, "{connection}");
    }
    assert_eq!(hosts_after("/x", &[("host", HOST), ("connection", "keep-alive, x-hop")], 443), [HOST]);
}

#[test]
fn connect_is_never_relayed() {
    assert_eq!(bad("CONNECT", "api.example.com:443", &[], false), HeadError::Connect);
    assert_eq!(bad("CONNECT", "/x", &[("host", HOST)], true), HeadError::Connect);
}

#[test]
fn only_a_websocket_get_to_a_websocket_endpoint_may_upgrade() {
    let ws = [("connection", "keep-alive, Upgrade"), ("upgrade", "WebSocket")];
    assert!(check(&mut parts("GET", "/ws", &ws), HOST, 443, true).is_ok());
    let why = |method, headers: &[(&str, &str)], websocket| match bad(method, "/ws", headers, websocket) {
        HeadError::Upgrade { why } => why,
        e => panic!("{e:?}"),
    };
    assert!(why("GET", &ws, false).contains("protocol: websocket"));
    let h2c = [("connection", "Upgrade, HTTP2-Settings"), ("upgrade", "h2c"), ("http2-settings", "AAMAAABkAAQAAP__")];
    assert!(why("GET", &h2c, false).contains("protocol: websocket"));
    assert!(why("GET", &h2c, true).contains("exactly `websocket`"));
    for upgrade in ["websocket, h2c", "h2c, websocket", "foo", "websocket/13", ""] {
        let headers = [("connection", "upgrade"), ("upgrade", upgrade)];
        assert!(why("GET", &headers, true).contains("exactly `websocket`"), "{upgrade}");
    }
    let twice = [("connection", "upgrade"), ("upgrade", "websocket"), ("upgrade", "h2c")];
    assert!(why("GET", &twice, true).contains("exactly `websocket`"));
    for method in ["POST", "DELETE", "HEAD"] {
        assert!(why(method, &ws, true).contains("GET"), "{method}");
    }
    assert!(why("GET", &[("upgrade", "websocket")], true).contains("Connection"));
    assert!(why("GET", &[("connection", "upgrade")], true).contains("exactly `websocket`"));
    assert!(why("GET", &[("upgrade", "websocket")], false).contains("protocol: websocket"));
}

#[test]
fn refusals_answer_400_or_403_json() {
    let request = Refused { host: HOST, port: 443, method: "GET", path: "/x" };
    let response = request.render(&HeadRefusal::Bad(HeadError::Connect).refusal(HOST, 443));
    assert_eq!(response.status(), http::StatusCode::BAD_REQUEST);
    let body: serde_json::Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!((body["error"].as_str(), body["host"].as_str()), (Some("bad_request"), Some(HOST)));
    assert!(body["reason"].as_str().unwrap().contains("CONNECT"));
    let response = request.render(&HeadRefusal::OtherHost("evil.example".into()).refusal(HOST, 443));
    assert_eq!(response.status(), http::StatusCode::FORBIDDEN);
}

#[test]
fn headers_naming_another_path_or_host_are_a_400() {
    for name in ["x-original-url", "X-Rewrite-URL", "x-override-url"] {
        let e = bad("GET", "/public", &[(name, "/admin")], false);
        assert_eq!(
            e,
            HeadError::Override {
                name: PATH_OVERRIDES.iter().find(|n| n.eq_ignore_ascii_case(name)).unwrap(),
                what: "path"
            }
        );
        // Even naming the target itself: the header has no use through the proxy.
        assert!(matches!(bad("GET", "/public", &[(name, "/public")], false), HeadError::Override { what: "path", .. }));
    }
    let other_hosts = [
        ("x-forwarded-host", "evil.example"),
        ("x-forwarded-host", "api.example.com, evil.example"),
        ("x-forwarded-host", "api.example.com:8443"),
        ("x-host", "evil.example"),
        ("x-forwarded-server", "evil.example"),
        ("x-http-host-override", "evil.example"),
        ("x-original-host", "evil.example"),
        ("x-forwarded-host", "user@api.example.com"),
        ("forwarded", "for=1.2.3.4;host=evil.example"),
        ("forwarded", "host=api.example.com, host=\"evil.example\""),
        ("forwarded", "HOST=evil.example;proto=https"),
    ];
    for (name, value) in other_hosts {
        assert!(
            matches!(bad("GET", "/x", &[(name, value)], false), HeadError::Override { what: "host", .. }),
            "{name}: {value}"
        );
    }
    // Naming the judged host is harmless, and other Forwarded parameters pass.
    for (name, value) in [
        ("x-forwarded-host", "API.example.com."),
        ("x-forwarded-host", "api.example.com:443, api.example.com"),
        ("forwarded", "for=1.2.3.4;proto=https"),
        ("forwarded", "host=\"api.example.com\";proto=https"),
        ("x-forwarded-for", "10.0.0.1"),
    ] {
        assert_eq!(hosts_after("/x", &[(name, value)], 443), [HOST], "{name}: {value}");
    }
}
