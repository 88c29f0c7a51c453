//! Policy YAML loading and validation. Properties: it never panics; every refusal names
//! where (a YAML path or a line within the text) and the source; a valid policy written
//! back in the input schema (by `write_policy` below) loads again to the same `Policy`,
//! and writing that one gives the same text (normalisation is a fixed point).

#![no_main]

use std::fmt::Write;

use libfuzzer_sys::fuzz_target;
use openshell_sandbox::policy::model::{Endpoint, L7Rule};
use openshell_sandbox::policy::{Policy, PolicyError, parse_yaml};

const SOURCE: &str = "fuzz-policy.yaml";

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    match parse_yaml(text, SOURCE) {
        Ok(policy) => round_trip(&policy),
        Err(e) => check_refusal(text, &e),
    }
});

fn check_refusal(text: &str, e: &PolicyError) {
    let PolicyError::Invalid { source_name, issues } = e else { panic!("unexpected error kind: {e}") };
    assert_eq!(source_name, SOURCE);
    assert!(!issues.is_empty(), "a refusal lists at least one issue");
    assert!(e.to_string().contains(SOURCE), "the message names the source: {e}");
    // YAML line breaks: `\r\n`, `\n` or a bare `\r` (str::lines does not know the last).
    let lines = text.replace("\r\n", "\n").matches(['\n', '\r']).count() + 1;
    for issue in issues {
        let empty_document = text.trim().is_empty();
        assert!(
            !issue.path.is_empty() || issue.line.is_some() || empty_document,
            "an issue with neither a path nor a line: {issue:?}\n{text:?}"
        );
        if let Some(line) = issue.line {
            assert!(line >= 1 && line <= lines, "line {line} outside the text ({lines} lines): {issue:?}");
        }
        assert!(!issue.message.is_empty(), "an issue without a message: {issue:?}");
    }
}

fn round_trip(policy: &Policy) {
    let written = write_policy(policy);
    let again = match parse_yaml(&written, "written") {
        Ok(p) => p,
        Err(e) => panic!("a valid policy, written back, does not load: {e}\n{written}"),
    };
    let mut expected = policy.clone();
    expected.ignored_binaries = 0; // `binaries` entries are counted, not kept
    assert_eq!(again, expected, "written back:\n{written}");
    assert_eq!(write_policy(&again), written, "normalisation is not a fixed point");
}

/// A YAML double-quoted scalar; everything outside printable ASCII is escaped.
fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            ' '..='~' => out.push(c),
            c if (c as u32) <= 0xFFFF => write!(out, "\\u{:04X}", c as u32).unwrap(),
            c => write!(out, "\\U{:08X}", c as u32).unwrap(),
        }
    }
    out.push('"');
    out
}

fn list(items: impl IntoIterator<Item = String>) -> String {
    format!("[{}]", items.into_iter().collect::<Vec<_>>().join(", "))
}

fn map(entries: impl IntoIterator<Item = (String, String)>) -> String {
    let entries: Vec<String> = entries.into_iter().map(|(k, v)| format!("{}: {v}", q(&k))).collect();
    format!("{{{}}}", entries.join(", "))
}

/// The policy in the input schema, in YAML flow style.
fn write_policy(p: &Policy) -> String {
    let fs = &p.filesystem_policy;
    let paths = |v: &[std::path::PathBuf]| list(v.iter().map(|p| q(p.to_str().expect("policy paths are UTF-8"))));
    let mut process = Vec::new();
    if let Some(u) = &p.process.run_as_user {
        process.push(("run_as_user".to_owned(), q(u)));
    }
    if let Some(g) = &p.process.run_as_group {
        process.push(("run_as_group".to_owned(), q(g)));
    }
    let policies = p.network_policies.iter().map(|(key, np)| {
        let endpoints = list(np.endpoints.iter().map(endpoint));
        (key.clone(), map([("name".to_owned(), q(&np.name)), ("endpoints".to_owned(), endpoints)]))
    });
    map([
        ("version".to_owned(), p.version.to_string()),
        (
            "filesystem_policy".to_owned(),
            map([
                ("include_workdir".to_owned(), fs.include_workdir.to_string()),
                ("read_only".to_owned(), paths(&fs.read_only)),
                ("read_write".to_owned(), paths(&fs.read_write)),
            ]),
        ),
        ("landlock".to_owned(), map([("compatibility".to_owned(), q(p.landlock.compatibility.as_str()))])),
        ("process".to_owned(), map(process)),
        ("network_policies".to_owned(), map(policies)),
    ])
}

fn endpoint(e: &Endpoint) -> String {
    let mut m = vec![
        ("host".to_owned(), q(e.host.as_str())),
        ("ports".to_owned(), list(e.ports.iter().map(u16::to_string))),
        ("enforcement".to_owned(), q(e.enforcement.as_str())),
        ("allowed_ips".to_owned(), list(e.allowed_ips.iter().map(|n| q(&n.to_string())))),
        ("allow_encoded_slash".to_owned(), e.allow_encoded_slash.to_string()),
        ("request_body_credential_rewrite".to_owned(), e.request_body_credential_rewrite.to_string()),
    ];
    if e.is_raw_tcp() {
        m.push(("protocol".to_owned(), q("tcp")));
    } else {
        let tls = match e.tls {
            openshell_sandbox::policy::model::TlsMode::Terminate => "terminate",
            openshell_sandbox::policy::model::TlsMode::Skip => "skip",
        };
        m.push(("tls".to_owned(), q(tls)));
    }
    if let Some(provider) = &e.credential_binding {
        m.push(("credential_binding".to_owned(), map([("provider".to_owned(), q(provider))])));
    }
    if let Some(path) = &e.path {
        m.push(("path".to_owned(), q(path.as_str())));
    }
    if let Some(protocol) = e.protocol.filter(|p| p.inspects()) {
        m.push(("protocol".to_owned(), q(protocol.as_str())));
        match e.access {
            Some(access) => m.push(("access".to_owned(), q(access.as_str()))),
            None => m.push(("rules".to_owned(), list(e.rules.iter().map(|r| map([("allow".to_owned(), rule(r))]))))),
        }
        m.push(("deny_rules".to_owned(), list(e.deny_rules.iter().map(rule))));
    } else {
        assert!(e.access.is_none() && e.rules.is_empty() && e.deny_rules.is_empty(), "L7 rules without a protocol");
    }
    map(m)
}

fn rule(r: &L7Rule) -> String {
    let mut m = Vec::new();
    match r.methods.as_slice() {
        [] => {}
        [one] => m.push(("method".to_owned(), q(one))),
        many => panic!("a written rule has at most one method: {many:?}"),
    }
    m.push(("path".to_owned(), q(&r.path)));
    let query =
        r.query.iter().map(|(k, globs)| (k.clone(), map([("any".to_owned(), list(globs.iter().map(|g| q(g))))])));
    m.push(("query".to_owned(), map(query)));
    map(m)
}
