//! The policy DNS (docs/transparent.md): for a client that does not know about the proxy,
//! names the policy allows resolve to synthetic addresses the transparent listeners map
//! back to the name; names no policy allows get NXDOMAIN and an audit event.

mod mapping;
mod message;
mod names;
mod server;

pub use mapping::{SyntheticMap, TableFull};
pub use message::{EDNS_PAYLOAD, Lookup, TTL_SECS, Transport, Zone, respond};
pub use names::AllowedNames;
pub use server::{serve_tcp, serve_udp};

use std::net::Ipv4Addr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use lru::LruCache;

use super::audit;
use super::policy_source::PolicyHandle;

/// A denied name is audited at most once in this window (a resolver asks A and AAAA, and
/// retries): the first query is the event, repeats within it add nothing.
pub const DENIAL_AUDIT_WINDOW: Duration = Duration::from_secs(10);
/// Denied names remembered for that window; beyond it the oldest is forgotten (and its next
/// query audited again).
const DENIALS_REMEMBERED: NonZeroUsize = NonZeroUsize::new(1024).unwrap();

/// The zone the DNS server answers from: the current policy's names and the address table.
pub struct PolicyDns {
    policy: PolicyHandle,
    map: Arc<SyntheticMap>,
    names: Mutex<Arc<AllowedNames>>,
    denied: Mutex<LruCache<String, Instant>>,
}

impl std::fmt::Debug for PolicyDns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyDns").field("map", &self.map).finish_non_exhaustive()
    }
}

impl PolicyDns {
    /// Answers from `policy` (each query reads the generation in force) and `map`.
    pub fn new(policy: PolicyHandle, map: Arc<SyntheticMap>) -> Self {
        let names = Mutex::new(Arc::new(AllowedNames::of(&policy.current())));
        PolicyDns { policy, map, names, denied: Mutex::new(LruCache::new(DENIALS_REMEMBERED)) }
    }

    /// The address table.
    pub fn map(&self) -> &Arc<SyntheticMap> {
        &self.map
    }

    /// The names of the generation in force (rebuilt once per generation).
    pub fn names(&self) -> Arc<AllowedNames> {
        let engine = self.policy.current();
        let mut names = self.names.lock().unwrap_or_else(PoisonError::into_inner);
        if names.generation() != engine.generation() {
            *names = Arc::new(AllowedNames::of(&engine));
        }
        names.clone()
    }

    /// One audit event for a denied name, unless it was audited within the window.
    fn audit_denied(&self, name: &str, now: Instant) {
        let mut denied = self.denied.lock().unwrap_or_else(PoisonError::into_inner);
        if denied.get(name).is_some_and(|at| now.saturating_duration_since(*at) < DENIAL_AUDIT_WINDOW) {
            return;
        }
        denied.put(name.to_owned(), now);
        audit::dns_refused(name);
    }
}

impl Zone for PolicyDns {
    fn lookup(&self, name: &str, address: bool) -> Lookup {
        let now = Instant::now();
        if !self.names().allows(name) {
            self.audit_denied(name, now);
            return Lookup::Denied;
        }
        if !address {
            return Lookup::Allowed;
        }
        match self.map.assign(name, now) {
            Ok(addr) => Lookup::Address(addr),
            Err(full) => {
                tracing::warn!(host = name, "{full}; answered SERVFAIL (raise OPENSHELL_DNS_MAX_NAMES)");
                Lookup::Unavailable
            }
        }
    }

    fn reverse(&self, addr: Ipv4Addr) -> Option<Arc<str>> {
        self.map.name_of(addr, Instant::now())
    }
}
