//! Provider credentials behind placeholders: the agent's environment holds
//! `openshell:resolve:env:KEY`, and the proxy swaps in the real value only in inspected,
//! allowed, TLS requests to an endpoint the key is bound to, then scrubs every secret value
//! out of the answer. Values are [`crate::config::Secret`]s: never in a log, an error or a
//! file.

mod binding;
mod body;
mod env_file;
mod environment;
mod exchange;
mod find;
mod scrub;
mod snapshot;
mod substitute;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::Notify;

use crate::policy::Policy;
use crate::proxy::answer::Refusal;
use crate::volume::ChildEnv;
use crate::watch::{Change, WatchedFile};
use crate::{Exit, ExitStatus};

pub use binding::Destination;
pub use body::BODY_LIMIT;
pub use env_file::{Entry, parse_env_file};
pub use environment::{BindingEndpoint, ProviderEnvironment};
pub use exchange::{Injection, finish};
pub use scrub::{Scrubbed, Scrubber, answer as scrub_answer};
pub use snapshot::Snapshot;

/// What every placeholder starts with; the key follows.
pub const PLACEHOLDER_PREFIX: &str = "openshell:resolve:env:";

/// The placeholder the agent sees for `key`.
pub fn placeholder(key: &str) -> String {
    format!("{PLACEHOLDER_PREFIX}{key}")
}

/// The key of a whole-string placeholder, if `s` is exactly one.
pub fn placeholder_key(s: &str) -> Option<&str> {
    s.strip_prefix(PLACEHOLDER_PREFIX).filter(|k| is_key(k))
}

/// Whether `key` is an environment variable name (`[A-Za-z_][A-Za-z0-9_]*`).
pub fn is_key(key: &str) -> bool {
    !key.is_empty()
        && !key.starts_with(|c: char| c.is_ascii_digit())
        && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Failures of loading credentials or of swapping them into a request. None carries a value.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    /// The provider env file could not be read.
    #[error("cannot read the provider env file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A line of the provider env file is not `KEY=VALUE`.
    #[error("{path} line {line}: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong (names keys, never values).
        message: String,
    },
    /// A value that could smuggle a header line or end a C string.
    #[error("the value of `{key}` ({place}) contains {what}; remove it (credentials are single-line text)")]
    UnsafeValue {
        /// The key.
        key: String,
        /// Where it came from, like `line 3 of /run/env` or `the gateway's provider environment`.
        place: String,
        /// What it contains: a carriage return, a line feed, a NUL byte.
        what: &'static str,
    },
    /// A provider key that is not an environment variable name.
    #[error("`{key}` ({place}) is not an environment variable name ([A-Za-z_][A-Za-z0-9_]*)")]
    BadKey {
        /// The key.
        key: String,
        /// Where it came from.
        place: String,
    },
    /// The request names a placeholder whose key has no value.
    #[error("credential_unresolved: no credential `{key}` is configured for this sandbox")]
    Unresolved {
        /// The key named by the placeholder.
        key: String,
    },
    /// A placeholder where the proxy does not substitute (it would be forwarded as is).
    #[error(
        "credential_unresolved: a placeholder in {place} is not where one is swapped: a whole header value, `Scheme <placeholder>`, a Basic user or password, a path segment or a query value (a body only with `request_body_credential_rewrite: true`)"
    )]
    Misplaced {
        /// Where it is, like `header x-token` or `the request path`.
        place: String,
    },
    /// A value that cannot be placed where the request names it.
    #[error("credential_unresolved: the value of `{key}` cannot be used in {place}")]
    Unusable {
        /// The key.
        key: String,
        /// Where, and why, like `header authorization (not a valid header value)`.
        place: String,
    },
    /// A placeholder sent to an endpoint its key is not bound to.
    #[error("credential_not_bound: `{key}` may not be sent to {host}:{port}: {hint}")]
    NotBound {
        /// The key.
        key: String,
        /// The request's host.
        host: String,
        /// Its port.
        port: u16,
        /// Where the key may go, or how to bind it.
        hint: String,
    },
    /// A placeholder in a plain `http://` request.
    #[error(
        "credential_unresolved: `{key}` is never sent over plain http://, where anyone on the path could read it; use https://"
    )]
    Cleartext {
        /// The key.
        key: String,
    },
    /// A placeholder whose value is past its expiry.
    #[error(
        "credential_expired: the value of `{key}` has expired; the proxy is fetching a new one from the gateway, try again shortly"
    )]
    Expired {
        /// The key.
        key: String,
    },
    /// A placeholder in the body of a request to an endpoint without the opt-in.
    #[error(
        "credential_unresolved: a placeholder in the request body is swapped only on an endpoint with `request_body_credential_rewrite: true`"
    )]
    BodyNotOptedIn,
    /// A body to rewrite over the limit.
    #[error("payload_too_large: the request body is larger than the {limit} bytes whose placeholders can be swapped")]
    BodyTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// The body to rewrite could not be read.
    #[error("bad_request: the request body could not be read: {0}")]
    BodyRead(String),
    /// A key the env file does not bind to any endpoint.
    #[error("`{key}` ({place}) is bound to no endpoint: {hint}")]
    Unbound {
        /// The key.
        key: String,
        /// Where it came from, like `line 3 of /run/env`.
        place: String,
        /// How to bind it.
        hint: String,
    },
}

impl CredentialError {
    /// Whether this error refuses one request rather than a load.
    pub fn is_request_error(&self) -> bool {
        !matches!(
            self,
            Self::Read { .. }
                | Self::Malformed { .. }
                | Self::UnsafeValue { .. }
                | Self::BadKey { .. }
                | Self::Unbound { .. }
        )
    }

    /// The answer to a request this error refused: 403 `credential_unresolved` (a
    /// placeholder has no value, sits where it cannot be swapped, or is in plain HTTP),
    /// `credential_not_bound`, `credential_expired`; 413 or 400 for a body that cannot be
    /// rewritten. The reason names the key, never a value.
    pub fn refusal(&self) -> Refusal {
        let refusal: fn(String) -> Refusal = match self {
            Self::NotBound { .. } => Refusal::CredentialNotBound,
            Self::Expired { .. } => Refusal::CredentialExpired,
            Self::BodyTooLarge { .. } => Refusal::PayloadTooLarge,
            Self::BodyRead(_) => Refusal::BadRequest,
            _ => Refusal::CredentialUnresolved,
        };
        // The message starts with the code (for logs); the answer carries it apart.
        let (code, text) = (refusal(String::new()).error(), self.to_string());
        refusal(text.strip_prefix(code).and_then(|r| r.strip_prefix(": ")).unwrap_or(&text).to_owned())
    }
}

impl ExitStatus for CredentialError {
    fn exit_status(&self) -> Exit {
        if self.is_request_error() { Exit::Internal } else { Exit::Usage }
    }
}

/// The current credentials, replaced as a whole (readers keep the snapshot they took).
#[derive(Debug)]
pub struct SecretStore {
    current: RwLock<Arc<Snapshot>>,
    /// The provider env file, when the credentials come from one.
    file: Option<Mutex<WatchedFile>>,
    /// Notified when a request met an expired value.
    expired: Arc<Notify>,
}

impl SecretStore {
    /// A store with no credentials (every placeholder is unresolved).
    pub fn empty() -> Self {
        SecretStore { current: RwLock::new(Arc::default()), file: None, expired: Arc::default() }
    }

    /// Loads `OPENSHELL_PROVIDER_ENV_FILE` (format: [`parse_env_file`]); every key is
    /// secret and bound through its provider section (see [`Self::unbound`]).
    pub fn from_file(path: &Path) -> Result<Self, CredentialError> {
        let (file, bytes) =
            WatchedFile::open(path).map_err(|source| CredentialError::Read { path: path.to_owned(), source })?;
        let expired = Arc::default();
        let snapshot = Snapshot::from_file(parse_env_file(&bytes, path)?, Arc::clone(&expired));
        Ok(SecretStore { current: RwLock::new(Arc::new(snapshot)), file: Some(Mutex::new(file)), expired })
    }

    /// From the gateway's provider environment (its non-secret keys keep their values).
    pub fn from_provider(env: &ProviderEnvironment) -> Result<Self, CredentialError> {
        let store = SecretStore::empty();
        store.install(env)?;
        Ok(store)
    }

    /// Replaces the credentials with a new provider environment; on error nothing changes.
    pub fn install(&self, env: &ProviderEnvironment) -> Result<(), CredentialError> {
        self.swap(Snapshot::from_provider(env, self.expired.clone())?);
        Ok(())
    }

    /// Notified each time a request meets an expired value (the provider poller fetches
    /// the environment again).
    pub fn expired(&self) -> Arc<Notify> {
        self.expired.clone()
    }

    /// Re-reads the env file: new contents that have settled ([`crate::watch::SETTLE`]) are
    /// parsed, and `Ok(true)` means they are in force. On error the previous ones stay, and
    /// the same contents are not retried (so a bad file, or a missing one, is reported
    /// once). No file: `Ok(false)`.
    pub fn reload_if_changed(&self) -> Result<bool, CredentialError> {
        let Some(file) = &self.file else { return Ok(false) };
        let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
        let path = file.path().to_owned();
        let bytes = match file.check() {
            Change::Same | Change::Settling => return Ok(false),
            Change::Unreadable(source) => return Err(CredentialError::Read { path, source }),
            Change::New(bytes) => bytes,
        };
        drop(file);
        self.swap(Snapshot::from_file(parse_env_file(&bytes, &path)?, self.expired.clone()));
        Ok(true)
    }

    /// How long until a change of the env file has settled (`None` when none is waiting).
    pub fn settles_in(&self) -> Option<Duration> {
        let file = self.file.as_ref()?;
        file.lock().unwrap_or_else(PoisonError::into_inner).settles_in()
    }

    /// The env-file keys that `policy` binds to no inspected endpoint, each as an error
    /// saying how to bind it (empty for gateway credentials, which carry their bindings).
    pub fn unbound(&self, policy: &Policy) -> Vec<CredentialError> {
        let bound: Vec<&str> = policy
            .network_policies
            .values()
            .flat_map(|p| &p.endpoints)
            .filter(|e| e.intercepts_tls())
            .filter_map(|e| e.credential_binding.as_deref())
            .collect();
        let path =
            self.file.as_ref().map(|f| f.lock().unwrap_or_else(PoisonError::into_inner).path().display().to_string());
        let path = path.unwrap_or_default();
        let snapshot = self.snapshot();
        snapshot
            .providers()
            .filter(|(_, provider)| !bound.contains(provider))
            .map(|(key, provider)| CredentialError::Unbound {
                key: key.to_owned(),
                place: format!("provider `{provider}` in {path}"),
                hint: format!(
                    "add `credential_binding: {{provider: {provider}}}` to the policy endpoints (with `protocol: rest`) it may be sent to"
                ),
            })
            .collect()
    }

    /// The credentials in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// `child-env.json`: each secret key mapped to its placeholder, non-secret keys to their value.
    pub fn child_env(&self) -> ChildEnv {
        self.snapshot().child_env()
    }

    /// Swaps the placeholders of the request head for their values, with one snapshot, when
    /// `swap` (false for an audited would-be denial: placeholders are forwarded as they are).
    /// Each key must be known, unexpired and bound to `to`, which must not be plain HTTP.
    /// Places: whole header values, `Scheme <placeholder>`, Basic user and password, path
    /// segments (also inside one) and query values; literal or percent-encoded. On error the
    /// request must not be forwarded; the head may be partly changed.
    pub fn substitute(
        &self,
        parts: &mut http::request::Parts,
        to: Destination,
        swap: bool,
    ) -> Result<Injection, CredentialError> {
        Injection::head(self.snapshot(), to, swap, parts)
    }

    fn swap(&self, snapshot: Snapshot) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
    }
}

#[cfg(test)]
mod tests;
