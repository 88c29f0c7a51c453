//! The sandbox's policy from the gateway: `GetSandboxConfig` with the contract's startup
//! retries, validation through the YAML rules, and the poller that applies a changed
//! policy (new revision or hash), answers every reload of the sandbox's own policy with
//! `ReportPolicyStatus` LOADED or FAILED (none for the gateway-wide GLOBAL policy), and
//! hands each rejection to its [`PolicySink`] with the gateway's failure mode.

use std::time::Duration;

use tokio::sync::watch;

use super::backoff::RetrySchedule;
use super::proto::{
    GetSandboxConfigRequest, GetSandboxConfigResponse, PolicySource, PolicyStatus, ReportPolicyStatusRequest,
};
use super::{GatewayClient, GatewayError, Method};
use crate::config::ValidationFailureMode;
use crate::policy::{Issue, Policy, PolicyError};
use crate::shutdown::Shutdown;

/// What a `GetSandboxConfig` answer says about its policy, whether the policy is valid or not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolicyOrigin {
    /// The sandbox's policy version (what `ReportPolicyStatus` names).
    pub version: u32,
    /// `Some(global_policy_version)` when the policy is the gateway-wide one (`policy_source`
    /// GLOBAL): it is applied, but no status is reported for it.
    pub global: Option<u32>,
    /// What a rejected policy does to the one in force (`policy_validation_failure_mode`).
    pub failure_mode: ValidationFailureMode,
}

impl PolicyOrigin {
    /// Reads the answer's version, source and failure mode; an unknown mode is logged and
    /// taken as `fail_closed`.
    pub fn of(response: &GetSandboxConfigResponse) -> Self {
        let failure_mode = ValidationFailureMode::from_gateway(&response.policy_validation_failure_mode)
            .unwrap_or_else(|(mode, unknown)| {
                tracing::warn!(
                    "the gateway's policy_validation_failure_mode `{unknown}` is unknown; using {}",
                    mode.as_str()
                );
                mode
            });
        let global = (response.policy_source() == PolicySource::Global).then_some(response.global_policy_version);
        PolicyOrigin { version: response.version, global, failure_mode }
    }

    /// Whether `ReportPolicyStatus` is sent for this policy (the sandbox's own only).
    pub fn reported(&self) -> bool {
        self.global.is_none()
    }
}

impl std::fmt::Display for PolicyOrigin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.global {
            Some(global) => write!(f, "the gateway's global policy version {global}"),
            None => write!(f, "the gateway's policy version {}", self.version),
        }
    }
}

/// A validated configuration from the gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct SandboxConfig {
    /// The policy, validated like a YAML file.
    pub policy: Policy,
    /// Its version, source and failure mode.
    pub origin: PolicyOrigin,
    /// The gateway's hash of the policy.
    pub policy_hash: String,
    /// The configuration's revision.
    pub config_revision: u64,
    /// The provider environment's revision: when it changes, fetch the environment again.
    pub provider_env_revision: u64,
    /// Fields the policy sets that are not applied, for warnings.
    pub unapplied: Vec<String>,
}

impl SandboxConfig {
    /// Validates a `GetSandboxConfig` answer.
    pub fn from_response(response: GetSandboxConfigResponse) -> Result<Self, PolicyError> {
        let origin = PolicyOrigin::of(&response);
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
            origin,
            policy_hash: response.policy_hash,
            config_revision: response.config_revision,
            provider_env_revision: response.provider_env_revision,
        })
    }

    /// Logs what is accepted but not applied.
    pub fn log_warnings(&self) {
        for note in &self.unapplied {
            tracing::warn!("{} {note}", super::policy::WARNING_PREFIX);
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

/// Sends `ReportPolicyStatus` for `origin` unless it is the global policy; a failure
/// to deliver it is logged (the caller goes on).
pub async fn report_status(client: &GatewayClient, origin: &PolicyOrigin, status: PolicyStatus, error: &str) {
    if !origin.reported() {
        return;
    }
    if let Err(e) = client.report_policy_status(origin.version, status, error).await {
        tracing::warn!("could not report {origin} as {}: {e}", status.as_str_name());
    }
}

/// The startup fetch: `GetSandboxConfig`, tried again after each delay of `schedule`
/// while the gateway is UNAVAILABLE, then validated. An invalid policy is reported
/// FAILED (best effort; not for the global policy) and returned as
/// [`GatewayError::Policy`] (exit 65, whatever the failure mode: nothing valid was ever
/// loaded). The caller reports LOADED once it has installed the policy.
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
    let origin = PolicyOrigin::of(&response);
    match SandboxConfig::from_response(response) {
        Ok(config) => Ok(config),
        Err(e) => {
            report_status(client, &origin, PolicyStatus::Failed, &e.summary()).await;
            Err(e.into())
        }
    }
}

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
