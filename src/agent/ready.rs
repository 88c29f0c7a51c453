//! Step 1 of agent mode: wait, bounded, for the proxy's `.ready` and the CA bundle in the
//! shared TLS dir, so no child starts before its proxy and CA exist.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::volume::{self, CA_BUNDLE_FILE, READY_FILE};
use crate::{Exit, ExitStatus};

/// How often the shared dir is looked at while waiting.
const POLL: Duration = Duration::from_millis(100);

/// The proxy did not become ready in time.
#[derive(Debug, thiserror::Error)]
#[error(
    "the proxy is not ready after {}s: in {}, {missing}; check that the proxy sidecar runs and shares this \
     directory (OPENSHELL_TLS_DIR), or raise OPENSHELL_PROXY_READY_TIMEOUT_SECS",
    waited.as_secs(),
    dir.display()
)]
pub struct ReadyError {
    /// The shared TLS dir.
    pub dir: PathBuf,
    /// What was missing at the deadline.
    pub missing: String,
    /// How long we waited.
    pub waited: Duration,
}

impl ExitStatus for ReadyError {
    fn exit_status(&self) -> Exit {
        Exit::Unavailable
    }
}

/// Blocks until `dir` holds a valid `.ready` and `ca-bundle.pem`, or `timeout` passes.
/// When they are not there at the first look, says once what it waits for.
pub fn wait_ready(dir: &Path, timeout: Duration) -> Result<(), ReadyError> {
    let started = Instant::now();
    let mut said = false;
    loop {
        let missing = match what_is_missing(dir) {
            None => return Ok(()),
            Some(missing) => missing,
        };
        if !said {
            said = true;
            tracing::info!(
                "waiting for the proxy's {READY_FILE} and {CA_BUNDLE_FILE} in {} (now: {missing}), \
                 at most {}s (OPENSHELL_PROXY_READY_TIMEOUT_SECS)",
                dir.display(),
                timeout.as_secs()
            );
        }
        if started.elapsed() >= timeout {
            return Err(ReadyError { dir: dir.to_owned(), missing, waited: timeout });
        }
        std::thread::sleep(POLL.min(timeout.saturating_sub(started.elapsed())));
    }
}

/// `None` when ready; otherwise what is missing, in words.
fn what_is_missing(dir: &Path) -> Option<String> {
    if !dir.join(READY_FILE).exists() {
        return Some(format!("{READY_FILE} does not exist"));
    }
    if let Err(e) = volume::read_ready(dir) {
        return Some(format!("{READY_FILE} cannot be used ({e})"));
    }
    if !dir.join(CA_BUNDLE_FILE).exists() {
        return Some(format!("{CA_BUNDLE_FILE} does not exist (while {READY_FILE} does)"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::volume::{Ready, now_rfc3339, write_ready};

    fn ready() -> Ready {
        Ready {
            pid: 1,
            proxy_listen: "127.0.0.1:3128".parse().unwrap(),
            forward_listen: None,
            ca_sha256: "AB".into(),
            time: now_rfc3339(),
        }
    }

    #[test]
    fn times_out_naming_the_missing_ready_file() {
        let dir = tempfile::tempdir().unwrap();
        let started = Instant::now();
        let err = wait_ready(dir.path(), Duration::from_millis(250)).unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(250));
        let text = err.to_string();
        assert!(text.contains(".ready does not exist"), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        assert_eq!(err.exit_status(), Exit::Unavailable);
    }

    #[test]
    fn names_the_missing_ca_bundle() {
        let dir = tempfile::tempdir().unwrap();
        write_ready(dir.path(), &ready()).unwrap();
        let err = wait_ready(dir.path(), Duration::from_millis(150)).unwrap_err().to_string();
        assert!(err.contains("ca-bundle.pem does not"), "{err}");
    }

    #[test]
    fn returns_once_both_files_appear() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_owned();
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            std::fs::write(path.join(CA_BUNDLE_FILE), "pem").unwrap();
            write_ready(&path, &ready()).unwrap();
        });
        wait_ready(dir.path(), Duration::from_secs(10)).unwrap();
        writer.join().unwrap();
    }
}
