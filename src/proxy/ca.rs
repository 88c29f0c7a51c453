//! The sandbox CA: loaded from `ca.pem` in the shared TLS dir and its key from the
//! proxy's private state dir when both exist, else generated (rcgen, ECDSA P-256) and
//! persisted. The key never goes to the shared dir, which the agent can read.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

use crate::volume::{self, CA_FILE, VolumeError};
use crate::{Exit, ExitStatus};

/// The CA key's file name in the state dir.
pub const CA_KEY_FILE: &str = "ca-key.pem";
/// The CA's common name.
pub const CA_COMMON_NAME: &str = "OpenShell Sandbox CA";
/// How long a generated CA is valid.
const VALID_YEARS: i32 = 10;

/// Failures of loading, generating or persisting the CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    /// The state dir could not be created or secured.
    #[error("cannot prepare the proxy state dir {path} (OPENSHELL_PROXY_STATE_DIR): {source}")]
    StateDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A CA file exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// A CA file exists but does not hold what it should.
    #[error("{path} is not usable as the sandbox CA: {message}; remove it (and its pair) to generate a new CA")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// rcgen failed to generate the key or certificate.
    #[error("cannot generate the sandbox CA: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be written.
    #[error(transparent)]
    Write(#[from] VolumeError),
}

impl ExitStatus for CaError {
    fn exit_status(&self) -> Exit {
        match self {
            CaError::Generate(_) => Exit::Internal,
            _ => Exit::Usage,
        }
    }
}

/// The sandbox CA: certificate (PEM and DER) and private key (PEM).
pub struct CertificateAuthority {
    cert_pem: String,
    cert_der: Vec<u8>,
    key_pem: String,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority").field("sha256", &self.fingerprint_sha256()).finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// Loads `tls_dir/ca.pem` with `state_dir/ca-key.pem` when both exist; otherwise
    /// generates a new CA, writes the key (0600) to `state_dir` and `ca.pem` to `tls_dir`.
    pub fn load_or_generate(state_dir: &Path, tls_dir: &Path) -> Result<Self, CaError> {
        prepare_state_dir(state_dir)?;
        let cert_path = tls_dir.join(CA_FILE);
        let key_path = state_dir.join(CA_KEY_FILE);
        if cert_path.exists() && key_path.exists() {
            let ca = Self::load(&cert_path, &key_path)?;
            tracing::info!(cert = %cert_path.display(), sha256 = %ca.fingerprint_sha256(), "sandbox CA loaded");
            return Ok(ca);
        }
        let ca = Self::generate()?;
        volume::write_atomic(state_dir, CA_KEY_FILE, ca.key_pem.as_bytes(), 0o600)?;
        volume::write_atomic(tls_dir, CA_FILE, ca.cert_pem.as_bytes(), 0o644)?;
        tracing::info!(cert = %cert_path.display(), sha256 = %ca.fingerprint_sha256(), "sandbox CA generated");
        Ok(ca)
    }

    fn load(cert_path: &Path, key_path: &Path) -> Result<Self, CaError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| CaError::Read { path: path.to_owned(), source })
        };
        let malformed = |path: &Path, message: String| CaError::Malformed { path: path.to_owned(), message };
        let cert_pem = read(cert_path)?;
        let key_pem = read(key_path)?;
        let cert_der = CertificateDer::from_pem_slice(cert_pem.as_bytes())
            .map_err(|e| malformed(cert_path, format!("no PEM certificate ({e})")))?
            .to_vec();
        let key = KeyPair::from_pem(&key_pem).map_err(|e| malformed(key_path, format!("no PEM private key ({e})")))?;
        // The certificate must carry this key, or every leaf it signs would fail to verify.
        let spki = key.public_key_raw();
        if !contains(&cert_der, spki) {
            return Err(malformed(cert_path, format!("its public key does not match {}", key_path.display())));
        }
        let mode = std::fs::metadata(key_path).map(|m| m.permissions().mode() & 0o777).unwrap_or(0);
        if mode & 0o077 != 0 {
            tracing::warn!(path = %key_path.display(), mode = format!("{mode:o}"), "CA key is readable by others; setting 0600");
            std::fs::set_permissions(key_path, std::fs::Permissions::from_mode(0o600))
                .map_err(|source| CaError::Read { path: key_path.to_owned(), source })?;
        }
        Ok(CertificateAuthority { cert_pem, cert_der, key_pem })
    }

    fn generate() -> Result<Self, CaError> {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, CA_COMMON_NAME);
        params.distinguished_name.push(DnType::OrganizationName, "OpenShell");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let (year, month, day) = today();
        params.not_before = rcgen::date_time_ymd(year, month, day) - std::time::Duration::from_secs(86_400);
        params.not_after = rcgen::date_time_ymd(year + VALID_YEARS, month, day.min(28));
        let cert = params.self_signed(&key)?;
        Ok(CertificateAuthority { cert_pem: cert.pem(), cert_der: cert.der().to_vec(), key_pem: key.serialize_pem() })
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The CA certificate, DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The CA private key, PEM (PKCS#8). Secret: never log it, never write it to the shared dir.
    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// SHA-256 of the certificate's DER: upper-case hex pairs joined by `:`.
    pub fn fingerprint_sha256(&self) -> String {
        let digest = Sha256::digest(&self.cert_der);
        digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
    }
}

/// Creates the state dir (0700) if needed.
fn prepare_state_dir(dir: &Path) -> Result<(), CaError> {
    let fail = |source| CaError::StateDir { path: dir.to_owned(), source };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(fail)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(fail)?;
    }
    Ok(())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && haystack.windows(needle.len()).any(|w| w == needle)
}

/// Today's UTC date, from the RFC 3339 clock.
fn today() -> (i32, u8, u8) {
    let now = volume::now_rfc3339();
    let field = |range: std::ops::Range<usize>| now.get(range).and_then(|s| s.parse().ok());
    match (field(0..4), field(5..7), field(8..10)) {
        (Some(y), Some(m), Some(d)) => (y, m as u8, d as u8),
        _ => (2025, 1, 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_then_reused_with_a_private_key_file() {
        let state = tempfile::tempdir().unwrap();
        let tls = tempfile::tempdir().unwrap();
        let first = CertificateAuthority::load_or_generate(state.path(), tls.path()).unwrap();
        let mode = std::fs::metadata(state.path().join(CA_KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(!tls.path().join(CA_KEY_FILE).exists(), "the key never goes to the shared dir");
        assert_eq!(std::fs::read_to_string(tls.path().join(CA_FILE)).unwrap(), first.cert_pem());
        let second = CertificateAuthority::load_or_generate(state.path(), tls.path()).unwrap();
        assert_eq!(first.fingerprint_sha256(), second.fingerprint_sha256());
        assert_eq!(first.key_pem(), second.key_pem());
        let fp = first.fingerprint_sha256();
        assert_eq!(fp.len(), 32 * 3 - 1);
        assert!(fp.chars().all(|c| c == ':' || c.is_ascii_digit() || c.is_ascii_uppercase()), "{fp}");
    }

    #[test]
    fn a_key_that_does_not_match_is_refused() {
        let state = tempfile::tempdir().unwrap();
        let tls = tempfile::tempdir().unwrap();
        CertificateAuthority::load_or_generate(state.path(), tls.path()).unwrap();
        let other = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(state.path().join(CA_KEY_FILE), other.serialize_pem()).unwrap();
        let err = CertificateAuthority::load_or_generate(state.path(), tls.path()).unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
    }

    #[test]
    fn a_missing_key_generates_a_new_ca() {
        let state = tempfile::tempdir().unwrap();
        let tls = tempfile::tempdir().unwrap();
        let first = CertificateAuthority::load_or_generate(state.path(), tls.path()).unwrap();
        std::fs::remove_file(state.path().join(CA_KEY_FILE)).unwrap();
        let second = CertificateAuthority::load_or_generate(state.path(), tls.path()).unwrap();
        assert_ne!(first.fingerprint_sha256(), second.fingerprint_sha256());
    }
}
