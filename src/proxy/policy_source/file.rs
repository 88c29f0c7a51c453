//! The local policy file's reloader: polls the file, applies each changed version once it
//! has settled, and rejects an invalid one with the configured failure mode
//! (`OPENSHELL_POLICY_VALIDATION_FAILURE_MODE`).

use std::path::PathBuf;
use std::time::Duration;

use super::{PolicyHandle, load_engine};
use crate::config::ValidationFailureMode;
use crate::policy::RegoRules;
use crate::shutdown::Shutdown;
use crate::watch::{Change, WatchedFile, every};

/// Polls a local policy file and installs each valid new version once it has settled
/// ([`crate::watch::SETTLE`]).
#[derive(Debug)]
pub struct FileReloader {
    file: WatchedFile,
    rules: RegoRules,
    handle: PolicyHandle,
    interval: Duration,
    mode: ValidationFailureMode,
}

impl FileReloader {
    /// A reloader of `path`, whose current contents are already installed in `handle`;
    /// an invalid new version is rejected with `mode`.
    pub fn new(
        path: PathBuf,
        rules: RegoRules,
        handle: PolicyHandle,
        interval: Duration,
        mode: ValidationFailureMode,
    ) -> Self {
        FileReloader { file: WatchedFile::new(&path), rules, handle, interval, mode }
    }

    /// Checks the file once: changed contents that have settled become the next
    /// generation when valid; invalid ones are logged with every error and rejected with
    /// the failure mode (`fail_closed` quarantines). A file that cannot be read keeps the
    /// policy in force. Returns whether a new generation was installed.
    pub fn check_once(&mut self) -> bool {
        let change = self.file.check();
        let path = self.file.path();
        match change {
            Change::Same | Change::Settling => false,
            Change::Unreadable(e) => {
                tracing::error!(path = %path.display(), error = %e, "cannot read the policy file; keeping the last good policy");
                false
            }
            Change::New(_) => match load_engine(path, &self.rules, self.handle.next_generation()) {
                Ok(engine) => {
                    self.handle.install(engine);
                    true
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), "{e}");
                    self.handle.reject(&e.summary(), self.mode);
                    false
                }
            },
        }
    }

    /// Checks every interval until shutdown; while a change settles, once it has, so a
    /// change applies within one interval plus the settle time.
    pub async fn run(mut self, shutdown: Shutdown) {
        let ticks = every(self.interval, shutdown);
        while ticks.tick(self.file.settles_in()).await {
            self.check_once();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RETAIN: ValidationFailureMode = ValidationFailureMode::RetainLastValid;

    fn allow(host: &str) -> String {
        format!("version: 1\nnetwork_policies:\n  p:\n    endpoints:\n      - host: {host}\n        port: 443\n")
    }

    #[test]
    fn only_a_changed_valid_file_makes_a_new_generation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, allow("a.example.com")).unwrap();
        let rules = RegoRules::builtin();
        let handle = PolicyHandle::new(load_engine(&path, &rules, 1).unwrap());
        let mut reloader = FileReloader::new(path.clone(), rules, handle.clone(), Duration::from_secs(1), RETAIN);
        reloader.file = reloader.file.with_settle(Duration::ZERO);
        assert!(!reloader.check_once(), "unchanged contents are not reloaded");

        std::fs::write(&path, "version: 1\nnetwork_policies: [oops\n").unwrap();
        assert!(!reloader.check_once());
        assert_eq!(handle.current().generation(), 1);
        assert!(handle.current().network("a.example.com", 443).allow, "the last good policy stays");

        std::fs::remove_file(&path).unwrap();
        assert!(!reloader.check_once());
        std::fs::write(&path, allow("b.example.com")).unwrap();
        assert!(reloader.check_once());
        let current = handle.current();
        assert_eq!(current.generation(), 2);
        assert!(current.network("b.example.com", 443).allow);
        assert!(!current.network("a.example.com", 443).allow);
    }

    #[test]
    fn a_change_applies_only_once_it_has_stayed_the_same_for_the_settle_time() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, allow("a.example.com")).unwrap();
        let rules = RegoRules::builtin();
        let handle = PolicyHandle::new(load_engine(&path, &rules, 1).unwrap());
        let mut reloader = FileReloader::new(path.clone(), rules, handle.clone(), Duration::from_secs(1), RETAIN);
        reloader.file = reloader.file.with_settle(Duration::from_millis(200));
        // A writer half way: the prefix alone is valid YAML and a valid policy.
        std::fs::write(&path, "version: 1\n").unwrap();
        assert!(!reloader.check_once(), "a fresh change waits");
        std::fs::write(&path, allow("b.example.com")).unwrap();
        assert!(!reloader.check_once(), "a change that is still changing waits");
        std::thread::sleep(Duration::from_millis(250));
        assert!(reloader.check_once(), "a settled change applies");
        assert!(handle.current().network("b.example.com", 443).allow);
        assert_eq!(handle.current().generation(), 2, "the half-written version never applied");
    }

    #[test]
    fn under_fail_closed_an_invalid_file_quarantines_until_a_valid_one_loads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("policy.yaml");
        std::fs::write(&path, allow("a.example.com")).unwrap();
        let rules = RegoRules::builtin();
        let handle = PolicyHandle::new(load_engine(&path, &rules, 1).unwrap());
        let fail_closed = ValidationFailureMode::FailClosed;
        let mut reloader = FileReloader::new(path.clone(), rules, handle.clone(), Duration::from_secs(1), fail_closed);
        reloader.file = reloader.file.with_settle(Duration::ZERO);

        std::fs::write(&path, "version: 1\nnetwork_policies:\n  p: {endpoints: [{host: \"*\", port: 443}]}\n").unwrap();
        assert!(!reloader.check_once());
        let current = handle.current();
        let reason = current.quarantine().expect("quarantined").to_owned();
        assert!(
            reason.contains("invalid policy") && reason.contains("network_policies.p.endpoints[0].host"),
            "{reason}"
        );
        let decision = current.network("a.example.com", 443);
        assert_eq!((decision.allow, decision.reason.as_str()), (false, reason.as_str()), "the last good policy is off");

        std::fs::remove_file(&path).unwrap();
        assert!(!reloader.check_once());
        assert!(handle.current().quarantine().is_some(), "an unreadable file changes nothing");
        std::fs::write(&path, allow("a.example.com")).unwrap();
        assert!(reloader.check_once());
        assert!(handle.current().quarantine().is_none() && handle.current().network("a.example.com", 443).allow);
        assert_eq!(handle.current().generation(), 3);
    }
}
