//! Where the proxy's policy comes from: one holder of the current engine generation that
//! every connection reads and that a source installs into. The local file reloader lives
//! here; the gateway poller (another issue) installs through the same [`PolicyHandle`].

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// How long new contents of the policy file must stay unchanged before they apply: a
/// writer that is half way through (not writing to a temporary file and renaming) can
/// leave a prefix that is itself a valid, different policy, for example an endpoint cut
/// before its `protocol`, which would turn an inspected endpoint into a plain tunnel.
pub const SETTLE: Duration = Duration::from_secs(1);

/// Polls a local policy file and installs each valid new version once it has settled.
#[derive(Debug)]
pub struct FileReloader {
    path: PathBuf,
    rules: RegoRules,
    handle: PolicyHandle,
    interval: Duration,
    settle: Duration,
    last: Option<Vec<u8>>,
    /// Changed contents not yet applied, and when they were first read.
    pending: Option<(Vec<u8>, Instant)>,
}

impl FileReloader {
    /// A reloader of `path`, whose current contents are already installed in `handle`.
    pub fn new(path: PathBuf, rules: RegoRules, handle: PolicyHandle, interval: Duration) -> Self {
        let last = std::fs::read(&path).ok();
        FileReloader { path, rules, handle, interval, settle: SETTLE, last, pending: None }
    }

    /// Checks the file once: changed contents that have read the same for [`SETTLE`]
    /// become the next generation when valid; invalid ones are logged with every error
    /// and the last good policy stays. Returns whether a new generation was installed.
    pub fn check_once(&mut self) -> bool {
        let contents = match std::fs::read(&self.path) {
            Ok(c) => c,
            Err(e) => {
                self.pending = None;
                if self.last.take().is_some() {
                    tracing::error!(path = %self.path.display(), error = %e, "cannot read the policy file; keeping the last good policy");
                }
                return false;
            }
        };
        if self.last.as_deref() == Some(contents.as_slice()) {
            self.pending = None;
            return false;
        }
        let first_read = match &self.pending {
            Some((pending, at)) if *pending == contents => *at,
            _ => {
                let now = Instant::now();
                self.pending = Some((contents.clone(), now));
                now
            }
        };
        if first_read.elapsed() < self.settle {
            tracing::debug!(path = %self.path.display(), "the policy file changed; applying it once it stays unchanged");
            return false;
        }
        self.pending = None;
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

    /// Checks every interval until shutdown; while a change settles, every [`SETTLE`]
    /// at most, so a change applies within one interval plus the settle time.
    pub async fn run(mut self, shutdown: Shutdown) {
        loop {
            let pause = if self.pending.is_some() { self.interval.min(self.settle) } else { self.interval };
            tokio::select! {
                _ = shutdown.signalled() => return,
                _ = tokio::time::sleep(pause) => {}
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
        reloader.settle = Duration::ZERO;
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
        let mut reloader = FileReloader::new(path.clone(), rules, handle.clone(), Duration::from_secs(1));
        reloader.settle = Duration::from_millis(200);
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
}
