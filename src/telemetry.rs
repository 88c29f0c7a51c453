//! Logging: tracing to stderr, as text or JSON lines (`OPENSHELL_LOG_FORMAT=json`), with
//! an EnvFilter directive. Audit events (one per policy decision) are ordinary events
//! under the `openshell::audit` target, so the same pipeline carries them.

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// The target of audit events: one per policy decision.
pub const AUDIT_TARGET: &str = "openshell::audit";

/// Failures of setting up logging.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The filter directive does not parse.
    #[error("log filter `{directive}` (--log-level / OPENSHELL_LOG_LEVEL / [log] level) is not valid: {message}")]
    Filter {
        /// The directive as given.
        directive: String,
        /// The parser's message.
        message: String,
    },
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    let filter = EnvFilter::builder()
        .parse(level)
        .map_err(|e| TelemetryError::Filter { directive: level.to_owned(), message: e.to_string() })?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests, embedding) keeps the first subscriber; that is not an error.
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    Ok(())
}
