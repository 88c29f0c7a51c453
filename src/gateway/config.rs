//! The sandbox's policy from the gateway: `GetSandboxConfig` with the contract's startup
//! retries, validation through the YAML rules, and the poller that applies a changed
//! policy (new revision or hash) and answers every reload with `ReportPolicyStatus`
//! LOADED or FAILED, keeping the last good policy in force.

use std::time::Duration;

use tokio::sync::watch;

use super::backoff::RetrySchedule;
use super::proto::{GetSandboxConfigRequest, GetSandboxConfigResponse, PolicyStatus, ReportPolicyStatusRequest};
use super::{GatewayClient, GatewayError, Method, Sink};
use crate::policy::{Issue, Policy, PolicyError};
use crate::shutdown::Shutdown;

/// A validated configuration from the gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxConfig {
    /// The policy, validated like a YAML file.
    pub policy: Policy,
    /// The gateway's policy version (reported back in `ReportPolicyStatus`).
    pub version: u32,
    /// The gateway's hash of the policy.
    pub policy_hash: String,
    /// The configuration's revision.
    pub config_revision: u64,
    /// The provider environment's revision: when it changes, fetch the environment again.
    pub provider_env_revision: u64,
    /// The gateway's `policy_validation_failure_mode`, as sent (not acted upon).
    pub policy_validation_failure_mode: String,
    /// Fields the policy sets that are not applied, for warnings.
    pub unapplied: Vec<String>,
}

impl SandboxConfig {
    /// Validates a `GetSandboxConfig` answer.
    pub fn from_response(response: GetSandboxConfigResponse) -> Result<Self, PolicyError> {
        let Some(message) = response.policy else {
            return Err(PolicyError::Invalid {
                source_name: super::policy::SOURCE_NAME.to_owned(),
                issues: vec![Issue {
                    path: String::new(),
                    line: None,
                    message: "the gateway sent no policy; set a policy for this sandbox at the gateway".into(),
                }],
            });
        };
        Ok(SandboxConfig {
            policy: super::policy::to_policy(&message)?,
            unapplied: super::policy::unapplied_fields(&message),
            version: response.version,
            policy_hash: response.policy_hash,
            config_revision: response.config_revision,
            provider_env_revision: response.provider_env_revision,
            policy_validation_failure_mode: response.policy_validation_failure_mode,
        })
    }

    /// Logs what is accepted but not applied.
    pub fn log_warnings(&self) {
        for note in &self.unapplied {
            tracing::warn!("{} {note}", super::policy::SOURCE_NAME);
        }
        crate::policy::log_warnings(&self.policy);
    }
}

impl GatewayClient {
    /// One `GetSandboxConfig` call, not validated.
    pub async fn get_sandbox_config(&self) -> Result<GetSandboxConfigResponse, GatewayError> {
        let request = GetSandboxConfigRequest { sandbox_id: self.sandbox_id().to_owned() };
        self.unary(Method::GetSandboxConfig, self.openshell().get_sandbox_config(request)).await
    }

    /// `ReportPolicyStatus` for policy `version`; `load_error` is empty unless FAILED.
    pub async fn report_policy_status(
        &self,
        version: u32,
        status: PolicyStatus,
        load_error: &str,
    ) -> Result<(), GatewayError> {
        let request = ReportPolicyStatusRequest {
            sandbox_id: self.sandbox_id().to_owned(),
            version,
            status: status.into(),
            load_error: load_error.to_owned(),
        };
        self.unary(Method::ReportPolicyStatus, self.openshell().report_policy_status(request)).await.map(drop)
    }
}

/// The startup fetch: `GetSandboxConfig`, tried again after each delay of `schedule`
/// while the gateway is UNAVAILABLE, then validated. An invalid policy is reported
/// FAILED (best effort) and returned as [`GatewayError::Policy`] (exit 65). The caller
/// reports LOADED once it has installed the policy.
pub async fn fetch_with_retries(
    client: &GatewayClient,
    schedule: &RetrySchedule,
) -> Result<SandboxConfig, GatewayError> {
    let mut delays = schedule.delays.iter();
    let mut attempt = 1;
    let response = loop {
        match client.get_sandbox_config().await {
            Ok(response) => break response,
            Err(e) if e.is_unavailable() => match delays.next() {
                Some(delay) => {
                    tracing::warn!(
                        "{e} (try {attempt} of {}); trying again in {}s",
                        schedule.tries(),
                        delay.as_secs_f32()
                    );
                    tokio::time::sleep(*delay).await;
                    attempt += 1;
                }
                None => return Err(e),
            },
            Err(e) => return Err(e),
        }
    };
    let version = response.version;
    match SandboxConfig::from_response(response) {
        Ok(config) => Ok(config),
        Err(e) => {
            if let Err(report) = client.report_policy_status(version, PolicyStatus::Failed, &e.to_string()).await {
                tracing::warn!("could not report the invalid policy: {report}");
            }
            Err(e.into())
        }
    }
}

/// What one poll decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PollOutcome {
    /// Same revision and hash as the last decision: nothing to do.
    Unchanged,
    /// A new policy was installed and reported LOADED.
    Loaded {
        /// The gateway's policy version.
        version: u32,
    },
    /// A new policy was refused (invalid, or the sink refused it) and reported FAILED;
    /// the previous policy stays.
    Failed {
        /// The gateway's policy version.
        version: u32,
        /// The reported error.
        error: String,
    },
}

/// Polls `GetSandboxConfig` and applies changes through a [`Sink`].
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

impl<S: Sink<SandboxConfig>> ConfigPoller<S> {
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

    /// One poll: fetch, and when the revision or hash changed, validate, install and report.
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
        let version = response.version;
        let installed = SandboxConfig::from_response(response).map_err(|e| e.to_string()).and_then(|config| {
            config.log_warnings();
            self.sink.install(config)
        });
        Ok(match installed {
            Ok(()) => {
                tracing::info!(version, "applied the gateway's new policy");
                self.report(version, PolicyStatus::Loaded, String::new()).await;
                PollOutcome::Loaded { version }
            }
            Err(error) => {
                tracing::warn!(version, "kept the previous policy: {error}");
                self.report(version, PolicyStatus::Failed, error.clone()).await;
                PollOutcome::Failed { version, error }
            }
        })
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
        loop {
            tokio::select! {
                () = shutdown.signalled() => return,
                () = tokio::time::sleep(self.interval) => {}
            }
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
