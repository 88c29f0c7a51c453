//! Where the proxy's policy comes from: one holder of the current engine generation that
//! every connection reads and that a source (the local file's [`FileReloader`], the
//! gateway's poller through `gateway_source::GatewayPolicy`) installs into or quarantines.
//!
//! A quarantine is a generation like any other: an engine that denies everything with
//! the validation failure as the reason. Connections decided under an earlier generation
//! are closed when one is installed ([`PolicyHandle::revoked`], [`PolicyHandle::serve_pinned`]).

mod file;

pub use file::FileReloader;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::config::ValidationFailureMode;
use crate::policy::{self, PolicyEngine, PolicyError, RegoRules};
use crate::shutdown::Shutdown;

use super::audit;

/// How long a connection that a quarantine closes may finish what is in flight (its
/// requests were allowed) before it is cut.
pub const QUARANTINE_GRACE: Duration = Duration::from_secs(1);

/// The current policy generation. Cheap to clone; every clone sees every install.
#[derive(Clone)]
pub struct PolicyHandle {
    current: Arc<watch::Sender<Arc<PolicyEngine>>>,
    /// The generation of the latest quarantine (0: none yet); it only grows.
    quarantined: Arc<watch::Sender<u64>>,
}

impl std::fmt::Debug for PolicyHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current.borrow();
        f.debug_struct("PolicyHandle")
            .field("generation", &current.generation())
            .field("quarantined", &current.quarantine().is_some())
            .finish()
    }
}

impl PolicyHandle {
    /// A holder starting with `engine` (audited as installed).
    pub fn new(engine: PolicyEngine) -> Self {
        audit::policy_loaded(engine.generation());
        PolicyHandle {
            current: Arc::new(watch::Sender::new(Arc::new(engine))),
            quarantined: Arc::new(watch::Sender::new(0)),
        }
    }

    /// The generation new connections and requests are decided with.
    pub fn current(&self) -> Arc<PolicyEngine> {
        self.current.borrow().clone()
    }

    /// The number the next generation should carry.
    pub fn next_generation(&self) -> u64 {
        self.current.borrow().generation() + 1
    }

    /// Makes `engine` the current generation; connections already open keep theirs. Ends
    /// a quarantine.
    pub fn install(&self, engine: PolicyEngine) {
        let generation = engine.generation();
        let previous = self.current.send_replace(Arc::new(engine));
        audit::policy_loaded(generation);
        if previous.quarantine().is_some() {
            audit::policy_recovered(generation);
        }
    }

    /// A new policy was rejected with `error` (one line). `FailClosed`: the policy in force
    /// is deactivated: a quarantined generation denies all egress naming `error`, and every
    /// connection decided before it is closed. `RetainLastValid`: the policy in force stays
    /// (a quarantine in force stays too: it has no valid policy to return to).
    pub fn reject(&self, error: &str, mode: ValidationFailureMode) {
        match mode {
            ValidationFailureMode::RetainLastValid => {
                audit::policy_rejected(error, self.current().quarantine().is_some());
            }
            ValidationFailureMode::FailClosed => {
                let reason = format!("policy quarantined until a valid policy loads: {error}");
                let mut generation = 0;
                self.current.send_modify(|engine| {
                    generation = engine.generation() + 1;
                    *engine = Arc::new(engine.quarantined(generation, &reason));
                });
                self.quarantined.send_replace(generation);
                audit::policy_quarantined(generation, &reason);
            }
        }
    }

    /// Completes once a quarantine deactivates `generation` (one installed after it).
    pub fn revoked(&self, generation: u64) -> impl Future<Output = ()> + Send + 'static {
        let mut quarantines = self.quarantined.subscribe();
        async move {
            if quarantines.wait_for(|q| *q > generation).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Serves a connection decided under `generation`: `serve` gets a shutdown that is
    /// signalled with `shutdown` and also when a quarantine deactivates `generation`; then
    /// the connection has [`QUARANTINE_GRACE`] before it is dropped (`None`).
    pub async fn serve_pinned<F, Fut>(&self, generation: u64, shutdown: &Shutdown, serve: F) -> Option<Fut::Output>
    where
        F: FnOnce(Shutdown) -> Fut,
        Fut: Future,
    {
        let pinned = shutdown.child();
        let serving = serve(pinned.clone());
        tokio::pin!(serving);
        tokio::select! {
            output = &mut serving => return Some(output),
            () = self.revoked(generation) => {}
        }
        pinned.trigger();
        tokio::time::timeout(QUARANTINE_GRACE, serving).await.ok()
    }

    /// A receiver that sees each new generation.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PolicyEngine>> {
        self.current.subscribe()
    }
}

/// Loads, validates and compiles a policy file with `rules` as generation `generation`.
pub fn load_engine(path: &Path, rules: &RegoRules, generation: u64) -> Result<PolicyEngine, PolicyError> {
    let policy = policy::load_file(path)?;
    policy::log_warnings(&policy);
    PolicyEngine::new(policy, rules, generation)
}

#[cfg(test)]
mod tests;
