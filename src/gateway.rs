//! The OpenShell gateway's gRPC interface (docs/architecture.md, "The gateway"): client,
//! policy and credential sources, log shipping, and the supervisor session with its
//! relays. An adapter: its messages are converted into the policy's and the proxy's own
//! types (`policy::Policy`, `proxy::credentials::ProviderEnvironment`,
//! `proxy::l7::routes::InferenceBundle`), which local files fill without it.
//!
//! Wiring, proxy mode (the contract's startup order): [`logs::queue`] before
//! `telemetry::init_with`; in the runtime [`GatewayClient::new`] and
//! [`GatewayClient::check_token`]; spawn [`logs::LogShipper::run`] and wait (bounded)
//! on its `opened()`; [`config::fetch_with_retries`], build the engine, report LOADED;
//! [`GatewayClient::get_provider_environment`] (failure: warn, start empty);
//! [`GatewayClient::get_inference_bundle`]; listeners and `.ready`; then spawn
//! [`config::ConfigPoller`] (with a [`config::PolicySink`]), [`provider::ProviderPoller`]
//! (fed by the config poller's `provider_revisions()`) and [`inference::InferencePoller`]
//! (each with a [`Sink`]).
//! Agent mode: [`config::fetch_with_retries`], spawn [`session::Supervisor::run`], and
//! when the workload ends [`exit::report_main_process_exit`] with its instance id.

pub mod backoff;
mod client;
pub mod config;
pub mod exit;
pub mod inference;
pub mod logs;
pub mod policy;
pub mod proto;
pub mod provider;
#[doc(hidden)]
pub mod relay;
pub mod session;
mod tls_cause;

use std::fmt;
use std::time::Duration;

pub use client::{BearerToken, ClientOptions, GatewayClient, read_token};

use crate::policy::PolicyError;
use crate::{Exit, ExitStatus};

/// Something that takes a new value from a poller: a provider environment, an inference
/// bundle. `Err` means the value was not applied; its text is logged and the previous
/// value stays in force. (Policies have their own [`config::PolicySink`].)
pub trait Sink<T>: Send + Sync + 'static {
    /// Applies `value`.
    fn install(&self, value: T) -> Result<(), String>;
}

impl<T, F> Sink<T> for F
where
    F: Fn(T) -> Result<(), String> + Send + Sync + 'static,
{
    fn install(&self, value: T) -> Result<(), String> {
        self(value)
    }
}

/// Why one gateway call failed: the gRPC status (or a local timeout) and where it went.
#[derive(Clone, Debug)]
pub struct CallFailure {
    /// The gateway's URL.
    pub endpoint: String,
    /// The gRPC status code; `DeadlineExceeded` for a local timeout.
    pub code: tonic::Code,
    /// The status message with its causes (transport and TLS errors included); for a TLS
    /// failure, its cause in words and the fix.
    pub message: String,
}

impl CallFailure {
    /// The failure of a call to a gateway reached over TLS configured as `tls` (`None`:
    /// plaintext): a TLS failure is named by its cause, else the status and its causes.
    pub(crate) fn from_status_with(endpoint: &str, status: &tonic::Status, tls: Option<&tls_cause::TlsFacts>) -> Self {
        match tls.and_then(|tls| tls_cause::diagnose(status, tls)) {
            Some(message) => CallFailure { endpoint: endpoint.to_owned(), code: status.code(), message },
            None => Self::from_status(endpoint, status),
        }
    }

    pub(crate) fn from_status(endpoint: &str, status: &tonic::Status) -> Self {
        let mut message = status.message().to_owned();
        let mut source = std::error::Error::source(status);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message = if message.is_empty() { text } else { format!("{message}: {text}") };
            }
            source = cause.source();
        }
        CallFailure { endpoint: endpoint.to_owned(), code: status.code(), message }
    }

    pub(crate) fn timeout(endpoint: &str, after: Duration) -> Self {
        CallFailure {
            endpoint: endpoint.to_owned(),
            code: tonic::Code::DeadlineExceeded,
            message: format!("no answer within {after:?}"),
        }
    }

    fn hint(&self) -> &'static str {
        use tonic::Code;
        if self.message.starts_with(tls_cause::PREFIX) {
            return ""; // The message names the fix.
        }
        match self.code {
            Code::Unavailable | Code::DeadlineExceeded => {
                "check that the gateway runs, that OPENSHELL_ENDPOINT points at it (in agent mode: at the proxy's forward), and the TLS settings"
            }
            Code::Unauthenticated | Code::PermissionDenied => {
                "the gateway refused the sandbox token: check OPENSHELL_SANDBOX_TOKEN / OPENSHELL_SANDBOX_TOKEN_FILE"
            }
            Code::NotFound | Code::InvalidArgument => "check OPENSHELL_SANDBOX_ID",
            _ => "see the gateway's logs",
        }
    }
}

impl fmt::Display for CallFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({:?}): {}", self.endpoint, self.code, self.message)?;
        match self.hint() {
            "" => Ok(()),
            hint => write!(f, "; {hint}"),
        }
    }
}

/// Failures of talking to the gateway. Each call's variant names the method.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The endpoint or its TLS material cannot be used.
    #[error("cannot set up the gateway connection to {endpoint}: {message}")]
    Connect {
        /// The gateway's URL.
        endpoint: String,
        /// What is wrong, naming the file or setting.
        message: String,
    },
    /// The sandbox token cannot be read (the message names the file, never the token).
    #[error("{message}")]
    Token {
        /// What is wrong and how to fix it.
        message: String,
    },
    /// `GetSandboxConfig` failed.
    #[error("GetSandboxConfig to {0}")]
    GetSandboxConfig(CallFailure),
    /// `GetSandboxProviderEnvironment` failed.
    #[error("GetSandboxProviderEnvironment to {0}")]
    GetSandboxProviderEnvironment(CallFailure),
    /// `ReportPolicyStatus` failed.
    #[error("ReportPolicyStatus to {0}")]
    ReportPolicyStatus(CallFailure),
    /// `PushSandboxLogs` failed.
    #[error("PushSandboxLogs to {0}")]
    PushSandboxLogs(CallFailure),
    /// `ConnectSupervisor` failed.
    #[error("ConnectSupervisor to {0}")]
    ConnectSupervisor(CallFailure),
    /// `RelayStream` failed.
    #[error("RelayStream to {0}")]
    RelayStream(CallFailure),
    /// `ReportMainProcessExit` failed.
    #[error("ReportMainProcessExit to {0}")]
    ReportMainProcessExit(CallFailure),
    /// `GetInferenceBundle` failed.
    #[error("GetInferenceBundle to {0}")]
    GetInferenceBundle(CallFailure),
    /// The gateway's policy does not validate.
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

impl GatewayError {
    /// The failed call's details, for the variants that are calls.
    pub fn call_failure(&self) -> Option<&CallFailure> {
        use GatewayError as E;
        match self {
            E::GetSandboxConfig(f)
            | E::GetSandboxProviderEnvironment(f)
            | E::ReportPolicyStatus(f)
            | E::PushSandboxLogs(f)
            | E::ConnectSupervisor(f)
            | E::RelayStream(f)
            | E::ReportMainProcessExit(f)
            | E::GetInferenceBundle(f) => Some(f),
            E::Connect { .. } | E::Token { .. } | E::Policy(_) => None,
        }
    }

    /// The gRPC status code of a failed call.
    pub fn code(&self) -> Option<tonic::Code> {
        self.call_failure().map(|f| f.code)
    }

    /// Whether the gateway could not be reached (worth retrying later).
    pub fn is_unavailable(&self) -> bool {
        self.code() == Some(tonic::Code::Unavailable)
    }
}

impl ExitStatus for GatewayError {
    fn exit_status(&self) -> Exit {
        use tonic::Code;
        match self {
            GatewayError::Connect { .. } | GatewayError::Token { .. } => Exit::Usage,
            GatewayError::Policy(e) => e.exit_status(),
            other => match other.code() {
                Some(Code::Unauthenticated | Code::PermissionDenied | Code::NotFound | Code::InvalidArgument) => {
                    Exit::Usage
                }
                _ => Exit::Unavailable,
            },
        }
    }
}

/// The methods of the contract, to build the matching [`GatewayError`] variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Method {
    GetSandboxConfig,
    GetSandboxProviderEnvironment,
    ReportPolicyStatus,
    PushSandboxLogs,
    ConnectSupervisor,
    RelayStream,
    ReportMainProcessExit,
    GetInferenceBundle,
}

impl Method {
    pub(crate) fn failed(self, failure: CallFailure) -> GatewayError {
        match self {
            Method::GetSandboxConfig => GatewayError::GetSandboxConfig(failure),
            Method::GetSandboxProviderEnvironment => GatewayError::GetSandboxProviderEnvironment(failure),
            Method::ReportPolicyStatus => GatewayError::ReportPolicyStatus(failure),
            Method::PushSandboxLogs => GatewayError::PushSandboxLogs(failure),
            Method::ConnectSupervisor => GatewayError::ConnectSupervisor(failure),
            Method::RelayStream => GatewayError::RelayStream(failure),
            Method::ReportMainProcessExit => GatewayError::ReportMainProcessExit(failure),
            Method::GetInferenceBundle => GatewayError::GetInferenceBundle(failure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_gateway_exits_69_and_says_what_to_check() {
        let status = tonic::Status::unavailable("tcp connect error");
        let err = Method::GetSandboxConfig.failed(CallFailure::from_status("http://gw:8081", &status));
        assert_eq!(err.exit_status(), Exit::Unavailable);
        assert!(err.is_unavailable());
        let text = err.to_string();
        assert!(text.starts_with("GetSandboxConfig to http://gw:8081 (Unavailable): tcp connect error;"), "{text}");
        assert!(text.contains("OPENSHELL_ENDPOINT"), "{text}");
    }

    #[test]
    fn a_refused_token_is_a_configuration_error() {
        let status = tonic::Status::unauthenticated("bad jwt");
        let err = Method::ReportMainProcessExit.failed(CallFailure::from_status("http://gw:1", &status));
        assert_eq!(err.exit_status(), Exit::Usage);
        assert!(err.to_string().contains("OPENSHELL_SANDBOX_TOKEN_FILE"));
        let err = GatewayError::Token { message: "cannot read".into() };
        assert_eq!(err.exit_status(), Exit::Usage);
    }
}
