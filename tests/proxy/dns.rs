//! The policy DNS through the proxy's real startup, over UDP and TCP on 127.0.0.1 port 0:
//! allowed names (exact and patterns) get synthetic addresses, denied ones NXDOMAIN, AAAA
//! an empty answer; the address table survives a policy reload; clients outside the list
//! get nothing; the transparent port listener resets connections to real addresses.

use crate::support::proxy as proxy_support;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use openshell_sandbox::config::DnsConfig;
use proxy_support::{STEP, TestProxy};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// The port this binary's proxies serve transparently on the unspecified address: one that
/// was free when first asked for (the policy names it, so it cannot be port 0).
fn transparent_port() -> u16 {
    static PORT: std::sync::OnceLock<u16> = std::sync::OnceLock::new();
    *PORT.get_or_init(|| std::net::TcpListener::bind("0.0.0.0:0").unwrap().local_addr().unwrap().port())
}

fn policy(names: &[&str]) -> String {
    let mut yaml = String::from("version: 1\nnetwork_policies:\n  p:\n    endpoints:\n");
    for name in names {
        let port = transparent_port();
        yaml.push_str(&format!("      - {{host: \"{name}\", port: {port}, protocol: tcp}}\n"));
    }
    yaml
}

async fn start(names: &[&str], clients: &str) -> (TestProxy, SocketAddr) {
    let clients: Vec<ipnet::IpNet> = clients.split(',').filter(|c| !c.is_empty()).map(|c| c.parse().unwrap()).collect();
    let proxy = TestProxy::start(&policy(names), |config| {
        config.allowed_clients = clients;
        config.dns = Some(DnsConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            max_names: 100,
            name_lifetime: Duration::from_secs(600),
        });
    })
    .await;
    let dns = proxy.dns.expect("the DNS listener address");
    (proxy, dns)
}

fn query(name: &str, qtype: RecordType, id: u16) -> Vec<u8> {
    let mut q = Message::query();
    q.metadata.id = id;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    q.to_vec().unwrap()
}

async fn udp(dns: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&query(name, qtype, 7), dns).await.unwrap();
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(STEP, socket.recv_from(&mut buf)).await.expect("an answer").unwrap();
    let answer = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(answer.metadata.id, 7);
    answer
}

fn address(answer: &Message) -> Ipv4Addr {
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError, "{answer:?}");
    match answer.answers.as_slice() {
        [record] => match &record.data {
            RData::A(a) => a.0,
            other => panic!("not an A record: {other:?}"),
        },
        other => panic!("expected one answer: {other:?}"),
    }
}

fn synthetic(addr: Ipv4Addr) -> bool {
    "198.18.0.0/15".parse::<ipnet::Ipv4Net>().unwrap().contains(&addr)
}

#[tokio::test]
async fn names_the_policy_allows_resolve_to_synthetic_addresses_over_udp_and_tcp() {
    let (_proxy, dns) = start(&["api.example.com", "*.wild.example", "**.deep.example"], "").await;
    let api = address(&udp(dns, "api.example.com.", RecordType::A).await);
    assert!(synthetic(api), "{api}");
    assert_eq!(address(&udp(dns, "API.EXAMPLE.COM.", RecordType::A).await), api, "one name, one address");
    let db = address(&udp(dns, "db.wild.example.", RecordType::A).await);
    let deep = address(&udp(dns, "a.b.deep.example.", RecordType::A).await);
    assert!(synthetic(db) && synthetic(deep) && db != api && deep != db);
    for denied in ["a.b.wild.example.", "wild.example.", "denied.example.", "api.example.com.evil."] {
        let answer = udp(dns, denied, RecordType::A).await;
        assert_eq!((answer.metadata.response_code, answer.answers.len()), (ResponseCode::NXDomain, 0), "{denied}");
    }
    let aaaa = udp(dns, "api.example.com.", RecordType::AAAA).await;
    assert_eq!((aaaa.metadata.response_code, aaaa.answers.len()), (ResponseCode::NoError, 0), "AAAA: no IPv6");

    // TCP: two queries on one connection, then a malformed one, each answered in order.
    let mut tcp = TcpStream::connect(dns).await.unwrap();
    for (id, name) in [(1, "api.example.com."), (2, "db.wild.example.")] {
        let q = query(name, RecordType::A, id);
        tcp.write_all(&(q.len() as u16).to_be_bytes()).await.unwrap();
        tcp.write_all(&q).await.unwrap();
    }
    tcp.write_all(&[0, 14, 0x99, 0x01, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xff, 0xff]).await.unwrap();
    let mut answers = Vec::new();
    for _ in 0..3 {
        let len = tokio::time::timeout(STEP, tcp.read_u16()).await.unwrap().unwrap();
        let mut buf = vec![0u8; usize::from(len)];
        tcp.read_exact(&mut buf).await.unwrap();
        answers.push(Message::from_vec(&buf).unwrap());
    }
    assert_eq!(address(&answers[0]), api, "TCP and UDP share the table");
    assert_eq!(address(&answers[1]), db);
    assert_eq!((answers[2].metadata.id, answers[2].metadata.response_code), (0x9901, ResponseCode::FormErr));
}

#[tokio::test]
async fn the_table_survives_a_reload_and_removed_names_are_nxdomain_at_once() {
    let (proxy, dns) = start(&["keep.example", "gone.example"], "").await;
    let keep = address(&udp(dns, "keep.example.", RecordType::A).await);
    let gone = address(&udp(dns, "gone.example.", RecordType::A).await);
    std::fs::write(&proxy.policy_path, policy(&["keep.example", "new.example"])).unwrap();
    let deadline = tokio::time::Instant::now() + STEP;
    while udp(dns, "gone.example.", RecordType::A).await.metadata.response_code != ResponseCode::NXDomain {
        assert!(tokio::time::Instant::now() < deadline, "the reload never removed gone.example");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(address(&udp(dns, "keep.example.", RecordType::A).await), keep, "kept across the reload");
    let new = address(&udp(dns, "new.example.", RecordType::A).await);
    assert!(new != keep && new != gone, "a removed name's address is not handed to another name");
    std::fs::write(&proxy.policy_path, policy(&["keep.example", "new.example", "gone.example"])).unwrap();
    let deadline = tokio::time::Instant::now() + STEP;
    loop {
        let answer = udp(dns, "gone.example.", RecordType::A).await;
        if answer.metadata.response_code == ResponseCode::NoError {
            assert_eq!(address(&answer), gone, "back in the policy, it has its old address");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the reload never brought gone.example back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn clients_outside_the_list_get_nothing() {
    let (_proxy, dns) = start(&["api.example.com"], "10.0.0.0/8").await;
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.send_to(&query("api.example.com.", RecordType::A, 3), dns).await.unwrap();
    let mut buf = [0u8; 512];
    let silent = tokio::time::timeout(Duration::from_millis(500), socket.recv_from(&mut buf)).await;
    assert!(silent.is_err(), "a client outside OPENSHELL_PROXY_ALLOWED_CLIENTS was answered");
    let mut tcp = TcpStream::connect(dns).await.unwrap();
    let mut byte = [0u8; 1];
    let closed = tokio::time::timeout(STEP, tcp.read(&mut byte)).await.unwrap();
    assert!(matches!(closed, Ok(0) | Err(_)), "the TCP connection is closed: {closed:?}");
}

#[tokio::test]
async fn the_transparent_port_resets_connections_to_real_addresses() {
    let (_proxy, _dns) = start(&["api.example.com"], "").await;
    let target = SocketAddr::from(([127, 0, 0, 1], transparent_port()));
    let deadline = tokio::time::Instant::now() + STEP;
    let mut stream = loop {
        match TcpStream::connect(target).await {
            Ok(stream) => break stream,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("the transparent listener never opened: {e}"),
        }
    };
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(STEP, stream.read(&mut buf)).await.unwrap();
    assert!(
        matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "127.0.0.1 is not a synthetic address: reset, got {read:?}"
    );
}
