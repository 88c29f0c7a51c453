//! Provider credentials behind placeholders: the agent's environment holds
//! `openshell:resolve:env:KEY`, and the proxy swaps in the real value only in requests it
//! inspects and policy allowed. Values are [`Secret`]s: never in a log, an error or a file.

mod env_file;
mod substitute;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use crate::config::Secret;
use crate::gateway::provider::ProviderEnvironment;
use crate::shutdown::Shutdown;
use crate::volume::ChildEnv;
use crate::{Exit, ExitStatus};

pub use env_file::parse_env_file;

/// What every placeholder starts with; the key follows.
pub const PLACEHOLDER_PREFIX: &str = "openshell:resolve:env:";

/// The deny code of a request whose credentials could not be swapped.
pub const DENY_CODE: &str = "credential_unresolved";

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
        "credential_unresolved: a placeholder in {place} is not a whole value, `Scheme <placeholder>`, a Basic user or password, or a whole query value"
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
}

impl CredentialError {
    /// Whether this error refuses one request (403 `credential_unresolved`) rather than a load.
    pub fn is_request_error(&self) -> bool {
        matches!(self, Self::Unresolved { .. } | Self::Misplaced { .. } | Self::Unusable { .. })
    }
}

impl ExitStatus for CredentialError {
    fn exit_status(&self) -> Exit {
        if self.is_request_error() { Exit::Internal } else { Exit::Usage }
    }
}

/// One consistent set of credentials.
#[derive(Debug, Default)]
pub struct Snapshot {
    values: BTreeMap<String, Secret>,
    non_secret: BTreeSet<String>,
}

impl Snapshot {
    /// Checks each key and value; `place` says where they came from, for errors.
    fn new(
        values: BTreeMap<String, Secret>,
        non_secret: BTreeSet<String>,
        place: &str,
    ) -> Result<Self, CredentialError> {
        for (key, value) in &values {
            check_entry(key, value.expose(), place)?;
        }
        Ok(Snapshot { values, non_secret })
    }

    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&Secret> {
        self.values.get(key)
    }

    /// Every key, in order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.values.keys().map(String::as_str)
    }
}

/// Refuses a key that is not a variable name and a value with CR, LF or NUL.
fn check_entry(key: &str, value: &str, place: &str) -> Result<(), CredentialError> {
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

/// The file identity `reload_if_changed` compares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Stamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Result<Stamp, CredentialError> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|source| CredentialError::Read { path: path.to_owned(), source })?;
    Ok(Stamp { modified: meta.modified().ok(), len: meta.len(), inode: meta.ino() })
}

/// The current credentials, replaced as a whole (readers keep the snapshot they took).
#[derive(Debug)]
pub struct SecretStore {
    current: RwLock<Arc<Snapshot>>,
    file: Option<(PathBuf, Mutex<Stamp>)>,
}

impl SecretStore {
    /// A store with no credentials (every placeholder is unresolved).
    pub fn empty() -> Self {
        SecretStore { current: RwLock::new(Arc::default()), file: None }
    }

    /// Loads `OPENSHELL_PROVIDER_ENV_FILE` (format: [`parse_env_file`]); every key is secret.
    pub fn from_file(path: &Path) -> Result<Self, CredentialError> {
        let before = stamp(path)?;
        let snapshot = load_file(path)?;
        Ok(SecretStore { current: RwLock::new(Arc::new(snapshot)), file: Some((path.to_owned(), Mutex::new(before))) })
    }

    /// From the gateway's provider environment (its non-secret keys keep their values).
    pub fn from_provider(env: &ProviderEnvironment) -> Result<Self, CredentialError> {
        let store = SecretStore::empty();
        store.install(env)?;
        Ok(store)
    }

    /// Replaces the credentials with a new provider environment; on error nothing changes.
    pub fn install(&self, env: &ProviderEnvironment) -> Result<(), CredentialError> {
        let place = "the gateway's provider environment";
        let snapshot = Snapshot::new(env.environment.clone(), env.non_secret_keys.clone(), place)?;
        self.swap(snapshot);
        Ok(())
    }

    /// Re-reads the env file when its modification time, length or inode changed. `Ok(true)`:
    /// new credentials are in force. On error the previous ones stay, and the same file
    /// content is not retried (so a bad file is reported once). No file: `Ok(false)`.
    pub fn reload_if_changed(&self) -> Result<bool, CredentialError> {
        let Some((path, last)) = &self.file else { return Ok(false) };
        let now = stamp(path)?;
        {
            let mut last = last.lock().unwrap_or_else(PoisonError::into_inner);
            if *last == now {
                return Ok(false);
            }
            *last = now;
        }
        self.swap(load_file(path)?);
        Ok(true)
    }

    /// Calls [`Self::reload_if_changed`] every `interval` until shutdown, logging each reload
    /// (key count only) and each failure (the last good credentials stay).
    pub async fn run_reloader(self: Arc<Self>, interval: Duration, shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = shutdown.signalled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            match self.reload_if_changed() {
                Ok(true) => tracing::info!(keys = self.snapshot().values.len(), "provider credentials reloaded"),
                Ok(false) => {}
                Err(e) => tracing::warn!("kept the previous provider credentials: {e}"),
            }
        }
    }

    /// The credentials in force now.
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// `child-env.json`: each secret key mapped to its placeholder, non-secret keys to their value.
    pub fn child_env(&self) -> ChildEnv {
        let snapshot = self.snapshot();
        snapshot
            .values
            .iter()
            .map(|(k, v)| {
                let shown = if snapshot.non_secret.contains(k) { v.expose().to_owned() } else { placeholder(k) };
                (k.clone(), shown)
            })
            .collect()
    }

    /// Swaps placeholders in the request head for their values (header values, Basic
    /// credentials, query values) using one snapshot. Returns the keys used, for the audit
    /// line. On error the request must not be forwarded; the head may be partly changed.
    pub fn substitute(&self, parts: &mut http::request::Parts) -> Result<Vec<String>, CredentialError> {
        substitute::request(&self.snapshot(), parts)
    }

    fn swap(&self, snapshot: Snapshot) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(snapshot);
    }
}

fn load_file(path: &Path) -> Result<Snapshot, CredentialError> {
    let bytes = std::fs::read(path).map_err(|source| CredentialError::Read { path: path.to_owned(), source })?;
    let entries = parse_env_file(&bytes, path)?;
    let values = entries.into_iter().map(|(k, _, v)| (k, v)).collect();
    Ok(Snapshot { values, non_secret: BTreeSet::new() })
}

#[cfg(test)]
mod tests;
