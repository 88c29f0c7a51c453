//! Turns a line-marked YAML tree into a [`Policy`], collecting every problem with its
//! YAML path and line instead of stopping at the first. The gateway's protobuf policy is
//! converted into the same tree, so both sources pass exactly the same checks.

mod credential;
mod endpoint;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode};
use marked_yaml::{Node, Span};

use super::model::{Compatibility, FilesystemPolicy, LandlockPolicy, NetworkPolicy, Policy, ProcessPolicy};

/// One problem in a policy document.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Issue {
    /// YAML path of the offending value, like `network_policies.github.endpoints[0].host`.
    pub path: String,
    /// 1-based line in the source file, when the source has lines.
    pub line: Option<usize>,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() { "(document)" } else { &self.path };
        match self.line {
            Some(line) => write!(f, "{path} (line {line}): {}", self.message),
            None => write!(f, "{path}: {}", self.message),
        }
    }
}

/// Validates a whole document. `Err` holds every issue found, in document order.
pub fn validate(root: &Node) -> Result<Policy, Vec<Issue>> {
    let mut cx = Cx::default();
    let policy = document(&mut cx, root);
    match policy {
        Some(p) if cx.issues.is_empty() => Ok(p),
        _ => Err(cx.issues),
    }
}

const TOP_KEYS: &[&str] = &["version", "filesystem_policy", "landlock", "process", "network_policies"];

fn document(cx: &mut Cx, root: &Node) -> Option<Policy> {
    let map = cx.mapping("", root)?;
    cx.known_keys("", map, TOP_KEYS);
    let version = match get(map, "version") {
        None => 1,
        Some(node) => match cx.scalar("version", node).map(|s| s.as_str()) {
            Some("1") => 1,
            Some(other) => {
                cx.issue("version", node, format!("unsupported version `{other}`; the only version is 1"));
                1
            }
            None => 1,
        },
    };
    let filesystem_policy = get(map, "filesystem_policy").map(|n| filesystem(cx, n)).unwrap_or_default();
    let landlock = get(map, "landlock").map(|n| landlock(cx, n)).unwrap_or_default();
    let process = get(map, "process").map(|n| process(cx, n)).unwrap_or_default();
    let mut ignored_binaries = 0;
    let mut network_policies = BTreeMap::new();
    if let Some(node) = get(map, "network_policies")
        && let Some(policies) = cx.mapping("network_policies", node)
    {
        for (key, value) in policies.iter() {
            let path = format!("network_policies.{}", key.as_str());
            if !valid_key(key.as_str()) {
                cx.issue_at(&path, key.span(), "a policy key holds letters, digits, `_`, `-` and `.`");
            }
            if let Some((policy, binaries)) = network_policy(cx, &path, key.as_str(), value) {
                ignored_binaries += binaries;
                network_policies.insert(key.as_str().to_owned(), policy);
            }
        }
    }
    Some(Policy { version, filesystem_policy, landlock, process, network_policies, ignored_binaries })
}

fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

fn filesystem(cx: &mut Cx, node: &Node) -> FilesystemPolicy {
    let path = "filesystem_policy";
    let Some(map) = cx.mapping(path, node) else { return FilesystemPolicy::default() };
    cx.known_keys(path, map, &["include_workdir", "read_only", "read_write"]);
    let include_workdir = get(map, "include_workdir").and_then(|n| cx.bool("filesystem_policy.include_workdir", n));
    let mut paths = |key: &str| -> Vec<PathBuf> {
        let list_path = format!("{path}.{key}");
        let Some(items) = get(map, key).and_then(|n| cx.sequence(&list_path, n)) else { return Vec::new() };
        let mut out = Vec::new();
        for (i, item) in items.iter().enumerate() {
            let item_path = format!("{list_path}[{i}]");
            let Some(s) = cx.scalar(&item_path, item) else { continue };
            if !s.as_str().starts_with('/') || s.as_str().contains('\0') {
                cx.issue(
                    &item_path,
                    item,
                    format!("`{}` is not an absolute path; Landlock paths start with `/`", s.as_str()),
                );
                continue;
            }
            out.push(PathBuf::from(s.as_str()));
        }
        out
    };
    let read_only = paths("read_only");
    let read_write = paths("read_write");
    FilesystemPolicy { include_workdir: include_workdir.unwrap_or(false), read_only, read_write }
}

fn landlock(cx: &mut Cx, node: &Node) -> LandlockPolicy {
    let Some(map) = cx.mapping("landlock", node) else { return LandlockPolicy::default() };
    cx.known_keys("landlock", map, &["compatibility"]);
    let compatibility = get(map, "compatibility")
        .and_then(|n| {
            cx.one_of(
                "landlock.compatibility",
                n,
                &[("best_effort", Compatibility::BestEffort), ("hard_requirement", Compatibility::HardRequirement)],
            )
        })
        .unwrap_or_default();
    LandlockPolicy { compatibility }
}

fn process(cx: &mut Cx, node: &Node) -> ProcessPolicy {
    let Some(map) = cx.mapping("process", node) else { return ProcessPolicy::default() };
    cx.known_keys("process", map, &["run_as_user", "run_as_group"]);
    let mut identity = |key: &str, what: &str| -> Option<String> {
        let path = format!("process.{key}");
        let node = get(map, key)?;
        let value = cx.scalar(&path, node)?.as_str().trim().to_owned();
        if value == "root" || value == "0" {
            cx.issue(&path, node, format!("children never run as root; name an unprivileged {what} such as `sandbox`"));
            return None;
        }
        if value.is_empty() || value.contains([':', '\0', '\n']) {
            cx.issue(&path, node, format!("`{value}` is not a {what} name or number"));
            return None;
        }
        Some(value)
    };
    let run_as_user = identity("run_as_user", "user");
    let run_as_group = identity("run_as_group", "group");
    ProcessPolicy { run_as_user, run_as_group }
}

fn network_policy(cx: &mut Cx, path: &str, key: &str, node: &Node) -> Option<(NetworkPolicy, usize)> {
    let map = cx.mapping(path, node)?;
    cx.known_keys(path, map, &["name", "endpoints", "binaries"]);
    let name = get(map, "name").and_then(|n| cx.scalar(&format!("{path}.name"), n)).map(|s| s.as_str().to_owned());
    let binaries =
        get(map, "binaries").and_then(|n| cx.sequence(&format!("{path}.binaries"), n)).map_or(0, |b| b.len());
    let endpoints_path = format!("{path}.endpoints");
    let Some(list) = get(map, "endpoints") else {
        cx.issue_at(path, map.span(), "`endpoints` is missing; list at least one endpoint (host and port)");
        return None;
    };
    let items = cx.sequence(&endpoints_path, list)?;
    if items.is_empty() {
        cx.issue(&endpoints_path, list, "no endpoints; list at least one endpoint (host and port)");
    }
    let endpoints = items
        .iter()
        .enumerate()
        .filter_map(|(i, n)| endpoint::endpoint(cx, &format!("{endpoints_path}[{i}]"), n))
        .collect();
    Some((NetworkPolicy { name: name.unwrap_or_else(|| key.to_owned()), endpoints }, binaries))
}

/// Value of `key` in `map`, treating an explicit null (`key:`, `~`, `null`) as absent.
fn get<'a>(map: &'a MarkedMappingNode, key: &str) -> Option<&'a Node> {
    map.get_node(key).filter(|n| !is_null(n))
}

fn is_null(node: &Node) -> bool {
    matches!(node, Node::Scalar(s) if s.may_coerce() && matches!(s.as_str(), "" | "~" | "null" | "Null" | "NULL"))
}

fn line_of(span: &Span) -> Option<usize> {
    span.start().map(|m| m.line()).filter(|l| *l > 0)
}

fn kind(node: &Node) -> &'static str {
    match node {
        Node::Scalar(_) => "a single value",
        Node::Mapping(_) => "a mapping",
        Node::Sequence(_) => "a list",
    }
}

/// The validation context: where issues are collected.
#[derive(Default)]
struct Cx {
    issues: Vec<Issue>,
}

impl Cx {
    fn issue(&mut self, path: &str, node: &Node, message: impl Into<String>) {
        self.issue_at(path, node.span(), message);
    }

    fn issue_at(&mut self, path: &str, span: &Span, message: impl Into<String>) {
        self.issues.push(Issue { path: path.to_owned(), line: line_of(span), message: message.into() });
    }

    fn mapping<'a>(&mut self, path: &str, node: &'a Node) -> Option<&'a MarkedMappingNode> {
        let found = node.as_mapping();
        if found.is_none() {
            self.issue(path, node, format!("expected a mapping of `key: value` entries, found {}", kind(node)));
        }
        found
    }

    fn sequence<'a>(&mut self, path: &str, node: &'a Node) -> Option<&'a [Node]> {
        let found = node.as_sequence().map(|s| s.as_slice());
        if found.is_none() {
            self.issue(path, node, format!("expected a list (`- item` lines), found {}", kind(node)));
        }
        found
    }

    fn scalar<'a>(&mut self, path: &str, node: &'a Node) -> Option<&'a MarkedScalarNode> {
        let found = node.as_scalar();
        if found.is_none() {
            self.issue(path, node, format!("expected a single value, found {}", kind(node)));
        }
        found
    }

    fn bool(&mut self, path: &str, node: &Node) -> Option<bool> {
        let s = self.scalar(path, node)?;
        let found = s.as_bool();
        if found.is_none() {
            self.issue(path, node, format!("`{}` is not a boolean; write true or false", s.as_str()));
        }
        found
    }

    /// A scalar that must be one of a few words.
    fn one_of<T: Copy>(&mut self, path: &str, node: &Node, choices: &[(&str, T)]) -> Option<T> {
        let s = self.scalar(path, node)?;
        let found = choices.iter().find(|(word, _)| *word == s.as_str()).map(|(_, v)| *v);
        if found.is_none() {
            let allowed: Vec<&str> = choices.iter().map(|(w, _)| *w).collect();
            self.issue(path, node, format!("`{}` is not allowed here; use one of: {}", s.as_str(), allowed.join(", ")));
        }
        found
    }

    /// Reports every key of `map` that is not in `allowed`, on the key's own line.
    fn known_keys(&mut self, path: &str, map: &MarkedMappingNode, allowed: &[&str]) {
        for key in map.keys() {
            if !allowed.contains(&key.as_str()) {
                let at = if path.is_empty() { key.as_str().to_owned() } else { format!("{path}.{}", key.as_str()) };
                let hint = allowed
                    .iter()
                    .map(|a| (strsim::normalized_damerau_levenshtein(a, key.as_str()), a))
                    .filter(|(score, _)| *score >= 0.75)
                    .max_by(|x, y| x.0.total_cmp(&y.0))
                    .map(|(_, a)| format!(" (did you mean `{a}`?)"))
                    .unwrap_or_default();
                let message = format!("unknown key `{}`{hint}; allowed here: {}", key.as_str(), allowed.join(", "));
                self.issue_at(&at, key.span(), message);
            }
        }
    }
}
