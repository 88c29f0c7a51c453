//! One generation of the policy engine: a validated policy, the Rego rules compiled by
//! regorus into programs for its register VM (RVM), and per-generation caches of L4 and
//! L7 decisions. A new policy makes a new engine; callers swap it in whole, so a decision
//! never mixes two generations.

mod data;

use std::collections::{BTreeMap, HashMap};
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use lru::LruCache;

use regorus::Value;
use regorus::languages::rego::compiler::Compiler;
use regorus::rvm::Program;
use regorus::rvm::vm::RegoVM;

pub use data::FlatEndpoint;

use super::host::{DestinationHost, normalize_destination};
use super::model::{Endpoint, Enforcement, Policy};
use super::request;
use super::{PolicyError, RegoRules};

/// Most L4 decisions one generation caches; beyond it the cache starts over.
const L4_CACHE_CAPACITY: usize = 16_384;
/// Most L7 decisions one generation keeps (least recently used goes first).
const L7_CACHE_CAPACITY: NonZeroUsize = NonZeroUsize::new(4096).unwrap();
/// Requests whose path and query are longer than this are evaluated every time, so the
/// L7 cache holds at most a few MiB.
const L7_CACHE_MAX_KEY_BYTES: usize = 512;

const NETWORK_RULE: &str = "data.openshell.sandbox.network";
const REQUEST_RULE: &str = "data.openshell.sandbox.request";

/// The answer for a connection to host:port.
#[derive(Clone, Debug, PartialEq)]
pub struct L4Decision {
    /// The connection may be opened.
    pub allow: bool,
    /// Key of the first matching network policy.
    pub policy: Option<String>,
    /// Indices (into [`PolicyEngine::endpoint`]) of every endpoint that matched.
    pub endpoints: Vec<usize>,
    /// Why, in words.
    pub reason: String,
}

/// An HTTP request as the L7 rules see it (already canonicalised). The engine reads the
/// query itself, once strictly for allow rules and once every possible way for deny rules
/// (see [`super::request`]), so every caller gets the same decision for the same request.
#[derive(Clone, Copy, Debug)]
pub struct L7Request<'a> {
    /// The method as sent.
    pub method: &'a str,
    /// Canonical path, without the query.
    pub path: &'a str,
    /// The query as sent, without the `?` (empty when there is none).
    pub query: &'a str,
}

/// The answer for one HTTP request.
#[derive(Clone, Debug, PartialEq)]
pub struct L7Decision {
    /// The request may be forwarded.
    pub allow: bool,
    /// Key of the policy whose rule decided.
    pub policy: Option<String>,
    /// Id of the deciding rule, like `github.endpoints[0].rules[1]`.
    pub rule: Option<String>,
    /// Why, in words.
    pub reason: String,
    /// Whether a denial is enforced or only audited.
    pub enforcement: Enforcement,
}

/// A compiled policy generation. Cheap to share (`Arc`), safe to use from many tasks.
pub struct PolicyEngine {
    generation: u64,
    /// Set on a quarantined generation: every decision is a denial with this reason.
    quarantine: Option<Arc<str>>,
    policy: Policy,
    endpoints: Vec<FlatEndpoint>,
    data: Value,
    network_rule: Compiled,
    request_rule: Compiled,
    cache: L4Cache,
    l7_cache: Mutex<LruCache<L7Key, L7Decision>>,
}

/// L4 decisions of one generation, keyed by normalised host and port.
type L4Cache = RwLock<HashMap<(Box<str>, u16), Arc<L4Decision>>>;

/// Everything an L7 decision depends on: normalised host, port, method, canonical path and
/// the query.
type L7Key = (Box<str>, u16, Box<str>, Box<str>, Box<str>);

/// One entry point compiled to an RVM program. Evaluation makes a fresh VM from it
/// (about a microsecond), so concurrent decisions share nothing mutable.
#[derive(Clone)]
struct Compiled {
    rule: &'static str,
    policy: regorus::CompiledPolicy,
    program: Arc<Program>,
}

impl PolicyEngine {
    /// Compiles `rules` over `policy`. Fails when the rules do not compile or do not
    /// answer the two questions the proxy asks.
    pub fn new(policy: Policy, rules: &RegoRules, generation: u64) -> Result<Self, PolicyError> {
        let endpoints = data::flatten(&policy);
        let data = Value::from(data::build(&endpoints));
        let fail = |message: String| PolicyError::Rules { source_name: rules.name.clone(), message };
        let mut rego = regorus::Engine::new();
        rego.add_policy(rules.name.clone(), rules.text.clone()).map_err(|e| fail(format!("{e:#}")))?;
        let mut compile = |rule: &'static str| -> Result<Compiled, PolicyError> {
            let policy = rego.compile_with_entrypoint(&rule.into()).map_err(|e| fail(format!("{e:#}")))?;
            let program = Compiler::compile_from_policy(&policy, &[rule]).map_err(|e| fail(format!("{e:#}")))?;
            Ok(Compiled { rule, policy, program })
        };
        let network_rule = compile(NETWORK_RULE)?;
        let request_rule = compile(REQUEST_RULE)?;
        let engine = PolicyEngine {
            generation,
            quarantine: None,
            policy,
            endpoints,
            data,
            network_rule,
            request_rule,
            cache: RwLock::new(HashMap::new()),
            l7_cache: Mutex::new(LruCache::new(L7_CACHE_CAPACITY)),
        };
        // A probe through both rules, so broken replacement rules fail at load, not per request.
        let req = L7Request { method: "GET", path: "/", query: "" };
        engine.eval(&engine.network_rule, network_input("probe.invalid", 443, None)).map_err(fail)?;
        engine.eval(&engine.request_rule, network_input("probe.invalid", 443, Some(&req))).map_err(fail)?;
        Ok(engine)
    }

    /// The generation number this engine was built as.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// A quarantined generation `generation` (the policy source rejected a new policy and
    /// deactivated this one): it matches no endpoint and denies every connection and request
    /// with `reason`.
    pub fn quarantined(&self, generation: u64, reason: &str) -> PolicyEngine {
        PolicyEngine {
            generation,
            quarantine: Some(reason.into()),
            policy: self.policy.clone(),
            endpoints: Vec::new(),
            data: self.data.clone(),
            network_rule: self.network_rule.clone(),
            request_rule: self.request_rule.clone(),
            cache: RwLock::new(HashMap::new()),
            l7_cache: Mutex::new(LruCache::new(L7_CACHE_CAPACITY)),
        }
    }

    /// Why this generation is quarantined; `None` for a generation that decides by its policy.
    pub fn quarantine(&self) -> Option<&str> {
        self.quarantine.as_deref()
    }

    /// The validated policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// An endpoint by the index an [`L4Decision`] names.
    pub fn endpoint(&self, index: usize) -> Option<&FlatEndpoint> {
        self.endpoints.get(index)
    }

    /// The endpoints an L4 decision matched.
    pub fn matched<'a>(&'a self, decision: &'a L4Decision) -> impl Iterator<Item = &'a Endpoint> + 'a {
        decision.endpoints.iter().filter_map(|i| self.endpoints.get(*i)).map(|f| &f.endpoint)
    }

    /// The L4 decision for host:port, cached for this generation.
    pub fn network(&self, host: &str, port: u16) -> Arc<L4Decision> {
        match normalize_destination(host) {
            Some(name) => self.cached_network(name.into_boxed_str(), port),
            None => Arc::new(L4Decision::deny(format!("`{host}` is not a valid host name"))),
        }
    }

    /// [`Self::network`] for a host already parsed where the target was read.
    pub fn network_to(&self, host: &DestinationHost, port: u16) -> Arc<L4Decision> {
        self.cached_network(host.name().into(), port)
    }

    /// The decision for a normalised host name, from this generation's cache when it is there.
    fn cached_network(&self, name: Box<str>, port: u16) -> Arc<L4Decision> {
        let key = (name, port);
        if let Some(hit) = self.cache.read().ok().and_then(|c| c.get(&key).cloned()) {
            return hit;
        }
        let decision = Arc::new(self.evaluate_network_normalized(&key.0, port));
        if let Ok(mut cache) = self.cache.write() {
            if cache.len() >= L4_CACHE_CAPACITY {
                cache.clear();
            }
            cache.insert(key, decision.clone());
        }
        decision
    }

    /// The L4 decision for host:port, always evaluated (no cache).
    pub fn evaluate_network(&self, host: &str, port: u16) -> L4Decision {
        match normalize_destination(host) {
            Some(h) => self.evaluate_network_normalized(&h, port),
            None => L4Decision::deny(format!("`{host}` is not a valid host name")),
        }
    }

    fn evaluate_network_normalized(&self, host: &str, port: u16) -> L4Decision {
        if let Some(reason) = &self.quarantine {
            return L4Decision::deny(reason.to_string());
        }
        match self.eval(&self.network_rule, network_input(host, port, None)) {
            Ok(v) => L4Decision {
                allow: v["allow"] == Value::Bool(true),
                policy: string(&v["policy"]),
                endpoints: v["endpoints"]
                    .as_array()
                    .map(|a| a.iter().filter_map(|i| i.as_u64().ok()).map(|i| i as usize).collect())
                    .unwrap_or_default(),
                reason: string(&v["reason"]).unwrap_or_else(|| "the rules gave no reason".into()),
            },
            Err(e) => L4Decision::deny(format!("policy evaluation failed: {e}")),
        }
    }

    /// The L7 decision for one request to host:port, cached for this generation when the
    /// path and query are short.
    pub fn request(&self, host: &str, port: u16, request: &L7Request<'_>) -> L7Decision {
        let Some(host) = normalize_destination(host) else {
            return L7Decision::deny(format!("`{host}` is not a valid host name"));
        };
        if request.path.len() + request.query.len() > L7_CACHE_MAX_KEY_BYTES {
            return self.evaluate_request_normalized(&host, port, request);
        }
        let key: L7Key = (host.into(), port, request.method.into(), request.path.into(), request.query.into());
        if let Some(hit) = self.l7_cache.lock().unwrap_or_else(PoisonError::into_inner).get(&key) {
            return hit.clone();
        }
        let decision = self.evaluate_request_normalized(&key.0, port, request);
        self.l7_cache.lock().unwrap_or_else(PoisonError::into_inner).put(key, decision.clone());
        decision
    }

    /// The L7 decision for one request to host:port, always evaluated (no cache).
    pub fn evaluate_request(&self, host: &str, port: u16, request: &L7Request<'_>) -> L7Decision {
        match normalize_destination(host) {
            Some(h) => self.evaluate_request_normalized(&h, port, request),
            None => L7Decision::deny(format!("`{host}` is not a valid host name")),
        }
    }

    fn evaluate_request_normalized(&self, host: &str, port: u16, request: &L7Request<'_>) -> L7Decision {
        if let Some(reason) = &self.quarantine {
            return L7Decision::deny(reason.to_string());
        }
        match self.eval(&self.request_rule, network_input(host, port, Some(request))) {
            Ok(v) => L7Decision {
                allow: v["allow"] == Value::Bool(true),
                policy: string(&v["policy"]),
                rule: string(&v["rule"]),
                reason: string(&v["reason"]).unwrap_or_else(|| "the rules gave no reason".into()),
                enforcement: match string(&v["enforcement"]).as_deref() {
                    Some("audit") => Enforcement::Audit,
                    _ => Enforcement::Enforce,
                },
            },
            Err(e) => L7Decision::deny(format!("policy evaluation failed: {e}")),
        }
    }

    fn eval(&self, compiled: &Compiled, input: Value) -> Result<Value, String> {
        let mut vm = RegoVM::new_with_policy(compiled.policy.clone());
        vm.load_program(compiled.program.clone());
        vm.set_data(self.data.clone()).map_err(|e| format!("{e:#}"))?;
        vm.set_input(input);
        let v = vm.execute_entry_point_by_name(compiled.rule).map_err(|e| format!("{e:#}"))?;
        if v.as_object().is_err() {
            return Err(format!("{} did not produce an object", compiled.rule));
        }
        Ok(v)
    }
}

impl L4Decision {
    fn deny(reason: String) -> Self {
        L4Decision { allow: false, policy: None, endpoints: Vec::new(), reason }
    }
}

impl L7Decision {
    fn deny(reason: String) -> Self {
        L7Decision { allow: false, policy: None, rule: None, reason, enforcement: Enforcement::Enforce }
    }
}

fn string(v: &Value) -> Option<String> {
    v.as_string().ok().map(|s| s.to_string())
}

fn network_input(host: &str, port: u16, request: Option<&L7Request<'_>>) -> Value {
    let mut network = BTreeMap::new();
    network.insert(Value::from("host"), Value::from(host));
    network.insert(Value::from("port"), Value::from(u64::from(port)));
    let mut input = BTreeMap::new();
    input.insert(Value::from("network"), Value::from(network));
    if let Some(r) = request {
        let mut deny_view = BTreeMap::new();
        deny_view.insert(Value::from("method"), Value::from(r.method.to_ascii_uppercase()));
        deny_view.insert(Value::from("paths"), strings(request::deny_paths(r.path)));
        deny_view.insert(Value::from("query"), query_value(request::query_readings(r.query)));
        let mut req = BTreeMap::new();
        req.insert(Value::from("method"), Value::from(r.method));
        req.insert(Value::from("path"), Value::from(r.path));
        req.insert(Value::from("query_params"), query_value(request::parse_query(r.query)));
        req.insert(Value::from("deny_view"), Value::from(deny_view));
        input.insert(Value::from("request"), Value::from(req));
    }
    Value::from(input)
}

fn strings(list: impl IntoIterator<Item = String>) -> Value {
    Value::from(list.into_iter().map(Value::from).collect::<Vec<_>>())
}

/// `{name: [values]}` as a Rego object.
fn query_value<V: IntoIterator<Item = String>>(query: BTreeMap<String, V>) -> Value {
    Value::from(query.into_iter().map(|(k, vs)| (Value::from(k), strings(vs))).collect::<BTreeMap<_, _>>())
}

#[cfg(test)]
mod differential;

#[cfg(test)]
mod cache_tests {
    use super::*;
    use crate::policy::{self, RegoRules};

    const POLICY: &str = r#"
network_policies:
  api:
    endpoints:
      - {host: api.example.com, port: 443, protocol: rest, rules: [{allow: {method: GET, path: "/s", query: {q: a}}}]}
"#;

    #[test]
    fn cached_l7_decisions_keep_every_input_apart() {
        let policy = policy::parse_yaml(POLICY, "test").unwrap();
        let engine = PolicyEngine::new(policy, &RegoRules::builtin(), 1).unwrap();
        let ask = |method: &str, path: &str, q: &str| {
            let query = format!("q={q}");
            engine.request("API.example.com.", 443, &L7Request { method, path, query: &query }).allow
        };
        for _ in 0..2 {
            assert!(ask("GET", "/s", "a"));
            assert!(!ask("GET", "/s", "b"), "another query value is another decision");
            assert!(!ask("POST", "/s", "a"), "another method is another decision");
            assert!(!ask("GET", "/t", "a"), "another path is another decision");
        }
        assert_eq!(engine.l7_cache.lock().unwrap().len(), 4, "the host is normalised before it keys the cache");
        let long = format!("/{}", "x".repeat(L7_CACHE_MAX_KEY_BYTES));
        assert!(!ask("GET", &long, "a"));
        assert_eq!(engine.l7_cache.lock().unwrap().len(), 4, "long requests are not cached");
    }
}

#[cfg(test)]
mod quarantine_tests {
    use super::*;
    use crate::policy::{self, RegoRules};

    #[test]
    fn a_quarantined_generation_denies_everything_with_its_reason() {
        let yaml = "network_policies:\n  api:\n    endpoints:\n      - {host: api.example.com, port: 443, protocol: rest, access: full}\n";
        let engine = PolicyEngine::new(policy::parse_yaml(yaml, "test").unwrap(), &RegoRules::builtin(), 1).unwrap();
        let get = L7Request { method: "GET", path: "/", query: "" };
        assert!(engine.network("api.example.com", 443).allow && engine.request("api.example.com", 443, &get).allow);

        let quarantined = engine.quarantined(2, "policy quarantined: bad");
        assert_eq!((quarantined.generation(), quarantined.quarantine()), (2, Some("policy quarantined: bad")));
        for decision in [
            quarantined.network("api.example.com", 443),
            Arc::new(quarantined.evaluate_network("api.example.com", 443)),
        ] {
            assert!(!decision.allow && decision.endpoints.is_empty(), "{decision:?}");
            assert_eq!(decision.reason, "policy quarantined: bad");
        }
        for decision in [
            quarantined.request("api.example.com", 443, &get),
            quarantined.evaluate_request("api.example.com", 443, &get),
        ] {
            assert_eq!(
                (decision.allow, decision.enforcement, decision.reason.as_str()),
                (false, Enforcement::Enforce, "policy quarantined: bad")
            );
        }
        assert!(
            engine.quarantine().is_none() && engine.network("api.example.com", 443).allow,
            "the source engine is unchanged"
        );
    }
}
