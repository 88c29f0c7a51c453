//! The provider environment in the proxy's own terms: what the gateway's
//! `GetSandboxProviderEnvironment` gives (converted in `gateway::provider`), one of the two
//! sources [`super::SecretStore`] is built from (the other: the local env file). Values are secrets.

use std::collections::{BTreeMap, BTreeSet};

use crate::config::Secret;

/// The provider environment: credential names and their (secret) values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProviderEnvironment {
    /// Name to value; Debug prints `[redacted]` for every value.
    pub environment: BTreeMap<String, Secret>,
    /// The gateway's revision of this environment.
    pub revision: u64,
    /// Names whose values are not secret (they may be given to the agent as they are).
    pub non_secret_keys: BTreeSet<String>,
    /// Each secret key's endpoints (`static_credential_bindings`); a key absent has none.
    pub bindings: BTreeMap<String, Vec<BindingEndpoint>>,
    /// Epoch milliseconds after which a key's value must not be injected
    /// (`credential_expires_at_ms`; absent or 0: never).
    pub expires_at_ms: BTreeMap<String, i64>,
}

/// One endpoint of a static credential binding, as the gateway sent it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BindingEndpoint {
    /// Host name, address or pattern (`*.example.com`).
    pub host: String,
    /// Port; 0 matches nothing.
    pub port: u32,
    /// Path scope; empty means every path.
    pub path: String,
}

impl ProviderEnvironment {
    /// Whether `key`'s value must stay behind a placeholder.
    pub fn is_secret(&self, key: &str) -> bool {
        !self.non_secret_keys.contains(key)
    }
}
