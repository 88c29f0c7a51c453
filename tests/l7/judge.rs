//! Requests on an inspected connection judged through the real policy loader and Rego
//! engine: canonical paths, enforce and audit, query matchers, deny precedence, and the
//! credential swap that happens only for requests that are forwarded, allowed, over TLS,
//! to an endpoint the key is bound to.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::{Request, StatusCode};
use openshell_sandbox::config::Secret;
use openshell_sandbox::policy::{self, PolicyEngine, RegoRules};
use openshell_sandbox::proxy::credentials::{BindingEndpoint, ProviderEnvironment, SecretStore, placeholder};
use openshell_sandbox::proxy::l7::judge::{Verdict, judge};

const HOST: &str = "api.example.com";
const SECRET: &str = "ghp_REAL_SECRET_123";

fn engine(endpoint: &str) -> PolicyEngine {
    let yaml = format!(
        "version: 1\nnetwork_policies:\n  api:\n    endpoints:\n      - host: {HOST}\n        port: 443\n        protocol: rest\n{endpoint}"
    );
    PolicyEngine::new(policy::parse_yaml(&yaml, "test.yaml").unwrap(), &RegoRules::builtin(), 1).unwrap()
}

/// `TOKEN` bound to `HOST:443` (any path), `SCOPED` to `HOST:443` under `/v1`, `LOOSE`
/// bound nowhere.
fn secrets() -> SecretStore {
    let at = |path: &str| vec![BindingEndpoint { host: HOST.into(), port: 443, path: path.into() }];
    let env = ProviderEnvironment {
        environment: [("TOKEN", SECRET), ("SCOPED", "scoped-SECRET-9"), ("LOOSE", "loose-SECRET-7")]
            .map(|(k, v)| (k.to_owned(), Secret::new(v)))
            .into(),
        bindings: [("TOKEN".to_owned(), at("")), ("SCOPED".to_owned(), at("/v1"))].into(),
        ..Default::default()
    };
    SecretStore::from_provider(&env).unwrap()
}

fn request(method: &str, target: &str, headers: &[(&str, String)]) -> http::request::Parts {
    let mut b = Request::builder().method(method).uri(target).header("host", HOST);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(()).unwrap().into_parts().0
}

/// The verdict and the head as it would be forwarded.
fn run(e: &PolicyEngine, method: &str, target: &str, headers: &[(&str, String)]) -> (Verdict, http::request::Parts) {
    let mut parts = request(method, target, headers);
    let verdict = judge(e, HOST, 443, &secrets(), &mut parts);
    (verdict, parts)
}

fn refusal(verdict: &Verdict) -> (StatusCode, serde_json::Value) {
    match verdict {
        Verdict::Refuse { refusal, method, path, .. } => {
            let response = refusal.render(HOST, 443, Some((method, path)));
            (response.status(), serde_json::from_slice(response.body()).unwrap())
        }
        Verdict::Forward { .. } => panic!("expected a refusal, got {verdict:?}"),
    }
}

#[test]
fn read_only_forwards_get_and_refuses_delete() {
    let e = engine("        access: read-only\n");
    let (v, parts) = run(&e, "GET", "/repos/x?page=2", &[]);
    assert!(v.forwards(), "{v:?}");
    assert_eq!(parts.uri, "/repos/x?page=2");
    let (status, body) = refusal(&run(&e, "DELETE", "/repos/x", &[]).0);
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!((body["error"].as_str(), body["policy"].as_str()), (Some("policy_denied"), Some("api")));
    assert_eq!((body["method"].as_str(), body["path"].as_str()), (Some("DELETE"), Some("/repos/x")));
}

#[test]
fn the_canonical_path_is_judged_and_forwarded() {
    let e = engine("        rules:\n          - allow: {method: GET, path: /admin}\n");
    let (v, parts) = run(&e, "GET", "/a/../%61dmin", &[]);
    assert!(v.forwards(), "{v:?}");
    assert_eq!(parts.uri, "/admin", "upstream gets what policy judged");
    let (status, body) = refusal(&run(&e, "GET", "/admin/x/..%2F..", &[]).0);
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
    assert!(body["reason"].as_str().unwrap().contains("%2F"));
    let (status, _) = refusal(&run(&e, "GET", "/../admin", &[]).0);
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[test]
fn absolute_form_requests_become_origin_form() {
    let e = engine("        access: read-only\n");
    let (v, parts) = run(&e, "GET", "http://api.example.com/x/./y?q=1", &[]);
    assert!(v.forwards());
    assert_eq!(parts.uri, "/x/y?q=1");
}

#[test]
fn encoded_slash_is_kept_when_the_endpoint_allows_it() {
    let e = engine("        access: read-only\n        allow_encoded_slash: true\n");
    let (v, parts) = run(&e, "GET", "/pkgs/a%2fb", &[]);
    assert!(v.forwards(), "{v:?}");
    assert_eq!(parts.uri, "/pkgs/a%2Fb");
}

#[test]
fn query_matchers_and_deny_rules() {
    let e = engine(
        "        rules:\n          - allow: {method: GET, path: /search, query: {q: \"abc*\"}}\n          - allow: {method: \"*\", path: \"/**\"}\n        deny_rules:\n          - {method: DELETE, path: \"/admin/**\"}\n",
    );
    assert!(run(&e, "GET", "/search?q=abcdef", &[]).0.forwards());
    assert!(run(&e, "DELETE", "/other", &[]).0.forwards());
    let (status, body) = refusal(&run(&e, "DELETE", "/admin/users/1", &[]).0);
    assert_eq!(status, StatusCode::FORBIDDEN, "a deny rule beats the allow-all");
    assert_eq!(body["path"], "/admin/users/1");

    let e = engine("        rules:\n          - allow: {method: GET, path: /search, query: {q: \"abc*\"}}\n");
    assert!(run(&e, "GET", "/search?q=abc%20x", &[]).0.forwards());
    assert_eq!(refusal(&run(&e, "GET", "/search?q=xyz", &[]).0).0, StatusCode::FORBIDDEN);
    assert_eq!(refusal(&run(&e, "GET", "/search", &[]).0).0, StatusCode::FORBIDDEN);
}

#[test]
fn audit_mode_forwards_a_would_be_denial_without_its_credentials() {
    let e = engine("        access: read-only\n        enforcement: audit\n");
    let bearer = format!("Bearer {}", placeholder("TOKEN"));
    let target = format!("/x/../y?k={}", placeholder("TOKEN"));
    let (v, parts) = run(&e, "POST", &target, &[("authorization", bearer.clone())]);
    match v {
        Verdict::Forward { decision, credentials } => {
            assert!(!decision.allow, "reported as a would-be denial");
            assert!(credentials.keys().is_empty(), "nothing swapped into a would-be denial");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(parts.uri, format!("/y?k={}", placeholder("TOKEN")).as_str(), "placeholders stay literal");
    assert_eq!(parts.headers["authorization"], bearer.as_str());
    let (v, parts) = run(&e, "GET", "/y", &[("authorization", bearer)]);
    assert!(
        matches!(&v, Verdict::Forward { decision, credentials } if decision.allow && credentials.keys() == ["TOKEN"])
    );
    assert_eq!(parts.headers["authorization"], format!("Bearer {SECRET}").as_str(), "an allowed request in audit mode");
}

#[test]
fn a_key_goes_only_where_it_is_bound() {
    let e = engine("        access: full\n");
    let (status, body) = refusal(&run(&e, "GET", "/x", &[("x-api-key", placeholder("LOOSE"))]).0);
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("credential_not_bound")));
    let reason = body["reason"].as_str().unwrap();
    assert!(
        reason.contains("`LOOSE` may not be sent to api.example.com:443") && reason.contains("no endpoint binding"),
        "{reason}"
    );

    let (v, parts) = run(&e, "GET", "/v1/models", &[("x-api-key", placeholder("SCOPED"))]);
    assert!(v.forwards() && parts.headers["x-api-key"] == "scoped-SECRET-9", "{v:?}");
    for path in ["/v2/models", "/v10", "/", "/x/../v2"] {
        let (v, parts) = run(&e, "GET", path, &[("x-api-key", placeholder("SCOPED"))]);
        let (status, body) = refusal(&v);
        assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("credential_not_bound")), "{path}");
        assert!(body["reason"].as_str().unwrap().contains("api.example.com:443 (path /v1) only"), "{body}");
        assert!(!format!("{parts:?}{body}").contains("scoped-SECRET"), "{path}");
    }
    let (v, _) = run(&e, "GET", "/v1/../v2/x", &[("x-api-key", placeholder("SCOPED"))]);
    assert!(!v.forwards(), "the binding is judged on the canonical path");

    let mut parts = request("GET", "/x", &[("x-api-key", placeholder("TOKEN"))]);
    let e8443 = PolicyEngine::new(
        policy::parse_yaml(&format!("version: 1\nnetwork_policies:\n  a:\n    endpoints:\n      - {{host: {HOST}, port: 8443, protocol: rest, access: full}}\n"), "t").unwrap(),
        &RegoRules::builtin(),
        1,
    )
    .unwrap();
    parts.headers.insert("host", format!("{HOST}:8443").parse().unwrap());
    let (status, body) = refusal(&judge(&e8443, HOST, 8443, &secrets(), &mut parts));
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("credential_not_bound")), "another port");
}

#[test]
fn no_credential_goes_into_plain_http() {
    let e = engine("        access: full\n");
    for headers in [vec![("x-api-key", placeholder("TOKEN"))], vec![]] {
        let target = if headers.is_empty() {
            format!("http://{HOST}/x?k={}", placeholder("TOKEN"))
        } else {
            format!("http://{HOST}/x")
        };
        let (v, parts) = run(&e, "GET", &target, &headers);
        let (status, body) = refusal(&v);
        assert_eq!(
            (status, body["error"].as_str()),
            (StatusCode::FORBIDDEN, Some("credential_unresolved")),
            "{target}"
        );
        assert!(body["reason"].as_str().unwrap().contains("never sent over plain http://"), "{body}");
        assert!(!format!("{parts:?}").contains(SECRET));
    }
}

#[test]
fn credentials_are_swapped_only_in_forwarded_requests() {
    let e = engine("        access: read-only\n");
    let basic = STANDARD.encode(format!("x-access-token:{}", placeholder("TOKEN")));
    let headers = [
        ("authorization", format!("Bearer {}", placeholder("TOKEN"))),
        ("x-api-key", placeholder("TOKEN")),
        ("proxy-authorization", format!("Basic {basic}")),
    ];
    let target = format!("/x?key={}", placeholder("TOKEN"));
    let (v, parts) = run(&e, "GET", &target, &headers);
    assert!(matches!(&v, Verdict::Forward { credentials, .. } if credentials.keys() == ["TOKEN"]), "{v:?}");
    assert_eq!(parts.headers["authorization"], format!("Bearer {SECRET}").as_str());
    assert_eq!(parts.headers["x-api-key"], SECRET);
    let decoded = STANDARD
        .decode(parts.headers["proxy-authorization"].to_str().unwrap().strip_prefix("Basic ").unwrap())
        .unwrap();
    assert_eq!(decoded, format!("x-access-token:{SECRET}").as_bytes());
    assert_eq!(parts.uri, format!("/x?key={SECRET}").as_str());

    let (v, parts) = run(&e, "DELETE", &target, &headers);
    let (status, body) = refusal(&v);
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("policy_denied")));
    assert!(!format!("{parts:?}{body}").contains(SECRET), "a denied request never gets the secret");
}

#[test]
fn an_unresolved_placeholder_is_refused_naming_the_key() {
    let e = engine("        access: read-only\n");
    let (v, _) = run(&e, "GET", "/x", &[("authorization", format!("Bearer {}", placeholder("MISSING_KEY")))]);
    let (status, body) = refusal(&v);
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("credential_unresolved")));
    assert!(body["reason"].as_str().unwrap().contains("MISSING_KEY"));
    let text = body.to_string();
    assert!(!text.contains(SECRET));
}

#[test]
fn non_origin_targets_are_bad_requests() {
    let e = engine("        access: full\n");
    let (status, body) = refusal(&run(&e, "OPTIONS", "*", &[]).0);
    assert_eq!((status, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("bad_request")));
}

#[test]
fn a_request_naming_another_host_is_refused() {
    let e = engine("        access: full\n");
    let mut parts = request("GET", "/x", &[]);
    parts.headers.insert("host", "other.example.com".parse().unwrap());
    let verdict = judge(&e, HOST, 443, &secrets(), &mut parts);
    let (status, body) = refusal(&verdict);
    assert_eq!((status, body["error"].as_str()), (StatusCode::FORBIDDEN, Some("policy_denied")));
    assert!(body["reason"].as_str().unwrap().contains("other.example.com"), "{body}");

    let mut parts = Request::builder().uri("http://other.example.com/x").body(()).unwrap().into_parts().0;
    let verdict = judge(&e, HOST, 443, &secrets(), &mut parts);
    assert_eq!(refusal(&verdict).0, StatusCode::FORBIDDEN, "an absolute URI naming another host");
    let (v, _) = run(&e, "GET", "http://other.example.com/x", &[]);
    assert_eq!(refusal(&v).0, StatusCode::BAD_REQUEST, "... with a Host naming the judged one: ambiguous");

    for same in ["API.example.com", "api.example.com:443", "api.example.com."] {
        let mut parts = request("GET", "/x", &[]);
        parts.headers.insert("host", same.parse().unwrap());
        assert!(judge(&e, HOST, 443, &secrets(), &mut parts).forwards(), "{same}");
        assert_eq!(parts.headers["host"], HOST, "the Host forwarded is the judged one");
    }
    let mut parts = request("GET", "/x", &[]);
    parts.headers.insert("host", "api.example.com:8443".parse().unwrap());
    assert!(!judge(&e, HOST, 443, &secrets(), &mut parts).forwards(), "another port");

    let mut parts = Request::builder().uri("/x").body(()).unwrap().into_parts().0;
    assert!(judge(&e, HOST, 443, &secrets(), &mut parts).forwards());
    assert_eq!(parts.headers["host"], HOST, "a missing Host is set to the judged host");
}

/// xorshift64*: deterministic generated requests, no extra crate.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

#[test]
fn property_what_is_forwarded_is_what_was_judged_and_refusals_carry_no_secret() {
    use openshell_sandbox::policy::L7Request;
    let e = engine(
        "        rules:\n          - allow: {method: GET, path: \"/repos/**\"}\n          - allow: {method: POST, path: /repos/*/issues}\n        deny_rules:\n          - {method: \"*\", path: \"/repos/secret/**\"}\n",
    );
    let segments = ["repos", "secret", "issues", "x", ".", "..", "%2e%2E", "%2F", "%41", "a%20b", "", "~"];
    let mut rng = Rng(0x0005_EED0_F1A7);
    let (mut forwarded, mut refused) = (0, 0);
    for _ in 0..3_000 {
        let start = rng.pick(&["/repos", "/repos", "/repos", ""]);
        let rest: String = (0..1 + rng.below(4)).map(|_| format!("/{}", rng.pick(&segments))).collect();
        let path = format!("{start}{rest}");
        let query = rng.pick(&["", "?q=1", "?key=openshell:resolve:env:TOKEN", "", "?key=openshell:resolve:env:NOPE"]);
        let method = rng.pick(&["GET", "GET", "POST", "DELETE"]);
        let auth = rng.pick(&["", "Bearer openshell:resolve:env:TOKEN", "openshell:resolve:env:TOKEN", "Bearer plain"]);
        let headers: Vec<(&str, String)> =
            if auth.is_empty() { vec![] } else { vec![("authorization", auth.to_owned())] };
        let target = format!("{path}{query}");
        let (verdict, parts) = run(&e, method, &target, &headers);
        let seen = format!("{:?} {}", parts.headers, parts.uri);
        match verdict {
            Verdict::Forward { decision, .. } => {
                forwarded += 1;
                assert!(decision.allow, "enforce mode forwards only allowed requests: {method} {target}");
                let path = parts.uri.path();
                let again = openshell_sandbox::proxy::l7::path::canonicalize(
                    &parts.uri.to_string(),
                    openshell_sandbox::proxy::l7::path::EncodedSlash::Refuse,
                )
                .unwrap();
                assert_eq!(again.path, path, "the forwarded path is canonical: {target}");
                let query = parts.uri.query().unwrap_or("");
                let rejudged = e.request(HOST, 443, &L7Request { method, path, query });
                assert!(rejudged.allow, "the forwarded request is itself allowed: {method} {target} -> {path}");
                assert!(!seen.contains("openshell:resolve"), "no placeholder forwarded: {seen}");
            }
            Verdict::Refuse { refusal, method, path, .. } => {
                refused += 1;
                let response = refusal.render(HOST, 443, Some((&method, &path)));
                let body = String::from_utf8_lossy(response.body()).into_owned();
                assert!(!seen.contains(SECRET) && !body.contains(SECRET), "{method} {target}: {seen} {body}");
            }
        }
    }
    assert!(forwarded > 200 && refused > 200, "forwarded {forwarded}, refused {refused}");
}
