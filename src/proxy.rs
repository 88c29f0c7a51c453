//! Proxy mode: the egress proxy sidecar (docs/architecture.md, "Proxy mode"). Loads the
//! policy (local file, else the gateway: `gateway_source`) and the CA, binds the proxy
//! listener (and the gateway forward when there is a gateway), writes the shared TLS dir
//! with `.ready` last, and serves until SIGTERM/SIGINT.

pub mod absolute;
pub mod accept;
pub mod answer;
pub mod audit;
pub mod ca;
pub mod connect;
pub mod counted;
pub mod credentials;
pub mod ctx;
pub mod dns;
pub mod drain;
pub mod gateway_source;
pub mod hop;
pub mod l7;
pub mod policy_source;
pub mod relay;
pub mod server;
mod startup;
pub mod tcp_forward;
pub mod tls;
pub mod transparent;
pub mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;

pub use startup::{Listeners, Prepared, prepare, prepare_with};

use crate::config::ProxyConfig;
use crate::gateway::backoff::RetrySchedule;
use crate::gateway::logs::LogQueue;
use crate::policy::PolicyError;
use crate::shutdown::Shutdown;
use crate::volume::VolumeError;
use crate::{Exit, ExitStatus};

/// Failures that end proxy mode.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Neither a local policy file nor a gateway is configured.
    #[error(
        "no policy source: set OPENSHELL_POLICY_DATA (or --policy) to a policy YAML file, or OPENSHELL_ENDPOINT to the gateway"
    )]
    NoPolicySource,
    /// The gateway could not be used at startup (its variant names the method).
    #[error(transparent)]
    Gateway(Box<crate::gateway::GatewayError>),
    /// The policy or rules could not be loaded (65 when invalid, every error listed).
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// The CA could not be loaded or generated.
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    /// The provider env file is unreadable or invalid (names the file and line, never a value).
    #[error("cannot load the provider credentials (OPENSHELL_PROVIDER_ENV_FILE)")]
    Credentials(#[from] credentials::CredentialError),
    /// The leaf issuer or the upstream TLS trust could not be built.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The inference routes file is unreadable or invalid.
    #[error(transparent)]
    Routes(#[from] l7::routes::RoutesError),
    /// The shared TLS dir could not be written.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The shared TLS dir could not be created or written.
    #[error(
        "point OPENSHELL_TLS_DIR (--tls-dir) at a directory the proxy can create and write (the volume the agent mounts read-only); the shared TLS dir {path} cannot be created or written"
    )]
    TlsDir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A listener could not be bound.
    #[error("cannot listen on {address} ({setting}): {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The setting that gave it.
        setting: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The synthetic range could not be routed to the proxy.
    #[error(transparent)]
    Route(#[from] crate::route::RouteError),
    /// The async runtime or the signal handlers could not be set up.
    #[error("cannot start the proxy runtime: {0}")]
    Runtime(std::io::Error),
}

impl ExitStatus for ProxyError {
    fn exit_status(&self) -> Exit {
        match self {
            ProxyError::NoPolicySource | ProxyError::TlsDir { .. } | ProxyError::Bind { .. } => Exit::Usage,
            ProxyError::Volume(_) => Exit::Usage,
            ProxyError::Policy(e) => e.exit_status(),
            ProxyError::Ca(e) => e.exit_status(),
            ProxyError::Credentials(e) => e.exit_status(),
            ProxyError::Tls(e) => e.exit_status(),
            ProxyError::Routes(e) => e.exit_status(),
            ProxyError::Gateway(e) => e.exit_status(),
            ProxyError::Route(e) => e.exit_status(),
            ProxyError::Runtime(_) => Exit::Internal,
        }
    }
}

/// Runs the proxy until SIGTERM/SIGINT; returns the exit status. `logs` is the queue of
/// the gateway log layer installed with telemetry (`None` without a gateway).
pub fn run(config: ProxyConfig, logs: Option<LogQueue>) -> Result<Exit, ProxyError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().map_err(ProxyError::Runtime)?;
    runtime.block_on(async move {
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals().map_err(ProxyError::Runtime)?;
        // A `.ready` left by an earlier run must not stand while the gateway is asked.
        let _ = crate::volume::remove_ready(&config.common.tls_dir);
        let schedule = RetrySchedule::startup();
        let gateway = tokio::select! {
            started = gateway_source::start(&config, logs, &schedule, &shutdown) => started?,
            () = shutdown.signalled() => return Ok(()),
        };
        let prepared = prepare_with(config, gateway)?;
        if prepared.config().dns.is_some() {
            crate::route::add_local(crate::route::synthetic_range()).await?;
            crate::route::drop_net_admin()?;
        }
        let listeners = Listeners::bind(prepared.config()).await?;
        prepared.serve(listeners, shutdown).await
    })?;
    // Tunnels still open after the grace period are cut when the runtime drops.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    Ok(Exit::Success)
}
