//! The SSRF guard through the real proxy for addresses that carry or are reserved: IPv6
//! forms embedding IPv4 (compatible, SIIT, NAT64, 6to4, Teredo), site-local, documentation,
//! benchmarking and reserved ranges. The test runs in a network namespace of its own, where
//! every such address is put on `lo` with a listener that counts accepts: each CONNECT and
//! absolute-form request gets 403 `ssrf_denied`, and no listener ever accepts, even with
//! each literal named exactly in the policy and `--allow-loopback-upstreams` set; a public
//! address on `lo` is dialled, which shows a dial would have landed.

use crate::support::proxy as proxy_support;

use std::net::{IpAddr, SocketAddr};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use proxy_support::{TestProxy, exchange, json_body, read_head};

/// Each refused literal and the class its refusal names.
const REFUSED: &[(&str, &str)] = &[
    ("::127.0.0.1", "(IPv4-compatible, carrying 127.0.0.1), a loopback address"),
    ("::169.254.169.254", "(IPv4-compatible, carrying 169.254.169.254), a link-local address"),
    ("::ffff:0:127.0.0.1", "(SIIT, carrying 127.0.0.1), a loopback address"),
    ("64:ff9b::7f00:1", "(NAT64, carrying 127.0.0.1), a loopback address"),
    ("2002:7f00:1::1", "(6to4, carrying 127.0.0.1), a loopback address"),
    ("2002:a9fe:a9fe::1", "(6to4, carrying 169.254.169.254), a link-local address"),
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", "(Teredo, carrying 127.0.0.1), a loopback address"),
    ("fec0::1", "a site-local (deprecated) address"),
    ("2001:db8::1", "a documentation address"),
    ("3fff::1", "a documentation address"),
    ("100::1", "a discard-only address"),
    ("4000::1", "a reserved address"),
    ("192.0.0.170", "a reserved (IETF protocol assignments) address"),
    ("192.0.2.1", "a documentation address"),
    ("198.51.100.1", "a documentation address"),
    ("203.0.113.1", "a documentation address"),
    ("198.18.0.1", "a benchmarking address"),
    ("198.19.255.254", "a benchmarking address"),
];

/// A public address, put on `lo` of this namespace only: the proxy dials it.
const PUBLIC: &str = "2606:4700::1111";

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("the `ip` tool");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `ip` in brackets for a URI authority.
fn authority(literal: &str, port: u16) -> String {
    SocketAddr::new(literal.parse().unwrap(), port).to_string()
}

/// A listener on `addr` that counts the connections it accepts.
async fn recorder(addr: SocketAddr) -> Arc<AtomicUsize> {
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let accepts = Arc::new(AtomicUsize::new(0));
    let counter = accepts.clone();
    tokio::spawn(async move {
        while let Ok((_stream, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    accepts
}

#[test]
fn carried_and_reserved_addresses_get_403_and_are_never_dialled() {
    // This test's thread, and the `ip` children and runtime it starts, get a network
    // namespace with only `lo`: whatever the proxy dials stays on this machine.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)
        .expect("unshare(CLONE_NEWNET) needs root (CAP_SYS_ADMIN), as the e2e tests do");
    ip(&["link", "set", "lo", "up"]);
    for literal in REFUSED.iter().map(|(l, _)| *l).chain([PUBLIC]) {
        match literal.parse::<IpAddr>().unwrap() {
            IpAddr::V4(_) => ip(&["addr", "add", &format!("{literal}/32"), "dev", "lo"]),
            IpAddr::V6(_) => ip(&["addr", "add", &format!("{literal}/128"), "dev", "lo", "nodad"]),
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut accepts = Vec::new();
        for (literal, _) in REFUSED {
            accepts.push(recorder(SocketAddr::new(literal.parse().unwrap(), port)).await);
        }
        let public = recorder(SocketAddr::new(PUBLIC.parse().unwrap(), port)).await;
        // Every literal named exactly (the strongest grant a policy can give), with the
        // development flag that opens loopback on (proxy_support's default).
        let hosts: Vec<(&str, u16)> = REFUSED.iter().map(|(l, _)| (*l, port)).chain([(PUBLIC, port)]).collect();
        let proxy = TestProxy::start(&proxy_support::allow(&hosts), |c| assert!(c.allow_loopback_upstreams)).await;

        for (literal, class) in REFUSED {
            let target = authority(literal, port);
            let connect = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
            let get = format!("GET http://{target}/ HTTP/1.1\r\nHost: {target}\r\nConnection: close\r\n\r\n");
            for (how, request) in [("CONNECT", connect), ("absolute-form", get)] {
                let response = exchange(proxy.addr, request.as_bytes()).await;
                assert!(response.starts_with("HTTP/1.1 403 "), "{how} {literal}: {response}");
                let body = json_body(&response);
                assert_eq!(body["error"], "ssrf_denied", "{how} {literal}: {body}");
                let reason = body["reason"].as_str().unwrap_or_default();
                assert!(reason.contains(class), "{how} {literal}: {reason}");
            }
        }
        for ((literal, _), accepted) in REFUSED.iter().zip(&accepts) {
            assert_eq!(accepted.load(Ordering::SeqCst), 0, "the proxy dialled {literal}");
        }

        // The ordinary request after them: the public address is dialled and lands.
        let mut stream = tokio::net::TcpStream::connect(proxy.addr).await.unwrap();
        let target = authority(PUBLIC, port);
        let request = format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n");
        tokio::io::AsyncWriteExt::write_all(&mut stream, request.as_bytes()).await.unwrap();
        let head = read_head(&mut stream).await;
        assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
        let deadline = tokio::time::Instant::now() + proxy_support::STEP;
        while public.load(Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the public address was not dialled");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    });
}
