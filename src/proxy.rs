//! Proxy mode: the egress proxy sidecar (design.md section 3).

use crate::config::ProxyConfig;
use crate::{Exit, ExitStatus};

/// Failures that end proxy mode.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// Not built yet.
    #[error("proxy mode is not built yet")]
    NotBuilt,
}

impl ExitStatus for ProxyError {
    fn exit_status(&self) -> Exit {
        Exit::Internal
    }
}

/// Runs the proxy until SIGTERM/SIGINT; returns the exit status.
pub fn run(config: ProxyConfig) -> Result<Exit, ProxyError> {
    let _ = config;
    Err(ProxyError::NotBuilt)
}

pub mod credentials;
pub mod l7;
pub mod tls;
