//! The RVM programs must answer exactly as regorus's tree-walking interpreter (the
//! reference evaluator) does: every shipped policy, plus one that exercises audit mode,
//! overlapping endpoints and query matchers, over a matrix of destinations and requests.
//! This guards against VM bugs like the one that made the rules avoid `every`.

use std::path::Path;

use super::*;
use crate::policy::{self, RegoRules};

const OVERLAPS: &str = r#"
network_policies:
  a:
    endpoints:
      - {host: api.example.com, port: 443, protocol: rest, access: read-only, enforcement: audit}
      - {host: "*.example.com", ports: [443, 80], protocol: rest, rules: [{allow: {method: GET, path: "/s", query: {q: {any: ["a*", b]}, n: "[0-9]"}}}]}
  b:
    endpoints:
      - {host: api.example.com, port: 443, protocol: rest, access: full, deny_rules: [{method: DELETE, path: "/admin/**"}, {query: {format: csv}}, {path: "/Private", query: {Token: {any: ["x*", ""]}}}]}
      - {host: "**.cdn.example.net", port: 443}
"#;

fn interpreter(rules: &RegoRules, data: &Value) -> regorus::Engine {
    let mut e = regorus::Engine::new();
    e.add_policy(rules.name.clone(), rules.text.clone()).unwrap();
    e.add_data(data.clone()).unwrap();
    e
}

#[test]
fn rvm_and_interpreter_agree() {
    let mut policies: Vec<(String, Policy)> =
        vec![("overlaps".into(), policy::parse_yaml(OVERLAPS, "overlaps").unwrap())];
    for entry in std::fs::read_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            policies.push((path.display().to_string(), policy::load_file(&path).unwrap()));
        }
    }
    let hosts = [
        "api.example.com",
        "x.example.com",
        "a.b.cdn.example.net",
        "cdn.example.net",
        "github.com",
        "api.github.com",
        "registry.npmjs.org",
        "tickets.example.com",
        "analytics.example.com",
        "eu-api.example.org",
        "mirror.artifacts.example.com",
        "evil.example.org",
    ];
    let requests = [
        ("GET", "/"),
        ("GET", "/s?q=abc&n=1"),
        ("GET", "/s?q=abc&q=zzz&n=1"),
        ("GET", "/s?q=b"),
        ("POST", "/x"),
        ("DELETE", "/admin/users"),
        ("GET", "/x?format=csv"),
        ("GET", "/o/r.git/info/refs?service=git-receive-pack"),
        ("POST", "/o/r.git/git-upload-pack"),
        ("GET", "/search?project=OPS&limit=5&q=x"),
        ("GET", "/search?project=HR&limit=5&q=x"),
        ("POST", "/api/v2/tickets/7/comments"),
        ("GET", "/api/v2/admin/x"),
        ("PATCH", "/v1/messages"),
        // Deny readings: repeated, case-folded, `;`-separated and encoded parameters,
        // method and path spellings.
        ("GET", "/o/r.git/info/refs?service=x&service=git-receive-pack"),
        ("GET", "/o/r.git/info/refs?SERVICE=git-receive-pack"),
        ("GET", "/o/r.git/info/refs?x=1;service=git-receive-pack"),
        ("GET", "/o/r.git/info/refs?%73ervice=git%2Dreceive-pack"),
        ("get", "/O/R.git/INFO/refs/?service=git-receive-pack"),
        ("delete", "/ADMIN"),
        ("DELETE", "/admin/"),
        ("GET", "/x?FORMAT=csv&format=json"),
        ("GET", "/private/?token"),
        ("GET", "/PRIVATE?TOKEN=xyz"),
        ("GET", "/s?q=abc&Q=zzz&n=1"),
    ];
    let mut compared = 0;
    for (name, policy) in policies {
        let rules = RegoRules::builtin();
        let engine = PolicyEngine::new(policy, &rules, 1).unwrap();
        let mut reference = interpreter(&rules, &engine.data);
        for host in hosts {
            for port in [80, 443, 8443] {
                let input = network_input(host, port, None);
                let rvm = engine.eval(&engine.network_rule, input.clone()).unwrap();
                reference.set_input(input);
                assert_eq!(rvm, reference.eval_rule(NETWORK_RULE.into()).unwrap(), "{name}: L4 {host}:{port}");
                for (method, target) in requests {
                    let (path, query) = target.split_once('?').unwrap_or((target, ""));
                    let input = network_input(host, port, Some(&L7Request { method, path, query }));
                    let rvm = engine.eval(&engine.request_rule, input.clone()).unwrap();
                    reference.set_input(input);
                    let want = reference.eval_rule(REQUEST_RULE.into()).unwrap();
                    assert_eq!(rvm, want, "{name}: L7 {method} {target} to {host}:{port}");
                    compared += 1;
                }
            }
        }
    }
    assert!(compared > 1000, "{compared}");
}
