//! The gateway's protobuf policy, validated exactly like a YAML file: the message is
//! turned into the YAML tree it stands for (proto3 empty strings, zeros and empty lists
//! mean "unset", so their keys are left out and the YAML defaults apply) and passed to
//! [`crate::policy::validate`]. Errors carry YAML paths, without lines.

use marked_yaml::Node;
use marked_yaml::types::{MarkedMappingNode, MarkedScalarNode, MarkedSequenceNode};

use super::proto::sandbox::{
    FilesystemPolicy, L7Allow, L7DenyRule, L7QueryMatcher, NetworkEndpoint, NetworkPolicyRule, SandboxPolicy,
};
use crate::policy::{self, Policy, PolicyError};

/// How errors name a policy that came from the gateway: "invalid policy from the gateway: ...".
pub const SOURCE_NAME: &str = "from the gateway";
/// How warnings about it begin.
pub const WARNING_PREFIX: &str = "the gateway's policy:";

/// Validates the gateway's policy with the same rules as a YAML file.
pub fn to_policy(message: &SandboxPolicy) -> Result<Policy, PolicyError> {
    policy::validate(&to_yaml_tree(message))
        .map_err(|issues| PolicyError::Invalid { source_name: SOURCE_NAME.to_owned(), issues })
}

/// Endpoint fields the message sets that this supervisor does not apply, as YAML paths
/// with a reason; the caller logs them as warnings.
pub fn unapplied_fields(message: &SandboxPolicy) -> Vec<String> {
    let mut notes = Vec::new();
    for (key, rule) in sorted(&message.network_policies) {
        for (i, e) in rule.endpoints.iter().enumerate() {
            let bound = e.credential_binding.as_ref().is_some_and(|b| !b.provider.is_empty());
            if !e.path.is_empty() && !bound {
                notes.push(format!(
                    "network_policies.{key}.endpoints[{i}].path only scopes a credential binding here; the endpoint's rules decide which paths are allowed"
                ));
            }
        }
    }
    notes
}

/// The YAML tree the message stands for, key for key.
pub fn to_yaml_tree(message: &SandboxPolicy) -> Node {
    let mut top = Map::default();
    if message.version != 0 {
        top.scalar("version", message.version.to_string());
    }
    if let Some(fs) = &message.filesystem {
        top.map("filesystem_policy", filesystem(fs));
    }
    if let Some(landlock) = &message.landlock {
        let mut m = Map::default();
        m.string("compatibility", &landlock.compatibility);
        top.map("landlock", m);
    }
    if let Some(process) = &message.process {
        let mut m = Map::default();
        m.string("run_as_user", &process.run_as_user);
        m.string("run_as_group", &process.run_as_group);
        top.map("process", m);
    }
    if !message.network_policies.is_empty() {
        let mut policies = Map::default();
        for (key, rule) in sorted(&message.network_policies) {
            policies.node(key, network_policy(rule));
        }
        top.node("network_policies", policies.into_node());
    }
    top.into_node()
}

fn sorted<V>(map: &std::collections::HashMap<String, V>) -> Vec<(&str, &V)> {
    let mut entries: Vec<(&str, &V)> = map.iter().map(|(k, v)| (k.as_str(), v)).collect();
    entries.sort_by_key(|(k, _)| *k);
    entries
}

fn filesystem(fs: &FilesystemPolicy) -> Map {
    let mut m = Map::default();
    m.flag("include_workdir", fs.include_workdir);
    m.strings("read_only", &fs.read_only);
    m.strings("read_write", &fs.read_write);
    m
}

fn network_policy(rule: &NetworkPolicyRule) -> Node {
    let mut m = Map::default();
    m.string("name", &rule.name);
    m.list("endpoints", rule.endpoints.iter().map(endpoint).collect());
    m.list(
        "binaries",
        rule.binaries
            .iter()
            .map(|b| {
                let mut entry = Map::default();
                entry.string("path", &b.path);
                entry.into_node()
            })
            .collect(),
    );
    m.into_node()
}

fn endpoint(e: &NetworkEndpoint) -> Node {
    let mut m = Map::default();
    m.string("host", &e.host);
    if e.port != 0 {
        m.scalar("port", e.port.to_string());
    }
    m.list("ports", e.ports.iter().map(|p| scalar(p.to_string(), true)).collect());
    m.string("protocol", &e.protocol);
    m.string("tls", &e.tls);
    m.string("enforcement", &e.enforcement);
    m.string("access", &e.access);
    m.list(
        "rules",
        e.rules
            .iter()
            .map(|r| {
                let mut rule = Map::default();
                if let Some(allow) = &r.allow {
                    rule.map("allow", matcher(allow));
                }
                rule.into_node()
            })
            .collect(),
    );
    m.list("deny_rules", e.deny_rules.iter().map(|d| matcher(&deny_as_allow(d)).into_node()).collect());
    m.strings("allowed_ips", &e.allowed_ips);
    m.flag("allow_encoded_slash", e.allow_encoded_slash);
    if let Some(binding) = e.credential_binding.as_ref().filter(|b| !b.provider.is_empty()) {
        let mut b = Map::default();
        b.string("provider", &binding.provider);
        m.map("credential_binding", b);
    }
    m.string("path", &e.path);
    m.flag("request_body_credential_rewrite", e.request_body_credential_rewrite);
    m.into_node()
}

/// `L7Allow` and `L7DenyRule` share their fields; one converter serves both.
fn deny_as_allow(d: &L7DenyRule) -> L7Allow {
    L7Allow { method: d.method.clone(), path: d.path.clone(), query: d.query.clone() }
}

fn matcher(allow: &L7Allow) -> Map {
    let mut m = Map::default();
    m.string("method", &allow.method);
    m.string("path", &allow.path);
    if !allow.query.is_empty() {
        let mut query = Map::default();
        for (name, q) in sorted(&allow.query) {
            query.map(name, query_matcher(q));
        }
        m.node("query", query.into_node());
    }
    m
}

fn query_matcher(q: &L7QueryMatcher) -> Map {
    let mut m = Map::default();
    m.string("glob", &q.glob);
    m.strings("any", &q.any);
    m
}

/// A scalar node; strings from the message are never read as YAML null or booleans.
fn scalar(value: String, coerce: bool) -> Node {
    let mut node = MarkedScalarNode::from(value);
    node.set_coerce(coerce);
    Node::Scalar(node)
}

/// A mapping under construction; unset (proto3 default) values are not inserted.
#[derive(Default)]
struct Map(Vec<(MarkedScalarNode, Node)>);

impl Map {
    fn node(&mut self, key: &str, value: Node) {
        self.0.push((MarkedScalarNode::from(key), value));
    }

    fn scalar(&mut self, key: &str, value: String) {
        self.node(key, scalar(value, true));
    }

    fn string(&mut self, key: &str, value: &str) {
        if !value.is_empty() {
            self.node(key, scalar(value.to_owned(), false));
        }
    }

    fn flag(&mut self, key: &str, value: bool) {
        if value {
            self.node(key, Node::Scalar(MarkedScalarNode::from(true)));
        }
    }

    fn strings(&mut self, key: &str, values: &[String]) {
        self.list(key, values.iter().map(|v| scalar(v.clone(), false)).collect());
    }

    fn list(&mut self, key: &str, items: Vec<Node>) {
        if !items.is_empty() {
            self.node(key, Node::Sequence(items.into_iter().collect::<MarkedSequenceNode>()));
        }
    }

    fn map(&mut self, key: &str, value: Map) {
        self.node(key, value.into_node());
    }

    fn into_node(self) -> Node {
        Node::Mapping(self.0.into_iter().collect::<MarkedMappingNode>())
    }
}

#[cfg(test)]
mod tests;
