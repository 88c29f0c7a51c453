//! Agent mode with a gateway: the supervisor session (SSH relays to the local SSH
//! socket, TCP relays to loopback only) runs from the moment SSH is served until
//! shutdown, and the workload's exit is reported with the session's instance id.

use std::path::Path;
use std::time::Duration;

use tokio::time::Instant;

use crate::Exit;
use crate::gateway::GatewayClient;
use crate::gateway::backoff::Backoff;
use crate::gateway::exit::report_main_process_exit;
use crate::gateway::session::{SessionOptions, Supervisor};
use crate::shutdown::Shutdown;

/// How long the exit report is retried before the agent exits anyway.
pub const EXIT_REPORT_LIMIT: Duration = Duration::from_secs(30);

/// Spawns the supervisor session under `shutdown`; returns its instance id.
pub fn spawn_supervisor(client: &GatewayClient, ssh_socket: &Path, shutdown: &Shutdown) -> String {
    let supervisor = Supervisor::new(client.clone(), SessionOptions::new(ssh_socket));
    let instance_id = supervisor.instance_id().to_owned();
    tracing::info!(instance = instance_id, "starting the supervisor session");
    shutdown.spawn(supervisor.run(shutdown.clone()));
    instance_id
}

/// Reports the workload's exit status until the gateway acknowledges it, for at most
/// [`EXIT_REPORT_LIMIT`]; a failure is logged and the agent exits anyway.
pub async fn report_exit(client: &GatewayClient, instance_id: &str, exit: Exit) {
    let code = i32::from(exit.code());
    let deadline = Instant::now() + EXIT_REPORT_LIMIT;
    let backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(5));
    if let Err(e) = report_main_process_exit(client, instance_id, code, deadline, backoff).await {
        tracing::warn!(exit_code = code, "the gateway was not told of the workload's exit: {e}");
    }
}
