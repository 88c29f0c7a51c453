//! Agent mode: the agent supervisor (docs/architecture.md, "Agent mode"). Waits for the
//! proxy, loads the policy, prepares the child sandbox, serves SSH on the Unix socket (and optionally TCP),
//! and runs the workload, whose exit status becomes the supervisor's.

pub mod audit;
pub mod child;
pub mod env;
pub mod gateway;
pub mod pty;
pub mod ready;
pub mod ssh;
pub mod terminal;
pub mod workload;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::AgentConfig;
use crate::gateway::GatewayError;
use crate::gateway::logs::{LogQueue, LogShipper};
use crate::policy::{Policy, PolicyError};
use crate::sandbox::{ChildSandbox, SandboxError};
use crate::shutdown::Shutdown;
use crate::{Exit, ExitStatus};

/// How long SSH connections may take to close at shutdown.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Failures that end agent mode.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The proxy did not become ready.
    #[error(transparent)]
    NotReady(#[from] ready::ReadyError),
    /// Neither a policy file nor a gateway is configured.
    #[error(
        "no policy source: set OPENSHELL_POLICY_DATA (--policy) to a policy file, or OPENSHELL_ENDPOINT to the gateway (through the proxy's forward)"
    )]
    NoPolicySource,
    /// The local policy cannot be used.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The gateway's policy cannot be fetched or used.
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    /// The child sandbox cannot be prepared, or the supervisor cannot be hardened.
    #[error(transparent)]
    Sandbox(#[from] SandboxError),
    /// The children's working directory does not exist.
    #[error("the working directory {path} is not a directory: create it or set OPENSHELL_WORKDIR (--workdir)")]
    Workdir {
        /// The directory.
        path: PathBuf,
    },
    /// The SSH server cannot be set up.
    #[error(transparent)]
    Ssh(#[from] ssh::SshError),
    /// The TCP SSH listener cannot be bound.
    #[error("cannot listen for SSH on {addr}: {source}")]
    BindTcp {
        /// The address (--ssh-listen).
        addr: std::net::SocketAddr,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The workload failed to start or be supervised.
    #[error(transparent)]
    Workload(#[from] workload::WorkloadError),
    /// The async runtime or signal handling cannot be set up.
    #[error("cannot set up {what}: {source}")]
    Runtime {
        /// What failed.
        what: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ExitStatus for AgentError {
    fn exit_status(&self) -> Exit {
        match self {
            AgentError::NotReady(e) => e.exit_status(),
            AgentError::NoPolicySource | AgentError::Workdir { .. } => Exit::Usage,
            AgentError::Policy(e) => e.exit_status(),
            AgentError::Gateway(e) => e.exit_status(),
            AgentError::Sandbox(e) => e.exit_status(),
            AgentError::Ssh(e) => e.exit_status(),
            AgentError::BindTcp { .. } => Exit::Usage,
            AgentError::Workload(e) => e.exit_status(),
            AgentError::Runtime { .. } => Exit::Internal,
        }
    }
}

/// Runs the agent supervisor; returns the workload's exit status or 0 after SIGTERM.
/// `logs` is the queue of the gateway log layer installed with telemetry (`None` without
/// a gateway); its lines are shipped with `PushSandboxLogs` through the proxy's forward.
pub fn run(config: AgentConfig, logs: Option<LogQueue>) -> Result<Exit, AgentError> {
    if !config.nested {
        // Before any child exists: no core dumps, no ptrace attach to the supervisor.
        crate::sandbox::harden_supervisor()?;
    }
    ready::wait_ready(&config.common.tls_dir, config.ready_timeout)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| AgentError::Runtime { what: "the async runtime", source })?;
    let result = runtime.block_on(supervise(config, logs));
    runtime.shutdown_timeout(Duration::from_secs(1));
    result
}

async fn supervise(config: AgentConfig, logs: Option<LogQueue>) -> Result<Exit, AgentError> {
    let shutdown = Shutdown::new();
    let client = match &config.gateway {
        Some(gateway) => {
            let client = crate::gateway::GatewayClient::new(gateway)?;
            client.check_token()?;
            if let Some(queue) = logs {
                shutdown.spawn(LogShipper::new(client.clone(), queue).run(shutdown.clone()));
            }
            Some(client)
        }
        None => None,
    };
    let policy = load_policy(&config, client.as_ref()).await?;
    let workdir = match &config.workdir {
        Some(dir) => dir.clone(),
        None => std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/")),
    };
    if !workdir.is_dir() {
        return Err(AgentError::Workdir { path: workdir });
    }
    let sandbox = ChildSandbox::prepare(&policy, &config.seccomp, &workdir, config.nested)?;
    let identity = env::Identity::of(&sandbox);
    tracing::info!(user = %identity.user, workdir = %workdir.display(), "children run as");
    let child_env = env::ChildEnvSource::new(identity, &config.common.tls_dir);
    let launcher = Arc::new(child::Launcher::new(sandbox, child_env, workdir));

    let server = ssh::SshServer::new(&config, launcher.clone())?;
    let unix = ssh::bind_unix(&config.ssh_socket)?;
    let tcp = match config.ssh_listen {
        Some(addr) => {
            Some(tokio::net::TcpListener::bind(addr).await.map_err(|source| AgentError::BindTcp { addr, source })?)
        }
        None => None,
    };
    let tcp_bound = tcp.as_ref().and_then(|l| l.local_addr().ok());
    tracing::info!(socket = %config.ssh_socket.display(), tcp = ?tcp_bound, "serving SSH");
    let server_task = tokio::spawn(server.serve(unix, tcp, shutdown.clone()));
    let session = client.as_ref().map(|c| gateway::spawn_supervisor(c, &config.ssh_socket, &shutdown));

    let result = if config.command.is_empty() {
        shutdown.trigger_on_signals().map_err(|source| AgentError::Runtime { what: "signal handling", source })?;
        shutdown.signalled().await;
        Ok(Exit::Success)
    } else {
        let result = workload::run(&launcher, &config.command).await.map_err(AgentError::from);
        if let (Some(client), Some(instance_id), Ok(exit)) = (&client, &session, &result) {
            gateway::report_exit(client, instance_id, *exit).await;
        }
        result
    };

    let left = shutdown.drain(DRAIN_GRACE).await;
    if left > 0 {
        tracing::warn!(connections = left, "SSH connections still open at exit");
    }
    let _ = server_task.await;
    let _ = std::fs::remove_file(&config.ssh_socket);
    result
}

/// Step 2: the policy from the local file, or from the gateway through the proxy.
async fn load_policy(
    config: &AgentConfig,
    client: Option<&crate::gateway::GatewayClient>,
) -> Result<Policy, AgentError> {
    if let Some(path) = &config.common.policy_file {
        let policy = crate::policy::load_file(path)?;
        crate::policy::log_warnings(&policy);
        return Ok(policy);
    }
    let Some(client) = client else { return Err(AgentError::NoPolicySource) };
    let fetched =
        crate::gateway::config::fetch_with_retries(client, &crate::gateway::backoff::RetrySchedule::startup()).await?;
    fetched.log_warnings();
    Ok(fetched.policy)
}
