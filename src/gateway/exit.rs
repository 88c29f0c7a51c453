//! `ReportMainProcessExit`: tells the gateway the workload's exit code, trying again
//! with backoff until the gateway acknowledges or the caller's deadline passes.

use std::time::Duration;

use tokio::time::Instant;

use super::backoff::Backoff;
use super::proto::ReportMainProcessExitRequest;
use super::{CallFailure, GatewayClient, GatewayError, Method};

impl GatewayClient {
    /// One `ReportMainProcessExit` call.
    pub async fn report_main_process_exit_once(&self, instance_id: &str, exit_code: i32) -> Result<(), GatewayError> {
        let request = ReportMainProcessExitRequest {
            sandbox_id: self.sandbox_id().to_owned(),
            instance_id: instance_id.to_owned(),
            exit_code,
        };
        self.unary(Method::ReportMainProcessExit, self.openshell().report_main_process_exit(request)).await.map(drop)
    }
}

/// Reports the workload's exit until acknowledged; gives up at `deadline` with the last
/// error. `instance_id` is the supervisor session's ([`super::session::Supervisor::instance_id`]).
pub async fn report_main_process_exit(
    client: &GatewayClient,
    instance_id: &str,
    exit_code: i32,
    deadline: Instant,
    mut backoff: Backoff,
) -> Result<(), GatewayError> {
    let mut attempt = 1u32;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        let result =
            match tokio::time::timeout(remaining, client.report_main_process_exit_once(instance_id, exit_code)).await {
                Ok(result) => result,
                Err(_) => Err(Method::ReportMainProcessExit.failed(CallFailure::timeout(client.endpoint(), remaining))),
            };
        let error = match result {
            Ok(()) => {
                tracing::info!(exit_code, attempt, "the gateway acknowledged the workload's exit");
                return Ok(());
            }
            Err(e @ GatewayError::Token { .. }) => return Err(e),
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        if Instant::now() + delay >= deadline {
            tracing::warn!(exit_code, attempt, "giving up reporting the workload's exit: {error}");
            return Err(error);
        }
        tracing::warn!(exit_code, attempt, "{error}; trying again in {delay:?}");
        tokio::time::sleep(delay.max(Duration::from_millis(1))).await;
        attempt += 1;
    }
}
