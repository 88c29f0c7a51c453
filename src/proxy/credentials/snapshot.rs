//! One consistent set of credentials: values, which keys are not secret, where each secret
//! may go, when values expire, and the scrubber of their values. Built whole from the
//! gateway's provider environment or the env file, then only read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

use super::binding::{Bindings, BoundEndpoint, Destination};
use super::env_file::Entry;
use super::scrub::Scrubber;
use super::{CredentialError, ProviderEnvironment, is_key, placeholder};
use crate::config::Secret;

/// One consistent set of credentials.
#[derive(Debug, Default)]
pub struct Snapshot {
    values: BTreeMap<String, Secret>,
    non_secret: BTreeSet<String>,
    bindings: Bindings,
    expires_at_ms: BTreeMap<String, i64>,
    scrubber: Option<Arc<Scrubber>>,
    /// Notified when an expired value is asked for (the provider poller fetches again).
    expired: Arc<Notify>,
}

impl Snapshot {
    /// From the gateway: every key and value checked; binding endpoints that cannot be
    /// understood are dropped with a warning (fail closed: that endpoint gets nothing).
    pub(super) fn from_provider(env: &ProviderEnvironment, expired: Arc<Notify>) -> Result<Self, CredentialError> {
        let place = "the gateway's provider environment";
        for (key, value) in &env.environment {
            check_entry(key, value.expose(), place)?;
        }
        let mut bindings = BTreeMap::new();
        for (key, endpoints) in &env.bindings {
            let parsed: Vec<BoundEndpoint> = endpoints
                .iter()
                .filter_map(|e| {
                    BoundEndpoint::parse(e)
                        .map_err(|why| tracing::warn!(key, host = e.host, "a binding endpoint is ignored: {why}"))
                        .ok()
                })
                .collect();
            bindings.insert(key.clone(), parsed);
        }
        let unbound: Vec<&str> = env
            .environment
            .keys()
            .filter(|k| !env.non_secret_keys.contains(*k) && bindings.get(*k).is_none_or(Vec::is_empty))
            .map(String::as_str)
            .collect();
        if !unbound.is_empty() {
            crate::proxy::audit::credentials_unbound(&unbound.join(","));
        }
        Ok(Self::new(
            env.environment.clone(),
            env.non_secret_keys.clone(),
            Bindings::Static(bindings),
            env.expires_at_ms.clone(),
            expired,
        ))
    }

    /// From the env file's entries: every key secret, bound through its provider.
    pub(super) fn from_file(entries: Vec<Entry>, expired: Arc<Notify>) -> Self {
        let providers = entries.iter().map(|e| (e.key.clone(), e.provider.clone())).collect();
        let values = entries.into_iter().map(|e| (e.key, e.value)).collect();
        Self::new(values, BTreeSet::new(), Bindings::Provider(providers), BTreeMap::new(), expired)
    }

    fn new(
        values: BTreeMap<String, Secret>,
        non_secret: BTreeSet<String>,
        bindings: Bindings,
        expires_at_ms: BTreeMap<String, i64>,
        expired: Arc<Notify>,
    ) -> Self {
        let mut snapshot = Snapshot { values, non_secret, bindings, expires_at_ms, scrubber: None, expired };
        snapshot.scrubber = Scrubber::new(snapshot.scrub_pairs()).map(Arc::new);
        snapshot
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Secret> {
        self.values.get(key)
    }

    /// Every key, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }

    /// Whether `key`'s value stays behind a placeholder (not a non-secret key).
    pub fn is_secret(&self, key: &str) -> bool {
        !self.non_secret.contains(key)
    }

    /// The provider of each env-file key (empty for gateway credentials).
    pub(super) fn providers(&self) -> impl Iterator<Item = (&str, &str)> {
        let map = match &self.bindings {
            Bindings::Provider(map) => Some(map),
            Bindings::Static(_) => None,
        };
        map.into_iter().flatten().map(|(k, p)| (k.as_str(), p.as_str()))
    }

    /// The value of `key` for a request to `to`: known (else `credential_unresolved`); a
    /// non-secret value goes anywhere; a secret never over plain HTTP, never once expired
    /// (`credential_expired`, and the gateway is asked again), only where it is bound
    /// (`credential_not_bound`).
    pub(super) fn resolve(&self, key: &str, to: &Destination) -> Result<&str, CredentialError> {
        let value = self.values.get(key).ok_or_else(|| CredentialError::Unresolved { key: key.to_owned() })?;
        if !self.is_secret(key) {
            return Ok(value.expose());
        }
        if to.cleartext {
            return Err(CredentialError::Cleartext { key: key.to_owned() });
        }
        if self.is_expired(key) {
            self.expired.notify_one();
            return Err(CredentialError::Expired { key: key.to_owned() });
        }
        self.bindings.check(key, to)?;
        Ok(value.expose())
    }

    /// Past its `credential_expires_at_ms` (0 or absent: never; negative: always).
    fn is_expired(&self, key: &str) -> bool {
        match self.expires_at_ms.get(key) {
            None | Some(0) => false,
            Some(&at) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
                i128::from(at) <= now as i128
            }
        }
    }

    /// The scrubber of every secret value (`None` when there is none).
    pub fn scrubber(&self) -> Option<&Arc<Scrubber>> {
        self.scrubber.as_ref()
    }

    /// Each secret value with its placeholder.
    pub(super) fn scrub_pairs(&self) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
        self.values
            .iter()
            .filter(|(k, _)| self.is_secret(k))
            .map(|(k, v)| (v.expose().as_bytes().to_vec(), placeholder(k).into_bytes()))
    }

    /// `child-env.json`: secret keys mapped to placeholders, non-secret keys to their values.
    pub(super) fn child_env(&self) -> crate::volume::ChildEnv {
        self.values
            .iter()
            .map(|(k, v)| (k.clone(), if self.is_secret(k) { placeholder(k) } else { v.expose().to_owned() }))
            .collect()
    }
}

/// Refuses a key that is not a variable name and a value with CR, LF or NUL.
pub(super) fn check_entry(key: &str, value: &str, place: &str) -> Result<(), CredentialError> {
    if !is_key(key) {
        return Err(CredentialError::BadKey { key: key.to_owned(), place: place.to_owned() });
    }
    let what = [('\r', "a carriage return (CR)"), ('\n', "a line feed (LF)"), ('\0', "a NUL byte")]
        .into_iter()
        .find_map(|(c, what)| value.contains(c).then_some(what));
    match what {
        Some(what) => Err(CredentialError::UnsafeValue { key: key.to_owned(), place: place.to_owned(), what }),
        None => Ok(()),
    }
}
