//! The names one policy generation lets the policy DNS answer: every endpoint host that is
//! a DNS name, exact or a pattern (`*.example.com`, `**.example.com`), matched the way the
//! rules match it; and the ports the transparent listeners serve. Built once per generation.

use std::collections::{BTreeSet, HashSet};

use regex::RegexSet;

use crate::policy::PolicyEngine;
use crate::policy::host::HostPattern;

/// What one generation allows by name: nothing at all for a quarantined generation.
#[derive(Debug)]
pub struct AllowedNames {
    generation: u64,
    exact: HashSet<String>,
    globs: RegexSet,
    ports: BTreeSet<u16>,
}

impl AllowedNames {
    /// The names and ports of `engine`'s endpoints (IP literals are not names: no query
    /// can ask for them, so their ports are not served transparently either).
    pub fn of(engine: &PolicyEngine) -> Self {
        let mut exact = HashSet::new();
        let mut regexes = Vec::new();
        let mut ports = BTreeSet::new();
        for flat in (0..).map_while(|i| engine.endpoint(i)) {
            let endpoint = &flat.endpoint;
            match &endpoint.host {
                HostPattern::Exact(host) if host.parse::<std::net::IpAddr>().is_ok() => continue,
                HostPattern::Exact(host) => {
                    exact.insert(host.clone());
                }
                HostPattern::Glob { regex, .. } => regexes.push(regex.clone()),
            }
            ports.extend(endpoint.ports.iter().copied());
        }
        // The patterns were compiled by the policy loader already; an empty set on the
        // impossible failure allows no pattern (fail closed).
        let globs = RegexSet::new(&regexes).unwrap_or_else(|_| RegexSet::empty());
        AllowedNames { generation: engine.generation(), exact, globs, ports }
    }

    /// The generation these names come from.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether some endpoint's host is `name` (normalised: lower case, no trailing dot) or
    /// a pattern matching it.
    pub fn allows(&self, name: &str) -> bool {
        self.exact.contains(name) || self.globs.is_match(name)
    }

    /// Every port of an endpoint with a DNS name, sorted.
    pub fn ports(&self) -> &BTreeSet<u16> {
        &self.ports
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{self, RegoRules};

    fn names(endpoints: &str) -> AllowedNames {
        let yaml = format!("version: 1\nnetwork_policies:\n  p:\n    endpoints:\n{endpoints}");
        let engine = PolicyEngine::new(policy::parse_yaml(&yaml, "t").unwrap(), &RegoRules::builtin(), 7).unwrap();
        AllowedNames::of(&engine)
    }

    #[test]
    fn exact_names_and_patterns_like_the_rules() {
        let n = names(
            "      - {host: api.example.com, port: 443}\n      - {host: \"*.one.example\", port: 5432, protocol: tcp}\n      - {host: \"**.deep.example\", ports: [80, 443]}\n      - {host: \"10.0.0.5\", port: 9999}\n",
        );
        assert_eq!(n.generation(), 7);
        assert!(n.allows("api.example.com"));
        assert!(!n.allows("x.api.example.com") && !n.allows("example.com"));
        assert!(n.allows("db.one.example") && !n.allows("a.b.one.example") && !n.allows("one.example"));
        assert!(n.allows("a.deep.example") && n.allows("a.b.c.deep.example") && !n.allows("deep.example"));
        assert!(!n.allows("10.0.0.5"), "an IP literal is not a name");
        assert_eq!(n.ports().iter().copied().collect::<Vec<_>>(), [80, 443, 5432], "no port of the IP endpoint");
    }

    #[test]
    fn a_quarantined_generation_allows_no_name() {
        let yaml = "version: 1\nnetwork_policies:\n  p:\n    endpoints:\n      - {host: api.example.com, port: 443}\n";
        let engine = PolicyEngine::new(policy::parse_yaml(yaml, "t").unwrap(), &RegoRules::builtin(), 1).unwrap();
        assert!(AllowedNames::of(&engine).allows("api.example.com"));
        let quarantined = AllowedNames::of(&engine.quarantined(2, "bad"));
        assert!(!quarantined.allows("api.example.com") && quarantined.ports().is_empty());
    }
}
