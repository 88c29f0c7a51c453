//! Agent mode: the agent supervisor (design.md section 4).

use crate::config::AgentConfig;
use crate::{Exit, ExitStatus};

/// Failures that end agent mode.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Not built yet.
    #[error("agent mode is not built yet")]
    NotBuilt,
}

impl ExitStatus for AgentError {
    fn exit_status(&self) -> Exit {
        Exit::Internal
    }
}

/// Runs the agent supervisor; returns the workload's exit status or 0 after SIGTERM.
pub fn run(config: AgentConfig) -> Result<Exit, AgentError> {
    let _ = config;
    Err(AgentError::NotBuilt)
}
