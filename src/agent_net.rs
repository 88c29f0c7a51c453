//! `openshell-sandbox agent-net`: the holder of the agent's network namespace. The agent
//! container joins it (`--network container:`); it adds the route of the synthetic range via
//! the proxy, gives up every capability, and waits for SIGTERM (docs/podman.md, step 6).

use std::net::Ipv4Addr;

use crate::config::ConfigError;
use crate::config::layers::AgentNetLayer;
use crate::route::{self, RouteError};
use crate::shutdown::Shutdown;
use crate::{Exit, ExitStatus};

/// Why the holder stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentNetError {
    /// `--via` is missing.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The route could not be added or the capabilities not dropped.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The runtime or the signal handlers could not be set up.
    #[error("cannot start the agent-net runtime: {0}")]
    Runtime(std::io::Error),
}

impl ExitStatus for AgentNetError {
    fn exit_status(&self) -> Exit {
        match self {
            AgentNetError::Config(e) => e.exit_status(),
            AgentNetError::Route(e) => e.exit_status(),
            AgentNetError::Runtime(_) => Exit::Internal,
        }
    }
}

/// The proxy address from the flags/environment, else the file.
pub fn via(cli: &AgentNetLayer, file: &AgentNetLayer) -> Result<Ipv4Addr, ConfigError> {
    cli.via.or(file.via).ok_or_else(|| ConfigError::Missing {
        message: "agent-net needs the proxy's internal address: set OPENSHELL_AGENT_NET_VIA (or --via)".into(),
    })
}

/// Adds the route via `via`, drops every capability, and holds until SIGTERM/SIGINT.
pub fn run(via: Ipv4Addr) -> Result<Exit, AgentNetError> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(AgentNetError::Runtime)?;
    runtime.block_on(async {
        let shutdown = Shutdown::new();
        shutdown.trigger_on_signals().map_err(AgentNetError::Runtime)?;
        route::add_via(route::synthetic_range(), via).await?;
        route::drop_all()?;
        tracing::info!(%via, "agent network ready: the synthetic range goes through the proxy; every capability dropped");
        shutdown.signalled().await;
        Ok(Exit::Success)
    })
}
