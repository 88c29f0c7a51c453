//! The config poller: polls `GetSandboxConfig`, and when the revision or hash changed,
//! validates and installs the policy through a [`PolicySink`] (or hands it the rejection
//! with the gateway's failure mode) and reports the outcome with `ReportPolicyStatus`.

use std::time::Duration;

use tokio::sync::watch;

use super::{PolicyOrigin, SandboxConfig};
use crate::config::ValidationFailureMode;
use crate::gateway::proto::PolicyStatus;
use crate::gateway::{GatewayClient, GatewayError};
use crate::shutdown::Shutdown;
use crate::watch::every;

/// What one poll decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// Same revision and hash as the last decision: nothing to do.
    Unchanged,
    /// A new policy was installed (and reported LOADED unless it is the global policy).
    Loaded {
        /// The gateway's policy version.
        version: u32,
    },
    /// A new policy was rejected (invalid, or the sink refused it), reported FAILED unless
    /// it is the global policy, and handed to the sink's [`PolicySink::reject`].
    Failed {
        /// The gateway's policy version.
        version: u32,
        /// The reported error.
        error: String,
    },
}

/// Where a [`ConfigPoller`] puts what it fetched.
pub trait PolicySink: Send + Sync + 'static {
    /// Applies a validated configuration. `Err`: not applied; its text is reported FAILED
    /// and passed to [`PolicySink::reject`].
    fn install(&self, config: SandboxConfig) -> Result<(), String>;

    /// A new policy was rejected with `error`; `mode` is the gateway's failure mode for it
    /// (`fail_closed`: deactivate the policy in force too; `retain_last_valid`: keep it).
    fn reject(&self, error: &str, mode: ValidationFailureMode);
}

/// A plain function installs; it keeps what it has on a rejection, whatever the mode.
impl<F> PolicySink for F
where
    F: Fn(SandboxConfig) -> Result<(), String> + Send + Sync + 'static,
{
    fn install(&self, config: SandboxConfig) -> Result<(), String> {
        self(config)
    }

    fn reject(&self, _error: &str, _mode: ValidationFailureMode) {}
}

/// Polls `GetSandboxConfig` and applies changes through a [`PolicySink`].
pub struct ConfigPoller<S> {
    client: GatewayClient,
    sink: S,
    interval: Duration,
    /// (config_revision, policy_hash) of the last reload decision.
    seen: Option<(u64, String)>,
    /// A status report that could not be delivered yet; sent again on the next poll.
    unreported: Option<(u32, PolicyStatus, String)>,
    provider_revision: watch::Sender<u64>,
}

impl<S: PolicySink> ConfigPoller<S> {
    /// A poller calling the gateway every `interval` (`OPENSHELL_POLICY_POLL_INTERVAL_SECS`).
    pub fn new(client: GatewayClient, sink: S, interval: Duration) -> Self {
        ConfigPoller { client, sink, interval, seen: None, unreported: None, provider_revision: watch::Sender::new(0) }
    }

    /// Starts from the policy installed at startup: the same revision and hash are not
    /// reloaded, and its provider revision is the current one.
    pub fn starting_from(mut self, installed: &SandboxConfig) -> Self {
        self.seen = Some((installed.config_revision, installed.policy_hash.clone()));
        self.provider_revision.send_replace(installed.provider_env_revision);
        self
    }

    /// The provider environment revision of the latest answer, for [`super::provider::ProviderPoller`].
    pub fn provider_revisions(&self) -> watch::Receiver<u64> {
        self.provider_revision.subscribe()
    }

    /// One poll: fetch, and when the revision or hash changed, validate, install (or
    /// reject) and report.
    pub async fn poll_once(&mut self) -> Result<PollOutcome, GatewayError> {
        if let Some((version, status, error)) = self.unreported.take() {
            self.report(version, status, error).await;
        }
        let response = self.client.get_sandbox_config().await?;
        let provider_revision = response.provider_env_revision;
        self.provider_revision.send_if_modified(|r| {
            let changed = *r != provider_revision;
            *r = provider_revision;
            changed
        });
        let key = (response.config_revision, response.policy_hash.clone());
        if self.seen.as_ref() == Some(&key) {
            return Ok(PollOutcome::Unchanged);
        }
        self.seen = Some(key);
        let origin = PolicyOrigin::of(&response);
        let installed = SandboxConfig::from_response(response).map_err(|e| e.summary()).and_then(|config| {
            config.log_warnings();
            self.sink.install(config)
        });
        let outcome = match installed {
            Ok(()) => {
                tracing::info!("applied {origin}");
                PollOutcome::Loaded { version: origin.version }
            }
            Err(error) => {
                tracing::warn!("rejected {origin}: {error}");
                self.sink.reject(&error, origin.failure_mode);
                PollOutcome::Failed { version: origin.version, error }
            }
        };
        if origin.reported() {
            let (status, error) = match &outcome {
                PollOutcome::Failed { error, .. } => (PolicyStatus::Failed, error.clone()),
                _ => (PolicyStatus::Loaded, String::new()),
            };
            self.report(origin.version, status, error).await;
        }
        Ok(outcome)
    }

    async fn report(&mut self, version: u32, status: PolicyStatus, error: String) {
        if let Err(e) = self.client.report_policy_status(version, status, &error).await {
            tracing::warn!("{e}; the status is sent again on the next poll");
            self.unreported = Some((version, status, error));
        }
    }

    /// Polls every interval until shutdown. Failed polls are logged once per outage.
    pub async fn run(mut self, shutdown: Shutdown) {
        let mut failing = false;
        let ticks = every(self.interval, shutdown);
        while ticks.tick(None).await {
            match self.poll_once().await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("policy polling works again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!("policy poll failed, the current policy stays: {e}");
                }
                Err(e) => tracing::debug!("policy poll failed again: {e}"),
            }
        }
    }
}
