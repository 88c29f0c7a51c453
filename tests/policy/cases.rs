//! Policy cases through the real loader, validator and Rego engine: allow and deny, glob
//! edge cases, ports, presets, query matchers, deny precedence, audit, and invalid files
//! with the exact messages users see.

use openshell_sandbox::policy::model::Enforcement;
use openshell_sandbox::policy::{self, L7Decision, L7Request, PolicyEngine, PolicyError, RegoRules};

fn engine(yaml: &str) -> PolicyEngine {
    let policy = policy::parse_yaml(yaml, "test.yaml").unwrap_or_else(|e| panic!("{e}"));
    PolicyEngine::new(policy, &RegoRules::builtin(), 1).unwrap()
}

fn one(host: &str, rest: &str) -> PolicyEngine {
    engine(&format!("version: 1\nnetwork_policies:\n  p:\n    endpoints:\n      - host: \"{host}\"\n{rest}"))
}

fn allows(e: &PolicyEngine, host: &str, port: u16) -> bool {
    e.network(host, port).allow
}

fn l7(e: &PolicyEngine, host: &str, method: &str, target: &str) -> L7Decision {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    e.request(host, 443, &L7Request { method, path, query })
}

fn errors(yaml: &str) -> Vec<String> {
    match policy::parse_yaml(yaml, "bad.yaml") {
        Err(PolicyError::Invalid { issues, .. }) => issues.iter().map(ToString::to_string).collect(),
        other => panic!("expected invalid, got {other:?}"),
    }
}

fn error(yaml: &str) -> String {
    let all = errors(yaml);
    assert_eq!(all.len(), 1, "{all:#?}");
    all[0].clone()
}

const PORT_443: &str = "        port: 443\n";

// ------------------------------------------------------------------ L4: hosts and ports

#[test]
fn exact_host_on_its_port_is_allowed() {
    let e = one("api.example.com", PORT_443);
    let d = e.network("api.example.com", 443);
    assert!(d.allow);
    assert_eq!(d.policy.as_deref(), Some("p"));
    assert_eq!(d.reason, "allowed by p.endpoints[0]");
}

#[test]
fn exact_host_on_another_port_is_denied() {
    let d = one("api.example.com", PORT_443).network("api.example.com", 80);
    assert!(!d.allow);
    assert_eq!(d.reason, "no network policy allows this host and port");
}

#[test]
fn hosts_match_case_insensitively() {
    let e = one("API.Example.com", PORT_443);
    assert!(allows(&e, "api.EXAMPLE.com", 443));
}

#[test]
fn a_trailing_dot_is_the_same_host() {
    let e = one("api.example.com", PORT_443);
    assert!(allows(&e, "api.example.com.", 443));
}

#[test]
fn an_unlisted_host_is_denied() {
    assert!(!allows(&one("api.example.com", PORT_443), "api.example.org", 443));
}

#[test]
fn a_suffix_is_not_a_match() {
    let e = one("example.com", PORT_443);
    assert!(!allows(&e, "evil-example.com", 443));
    assert!(!allows(&e, "example.com.evil.net", 443));
}

#[test]
fn single_star_matches_exactly_one_label() {
    let e = one("*.example.com", PORT_443);
    assert!(allows(&e, "api.example.com", 443));
    assert!(!allows(&e, "a.b.example.com", 443));
}

#[test]
fn single_star_does_not_match_the_bare_domain() {
    assert!(!allows(&one("*.example.com", PORT_443), "example.com", 443));
}

#[test]
fn single_star_respects_label_boundaries() {
    let e = one("*.example.com", PORT_443);
    assert!(!allows(&e, "xexample.com", 443));
    assert!(!allows(&e, "api.example.com.evil.net", 443));
}

#[test]
fn double_star_matches_one_or_more_leading_labels() {
    let e = one("**.example.com", PORT_443);
    assert!(allows(&e, "a.example.com", 443));
    assert!(allows(&e, "a.b.c.example.com", 443));
}

#[test]
fn double_star_does_not_match_the_bare_domain() {
    let e = one("**.example.com", PORT_443);
    assert!(!allows(&e, "example.com", 443));
    assert!(!allows(&e, "notexample.com", 443));
}

#[test]
fn star_inside_a_label() {
    let e = one("*-api.example.com", PORT_443);
    assert!(allows(&e, "eu-api.example.com", 443));
    assert!(!allows(&e, "api.example.com", 443));
    assert!(!allows(&e, "eu-api.x.example.com", 443));
}

#[test]
fn glob_hosts_are_case_insensitive() {
    assert!(allows(&one("*.Example.COM", PORT_443), "API.example.com", 443));
}

#[test]
fn every_port_of_a_list_is_allowed_and_no_other() {
    let e = one("api.example.com", "        ports: [80, 443, 8443]\n");
    for port in [80, 443, 8443] {
        assert!(allows(&e, "api.example.com", port), "{port}");
    }
    assert!(!allows(&e, "api.example.com", 8080));
}

#[test]
fn ipv6_literals_match_in_any_spelling() {
    let e = one("2001:db8::1", PORT_443);
    assert!(allows(&e, "[2001:db8:0::1]", 443));
}

#[test]
fn the_first_policy_in_key_order_is_reported() {
    let e = engine(
        "network_policies:\n  zed:\n    endpoints: [{host: a.example.com, port: 443}]\n  alpha:\n    endpoints: [{host: \"*.example.com\", port: 443}]\n",
    );
    let d = e.network("a.example.com", 443);
    assert_eq!(d.policy.as_deref(), Some("alpha"));
    assert_eq!(d.endpoints.len(), 2);
}

#[test]
fn cached_and_uncached_decisions_agree() {
    let e = one("*.example.com", PORT_443);
    for (host, port) in [("a.example.com", 443), ("a.example.com", 80), ("example.com", 443)] {
        let cached = e.network(host, port);
        assert_eq!(*cached, e.evaluate_network(host, port));
        assert_eq!(*e.network(host, port), *cached, "a second lookup hits the cache");
    }
}

#[test]
fn an_invalid_destination_is_denied_without_evaluation() {
    let d = one("*.example.com", PORT_443).network("a b.example.com", 443);
    assert!(!d.allow);
    assert!(d.reason.contains("not a valid host name"), "{}", d.reason);
}

// ------------------------------------------------------------------ L7: presets and rules

fn rest(rest: &str) -> PolicyEngine {
    one("api.example.com", &format!("        port: 443\n        protocol: rest\n{rest}"))
}

#[test]
fn read_only_allows_get_head_options() {
    let e = rest("        access: read-only\n");
    for m in ["GET", "HEAD", "OPTIONS"] {
        let d = l7(&e, "api.example.com", m, "/anything/at/all");
        assert!(d.allow, "{m}: {d:?}");
        assert_eq!(d.rule.as_deref(), Some("p.endpoints[0].access(read-only)"));
    }
}

#[test]
fn read_only_denies_writes() {
    let e = rest("        access: read-only\n");
    for m in ["POST", "PUT", "PATCH", "DELETE"] {
        let d = l7(&e, "api.example.com", m, "/x");
        assert!(!d.allow, "{m}");
        assert_eq!(d.reason, format!("no rule of p allows {m} /x"));
    }
}

#[test]
fn read_write_adds_post_put_patch_but_not_delete() {
    let e = rest("        access: read-write\n");
    for m in ["POST", "PUT", "PATCH", "GET"] {
        assert!(l7(&e, "api.example.com", m, "/x").allow, "{m}");
    }
    assert!(!l7(&e, "api.example.com", "DELETE", "/x").allow);
}

#[test]
fn full_allows_any_method() {
    let e = rest("        access: full\n");
    for m in ["DELETE", "PROPFIND", "GET"] {
        assert!(l7(&e, "api.example.com", m, "/x").allow, "{m}");
    }
}

#[test]
fn a_single_star_path_stays_within_one_segment() {
    let e = rest("        rules:\n          - allow: {method: GET, path: \"/repos/*\"}\n");
    assert!(l7(&e, "api.example.com", "GET", "/repos/x").allow);
    assert!(!l7(&e, "api.example.com", "GET", "/repos/x/y").allow);
    assert!(!l7(&e, "api.example.com", "GET", "/repos").allow);
}

#[test]
fn a_double_star_path_crosses_segments() {
    let e = rest("        rules:\n          - allow: {method: GET, path: \"/repos/**\"}\n");
    assert!(l7(&e, "api.example.com", "GET", "/repos/x/y/z").allow);
    assert!(!l7(&e, "api.example.com", "GET", "/other/x").allow);
}

#[test]
fn rule_methods_are_case_insensitive_in_the_file() {
    let e = rest("        rules:\n          - allow: {method: get, path: /x}\n");
    assert!(l7(&e, "api.example.com", "GET", "/x").allow);
    assert!(!l7(&e, "api.example.com", "POST", "/x").allow);
}

#[test]
fn a_query_glob_must_match() {
    let e = rest("        rules:\n          - allow: {method: GET, path: /s, query: {q: \"abc*\"}}\n");
    assert!(l7(&e, "api.example.com", "GET", "/s?q=abcdef").allow);
    assert!(!l7(&e, "api.example.com", "GET", "/s?q=xyz").allow);
}

#[test]
fn a_query_any_list_accepts_each_listed_value() {
    let e = rest("        rules:\n          - allow: {method: GET, path: /s, query: {project: {any: [OPS, DEV]}}}\n");
    assert!(l7(&e, "api.example.com", "GET", "/s?project=OPS").allow);
    assert!(l7(&e, "api.example.com", "GET", "/s?project=DEV").allow);
    assert!(!l7(&e, "api.example.com", "GET", "/s?project=HR").allow);
}

#[test]
fn a_missing_query_parameter_does_not_match() {
    let e = rest("        rules:\n          - allow: {method: GET, path: /s, query: {q: {glob: \"*\"}}}\n");
    assert!(!l7(&e, "api.example.com", "GET", "/s").allow);
    assert!(!l7(&e, "api.example.com", "GET", "/s?other=1").allow);
}

#[test]
fn every_value_of_a_repeated_parameter_must_match() {
    let e = rest("        rules:\n          - allow: {method: GET, path: /s, query: {q: ok}}\n");
    assert!(l7(&e, "api.example.com", "GET", "/s?q=ok&q=ok").allow);
    assert!(!l7(&e, "api.example.com", "GET", "/s?q=ok&q=evil").allow);
}

#[test]
fn query_values_are_decoded_before_matching() {
    let e = rest("        rules:\n          - allow: {method: GET, path: /s, query: {q: \"a b\"}}\n");
    assert!(l7(&e, "api.example.com", "GET", "/s?q=a%20b").allow);
    assert!(l7(&e, "api.example.com", "GET", "/s?q=a+b").allow);
}

#[test]
fn a_deny_rule_beats_an_allow_on_the_same_endpoint() {
    let e = rest("        access: full\n        deny_rules:\n          - {method: DELETE, path: \"/admin/**\"}\n");
    let d = l7(&e, "api.example.com", "DELETE", "/admin/users/1");
    assert!(!d.allow);
    assert_eq!(d.rule.as_deref(), Some("p.endpoints[0].deny_rules[0]"));
    assert_eq!(d.reason, "denied by p.endpoints[0].deny_rules[0]");
    assert!(l7(&e, "api.example.com", "DELETE", "/users/1").allow);
}

#[test]
fn a_deny_rule_beats_an_allow_from_another_policy() {
    let e = engine(
        "network_policies:\n  open:\n    endpoints: [{host: api.example.com, port: 443, protocol: rest, access: full}]\n  \
         guard:\n    endpoints: [{host: \"*.example.com\", port: 443, protocol: rest, access: read-only, deny_rules: [{path: \"/secret/**\"}]}]\n",
    );
    let d = l7(&e, "api.example.com", "GET", "/secret/x");
    assert!(!d.allow);
    assert_eq!(d.policy.as_deref(), Some("guard"));
    assert!(l7(&e, "api.example.com", "DELETE", "/public").allow);
}

#[test]
fn a_deny_rule_with_a_query_matcher() {
    let e = rest(
        "        access: read-only\n        deny_rules:\n          - {method: GET, path: /refs, query: {service: git-receive-pack}}\n",
    );
    assert!(!l7(&e, "api.example.com", "GET", "/refs?service=git-receive-pack").allow);
    assert!(l7(&e, "api.example.com", "GET", "/refs?service=git-upload-pack").allow);
}

fn denied_by_a_deny_rule(e: &PolicyEngine, host: &str, method: &str, target: &str) -> bool {
    let d = l7(e, host, method, target);
    !d.allow && d.rule.as_deref().is_some_and(|r| r.contains(".deny_rules["))
}

#[test]
fn the_default_policy_denies_push_discovery_in_every_spelling_of_the_query() {
    let e = PolicyEngine::new(policy::load_file("policies/default.yaml".as_ref()).unwrap(), &RegoRules::builtin(), 1)
        .unwrap();
    for target in [
        "/o/r.git/info/refs?service=git-receive-pack",
        "/o/r.git/info/refs?service=git-receive-pack&service=x",
        "/o/r.git/info/refs?service=x&service=git-receive-pack",
        "/o/r.git/info/refs?service=git-upload-pack&service=git-receive-pack",
        "/o/r.git/info/refs?SERVICE=git-receive-pack",
        "/o/r.git/info/refs?Service=git-upload-pack&sErViCe=git-receive-pack",
        "/o/r.git/info/refs?x=1;service=git-receive-pack",
        "/o/r.git/info/refs?service=git-upload-pack;service=git-receive-pack",
        "/o/r.git/info/refs?%73ervice=git-receive-pack",
        "/o/r.git/info/refs?service=git%2Dreceive%2Dpack",
        "/o/r.git/info/refs?service=git%252Dreceive-pack",
        "/o/r.git/info/refs?service=x&%53ERVICE=git%2dreceive-pack",
        "/o/r.git/info/refs/?service=git-receive-pack",
        "/O/R.GIT/INFO/REFS?service=git-receive-pack",
    ] {
        assert!(
            denied_by_a_deny_rule(&e, "github.com", "GET", target),
            "{target}: {:?}",
            l7(&e, "github.com", "GET", target)
        );
    }
    for target in [
        "/o/r.git/info/refs?service=git-upload-pack",
        "/o/r.git/info/refs?service=git-upload-pack&service=git-upload-pack",
        "/o/r.git/info/refs?service=git-upload-pack&x=git-receive-pack",
        "/o/r.git/info/refs?services=git-receive-pack",
        "/o/r.git/info/refs",
    ] {
        assert!(l7(&e, "github.com", "GET", target).allow, "{target}");
    }
}

#[test]
fn a_deny_query_matcher_meets_any_value_of_any_reading() {
    let e = rest(
        "        rules:\n          - allow: {path: \"/**\"}\n        deny_rules:\n          - {path: /s, query: {debug: \"*\"}}\n          - {path: /find, query: {q: \"drop table*\"}}\n          - {path: /find, query: {q: \"a+b\"}}\n",
    );
    let host = "api.example.com";
    for target in [
        "/s?debug",
        "/s?debug=",
        "/s?Debug=1",
        "/s?x=1;DEBUG",
        "/find?q=drop+table",
        "/find?q=drop%20table",
        "/find?q=drop%2520table",
        "/find?q=ok&q=drop+tables",
        "/find?q=a%2Bb",
        "/find?q=a+b",
    ] {
        assert!(denied_by_a_deny_rule(&e, host, "GET", target), "{target}: {:?}", l7(&e, host, "GET", target));
    }
    for target in ["/s", "/s?q=debug", "/s?debugger=1", "/find?q=drop", "/find?q=a", "/find?drop+table=q"] {
        assert!(l7(&e, host, "GET", target).allow, "{target}");
    }
}

#[test]
fn allow_query_matchers_read_the_query_strictly() {
    let e = rest("        rules:\n          - allow: {method: GET, path: /s, query: {q: ok}}\n");
    let host = "api.example.com";
    assert!(l7(&e, host, "GET", "/s?q=ok").allow);
    assert!(l7(&e, host, "GET", "/s?q=o%6B").allow);
    for target in ["/s?q=ok&q=evil", "/s?Q=ok", "/s?q=ok;q=evil", "/s?q=ok%3Bq%3Devil", "/s?q=ok+", "/s?q"] {
        assert!(!l7(&e, host, "GET", target).allow, "{target}");
    }
    assert!(!l7(&e, host, "get", "/s?q=ok").allow, "methods are compared as sent by allow rules");
}

#[test]
fn a_deny_path_covers_its_root_a_trailing_slash_and_any_case() {
    let e = rest(
        "        rules:\n          - allow: {path: \"/**\"}\n        deny_rules:\n          - {path: \"/admin/**\"}\n          - {path: /private}\n          - {method: DELETE, path: \"/Repos/*/hooks/\"}\n",
    );
    let host = "api.example.com";
    for (method, target) in [
        ("GET", "/admin"),
        ("GET", "/admin/"),
        ("GET", "/admin/users/1"),
        ("GET", "/ADMIN"),
        ("GET", "/Admin/Users/"),
        ("GET", "/private"),
        ("GET", "/private/"),
        ("POST", "/PRIVATE"),
        ("DELETE", "/repos/x/hooks"),
        ("DELETE", "/REPOS/x/HOOKS/"),
        ("delete", "/repos/x/hooks/"),
        ("Delete", "/repos/x/hooks"),
    ] {
        assert!(
            denied_by_a_deny_rule(&e, host, method, target),
            "{method} {target}: {:?}",
            l7(&e, host, method, target)
        );
    }
    for (method, target) in [
        ("GET", "/administrator"),
        ("GET", "/public/admin"),
        ("GET", "/private/x"),
        ("GET", "/privately"),
        ("GET", "/repos/x/hooks"),
        ("DELETE", "/repos/x/hooks/1"),
        ("GET", "/"),
    ] {
        assert!(l7(&e, host, method, target).allow, "{method} {target}");
    }
    // Allow rules keep their exact path: `/x` does not allow `/x/` or `/X`.
    let e = rest("        rules:\n          - allow: {method: GET, path: /public}\n");
    assert!(l7(&e, host, "GET", "/public").allow);
    assert!(!l7(&e, host, "GET", "/public/").allow && !l7(&e, host, "GET", "/PUBLIC").allow);
}

#[test]
fn enforce_is_the_default() {
    let d = l7(&rest("        access: read-only\n"), "api.example.com", "POST", "/x");
    assert_eq!(d.enforcement, Enforcement::Enforce);
}

#[test]
fn audit_mode_is_reported_on_a_denial() {
    let d = l7(&rest("        access: read-only\n        enforcement: audit\n"), "api.example.com", "POST", "/x");
    assert!(!d.allow);
    assert_eq!(d.enforcement, Enforcement::Audit);
}

#[test]
fn one_enforcing_endpoint_keeps_denials_enforced() {
    let e = engine(
        "network_policies:\n  a:\n    endpoints: [{host: api.example.com, port: 443, protocol: rest, access: read-only, enforcement: audit}]\n  \
         b:\n    endpoints: [{host: api.example.com, port: 443, protocol: rest, access: read-only}]\n",
    );
    assert_eq!(l7(&e, "api.example.com", "POST", "/x").enforcement, Enforcement::Enforce);
}

#[test]
fn an_l4_endpoint_allows_every_request_on_its_connections() {
    let e = one("api.example.com", PORT_443);
    let d = l7(&e, "api.example.com", "DELETE", "/anything");
    assert!(d.allow);
    assert_eq!(d.rule.as_deref(), Some("p.endpoints[0]"));
}

#[test]
fn a_request_to_a_denied_host_is_denied_with_the_l4_reason() {
    let d = l7(&rest("        access: full\n"), "other.example.com", "GET", "/");
    assert!(!d.allow);
    assert_eq!(d.reason, "no network policy allows this host and port");
}

// ------------------------------------------------------------------ invalid files

const HEAD: &str = "version: 1\nnetwork_policies:\n  p:\n    endpoints:\n";

#[test]
fn a_lone_star_host_is_refused() {
    assert_eq!(
        error(&format!("{HEAD}      - host: \"*\"\n        port: 443\n")),
        "network_policies.p.endpoints[0].host (line 5): host `*` alone would allow every host; name a domain, for example `*.example.com` or `**.example.com`"
    );
}

#[test]
fn a_lone_double_star_host_is_refused() {
    assert!(
        error(&format!("{HEAD}      - host: \"**\"\n        port: 443\n"))
            .contains("host `**` alone would allow every host")
    );
}

#[test]
fn a_wildcard_with_two_labels_is_refused() {
    assert_eq!(
        error(&format!("{HEAD}      - host: \"*.com\"\n        port: 443\n")),
        "network_policies.p.endpoints[0].host (line 5): host `*.com` puts a wildcard in a name of two labels or fewer, which would allow a whole top-level domain; use at least three labels, like `*.example.com`"
    );
}

#[test]
fn a_double_star_inside_the_name_is_refused() {
    assert!(
        error(&format!("{HEAD}      - host: \"api.**.example.com\"\n        port: 443\n"))
            .contains("`**` may only stand alone as the first label")
    );
}

#[test]
fn an_unknown_key_is_named_with_its_line_and_a_suggestion() {
    assert_eq!(
        error(&format!("{HEAD}      - host: a.example.com\n        port: 443\n        protocl: rest\n")),
        "network_policies.p.endpoints[0].protocl (line 7): unknown key `protocl` (did you mean `protocol`?); allowed here: host, port, ports, protocol, tls, enforcement, access, rules, deny_rules, allowed_ips, allow_encoded_slash, credential_binding, path, request_body_credential_rewrite"
    );
}

#[test]
fn an_unknown_top_level_key_is_named() {
    assert_eq!(
        error("version: 1\nnetwork_policy: {}\n"),
        "network_policy (line 2): unknown key `network_policy` (did you mean `network_policies`?); allowed here: version, filesystem_policy, landlock, process, network_policies"
    );
}

#[test]
fn a_missing_host_is_reported() {
    assert_eq!(
        error(&format!("{HEAD}      - port: 443\n")),
        "network_policies.p.endpoints[0] (line 5): `host` is missing; give a DNS name, an IP address or a glob like `*.example.com`"
    );
}

#[test]
fn a_missing_port_is_reported() {
    assert!(
        error(&format!("{HEAD}      - host: a.example.com\n"))
            .ends_with("`port` or `ports` is missing; say which destination ports are allowed")
    );
}

#[test]
fn port_and_ports_together_are_refused() {
    assert!(
        error(&format!("{HEAD}      - host: a.example.com\n        port: 443\n        ports: [80]\n"))
            .contains("use either `port` (one) or `ports` (a list), not both")
    );
}

#[test]
fn an_out_of_range_port_is_refused() {
    assert_eq!(
        error(&format!("{HEAD}      - host: a.example.com\n        ports: [443, 70000]\n")),
        "network_policies.p.endpoints[0].ports[1] (line 6): `70000` is not a port; use a number from 1 to 65535"
    );
}

#[test]
fn access_with_rules_is_refused() {
    let yaml = format!(
        "{HEAD}      - host: a.example.com\n        port: 443\n        protocol: rest\n        access: full\n        rules: [{{allow: {{method: GET}}}}]\n"
    );
    assert!(error(&yaml).contains("`access` and `rules` cannot be combined"));
}

#[test]
fn rules_without_a_protocol_are_refused() {
    let yaml = format!("{HEAD}      - host: a.example.com\n        port: 443\n        access: read-only\n");
    assert_eq!(
        error(&yaml),
        "network_policies.p.endpoints[0].access (line 7): `access` is only applied to inspected requests; use `protocol: rest` (or `websocket`) on this endpoint"
    );
}

#[test]
fn a_tcp_endpoint_is_l4_and_takes_no_rules_or_tls() {
    let e = one("db.example.com", "        port: 5432\n        protocol: tcp\n");
    assert!(allows(&e, "db.example.com", 5432) && !allows(&e, "db.example.com", 5433));
    let decision = e.network("db.example.com", 5432);
    let ep = e.matched(&decision).next().unwrap();
    assert!(ep.is_raw_tcp() && !ep.inspects() && !ep.intercepts_tls());
    let any = e.request("db.example.com", 5432, &L7Request { method: "DELETE", path: "/x", query: "" });
    assert!(any.allow, "a tcp endpoint, like an L4 one, allows every request on its connections: {any:?}");
    for (key, value) in
        [("access", "read-only"), ("rules", "[{allow: {method: GET}}]"), ("deny_rules", "[{method: GET}]")]
    {
        let yaml = format!(
            "{HEAD}      - host: a.example.com\n        port: 5432\n        protocol: tcp\n        {key}: {value}\n"
        );
        assert!(error(&yaml).contains(&format!("`{key}` is only applied to inspected requests")), "{key}");
    }
    let yaml =
        format!("{HEAD}      - host: a.example.com\n        port: 5432\n        protocol: tcp\n        tls: skip\n");
    assert_eq!(
        error(&yaml),
        "network_policies.p.endpoints[0].tls (line 8): `tls` applies to `rest` and `websocket` endpoints; a `tcp` endpoint relays bytes and never intercepts"
    );
    let yaml = format!("{HEAD}      - host: a.example.com\n        port: 5432\n        protocol: udp\n");
    assert!(error(&yaml).contains("use one of: rest, websocket, tcp"), "{}", error(&yaml));
}

#[test]
fn a_protocol_without_access_or_rules_is_refused() {
    let yaml = format!("{HEAD}      - host: a.example.com\n        port: 443\n        protocol: rest\n");
    assert!(error(&yaml).contains("needs `access` (read-only, read-write, full) or `rules`"));
}

#[test]
fn an_unknown_preset_lists_the_presets() {
    let yaml = format!(
        "{HEAD}      - host: a.example.com\n        port: 443\n        protocol: rest\n        access: readonly\n"
    );
    assert_eq!(
        error(&yaml),
        "network_policies.p.endpoints[0].access (line 8): `readonly` is not allowed here; use one of: read-only, read-write, full"
    );
}

#[test]
fn allowed_ips_may_not_cover_loopback_link_local_or_unspecified() {
    let yaml = format!(
        "{HEAD}      - host: a.example.com\n        port: 443\n        allowed_ips: [127.0.0.1, 169.254.169.254/32, 0.0.0.0, 10.0.0.0/8, nope]\n"
    );
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(errs[0].contains("`127.0.0.1` covers loopback addresses"), "{}", errs[0]);
    assert!(errs[1].contains("covers link-local addresses"), "{}", errs[1]);
    assert!(errs[2].contains("covers unspecified addresses"), "{}", errs[2]);
    assert!(errs[3].contains("`nope` is not an address or CIDR range"), "{}", errs[3]);
}

#[test]
fn allowed_ips_may_not_cover_reserved_ranges_or_ipv6_that_carries_ipv4() {
    let yaml = format!(
        "{HEAD}      - host: a.example.com\n        port: 443\n        allowed_ips: [198.18.0.0/15, \"2002::/16\", \"fec0::/10\", \"::10.0.0.0/104\", \"fd00::/8\", \"64:ff9b:1::/48\"]\n"
    );
    let errs = errors(&yaml);
    assert_eq!(errs.len(), 4, "{errs:#?}");
    assert!(
        errs[0].contains("`198.18.0.0/15` covers benchmarking addresses, which are never reachable"),
        "{}",
        errs[0]
    );
    assert!(
        errs[1].contains("`2002::/16` covers 6to4 addresses") && errs[1].contains("write the IPv4 range"),
        "{}",
        errs[1]
    );
    assert!(errs[2].contains("covers site-local (deprecated) addresses"), "{}", errs[2]);
    assert!(errs[3].contains("covers IPv4-compatible addresses"), "{}", errs[3]);
}

#[test]
fn root_is_refused_as_the_workload_user() {
    assert_eq!(
        error("process:\n  run_as_user: root\n"),
        "process.run_as_user (line 2): children never run as root; name an unprivileged user such as `sandbox`"
    );
    assert!(error("process:\n  run_as_group: 0\n").contains("never run as root"));
}

#[test]
fn a_relative_landlock_path_is_refused() {
    assert_eq!(
        error("filesystem_policy:\n  read_only: [usr]\n"),
        "filesystem_policy.read_only[0] (line 2): `usr` is not an absolute path; Landlock paths start with `/`"
    );
}

#[test]
fn a_bad_path_glob_is_refused() {
    let yaml = format!(
        "{HEAD}      - host: a.example.com\n        port: 443\n        protocol: rest\n        rules: [{{allow: {{path: \"repos/[\"}}}}]\n"
    );
    assert!(error(&yaml).contains("`repos/[` is not a path glob; start with `/`"));
}

#[test]
fn an_unsupported_version_is_refused() {
    assert_eq!(error("version: 2\n"), "version (line 1): unsupported version `2`; the only version is 1");
}

#[test]
fn every_error_of_a_file_is_reported() {
    let yaml = "version: 3\nlandlock: {compatibility: strict}\nnetwork_policies:\n  a:\n    endpoints:\n      - host: \"*\"\n        port: 0\n      - {host: ok.example.com}\n  b:\n    endpoints: []\n";
    let errs = errors(yaml);
    assert_eq!(errs.len(), 6, "{errs:#?}");
    let lines: Vec<&str> = errs.iter().map(|e| e.split(':').next().unwrap()).collect();
    assert_eq!(
        lines,
        [
            "version (line 1)",
            "landlock.compatibility (line 2)",
            "network_policies.a.endpoints[0].host (line 6)",
            "network_policies.a.endpoints[0].port (line 7)",
            "network_policies.a.endpoints[1] (line 8)",
            "network_policies.b.endpoints (line 10)",
        ]
    );
}

#[test]
fn malformed_yaml_names_the_line() {
    let errs = errors("version: 1\nnetwork_policies:\n  a: [unclosed\n");
    assert_eq!(errs.len(), 1);
    assert!(errs[0].starts_with("(document) (line"), "{}", errs[0]);
    assert!(errs[0].contains("not valid YAML"), "{}", errs[0]);
}

#[test]
fn a_duplicate_key_is_refused() {
    let errs = errors("version: 1\nversion: 1\n");
    assert_eq!(errs, ["(document) (line 2): key `version` appears twice in the same mapping"]);
}

#[test]
fn binaries_are_accepted_and_counted() {
    let policy = policy::parse_yaml(
        "network_policies:\n  a:\n    endpoints: [{host: a.example.com, port: 443}]\n    binaries: [{path: /usr/bin/curl}, {path: /usr/bin/git}]\n",
        "t",
    )
    .unwrap();
    assert_eq!(policy.ignored_binaries, 2);
    assert_eq!(
        policy::ignored_binaries_note(&policy).unwrap(),
        "2 `binaries` entries are ignored: binary identity does not exist in the sidecar topology"
    );
}

#[test]
fn an_empty_file_is_refused() {
    assert_eq!(errors("  \n"), ["(document): the policy is empty; it needs at least `version: 1`"]);
}

#[test]
fn replacement_rules_that_do_not_compile_are_refused() {
    let policy = policy::parse_yaml("version: 1\n", "t").unwrap();
    let rules = RegoRules { name: "broken.rego".into(), text: "package openshell.sandbox\nnetwork := {".into() };
    let err = PolicyEngine::new(policy.clone(), &rules, 1).err().unwrap().to_string();
    assert!(err.starts_with("Rego rules broken.rego are not usable"), "{err}");
    let rules =
        RegoRules { name: "empty.rego".into(), text: "package openshell.sandbox\nimport rego.v1\nx := 1\n".into() };
    assert!(PolicyEngine::new(policy, &rules, 1).is_err(), "rules without `network` must be refused");
}

#[test]
fn every_shipped_policy_loads() {
    let mut seen = 0;
    for entry in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/policies")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let policy = policy::load_file(&path).unwrap_or_else(|e| panic!("{e}"));
            PolicyEngine::new(policy, &RegoRules::builtin(), 1).unwrap();
            seen += 1;
        }
    }
    assert!(seen >= 4, "default.yaml and at least three examples, found {seen}");
}

#[test]
fn the_default_policy_reads_github_but_never_pushes() {
    let e = PolicyEngine::new(
        policy::load_file(std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/policies/default.yaml"))).unwrap(),
        &RegoRules::builtin(),
        1,
    )
    .unwrap();
    assert!(l7(&e, "github.com", "GET", "/o/r.git/info/refs?service=git-upload-pack").allow);
    assert!(l7(&e, "github.com", "POST", "/o/r.git/git-upload-pack").allow);
    assert!(!l7(&e, "github.com", "GET", "/o/r.git/info/refs?service=git-receive-pack").allow);
    assert!(!l7(&e, "github.com", "POST", "/o/r.git/git-receive-pack").allow);
    assert!(!l7(&e, "api.github.com", "POST", "/repos/o/r/issues").allow);
    assert!(l7(&e, "api.anthropic.com", "POST", "/v1/messages").allow);
    assert!(!allows(&e, "example.com", 443));
}
