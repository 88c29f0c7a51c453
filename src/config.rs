//! Configuration: command-line flag > `OPENSHELL_*` environment variable > TOML file
//! (`--config` / `OPENSHELL_SANDBOX_CONFIG`) > built-in default, resolved into typed
//! structs before anything binds or spawns. Secrets are accepted from the environment
//! or a file path only, never from the TOML file or the command line.

mod agent;
mod dirs;
mod gateway;
pub mod layers;
mod proxy;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};

pub use agent::{AgentConfig, SeccompChoice};
pub use gateway::TOKEN_ENV;
pub use gateway::{GatewayConfig, GatewayEndpoint, GatewayTls, TokenSource};
pub use layers::{FileConfig, LogFormat, ValidationFailureMode};
pub use proxy::{DnsConfig, ProxyConfig, ProxyLimits};

use crate::{Exit, ExitStatus};

/// Default shared TLS volume.
pub const DEFAULT_TLS_DIR: &str = "/openshell-tls";

/// Failures of reading or resolving the configuration. All exit 64.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The TOML file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML file is malformed, has an unknown key or a bad value.
    #[error("config file {path}: {message}")]
    ParseFile {
        /// The file.
        path: PathBuf,
        /// The parser's message (it names the key and line).
        message: String,
    },
    /// A secret was put where secrets are not accepted.
    #[error("{place} holds `{key}`, a secret; secrets are not accepted there: {fix}")]
    SecretNotAllowed {
        /// Where it was found ("config file X", "the command line").
        place: String,
        /// The key or flag.
        key: String,
        /// Where it belongs instead.
        fix: &'static str,
    },
    /// A value is present but unusable.
    #[error("{setting}: {message}")]
    Invalid {
        /// The setting, named as flag / environment variable / file key.
        setting: &'static str,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The proxy's private state dir (the CA key) and the shared TLS dir overlap.
    #[error(
        "OPENSHELL_PROXY_STATE_DIR (--state-dir) {} {relation} OPENSHELL_TLS_DIR (--tls-dir) {} (resolved: {} and {}); the state dir holds the CA key and the TLS dir is the volume the agent reads: give them two separate directories, neither inside the other",
        state_dir.display(), tls_dir.display(), state.display(), tls.display()
    )]
    DirsOverlap {
        /// The state dir as set.
        state_dir: PathBuf,
        /// The state dir resolved.
        state: PathBuf,
        /// How they overlap ("is inside", ...).
        relation: &'static str,
        /// The TLS dir as set.
        tls_dir: PathBuf,
        /// The TLS dir resolved.
        tls: PathBuf,
    },
    /// A setting that this mode needs is missing.
    #[error("{message}")]
    Missing {
        /// What is missing and how to provide it.
        message: String,
    },
}

impl ExitStatus for ConfigError {
    fn exit_status(&self) -> Exit {
        Exit::Usage
    }
}

/// A secret value: never printed, never serialised in clear.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("[redacted]")
    }
}

/// Settings both modes share, resolved.
#[derive(Clone, Debug, Serialize)]
pub struct CommonConfig {
    /// Log line format. Default text.
    pub log_format: LogFormat,
    /// Log filter directive. Default `info`.
    pub log_level: String,
    /// File that audit events are appended to as OCSF JSON lines. Default none.
    pub ocsf_file: Option<PathBuf>,
    /// Shared TLS volume. Default `/openshell-tls`.
    pub tls_dir: PathBuf,
    /// Local policy file; `None` means the gateway's policy.
    pub policy_file: Option<PathBuf>,
    /// Replacement Rego rules; `None` means the built-in rules.
    pub policy_rules: Option<PathBuf>,
    /// Interval of policy polls and file checks. Default 10 s.
    #[serde(serialize_with = "as_secs")]
    pub policy_poll_interval: Duration,
}

impl CommonConfig {
    /// Resolves the shared settings from the flags/env layer and the file.
    pub fn resolve(log: &layers::LogLayer, cli: &layers::CommonLayer, file: &FileConfig) -> Self {
        CommonConfig {
            log_format: log.log_format.or(file.log.log_format).unwrap_or_default(),
            log_level: log.log_level.clone().or_else(|| file.log.log_level.clone()).unwrap_or_else(|| "info".into()),
            ocsf_file: log.ocsf_file.clone().or_else(|| file.log.ocsf_file.clone()),
            tls_dir: cli
                .tls_dir
                .clone()
                .or_else(|| file.sandbox.tls_dir.clone())
                .unwrap_or_else(|| DEFAULT_TLS_DIR.into()),
            policy_file: cli.policy.clone().or_else(|| file.sandbox.policy.clone()),
            policy_rules: cli.policy_rules.clone().or_else(|| file.sandbox.policy_rules.clone()),
            policy_poll_interval: secs(cli.policy_poll_interval_secs.or(file.sandbox.policy_poll_interval_secs), 10),
        }
    }
}

/// A duration from an optional non-zero number of seconds, or the default.
pub(crate) fn secs(value: Option<std::num::NonZeroU64>, default: u64) -> Duration {
    Duration::from_secs(value.map_or(default, |v| v.get()))
}

pub(crate) fn as_secs<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(d.as_secs())
}

/// TOML keys that are secrets, and where each belongs instead.
const SECRET_KEYS: &[(&str, &str)] = &[
    (
        "token",
        "set OPENSHELL_SANDBOX_TOKEN, or put the token in a file and set [gateway] token_file / OPENSHELL_SANDBOX_TOKEN_FILE",
    ),
    (
        "sandbox_token",
        "set OPENSHELL_SANDBOX_TOKEN, or put the token in a file and set [gateway] token_file / OPENSHELL_SANDBOX_TOKEN_FILE",
    ),
    ("api_key", "provider credentials come from the gateway or from the file named by OPENSHELL_PROVIDER_ENV_FILE"),
    ("secret", "provider credentials come from the gateway or from the file named by OPENSHELL_PROVIDER_ENV_FILE"),
    ("password", "provider credentials come from the gateway or from the file named by OPENSHELL_PROVIDER_ENV_FILE"),
    ("private_key", "give the path of a key file instead ([gateway] tls_key / OPENSHELL_TLS_KEY)"),
];

/// Reads the TOML file: refuses secrets (naming where they belong), then parses it into
/// the typed layers, refusing unknown keys. No file gives an empty configuration.
pub fn read_file(path: Option<&Path>) -> Result<FileConfig, ConfigError> {
    let Some(path) = path else { return Ok(FileConfig::default()) };
    let text =
        std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile { path: path.to_owned(), source })?;
    parse_file(&text, path)
}

fn parse_file(text: &str, path: &Path) -> Result<FileConfig, ConfigError> {
    let parse_error = |e: toml::de::Error| ConfigError::ParseFile {
        path: path.to_owned(),
        message: e.to_string().trim_end().to_owned(),
    };
    let table: toml::Table = toml::from_str(text).map_err(parse_error)?;
    if let Some((key, fix)) = find_secret(&table, "") {
        return Err(ConfigError::SecretNotAllowed { place: format!("config file {}", path.display()), key, fix });
    }
    toml::from_str(text).map_err(parse_error)
}

fn find_secret(table: &toml::Table, prefix: &str) -> Option<(String, &'static str)> {
    for (key, value) in table {
        let full = if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
        if let Some((_, fix)) = SECRET_KEYS.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)) {
            return Some((full, fix));
        }
        if let toml::Value::Table(inner) = value
            && let Some(found) = find_secret(inner, &full)
        {
            return Some(found);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        parse_file(text, Path::new("test.toml"))
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = parse("[proxy]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        let err = parse("[proxi]\n").unwrap_err().to_string();
        assert!(err.contains("proxi"), "{err}");
    }

    #[test]
    fn secrets_are_refused_with_their_place() {
        let err = parse("[gateway]\nsandbox_token = \"eyJ\"\n").unwrap_err().to_string();
        assert!(err.contains("gateway.sandbox_token"), "{err}");
        assert!(err.contains("OPENSHELL_SANDBOX_TOKEN"), "{err}");
        assert!(!err.contains("eyJ"), "the secret itself must not be echoed: {err}");
        let err = parse("[proxy]\napi_key = \"sk-1\"\n").unwrap_err().to_string();
        assert!(err.contains("OPENSHELL_PROVIDER_ENV_FILE"), "{err}");
    }

    #[test]
    fn bad_values_name_key_and_line() {
        let err = parse("[proxy]\nheader_timeout_secs = 0\n").unwrap_err().to_string();
        assert!(err.contains("header_timeout_secs") && err.contains("line 2"), "{err}");
        let err = parse("[proxy]\nlisten = \"nope\"\n").unwrap_err().to_string();
        assert!(err.contains("listen"), "{err}");
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("hunter2")), "Secret([redacted])");
    }
}
