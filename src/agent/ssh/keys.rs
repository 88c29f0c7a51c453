//! SSH key material: the Ed25519 host key (loaded, or created with mode 0600, or fresh
//! for this run) and the public keys the TCP listener accepts (authorized_keys).

use std::io::Read;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use russh::keys::ssh_key::LineEnding;
use russh::keys::ssh_key::private::Ed25519Keypair;
use russh::keys::{PrivateKey, PublicKey};

use super::SshError;

/// The host key at `path`, created there when missing; a fresh key when `path` is `None`.
pub fn host_key(path: Option<&Path>) -> Result<PrivateKey, SshError> {
    let Some(path) = path else { return generate() };
    let bad = |message: String| SshError::HostKey { path: path.to_owned(), message };
    match std::fs::read(path) {
        Ok(pem) => {
            let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the SSH host key is readable by others (mode {mode:o}); chmod 600 it");
            }
            PrivateKey::from_openssh(&pem).map_err(|e| bad(format!("not an OpenSSH private key: {e}")))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = generate()?;
            let pem = key.to_openssh(LineEnding::LF).map_err(|e| bad(e.to_string()))?;
            write_new(path, pem.as_bytes()).map_err(|e| bad(format!("cannot create it: {e}")))?;
            tracing::info!(path = %path.display(), "created the SSH host key");
            Ok(key)
        }
        Err(e) => Err(bad(format!("cannot read it: {e}"))),
    }
}

/// A new Ed25519 key from the kernel's random source.
fn generate() -> Result<PrivateKey, SshError> {
    let mut seed = [0u8; 32];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut seed))
        .map_err(|e| SshError::HostKey { path: "/dev/urandom".into(), message: e.to_string() })?;
    Ok(PrivateKey::from(Ed25519Keypair::from_seed(&seed)))
}

/// Creates `path` (never over an existing file) with mode 0600.
fn write_new(path: &Path, contents: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)?;
    }
    let mut file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.write_all(contents)?;
    file.sync_all()
}

/// The public keys of an authorized_keys file (options are not supported and refused).
pub fn authorized_keys(path: &Path) -> Result<Vec<PublicKey>, SshError> {
    let bad = |message: String| SshError::AuthorizedKeys { path: path.to_owned(), message };
    let text = std::fs::read_to_string(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let mut keys = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry: russh::keys::ssh_key::authorized_keys::Entry =
            line.parse().map_err(|e| bad(format!("line {}: not a public key: {e}", n + 1)))?;
        if !entry.config_opts().is_empty() {
            return Err(bad(format!("line {}: key options are not supported; remove them", n + 1)));
        }
        keys.push(entry.public_key().clone());
    }
    if keys.is_empty() {
        return Err(bad("it holds no key: add the public keys allowed on the TCP listener".into()));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_host_key_is_created_0600_and_loaded_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/host_ed25519");
        let first = host_key(Some(&path)).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = host_key(Some(&path)).unwrap();
        assert_eq!(first.public_key(), again.public_key());
        assert_ne!(host_key(None).unwrap().public_key(), first.public_key());
        std::fs::write(&path, "junk").unwrap();
        assert!(host_key(Some(&path)).unwrap_err().to_string().contains("host_ed25519"));
    }

    #[test]
    fn authorized_keys_are_parsed_and_options_refused() {
        let dir = tempfile::tempdir().unwrap();
        let key = generate().unwrap().public_key().to_openssh().unwrap();
        let path = dir.path().join("authorized_keys");
        std::fs::write(&path, format!("# comment\n\n{key} me@host\n")).unwrap();
        assert_eq!(authorized_keys(&path).unwrap().len(), 1);
        std::fs::write(&path, format!("no-pty {key} me@host\n")).unwrap();
        let err = authorized_keys(&path).unwrap_err().to_string();
        assert!(err.contains("options"), "{err}");
        std::fs::write(&path, "\n").unwrap();
        assert!(authorized_keys(&path).unwrap_err().to_string().contains("no key"));
    }
}
