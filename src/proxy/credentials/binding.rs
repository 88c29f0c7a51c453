//! Where each secret may go. Credentials from the gateway carry their endpoints
//! (`static_credential_bindings`); credentials of the local env file belong to a provider,
//! and the policy's endpoints with `credential_binding: {provider: NAME}` are theirs. A
//! request's [`Destination`] is judged on its host, port and canonical path.

use std::collections::BTreeMap;

use crate::policy::PolicyEngine;
use crate::policy::host::{HostPattern, normalize_destination};
use crate::policy::model::PathScope;

use super::{BindingEndpoint, CredentialError};

/// Where one request goes, as the binding check needs it.
#[derive(Clone, Debug)]
pub struct Destination {
    /// Normalised host (lower case, no trailing dot, IPv6 without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Canonical path, with the placeholders the client sent (what logs and answers show).
    pub path: String,
    /// A plain `http://` request: nothing is ever swapped in.
    pub cleartext: bool,
    /// The providers the policy in force binds here (env-file credentials).
    providers: Vec<String>,
    /// Some matched inspected endpoint sets `request_body_credential_rewrite`.
    pub body_rewrite: bool,
}

impl Destination {
    /// The destination of a request to `host:port` with canonical `path`, under `engine`.
    pub fn new(engine: &PolicyEngine, host: &str, port: u16, path: &str, cleartext: bool) -> Self {
        let decision = engine.network(host, port);
        let mut providers = Vec::new();
        let mut body_rewrite = false;
        for e in engine.matched(&decision).filter(|e| e.inspects()) {
            body_rewrite |= e.request_body_credential_rewrite;
            if let Some(provider) = &e.credential_binding
                && e.path.as_ref().is_none_or(|scope| scope.matches(path))
                && !providers.contains(provider)
            {
                providers.push(provider.clone());
            }
        }
        Destination { providers, body_rewrite, ..Self::plain(host, port, path, cleartext) }
    }

    /// A destination no policy endpoint binds a provider to (no body rewrite).
    pub fn plain(host: &str, port: u16, path: &str, cleartext: bool) -> Self {
        let host = normalize_destination(host).unwrap_or_else(|| host.to_ascii_lowercase());
        Destination { host, port, path: path.to_owned(), cleartext, providers: Vec::new(), body_rewrite: false }
    }
}

/// One endpoint a gateway binding names.
#[derive(Clone, Debug)]
pub(super) struct BoundEndpoint {
    host: HostPattern,
    port: u16,
    path: PathScope,
}

impl BoundEndpoint {
    /// Checks what the gateway sent; `Err` says why the endpoint is dropped (never a value).
    pub(super) fn parse(e: &BindingEndpoint) -> Result<Self, String> {
        let host = HostPattern::parse(&e.host)?;
        let port =
            u16::try_from(e.port).ok().filter(|p| *p != 0).ok_or_else(|| format!("port {} is not a port", e.port))?;
        Ok(BoundEndpoint { host, port, path: PathScope::parse(&e.path)? })
    }

    fn matches(&self, to: &Destination) -> bool {
        self.port == to.port && self.host.matches(&to.host) && self.path.matches(&to.path)
    }
}

impl std::fmt::Display for BoundEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)?;
        if self.path != PathScope::Any {
            write!(f, " (path {})", self.path)?;
        }
        Ok(())
    }
}

/// The bindings of one snapshot of credentials.
#[derive(Debug)]
pub(super) enum Bindings {
    /// From the gateway: each secret key's endpoints; a key absent is bound nowhere.
    Static(BTreeMap<String, Vec<BoundEndpoint>>),
    /// From the env file: each key's provider; the policy in force names its endpoints.
    Provider(BTreeMap<String, String>),
}

impl Default for Bindings {
    fn default() -> Self {
        Bindings::Static(BTreeMap::new())
    }
}

impl Bindings {
    /// `Ok` when `key` may be swapped into a request to `to`; else `credential_not_bound`
    /// saying where it may go, or how to bind it.
    pub(super) fn check(&self, key: &str, to: &Destination) -> Result<(), CredentialError> {
        let hint = match self {
            Bindings::Static(all) => match all.get(key).filter(|e| !e.is_empty()) {
                Some(endpoints) if endpoints.iter().any(|e| e.matches(to)) => return Ok(()),
                Some(endpoints) => {
                    let list: Vec<String> = endpoints.iter().take(8).map(ToString::to_string).collect();
                    format!("the gateway binds it to {} only", list.join(", "))
                }
                None => "the gateway sent no endpoint binding for it, so it is never swapped in".to_owned(),
            },
            Bindings::Provider(providers) => match providers.get(key) {
                Some(provider) if to.providers.contains(provider) => return Ok(()),
                Some(provider) => format!(
                    "it belongs to provider `{provider}`; to allow it here, add `credential_binding: {{provider: {provider}}}` to the policy endpoint for {}:{} (with a `path` that covers {})",
                    to.host, to.port, to.path
                ),
                None => "it belongs to no provider section of the env file".to_owned(),
            },
        };
        Err(CredentialError::NotBound { key: key.to_owned(), host: to.host.clone(), port: to.port, hint })
    }
}
