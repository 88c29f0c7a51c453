//! The process exit statuses and the trait every module's error implements to name its
//! own, so `main` maps any failure to the status docs/architecture.md gives.

/// Process exit statuses (docs/architecture.md, "Exit codes"): 0, 1 for "denied" /
/// "unhealthy", 64, 65, 69, 70, and the workload's own status in agent mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success.
    Success,
    /// A negative answer that is not an error: `policy eval` denied, `healthcheck` unhealthy.
    No,
    /// Usage or configuration error.
    Usage,
    /// Invalid policy.
    InvalidPolicy,
    /// A required service is unreachable (gateway, proxy not ready).
    Unavailable,
    /// Internal error.
    Internal,
    /// Agent mode: the workload's exit status (128 + n when a signal ended it).
    Workload(u8),
}

impl Exit {
    /// The numeric status.
    pub fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::No => 1,
            Exit::Usage => 64,
            Exit::InvalidPolicy => 65,
            Exit::Unavailable => 69,
            Exit::Internal => 70,
            Exit::Workload(code) => code,
        }
    }
}

/// Errors that know their exit status.
pub trait ExitStatus {
    /// The status the process exits with when this error ends it.
    fn exit_status(&self) -> Exit;
}
