//! What the test gateway serves and what it recorded. Tests change the served values
//! while it runs and read the records in call order.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use openshell_sandbox::gateway::proto::inference::GetInferenceBundleResponse;
use openshell_sandbox::gateway::proto::sandbox::SandboxPolicy;
use openshell_sandbox::gateway::proto::{
    GatewayMessage, GetSandboxConfigRequest, GetSandboxConfigResponse, GetSandboxProviderEnvironmentRequest,
    GetSandboxProviderEnvironmentResponse, PushSandboxLogsRequest, ReportMainProcessExitRequest,
    ReportPolicyStatusRequest, SandboxLogLine, SupervisorMessage,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::relays::PendingRelay;

/// One recorded call (or one message of a stream).
#[derive(Clone, Debug)]
pub struct Call {
    /// The contract's method name.
    pub method: &'static str,
    /// The sandbox id the request carried ("" when it has none).
    pub sandbox_id: String,
    /// The `authorization` metadata, as received.
    pub token: Option<String>,
    /// The request (or stream message).
    pub payload: Payload,
    /// When it arrived.
    pub at: Instant,
    /// Whether the gateway answered with an injected error.
    pub failed: bool,
}

/// The recorded request.
#[derive(Clone, Debug)]
pub enum Payload {
    Config(GetSandboxConfigRequest),
    ProviderEnv(GetSandboxProviderEnvironmentRequest),
    PolicyStatus(ReportPolicyStatusRequest),
    /// A `PushSandboxLogs` stream was opened (its headers arrived).
    LogsOpened,
    /// One message of the `PushSandboxLogs` stream (one batch).
    Logs(PushSandboxLogsRequest),
    /// One message of a `ConnectSupervisor` stream.
    Supervisor(SupervisorMessage),
    /// The `init` frame of a `RelayStream` (data frames go to the relay's pipe).
    RelayInit(String),
    Exit(ReportMainProcessExitRequest),
    Bundle,
}

/// How the gateway answers a supervisor's hello.
#[derive(Clone, Debug)]
pub struct SessionReply {
    /// Sessions rejected before one is accepted.
    pub reject_first: usize,
    /// The rejection reason.
    pub reason: String,
    /// `heartbeat_interval_secs` of `session_accepted`.
    pub heartbeat_secs: u32,
}

impl Default for SessionReply {
    fn default() -> Self {
        SessionReply { reject_first: 0, reason: "rejected by the test".into(), heartbeat_secs: 1 }
    }
}

/// The test gateway's state: served values, injected failures, records.
#[derive(Default)]
pub struct State {
    pub(super) calls: Mutex<Vec<Call>>,
    pub(super) config: Mutex<GetSandboxConfigResponse>,
    pub(super) provider_env: Mutex<GetSandboxProviderEnvironmentResponse>,
    pub(super) bundle: Mutex<GetInferenceBundleResponse>,
    pub(super) failures: Mutex<HashMap<&'static str, (usize, tonic::Code)>>,
    pub(super) session_reply: Mutex<SessionReply>,
    pub(super) session: Mutex<Option<mpsc::Sender<Result<GatewayMessage, Status>>>>,
    pub(super) relays: Mutex<HashMap<String, PendingRelay>>,
    pub(super) stop: Mutex<CancellationToken>,
}

impl State {
    pub(super) fn set_stop(&self, token: CancellationToken) {
        *self.stop.lock().unwrap() = token;
    }

    pub(super) fn stop_token(&self) -> CancellationToken {
        self.stop.lock().unwrap().clone()
    }

    /// Records a call; answers with the injected failure if one is pending for `method`.
    pub(super) fn record<T>(
        &self,
        method: &'static str,
        request: &tonic::Request<T>,
        sandbox_id: &str,
        payload: Payload,
    ) -> Result<(), Status> {
        let token = token_of(request.metadata());
        self.record_with_token(method, token, sandbox_id, payload)
    }

    pub(super) fn record_with_token(
        &self,
        method: &'static str,
        token: Option<String>,
        sandbox_id: &str,
        payload: Payload,
    ) -> Result<(), Status> {
        let failure = {
            let mut failures = self.failures.lock().unwrap();
            match failures.get_mut(method) {
                Some((n, code)) if *n > 0 => {
                    *n -= 1;
                    Some(*code)
                }
                _ => None,
            }
        };
        self.calls.lock().unwrap().push(Call {
            method,
            sandbox_id: sandbox_id.to_owned(),
            token,
            payload,
            at: Instant::now(),
            failed: failure.is_some(),
        });
        match failure {
            Some(code) => Err(Status::new(code, "test gateway: injected failure")),
            None => Ok(()),
        }
    }

    /// Every call so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }

    /// The calls of one method, in order.
    pub fn calls_of(&self, method: &str) -> Vec<Call> {
        self.calls().into_iter().filter(|c| c.method == method).collect()
    }

    /// The batches of `PushSandboxLogs` streams, in order.
    pub fn log_batches(&self) -> Vec<(Call, PushSandboxLogsRequest)> {
        self.calls()
            .into_iter()
            .filter_map(|c| match &c.payload {
                Payload::Logs(batch) => Some((c.clone(), batch.clone())),
                _ => None,
            })
            .collect()
    }

    /// Every log line received, in order.
    pub fn log_lines(&self) -> Vec<SandboxLogLine> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c.payload {
                Payload::Logs(batch) => Some(batch.logs),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// Answers the next `n` calls of `method` with `code` (after recording them).
    pub fn fail(&self, method: &'static str, n: usize, code: tonic::Code) {
        self.failures.lock().unwrap().insert(method, (n, code));
    }

    /// Serves `response` to `GetSandboxConfig`.
    pub fn set_config(&self, response: GetSandboxConfigResponse) {
        *self.config.lock().unwrap() = response;
    }

    /// Serves `policy` with the given version, hash and revisions.
    pub fn set_policy(&self, policy: SandboxPolicy, version: u32, hash: &str, revision: u64) {
        let mut config = self.config.lock().unwrap();
        config.policy = Some(policy);
        config.version = version;
        config.policy_hash = hash.into();
        config.config_revision = revision;
    }

    /// Serves `policy_validation_failure_mode` (`""`, `fail_closed`, `retain_last_valid`).
    pub fn set_failure_mode(&self, mode: &str) {
        self.config.lock().unwrap().policy_validation_failure_mode = mode.into();
    }

    /// Serves the policy as the gateway-wide one (`policy_source` GLOBAL, version
    /// `global_version`), or as the sandbox's own with `None`.
    pub fn set_global(&self, global_version: Option<u32>) {
        use openshell_sandbox::gateway::proto::PolicySource;
        let mut config = self.config.lock().unwrap();
        config.policy_source = match global_version {
            Some(_) => PolicySource::Global,
            None => PolicySource::Sandbox,
        }
        .into();
        config.global_policy_version = global_version.unwrap_or(0);
    }

    /// Announces a provider environment revision in `GetSandboxConfig` answers.
    pub fn set_provider_revision(&self, revision: u64) {
        self.config.lock().unwrap().provider_env_revision = revision;
    }

    /// Serves `response` to `GetSandboxProviderEnvironment` as the real gateway does: whole
    /// to a supervisor that supports static credential bindings, without its bound secrets
    /// (and their bindings) to one that does not.
    pub fn set_provider_env(&self, response: GetSandboxProviderEnvironmentResponse) {
        *self.provider_env.lock().unwrap() = response;
    }

    /// Serves `response` to `GetInferenceBundle`.
    pub fn set_bundle(&self, response: GetInferenceBundleResponse) {
        *self.bundle.lock().unwrap() = response;
    }

    /// Whether a supervisor session has been accepted (and relays can be opened).
    pub fn has_session(&self) -> bool {
        self.session.lock().unwrap().as_ref().is_some_and(|s| !s.is_closed())
    }

    /// The supervisor messages received, in order.
    pub fn supervisor_messages(&self) -> Vec<openshell_sandbox::gateway::proto::supervisor_message::Payload> {
        self.calls()
            .into_iter()
            .filter_map(|c| match c.payload {
                Payload::Supervisor(m) => m.payload,
                _ => None,
            })
            .collect()
    }

    /// How the next hellos are answered.
    pub fn set_session_reply(&self, reply: SessionReply) {
        *self.session_reply.lock().unwrap() = reply;
    }
}

fn token_of(metadata: &tonic::metadata::MetadataMap) -> Option<String> {
    metadata.get("authorization").and_then(|v| v.to_str().ok()).map(str::to_owned)
}

pub(super) fn token_of_request<T>(request: &tonic::Request<T>) -> Option<String> {
    token_of(request.metadata())
}
