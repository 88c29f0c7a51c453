//! The gateway's policy and the equivalent YAML give the same `Policy`, and the same
//! errors (without line numbers).

use std::collections::HashMap;

use super::*;
use crate::gateway::proto::sandbox::{
    L7Rule, LandlockPolicy, NetworkBinary, NetworkCredentialBinding, NetworkEndpoint, NetworkPolicyRule, ProcessPolicy,
};

fn s(v: &str) -> String {
    v.to_owned()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| s(x)).collect()
}

fn full_message() -> SandboxPolicy {
    let query = HashMap::from([
        (s("page"), L7QueryMatcher { glob: s("[0-9]*"), any: vec![] }),
        (s("state"), L7QueryMatcher { glob: String::new(), any: strings(&["open", "closed"]) }),
    ]);
    let github = NetworkPolicyRule {
        name: s("GitHub API"),
        endpoints: vec![
            NetworkEndpoint {
                host: s("api.github.com"),
                port: 443,
                protocol: s("rest"),
                enforcement: s("audit"),
                rules: vec![
                    L7Rule { allow: Some(L7Allow { method: s("GET"), path: s("/repos/**"), query }) },
                    L7Rule { allow: Some(L7Allow { method: s("post"), path: s("/graphql"), query: HashMap::new() }) },
                ],
                deny_rules: vec![L7DenyRule { method: s("DELETE"), path: String::new(), query: HashMap::new() }],
                allow_encoded_slash: true,
                path: s("/repos/"),
                request_body_credential_rewrite: true,
                credential_binding: Some(NetworkCredentialBinding { provider: s("github") }),
                ..Default::default()
            },
            NetworkEndpoint {
                host: s("*.githubusercontent.com"),
                ports: vec![443, 80],
                protocol: s("rest"),
                tls: s("terminate"),
                access: s("read-only"),
                ..Default::default()
            },
        ],
        binaries: vec![NetworkBinary { path: s("/usr/bin/git") }, NetworkBinary { path: s("/usr/bin/curl") }],
    };
    let internal = NetworkPolicyRule {
        name: String::new(),
        endpoints: vec![NetworkEndpoint {
            host: s("db.internal"),
            port: 5432,
            tls: s("skip"),
            allowed_ips: strings(&["10.0.0.0/8", "192.168.1.7"]),
            ..Default::default()
        }],
        binaries: vec![],
    };
    SandboxPolicy {
        version: 1,
        filesystem: Some(FilesystemPolicy {
            include_workdir: true,
            read_only: strings(&["/usr", "/etc"]),
            read_write: strings(&["/sandbox", "/tmp"]),
        }),
        landlock: Some(LandlockPolicy { compatibility: s("hard_requirement") }),
        process: Some(ProcessPolicy { run_as_user: s("sandbox"), run_as_group: s("1000") }),
        network_policies: HashMap::from([(s("github"), github), (s("internal"), internal)]),
    }
}

const FULL_YAML: &str = r#"
version: 1
filesystem_policy:
  include_workdir: true
  read_only: [/usr, /etc]
  read_write: [/sandbox, /tmp]
landlock:
  compatibility: hard_requirement
process:
  run_as_user: sandbox
  run_as_group: "1000"
network_policies:
  github:
    name: GitHub API
    endpoints:
      - host: api.github.com
        port: 443
        protocol: rest
        enforcement: audit
        rules:
          - allow:
              method: GET
              path: /repos/**
              query:
                page: "[0-9]*"
                state: { any: [open, closed] }
          - allow: { method: post, path: /graphql }
        deny_rules:
          - method: DELETE
        allow_encoded_slash: true
        path: /repos/
        request_body_credential_rewrite: true
        credential_binding: { provider: github }
      - host: "*.githubusercontent.com"
        ports: [443, 80]
        protocol: rest
        tls: terminate
        access: read-only
    binaries:
      - path: /usr/bin/git
      - path: /usr/bin/curl
  internal:
    endpoints:
      - host: db.internal
        port: 5432
        tls: skip
        allowed_ips: [10.0.0.0/8, 192.168.1.7]
"#;

#[test]
fn a_full_policy_equals_its_yaml() {
    let from_gateway = to_policy(&full_message()).unwrap_or_else(|e| panic!("{e}"));
    let from_yaml = crate::policy::parse_yaml(FULL_YAML, "full.yaml").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(from_gateway, from_yaml);
    assert_eq!(from_gateway.ignored_binaries, 2);
    assert_eq!(from_gateway.network_policies["internal"].name, "internal", "an empty name defaults to the key");
}

#[test]
fn unset_proto3_values_take_the_yaml_defaults() {
    let message = SandboxPolicy {
        version: 0,
        filesystem: Some(FilesystemPolicy::default()),
        landlock: Some(LandlockPolicy::default()),
        process: Some(ProcessPolicy::default()),
        network_policies: HashMap::from([(
            s("p"),
            NetworkPolicyRule {
                endpoints: vec![NetworkEndpoint { host: s("example.com"), port: 443, ..Default::default() }],
                ..Default::default()
            },
        )]),
    };
    let yaml = "network_policies:\n  p:\n    endpoints:\n      - { host: example.com, port: 443 }\n";
    assert_eq!(to_policy(&message).unwrap(), crate::policy::parse_yaml(yaml, "min.yaml").unwrap());
}

/// Each issue's text without the `(line N)` part.
fn without_lines(e: PolicyError) -> Vec<String> {
    let PolicyError::Invalid { issues, .. } = e else { panic!("expected invalid, got {e}") };
    issues.into_iter().map(|i| crate::policy::Issue { line: None, ..i }.to_string()).collect()
}

#[test]
fn an_invalid_policy_has_the_yaml_messages_without_lines() {
    let mut message = full_message();
    message.version = 2;
    message.process = Some(ProcessPolicy { run_as_user: s("root"), run_as_group: String::new() });
    let github = message.network_policies.get_mut("github").unwrap();
    github.endpoints[0].port = 70000;
    github.endpoints[0].rules[0].allow.as_mut().unwrap().path = s("repos");
    github.endpoints[1].access = s("everything");
    github.endpoints[1].ports.push(0);
    message.network_policies.get_mut("internal").unwrap().endpoints[0].allowed_ips.push(s("127.0.0.0/8"));
    message.network_policies.insert(s("empty"), NetworkPolicyRule::default());

    let yaml = FULL_YAML
        .replace("version: 1", "version: 2")
        .replace("run_as_user: sandbox\n  run_as_group: \"1000\"", "run_as_user: root")
        .replace(
            "port: 443\n        protocol: rest\n        enforcement",
            "port: 70000\n        protocol: rest\n        enforcement",
        )
        .replace("path: /repos/**", "path: repos")
        .replace("access: read-only", "access: everything")
        .replace("ports: [443, 80]", "ports: [443, 80, 0]")
        .replace("192.168.1.7]", "192.168.1.7, 127.0.0.0/8]")
        .replace("network_policies:\n", "network_policies:\n  empty: {}\n");
    let err = to_policy(&message).unwrap_err();
    assert!(err.to_string().starts_with("invalid policy from the gateway ("), "{err}");
    let from_gateway = without_lines(err);
    let from_yaml = without_lines(crate::policy::parse_yaml(&yaml, "bad.yaml").unwrap_err());
    assert_eq!(from_gateway, from_yaml);
    assert!(from_gateway.len() >= 7, "{from_gateway:#?}");
    assert!(
        from_gateway.contains(
            &"network_policies.github.endpoints[0].port: `70000` is not a port; use a number from 1 to 65535"
                .to_owned()
        ),
        "{from_gateway:#?}"
    );
    assert!(
        from_gateway.iter().any(|e| e.starts_with("network_policies.empty: `endpoints` is missing")),
        "{from_gateway:#?}"
    );
}

#[test]
fn strings_are_never_yaml_null_or_booleans() {
    let message = SandboxPolicy {
        network_policies: HashMap::from([(
            s("p"),
            NetworkPolicyRule {
                endpoints: vec![NetworkEndpoint { host: s("null"), port: 443, ..Default::default() }],
                ..Default::default()
            },
        )]),
        ..Default::default()
    };
    let policy = to_policy(&message).unwrap();
    assert_eq!(policy.network_policies["p"].endpoints[0].host.to_string(), "null");
}

#[test]
fn a_path_without_a_credential_binding_is_named() {
    let mut message = full_message();
    let e = &mut message.network_policies.get_mut("github").unwrap().endpoints[1];
    e.path = s("/v1");
    let notes = unapplied_fields(&message);
    assert_eq!(notes.len(), 1, "{notes:#?}");
    assert!(
        notes[0].starts_with("network_policies.github.endpoints[1].path only scopes a credential binding"),
        "{notes:#?}"
    );
    let policy = to_policy(&message).unwrap();
    assert_eq!(policy.network_policies["github"].endpoints[1].path.as_ref().unwrap().as_str(), "/v1");
    assert!(unapplied_fields(&full_message()).is_empty());
}

#[test]
fn credential_fields_reach_the_policy() {
    let policy = to_policy(&full_message()).unwrap();
    let e = &policy.network_policies["github"].endpoints[0];
    assert_eq!(e.credential_binding.as_deref(), Some("github"));
    assert_eq!(e.path.as_ref().map(|p| p.as_str()), Some("/repos"));
    assert!(e.request_body_credential_rewrite);
    let mut message = full_message();
    let e = &mut message.network_policies.get_mut("github").unwrap().endpoints[0];
    e.credential_binding = Some(NetworkCredentialBinding { provider: s("bad name") });
    e.path = s("relative");
    let text = to_policy(&message).unwrap_err().to_string();
    assert!(text.contains("credential_binding.provider: `bad name` is not a provider name"), "{text}");
    assert!(text.contains("path: path `relative` does not start with `/`"), "{text}");
}
