//! Where a directory setting really points, before anything is created: symbolic links
//! followed (dangling ones too) and `..` applied as `mkdir -p` will, so the proxy's private
//! state dir (the CA key) can be kept apart from the shared TLS dir the agent reads.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

use super::ConfigError;

/// Most symbolic links followed while resolving one path (Linux's own limit).
const MAX_LINKS: usize = 40;

/// The absolute path `path` stands for: every existing component with its symbolic links
/// followed (a link whose target does not exist yet included, since creating the
/// directory would create its target), the missing rest appended, `.` and `..` applied.
pub fn resolve(path: &Path) -> io::Result<PathBuf> {
    let parts = |p: &Path| p.components().rev().map(|c| c.as_os_str().to_owned()).collect::<Vec<OsString>>();
    let mut pending = parts(&std::path::absolute(path)?);
    let mut resolved = PathBuf::from("/");
    let mut links = 0;
    while let Some(part) = pending.pop() {
        match part.to_str() {
            Some("/") => resolved = PathBuf::from("/"),
            Some(".") => {}
            Some("..") => _ = resolved.pop(),
            _ => {
                let next = resolved.join(&part);
                match std::fs::symlink_metadata(&next) {
                    Ok(meta) if meta.file_type().is_symlink() => {
                        links += 1;
                        if links > MAX_LINKS {
                            return Err(io::Error::from_raw_os_error(libc::ELOOP));
                        }
                        pending.extend(parts(&std::fs::read_link(&next)?));
                    }
                    _ => resolved = next,
                }
            }
        }
    }
    Ok(resolved)
}

/// Refuses a state dir that is the TLS dir, lies inside it, or contains it, once both are
/// resolved: the CA key must never be in the shared volume, and the shared volume's mount
/// point must not lie in the private dir (creating it would also leave the state dir
/// without its 0700 mode).
pub fn keep_apart(state_dir: &Path, tls_dir: &Path) -> Result<(), ConfigError> {
    let resolve = |path: &Path, setting| {
        resolve(path)
            .map_err(|e| ConfigError::Invalid { setting, message: format!("cannot resolve {}: {e}", path.display()) })
    };
    let state = resolve(state_dir, "OPENSHELL_PROXY_STATE_DIR (--state-dir)")?;
    let tls = resolve(tls_dir, "OPENSHELL_TLS_DIR (--tls-dir)")?;
    let relation = if state == tls {
        "is the same directory as"
    } else if state.starts_with(&tls) {
        "is inside"
    } else if tls.starts_with(&state) {
        "contains"
    } else {
        return Ok(());
    };
    Err(ConfigError::DirsOverlap { state_dir: state_dir.to_owned(), state, relation, tls_dir: tls_dir.to_owned(), tls })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn existing_prefixes_are_canonical_and_the_missing_rest_is_appended() {
        let dir = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(dir.path()).unwrap();
        std::fs::create_dir(root.join("tls")).unwrap();
        symlink(root.join("tls"), root.join("link")).unwrap();
        symlink("tls/deeper", root.join("relative")).unwrap();
        symlink(root.join("not-yet/x"), root.join("dangling")).unwrap();
        symlink(root.join("loop"), root.join("loop")).unwrap();
        let r = |p: &str| resolve(&root.join(p)).unwrap();
        assert_eq!(r("tls"), root.join("tls"));
        assert_eq!(r("link/keys/a"), root.join("tls/keys/a"));
        assert_eq!(r("missing/../tls/./keys"), root.join("tls/keys"));
        assert_eq!(r("relative/k"), root.join("tls/deeper/k"));
        assert_eq!(r("dangling/k"), root.join("not-yet/x/k"));
        assert_eq!(r("link/.."), root);
        assert_eq!(resolve(&root.join("loop/x")).unwrap_err().raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn the_state_dir_and_the_tls_dir_must_be_apart() {
        let dir = tempfile::tempdir().unwrap();
        let d = |p: &str| dir.path().join(p);
        std::fs::create_dir(d("tls")).unwrap();
        symlink(d("tls"), d("link")).unwrap();
        for (state, tls, relation) in [
            ("tls", "tls", "is the same directory as"),
            ("tls/keys", "tls", "is inside"),
            ("state/../tls/keys", "tls", "is inside"),
            ("link/keys", "tls", "is inside"),
            ("state", "link/../state/shared", "contains"),
            ("tls/", "link", "is the same directory as"),
        ] {
            let err = keep_apart(&d(state), &d(tls)).expect_err(state).to_string();
            assert!(err.contains(relation), "{state} / {tls}: {err}");
        }
        for (state, tls) in [("state", "tls"), ("tls-state", "tls"), ("state", "tlsx")] {
            assert!(keep_apart(&d(state), &d(tls)).is_ok(), "{state} / {tls}");
        }
    }
}
