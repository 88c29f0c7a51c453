//! One policy DNS answer, from the query's bytes to the answer's, against a policy of 100
//! endpoints (exact names and patterns): an allowed name (its synthetic address), a
//! pattern's name, a denied name (NXDOMAIN, audited once per window) and AAAA (NODATA).
//! The server's socket adds the rest; `dnsperf` measures it whole (docs/transparent.md).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use openshell_sandbox::policy::{self, PolicyEngine, RegoRules};
use openshell_sandbox::proxy::dns::{PolicyDns, SyntheticMap, Transport, respond};
use openshell_sandbox::proxy::policy_source::PolicyHandle;
use openshell_sandbox::route::synthetic_range;

fn policy() -> String {
    let mut yaml = String::from("version: 1\nnetwork_policies:\n");
    for i in 0..50 {
        yaml.push_str(&format!(
            "  svc{i}:\n    endpoints:\n      - {{host: api.svc{i}.example.com, port: 443}}\n      \
             - {{host: \"*.cdn{i}.example.net\", port: 443}}\n"
        ));
    }
    yaml
}

fn query(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut q = Message::query();
    q.metadata.id = 7;
    q.metadata.recursion_desired = true;
    q.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    q.to_vec().unwrap()
}

fn bench(c: &mut Criterion) {
    let engine = PolicyEngine::new(policy::parse_yaml(&policy(), "bench").unwrap(), &RegoRules::builtin(), 1).unwrap();
    let map = Arc::new(SyntheticMap::new(synthetic_range(), 16_384, Duration::from_secs(900)));
    let dns = PolicyDns::new(PolicyHandle::new(engine), map);
    let cases = [
        ("dns_allowed_a", "api.svc33.example.com.", RecordType::A, ResponseCode::NoError),
        ("dns_pattern_a", "x.cdn40.example.net.", RecordType::A, ResponseCode::NoError),
        ("dns_denied_a", "evil.example.org.", RecordType::A, ResponseCode::NXDomain),
        ("dns_allowed_aaaa", "api.svc33.example.com.", RecordType::AAAA, ResponseCode::NoError),
    ];
    for (id, name, qtype, code) in cases {
        let bytes = query(name, qtype);
        let answer = respond(&bytes, Transport::Udp, &dns).unwrap();
        assert_eq!(Message::from_vec(&answer).unwrap().metadata.response_code, code, "{id}");
        c.bench_function(id, |b| b.iter(|| respond(black_box(&bytes), Transport::Udp, &dns)));
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
