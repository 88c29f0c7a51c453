//! The contract's methods, served from [`State`]: every call is recorded first, then
//! answered (or failed, when the test injected a failure).

use std::sync::Arc;

use openshell_sandbox::gateway::proto::inference::inference_server::Inference;
use openshell_sandbox::gateway::proto::inference::{GetInferenceBundleRequest, GetInferenceBundleResponse};
use openshell_sandbox::gateway::proto::open_shell_server::OpenShell;
use openshell_sandbox::gateway::proto::{
    GatewayMessage, GetSandboxConfigRequest, GetSandboxConfigResponse, GetSandboxProviderEnvironmentRequest,
    GetSandboxProviderEnvironmentResponse, PushSandboxLogsRequest, PushSandboxLogsResponse, RelayFrame,
    ReportMainProcessExitRequest, ReportMainProcessExitResponse, ReportPolicyStatusRequest, ReportPolicyStatusResponse,
    SessionAccepted, SessionRejected, SupervisorMessage, gateway_message, supervisor_message,
};
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::relays::{FrameStream, receiver_stream};
use super::state::{Payload, State, token_of_request};

/// The served object: the shared state (a newtype, so the generated traits can be
/// implemented here).
pub(super) struct Service(pub(super) Arc<State>);

impl std::ops::Deref for Service {
    type Target = State;

    fn deref(&self) -> &State {
        &self.0
    }
}

type GatewayStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<GatewayMessage, Status>> + Send>>;

#[tonic::async_trait]
impl OpenShell for Service {
    async fn get_sandbox_config(
        &self,
        request: Request<GetSandboxConfigRequest>,
    ) -> Result<Response<GetSandboxConfigResponse>, Status> {
        let id = request.get_ref().sandbox_id.clone();
        self.record("GetSandboxConfig", &request, &id, Payload::Config(request.get_ref().clone()))?;
        Ok(Response::new(self.config.lock().unwrap().clone()))
    }

    async fn get_sandbox_provider_environment(
        &self,
        request: Request<GetSandboxProviderEnvironmentRequest>,
    ) -> Result<Response<GetSandboxProviderEnvironmentResponse>, Status> {
        let id = request.get_ref().sandbox_id.clone();
        self.record("GetSandboxProviderEnvironment", &request, &id, Payload::ProviderEnv(request.get_ref().clone()))?;
        let mut env = self.provider_env.lock().unwrap().clone();
        if !request.get_ref().supports_static_credential_bindings {
            // As the real gateway: a supervisor that cannot enforce bindings gets no bound secret.
            let bound = std::mem::take(&mut env.static_credential_bindings);
            env.environment.retain(|key, _| !bound.contains_key(key));
            env.credential_expires_at_ms.retain(|key, _| !bound.contains_key(key));
        }
        Ok(Response::new(env))
    }

    async fn report_policy_status(
        &self,
        request: Request<ReportPolicyStatusRequest>,
    ) -> Result<Response<ReportPolicyStatusResponse>, Status> {
        let id = request.get_ref().sandbox_id.clone();
        self.record("ReportPolicyStatus", &request, &id, Payload::PolicyStatus(request.get_ref().clone()))?;
        Ok(Response::new(ReportPolicyStatusResponse {}))
    }

    async fn push_sandbox_logs(
        &self,
        request: Request<Streaming<PushSandboxLogsRequest>>,
    ) -> Result<Response<PushSandboxLogsResponse>, Status> {
        let token = token_of_request(&request);
        self.record_with_token("PushSandboxLogs", token.clone(), "", Payload::LogsOpened)?;
        let mut stream = request.into_inner();
        let stop = self.stop_token();
        loop {
            let message = tokio::select! {
                () = stop.cancelled() => return Err(Status::unavailable("test gateway stopping")),
                message = stream.message() => message?,
            };
            let Some(batch) = message else { return Ok(Response::new(PushSandboxLogsResponse {})) };
            let id = batch.sandbox_id.clone();
            self.record_with_token("PushSandboxLogs", token.clone(), &id, Payload::Logs(batch))?;
        }
    }

    type ConnectSupervisorStream = GatewayStream;

    async fn connect_supervisor(
        &self,
        request: Request<Streaming<SupervisorMessage>>,
    ) -> Result<Response<GatewayStream>, Status> {
        let token = token_of_request(&request);
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel::<Result<GatewayMessage, Status>>(32);
        let state = self.0.clone();
        let stop = self.stop_token();
        tokio::spawn(async move {
            let mut sandbox_id = String::new();
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("test gateway stopping"))).await;
                        return;
                    }
                    message = inbound.message() => message,
                };
                let Ok(Some(message)) = message else { return };
                if let Some(supervisor_message::Payload::Hello(hello)) = &message.payload {
                    sandbox_id = hello.sandbox_id.clone();
                }
                let payload = message.payload.clone();
                if state
                    .record_with_token("ConnectSupervisor", token.clone(), &sandbox_id, Payload::Supervisor(message))
                    .is_err()
                {
                    let _ = tx.send(Err(Status::unavailable("test gateway: injected failure"))).await;
                    return;
                }
                let go_on = match payload {
                    Some(supervisor_message::Payload::Hello(_)) => state.answer_hello(&tx).await,
                    Some(supervisor_message::Payload::RelayOpenResult(result)) => {
                        state.relay_result(result);
                        true
                    }
                    _ => true,
                };
                if !go_on {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(receiver_stream(rx))))
    }

    type RelayStreamStream = FrameStream;

    async fn relay_stream(&self, request: Request<Streaming<RelayFrame>>) -> Result<Response<FrameStream>, Status> {
        State::relay_stream(self, request).await
    }

    async fn report_main_process_exit(
        &self,
        request: Request<ReportMainProcessExitRequest>,
    ) -> Result<Response<ReportMainProcessExitResponse>, Status> {
        let id = request.get_ref().sandbox_id.clone();
        self.record("ReportMainProcessExit", &request, &id, Payload::Exit(request.get_ref().clone()))?;
        Ok(Response::new(ReportMainProcessExitResponse {}))
    }
}

impl State {
    /// Accepts (becoming the latest session) or rejects a hello. `false` ends the session.
    async fn answer_hello(&self, tx: &mpsc::Sender<Result<GatewayMessage, Status>>) -> bool {
        let reply = {
            let mut reply = self.session_reply.lock().unwrap();
            let current = reply.clone();
            reply.reject_first = reply.reject_first.saturating_sub(1);
            current
        };
        let payload = if reply.reject_first > 0 {
            gateway_message::Payload::SessionRejected(SessionRejected { reason: reply.reason })
        } else {
            *self.session.lock().unwrap() = Some(tx.clone());
            gateway_message::Payload::SessionAccepted(SessionAccepted {
                session_id: uuid::Uuid::new_v4().to_string(),
                heartbeat_interval_secs: reply.heartbeat_secs,
            })
        };
        let accepted = matches!(payload, gateway_message::Payload::SessionAccepted(_));
        tx.send(Ok(GatewayMessage { payload: Some(payload) })).await.is_ok() && accepted
    }
}

#[tonic::async_trait]
impl Inference for Service {
    async fn get_inference_bundle(
        &self,
        request: Request<GetInferenceBundleRequest>,
    ) -> Result<Response<GetInferenceBundleResponse>, Status> {
        self.record("GetInferenceBundle", &request, "", Payload::Bundle)?;
        let mut bundle = self.bundle.lock().unwrap().clone();
        // As the real gateway: "now" on every answer, whether the bundle changed or not.
        bundle.generated_at_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
        Ok(Response::new(bundle))
    }
}
