//! The shared TLS volume between the two containers: the proxy writes, the agent reads
//! (read-only mount). File names, the `.ready` and `child-env.json` formats, and the
//! write-to-temporary-then-rename discipline live here so both sides agree. Nothing
//! secret is ever written here: the agent container can read every file.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The sandbox CA certificate (PEM).
pub const CA_FILE: &str = "ca.pem";
/// System roots plus the sandbox CA (PEM): what agent tools should trust.
pub const CA_BUNDLE_FILE: &str = "ca-bundle.pem";
/// Placeholder credentials for agent children (JSON object of variable to value).
pub const CHILD_ENV_FILE: &str = "child-env.json";
/// The readiness sentinel, written last.
pub const READY_FILE: &str = ".ready";

/// Contents of `.ready`: written only after every listener is bound.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ready {
    /// Process id of the proxy.
    pub pid: u32,
    /// Address the proxy listener is bound to.
    pub proxy_listen: SocketAddr,
    /// Address the gateway forward is bound to, when there is a gateway.
    pub forward_listen: Option<SocketAddr>,
    /// SHA-256 of the CA certificate's DER, upper-case hex pairs joined by `:`.
    pub ca_sha256: String,
    /// When `.ready` was written, RFC 3339 UTC.
    pub time: String,
}

/// Contents of `child-env.json`: each provider key mapped to its placeholder
/// (`openshell:resolve:env:KEY`), non-secret keys to their values.
pub type ChildEnv = BTreeMap<String, String>;

/// Failures of reading or writing the shared volume.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A file could not be written (an unwritable or missing volume).
    #[error("cannot write {path} in the shared TLS dir: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A file is not in the expected format.
    #[error("{path} is malformed: {message}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Writes `dir/name` atomically: a temporary file in the same directory, flushed to disk,
/// then renamed over the target, so a reader sees the old file or the new one, never half.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8], mode: u32) -> Result<(), VolumeError> {
    let target = dir.join(name);
    let temp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let fail = |source| VolumeError::Write { path: target.clone(), source };
    let result = (|| {
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&temp)?;
        // The mode given to open() is filtered by the umask; set it exactly.
        file.set_permissions(std::fs::Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        std::fs::rename(&temp, &target)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map_err(fail)
}

/// Writes `.ready` (mode 0644).
pub fn write_ready(dir: &Path, ready: &Ready) -> Result<(), VolumeError> {
    let json = serde_json::to_vec_pretty(ready).expect("Ready serialises");
    write_atomic(dir, READY_FILE, &json, 0o644)
}

/// Removes `.ready`; a missing file is fine.
pub fn remove_ready(dir: &Path) -> Result<(), VolumeError> {
    let path = dir.join(READY_FILE);
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(VolumeError::Write { path, source: e }),
        _ => Ok(()),
    }
}

/// Reads and parses `.ready`.
pub fn read_ready(dir: &Path) -> Result<Ready, VolumeError> {
    read_json(&dir.join(READY_FILE))
}

/// Writes `child-env.json` (mode 0644).
pub fn write_child_env(dir: &Path, env: &ChildEnv) -> Result<(), VolumeError> {
    let json = serde_json::to_vec_pretty(env).expect("ChildEnv serialises");
    write_atomic(dir, CHILD_ENV_FILE, &json, 0o644)
}

/// Reads `child-env.json`, refusing names that are not environment variable names and
/// values that cannot be passed to a child (NUL).
pub fn read_child_env(dir: &Path) -> Result<ChildEnv, VolumeError> {
    let path = dir.join(CHILD_ENV_FILE);
    let bytes = std::fs::read(&path).map_err(|source| VolumeError::Read { path: path.clone(), source })?;
    parse_child_env(&path, &bytes)
}

/// The parse and checks of [`read_child_env`] on the file's bytes; `path` names it in
/// errors. Public for the fuzz target.
#[doc(hidden)]
pub fn parse_child_env(path: &Path, bytes: &[u8]) -> Result<ChildEnv, VolumeError> {
    let env: ChildEnv = parse_json(path, bytes)?;
    let bad_name = |k: &str| {
        k.is_empty()
            || k.starts_with(|c: char| c.is_ascii_digit())
            || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
    };
    if let Some(k) = env.keys().find(|k| bad_name(k)) {
        return Err(VolumeError::Malformed {
            path: path.to_owned(),
            message: format!("`{k}` is not an environment variable name"),
        });
    }
    if let Some(k) = env.iter().find(|(_, v)| v.contains('\0')).map(|(k, _)| k) {
        return Err(VolumeError::Malformed {
            path: path.to_owned(),
            message: format!("the value of `{k}` contains a NUL byte"),
        });
    }
    Ok(env)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, VolumeError> {
    let bytes = std::fs::read(path).map_err(|source| VolumeError::Read { path: path.to_owned(), source })?;
    parse_json(path, &bytes)
}

fn parse_json<T: serde::de::DeserializeOwned>(path: &Path, bytes: &[u8]) -> Result<T, VolumeError> {
    serde_json::from_slice(bytes).map_err(|e| VolumeError::Malformed { path: path.to_owned(), message: e.to_string() })
}

/// The current time as RFC 3339 UTC, for `.ready`.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_round_trips_and_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let ready = Ready {
            pid: 7,
            proxy_listen: "127.0.0.1:3128".parse().unwrap(),
            forward_listen: None,
            ca_sha256: "AB:CD".into(),
            time: now_rfc3339(),
        };
        write_ready(dir.path(), &ready).unwrap();
        assert_eq!(read_ready(dir.path()).unwrap(), ready);
        let mode = std::fs::metadata(dir.path().join(READY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        remove_ready(dir.path()).unwrap();
        remove_ready(dir.path()).unwrap();
        assert!(!dir.path().join(READY_FILE).exists());
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert!(leftovers.is_empty(), "no temporary file is left behind");
    }

    #[test]
    fn an_unwritable_dir_names_the_file() {
        let err = write_atomic(Path::new("/nonexistent/dir"), CA_FILE, b"x", 0o644).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/dir/ca.pem"), "{err}");
    }

    #[test]
    fn child_env_names_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let env: ChildEnv = [("API_KEY".to_owned(), "openshell:resolve:env:API_KEY".to_owned())].into();
        write_child_env(dir.path(), &env).unwrap();
        assert_eq!(read_child_env(dir.path()).unwrap(), env);
        std::fs::write(dir.path().join(CHILD_ENV_FILE), r#"{"BAD-NAME": "x"}"#).unwrap();
        assert!(read_child_env(dir.path()).unwrap_err().to_string().contains("`BAD-NAME`"));
    }
}
