//! Validation of one `endpoints[]` entry and its L7 rules.

use std::collections::BTreeMap;

use globset::GlobBuilder;
use ipnet::IpNet;
use marked_yaml::Node;
use marked_yaml::types::MarkedMappingNode;

use super::{Cx, credential, get};
use crate::policy::address;
use crate::policy::host::HostPattern;
use crate::policy::model::{Access, Endpoint, Enforcement, L7Rule, Protocol, TlsMode};

const ENDPOINT_KEYS: &[&str] = &[
    "host",
    "port",
    "ports",
    "protocol",
    "tls",
    "enforcement",
    "access",
    "rules",
    "deny_rules",
    "allowed_ips",
    "allow_encoded_slash",
    "credential_binding",
    "path",
    "request_body_credential_rewrite",
];

pub(super) fn endpoint(cx: &mut Cx, path: &str, node: &Node) -> Option<Endpoint> {
    let map = cx.mapping(path, node)?;
    cx.known_keys(path, map, ENDPOINT_KEYS);
    let before = cx.issues.len();

    let host = match get(map, "host") {
        None => {
            cx.issue_at(
                path,
                map.span(),
                "`host` is missing; give a DNS name, an IP address or a glob like `*.example.com`",
            );
            None
        }
        Some(n) => cx.scalar(&format!("{path}.host"), n).and_then(|s| match HostPattern::parse(s.as_str()) {
            Ok(h) => Some(h),
            Err(e) => {
                cx.issue(&format!("{path}.host"), n, e);
                None
            }
        }),
    };
    let ports = ports(cx, path, map);
    let protocol = get(map, "protocol").and_then(|n| {
        let kinds = [("rest", Protocol::Rest), ("websocket", Protocol::Websocket), ("tcp", Protocol::Tcp)];
        cx.one_of(&format!("{path}.protocol"), n, &kinds)
    });
    let tls = get(map, "tls")
        .and_then(|n| {
            cx.one_of(&format!("{path}.tls"), n, &[("skip", TlsMode::Skip), ("terminate", TlsMode::Terminate)])
        })
        .unwrap_or_default();
    let enforcement = get(map, "enforcement")
        .and_then(|n| {
            cx.one_of(
                &format!("{path}.enforcement"),
                n,
                &[("enforce", Enforcement::Enforce), ("audit", Enforcement::Audit)],
            )
        })
        .unwrap_or_default();
    let access = get(map, "access").and_then(|n| {
        cx.one_of(
            &format!("{path}.access"),
            n,
            &[("read-only", Access::ReadOnly), ("read-write", Access::ReadWrite), ("full", Access::Full)],
        )
    });
    let rules = rule_list(cx, path, map, "rules", true);
    let deny_rules = rule_list(cx, path, map, "deny_rules", false);
    let allowed_ips = allowed_ips(cx, path, map);
    let allow_encoded_slash = get(map, "allow_encoded_slash")
        .and_then(|n| cx.bool(&format!("{path}.allow_encoded_slash"), n))
        .unwrap_or(false);
    let credentials = credential::fields(cx, path, map);

    // Cross-field rules: each says what to change.
    let has_rules = get(map, "rules").is_some();
    if access.is_some() && has_rules {
        cx.issue_at(
            path,
            map.span(),
            "`access` and `rules` cannot be combined; use `access` for a preset or `rules` for your own list",
        );
    }
    if let (Some(Protocol::Tcp), Some(n)) = (protocol, get(map, "tls")) {
        cx.issue(
            &format!("{path}.tls"),
            n,
            "`tls` applies to `rest` and `websocket` endpoints; a `tcp` endpoint relays bytes and never intercepts",
        );
    }
    if !protocol.is_some_and(Protocol::inspects) {
        for key in ["access", "rules", "deny_rules"] {
            if let Some(n) = get(map, key) {
                cx.issue(
                    &format!("{path}.{key}"),
                    n,
                    format!("`{key}` is only applied to inspected requests; use `protocol: rest` (or `websocket`) on this endpoint"),
                );
            }
        }
    } else if get(map, "access").is_none() && !has_rules {
        cx.issue_at(
            path,
            map.span(),
            "an endpoint with a `protocol` needs `access` (read-only, read-write, full) or `rules` saying which requests are allowed",
        );
    }

    if cx.issues.len() > before {
        return None;
    }
    let rules = match access {
        Some(a) => vec![L7Rule::any_path(a.methods())],
        None => rules,
    };
    Some(Endpoint {
        host: host?,
        ports: ports?,
        protocol,
        tls,
        enforcement,
        access,
        rules,
        deny_rules,
        allowed_ips,
        allow_encoded_slash,
        credential_binding: credentials.binding,
        path: credentials.path,
        request_body_credential_rewrite: credentials.body_rewrite,
    })
}

fn ports(cx: &mut Cx, path: &str, map: &MarkedMappingNode) -> Option<Vec<u16>> {
    let mut ports = Vec::new();
    match (get(map, "port"), get(map, "ports")) {
        (Some(_), Some(n)) => {
            cx.issue(&format!("{path}.ports"), n, "use either `port` (one) or `ports` (a list), not both");
            return None;
        }
        (None, None) => {
            cx.issue_at(path, map.span(), "`port` or `ports` is missing; say which destination ports are allowed");
            return None;
        }
        (Some(n), None) => ports.push(port(cx, &format!("{path}.port"), n)?),
        (None, Some(n)) => {
            let list_path = format!("{path}.ports");
            let items = cx.sequence(&list_path, n)?;
            if items.is_empty() {
                cx.issue(&list_path, n, "`ports` is empty; list at least one port");
            }
            for (i, n) in items.iter().enumerate() {
                ports.push(port(cx, &format!("{list_path}[{i}]"), n)?);
            }
        }
    }
    ports.sort_unstable();
    ports.dedup();
    Some(ports)
}

fn port(cx: &mut Cx, path: &str, node: &Node) -> Option<u16> {
    let s = cx.scalar(path, node)?;
    match s.as_str().parse::<u16>() {
        Ok(p) if p > 0 => Some(p),
        _ => {
            cx.issue(path, node, format!("`{}` is not a port; use a number from 1 to 65535", s.as_str()));
            None
        }
    }
}

fn rule_list(cx: &mut Cx, path: &str, map: &MarkedMappingNode, key: &str, allow: bool) -> Vec<L7Rule> {
    let list_path = format!("{path}.{key}");
    let Some(items) = get(map, key).and_then(|n| cx.sequence(&list_path, n)) else { return Vec::new() };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{list_path}[{i}]");
        let body = if allow {
            // rules[] entries wrap their matcher in `allow:`.
            let Some(m) = cx.mapping(&item_path, item) else { continue };
            cx.known_keys(&item_path, m, &["allow"]);
            match get(m, "allow") {
                Some(n) => (format!("{item_path}.allow"), n),
                None => {
                    cx.issue(&item_path, item, "a rule is `- allow: {method, path, query}`");
                    continue;
                }
            }
        } else {
            (item_path, item)
        };
        if let Some(rule) = rule(cx, &body.0, body.1) {
            out.push(rule);
        }
    }
    out
}

fn rule(cx: &mut Cx, path: &str, node: &Node) -> Option<L7Rule> {
    let map = cx.mapping(path, node)?;
    cx.known_keys(path, map, &["method", "path", "query"]);
    let mut methods = Vec::new();
    if let Some(n) = get(map, "method") {
        let m = cx.scalar(&format!("{path}.method"), n)?.as_str().trim().to_ascii_uppercase();
        if m.is_empty() || !m.bytes().all(|b| b == b'*' || is_tchar(b)) || (m.contains('*') && m != "*") {
            cx.issue(
                &format!("{path}.method"),
                n,
                format!("`{m}` is not an HTTP method; write one like GET or POST, or `*` for any"),
            );
            return None;
        }
        if m != "*" {
            methods.push(m);
        }
    }
    let path_glob = match get(map, "path") {
        None => "**".to_owned(),
        Some(n) => {
            let p = cx.scalar(&format!("{path}.path"), n)?.as_str().trim().to_owned();
            let p = if p == "*" { "**".to_owned() } else { p };
            if !(p == "**" || p.starts_with('/')) || compile_glob(&p, true).is_err() {
                cx.issue(
                    &format!("{path}.path"),
                    n,
                    format!(
                        "`{p}` is not a path glob; start with `/` and use `*` within a segment and `**` across segments"
                    ),
                );
                return None;
            }
            p
        }
    };
    let query = match get(map, "query") {
        None => BTreeMap::new(),
        Some(n) => query(cx, &format!("{path}.query"), n)?,
    };
    Some(L7Rule { methods, path: path_glob, query })
}

fn query(cx: &mut Cx, path: &str, node: &Node) -> Option<BTreeMap<String, Vec<String>>> {
    let map = cx.mapping(path, node)?;
    let mut out = BTreeMap::new();
    for (key, value) in map.iter() {
        let at = format!("{path}.{}", key.as_str());
        let globs = match value {
            Node::Scalar(s) => vec![s.as_str().to_owned()],
            Node::Mapping(m) => {
                cx.known_keys(&at, m, &["glob", "any"]);
                let mut globs = Vec::new();
                if let Some(g) = get(m, "glob").and_then(|n| cx.scalar(&format!("{at}.glob"), n)) {
                    globs.push(g.as_str().to_owned());
                }
                if let Some(items) = get(m, "any").and_then(|n| cx.sequence(&format!("{at}.any"), n)) {
                    for (i, item) in items.iter().enumerate() {
                        if let Some(s) = cx.scalar(&format!("{at}.any[{i}]"), item) {
                            globs.push(s.as_str().to_owned());
                        }
                    }
                }
                if globs.is_empty() {
                    cx.issue(&at, value, "a query matcher needs `glob: PATTERN` or `any: [PATTERN, ...]`");
                }
                globs
            }
            Node::Sequence(_) => {
                cx.issue(&at, value, "a query matcher is a glob string, `{glob: PATTERN}` or `{any: [PATTERN, ...]}`");
                Vec::new()
            }
        };
        for g in &globs {
            if compile_glob(g, false).is_err() {
                cx.issue(&at, value, format!("`{g}` is not a valid glob"));
            }
        }
        out.insert(key.as_str().to_owned(), globs);
    }
    Some(out)
}

/// The globs are matched by the Rego `glob.match` builtin (globset with literal separators);
/// compiling them here turns a bad pattern into a load error instead of a failed decision.
fn compile_glob(pattern: &str, path_separators: bool) -> Result<(), globset::Error> {
    let p = if path_separators { pattern.to_owned() } else { pattern.replace('/', "\0") };
    GlobBuilder::new(&p).literal_separator(true).build().map(|_| ())
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn allowed_ips(cx: &mut Cx, path: &str, map: &MarkedMappingNode) -> Vec<IpNet> {
    let list_path = format!("{path}.allowed_ips");
    let Some(items) = get(map, "allowed_ips").and_then(|n| cx.sequence(&list_path, n)) else { return Vec::new() };
    let mut out = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let at = format!("{list_path}[{i}]");
        let Some(s) = cx.scalar(&at, item) else { continue };
        let text = s.as_str().trim();
        let parsed = text.parse::<IpNet>().or_else(|_| text.parse::<std::net::IpAddr>().map(IpNet::from));
        match parsed {
            Err(_) => cx.issue(&at, item, format!("`{text}` is not an address or CIDR range like 10.0.0.0/8")),
            Ok(net) => match address::forbidden_overlap(&net) {
                Some(why) => cx.issue(&at, item, format!("`{text}` {why}; list private ranges only")),
                None => out.push(net.trunc()),
            },
        }
    }
    out
}
