//! Builds `data.policy`, the form of a validated [`Policy`] the Rego rules read: a flat
//! list of endpoints with stable ids, an index of exact hosts, the list of wildcard
//! endpoints with their compiled patterns, and each deny rule's path patterns.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::policy::host::HostPattern;
use crate::policy::model::{Endpoint, L7Rule, Policy, Protocol};
use crate::policy::request;

/// One endpoint in flat order, with the key of the policy it belongs to.
#[derive(Clone, Debug)]
pub struct FlatEndpoint {
    /// Key of the network policy in `network_policies`.
    pub policy: String,
    /// Stable id used in decisions and logs, like `github.endpoints[0]`.
    pub id: String,
    /// The endpoint itself.
    pub endpoint: Endpoint,
}

/// Flattens the policy's endpoints in key order, then endpoint order.
pub fn flatten(policy: &Policy) -> Vec<FlatEndpoint> {
    policy
        .network_policies
        .iter()
        .flat_map(|(key, np)| {
            np.endpoints.iter().enumerate().map(move |(i, ep)| FlatEndpoint {
                policy: key.clone(),
                id: format!("{key}.endpoints[{i}]"),
                endpoint: ep.clone(),
            })
        })
        .collect()
}

/// The JSON document installed as `data.policy`.
pub fn build(endpoints: &[FlatEndpoint]) -> Value {
    let mut exact_hosts: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    let mut glob_endpoints = Vec::new();
    let mut list = Vec::with_capacity(endpoints.len());
    for (i, flat) in endpoints.iter().enumerate() {
        let ep = &flat.endpoint;
        let (suffix, regex) = match &ep.host {
            HostPattern::Exact(h) => {
                exact_hosts.entry(h).or_default().push(i);
                (String::new(), String::new())
            }
            HostPattern::Glob { suffix, regex, .. } => {
                glob_endpoints.push(json!(i));
                (suffix.clone(), regex.clone())
            }
        };
        let rules: Vec<Value> = ep
            .rules
            .iter()
            .enumerate()
            .map(|(j, r)| {
                let id = match ep.access {
                    Some(a) => format!("{}.access({})", flat.id, a.as_str()),
                    None => format!("{}.rules[{j}]", flat.id),
                };
                rule(&id, &flat.policy, r)
            })
            .collect();
        let deny_rules: Vec<Value> = ep
            .deny_rules
            .iter()
            .enumerate()
            .map(|(j, r)| {
                let mut deny = rule(&format!("{}.deny_rules[{j}]", flat.id), &flat.policy, r);
                deny["paths"] = json!(request::deny_patterns(&r.path));
                deny["query"] = json!(request::deny_query_globs(&r.query));
                deny
            })
            .collect();
        list.push(json!({
            "id": flat.id,
            "policy": flat.policy,
            "host": ep.host.as_str(),
            "suffix": suffix,
            "regex": regex,
            "ports": ep.ports,
            "protocol": ep.protocol.filter(|p| p.inspects()).map_or("", Protocol::as_str),
            "enforcement": ep.enforcement.as_str(),
            "rules": rules,
            "deny_rules": deny_rules,
        }));
    }
    json!({ "policy": { "endpoints": list, "exact_hosts": exact_hosts, "glob_endpoints": glob_endpoints } })
}

fn rule(id: &str, policy: &str, r: &L7Rule) -> Value {
    json!({ "id": id, "policy": policy, "methods": r.methods, "path": r.path, "query": r.query })
}
