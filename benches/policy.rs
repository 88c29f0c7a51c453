//! Policy decision cost for a policy of 50 network policies (100 endpoints: exact hosts,
//! wildcard hosts, L4 and inspected endpoints with rules): L4 cached and uncached, L7.
//! Targets on the CI machine kind: cached L4 <= 1 us, uncached L4 <= 50 us, L7 <= 100 us.

use std::fmt::Write;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use openshell_sandbox::policy::{self, L7Request, PolicyEngine, RegoRules};

/// 50 policies of two endpoints each; every tenth policy uses wildcard hosts, every
/// third is inspected with explicit rules and a deny rule.
fn fifty_policies() -> String {
    let mut y = String::from("version: 1\nnetwork_policies:\n");
    for i in 0..50 {
        let _ = writeln!(y, "  svc{i:02}:\n    endpoints:");
        let hosts = if i % 10 == 0 {
            [format!("\"*.svc{i}.example.com\""), format!("\"**.cdn{i}.example.net\"")]
        } else {
            [format!("api.svc{i}.example.com"), format!("uploads.svc{i}.example.com")]
        };
        for host in hosts {
            let _ = writeln!(y, "      - host: {host}\n        ports: [443, 8443]");
            if i % 3 == 0 {
                y.push_str(
                    "        protocol: rest\n        rules:\n          - allow: {method: GET, path: \"/v1/**\"}\n          - allow: {method: POST, path: \"/v1/items/*/comments\"}\n          - allow: {method: GET, path: /search, query: {project: {any: [OPS, DEV]}}}\n        deny_rules:\n          - {path: \"/v1/admin/**\"}\n",
                );
            } else if i % 3 == 1 {
                y.push_str("        protocol: rest\n        access: read-only\n");
            }
        }
    }
    y
}

fn bench(c: &mut Criterion) {
    let policy = policy::parse_yaml(&fifty_policies(), "bench").unwrap();
    let engine = PolicyEngine::new(policy, &RegoRules::builtin(), 1).unwrap();
    assert!(engine.evaluate_network("api.svc33.example.com", 443).allow);
    assert!(engine.evaluate_network("x.svc40.example.com", 443).allow);

    c.bench_function("l4_cached", |b| b.iter(|| engine.network(black_box("api.svc33.example.com"), 443)));
    c.bench_function("l4_uncached_exact", |b| {
        b.iter(|| engine.evaluate_network(black_box("api.svc33.example.com"), 443))
    });
    c.bench_function("l4_uncached_glob", |b| {
        b.iter(|| engine.evaluate_network(black_box("a.b.cdn40.example.net"), 443))
    });
    c.bench_function("l4_uncached_denied", |b| b.iter(|| engine.evaluate_network(black_box("evil.example.org"), 443)));

    let search = L7Request { method: "GET", path: "/search", query: "project=OPS" };
    assert!(engine.request("api.svc30.example.com", 443, &search).allow);
    c.bench_function("l7_cached", |b| {
        b.iter(|| engine.request(black_box("api.svc30.example.com"), 443, black_box(&search)))
    });
    c.bench_function("l7_allowed_by_query_rule", |b| {
        b.iter(|| engine.evaluate_request(black_box("api.svc30.example.com"), 443, black_box(&search)))
    });
    let admin = L7Request { method: "GET", path: "/v1/admin/users", query: "" };
    assert!(!engine.request("api.svc30.example.com", 443, &admin).allow);
    c.bench_function("l7_denied_by_deny_rule", |b| {
        b.iter(|| engine.evaluate_request(black_box("api.svc30.example.com"), 443, black_box(&admin)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
