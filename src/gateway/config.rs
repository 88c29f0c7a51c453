//! The sandbox's policy from the gateway: `GetSandboxConfig` with the contract's startup
//! retries, validation through the YAML rules, what an answer says about its policy
//! (version, GLOBAL source, failure mode), and `ReportPolicyStatus` for the sandbox's own
//! policy only; the poller that applies changes lives in `poller`.

use super::backoff::RetrySchedule;
use super::proto::{
    GetSandboxConfigRequest, GetSandboxConfigResponse, PolicySource, PolicyStatus, ReportPolicyStatusRequest,
};
use super::{GatewayClient, GatewayError, Method};
use crate::config::ValidationFailureMode;
use crate::policy::{Issue, Policy, PolicyError};

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

mod poller;

pub use poller::{ConfigPoller, PolicySink, PollOutcome};
