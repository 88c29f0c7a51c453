//! Where the proxy's policy comes from: one holder of the current engine generation that
//! every connection reads and that a source installs into. The local file reloader lives
//! here; the gateway poller (another issue) installs through the same [`PolicyHandle`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::gateway::config::SandboxConfig;
use crate::policy::{self, PolicyEngine, PolicyError, RegoRules};
use crate::shutdown::Shutdown;

/// The current policy generation. Cheap to clone; every clone sees every install.
#[derive(Clone)]
pub struct PolicyHandle {
    tx: Arc<watch::Sender<Arc<PolicyEngine>>>,
}

impl std::fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PolicyHandle").field("generation", &self.tx.borrow().generation()).finish()
    }
}

impl PolicyHandle {
    /// A holder starting with `engine`.
    pub fn new(engine: PolicyEngine) -> Self {
        PolicyHandle { tx: Arc::new(watch::Sender::new(Arc::new(engine))) }
    }

    /// The generation new connections and requests are decided with.
    pub fn current(&self) -> Arc<PolicyEngine> {
        self.tx.borrow().clone()
    }

    /// The number the next generation should carry.
    pub fn next_generation(&self) -> u64 {
        self.tx.borrow().generation() + 1
    }

    /// Makes `engine` the current generation; connections already open keep theirs.
    pub fn install(&self, engine: PolicyEngine) {
        let generation = engine.generation();
        self.tx.send_replace(Arc::new(engine));
        tracing::info!(generation, "policy generation installed");
    }

    /// A receiver that sees each new generation.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicyEngine>> {
        self.tx.subscribe()
    }
}

/// Loads, validates and compiles a policy file with `rules` as generation `generation`.
pub fn load_engine(path: &Path, rules: &RegoRules, generation: u64) -> Result<PolicyEngine, PolicyError> {
    let policy = policy::load_file(path)?;
    policy::log_warnings(&policy);
    PolicyEngine::new(policy, rules, generation)
}

/// The [`Sink`](crate::gateway::Sink) a gateway `ConfigPoller` installs new policies
/// through: compiles the gateway's policy with `rules` as the next generation; a policy
/// that does not compile is refused (reported FAILED) and the current one stays.
pub fn gateway_sink(handle: PolicyHandle, rules: RegoRules) -> impl crate::gateway::Sink<SandboxConfig> {
    move |config: SandboxConfig| {
        config.log_warnings();
        let engine = PolicyEngine::new(config.policy, &rules, handle.next_generation()).map_err(|e| e.to_string())?;
        handle.install(engine);
        Ok(())
    }
}

/// Polls a local policy file and installs each valid new version.
#[derive(Debug)]
pub struct FileReloader {
    path: PathBuf,
    rules: RegoRules,
    handle: PolicyHandle,
    interval: Duration,
    last: Option<Vec<u8>>,
}

impl FileReloader {
    /// A reloader of `path`, whose current contents are already installed in `handle`.
    pub fn new(path: PathBuf, rules: RegoRules, handle: PolicyHandle, interval: Duration) -> Self {
        let last = std::fs::read(&path).ok();
        FileReloader { path, rules, handle, interval, last }
    }

    /// Checks the file once: a changed, valid file becomes the next generation; a changed,
    /// invalid one is logged with every error and the last good policy stays.
    /// Returns whether a new generation was installed.
    pub fn check_once(&mut self) -> bool {
        let contents = match std::fs::read(&self.path) {
            Ok(c) => c,
            Err(e) => {
                if self.last.take().is_some() {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot read the policy file; keeping the last good policy");
                }
                return false;
            }
        };
        if self.last.as_deref() == Some(contents.as_slice()) {
            return false;
        }
        self.last = Some(contents);
        match load_engine(&self.path, &self.rules, self.handle.next_generation()) {
            Ok(engine) => {
                self.handle.install(engine);
                true
            }
            Err(e) => {
                tracing::error!(path = %self.path.display(), "{e}; keeping the last good policy");
                false
            }
        }
    }

    /// Checks every interval until shutdown.
    pub async fn run(mut self, shutdown: Shutdown) {
        loop {
            tokio::select! {
                _ = shutdown.signalled() => return,
                _ = tokio::time::sleep(self.interval) => {}
            }
            self.check_once();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut reloader = FileReloader::new(path.clone(), rules, handle.clone(), Duration::from_secs(1));
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
}
