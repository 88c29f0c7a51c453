//! Logging: tracing to stderr, as text or JSON lines (`OPENSHELL_LOG_FORMAT=json`), with
//! an EnvFilter directive. Audit events (one per policy decision) are ordinary events
//! under the `openshell::audit` target, so the same pipeline carries them. With a
//! gateway, one more layer ships the same events to it (`gateway::logs`).

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;
use crate::gateway::logs::LogLayer;

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
    init_with(format, level, None)
}

/// Like [`init`], with the gateway's log layer when there is a gateway: it sees the
/// events the filter lets through, as stderr does.
pub fn init_with(format: LogFormat, level: &str, gateway: Option<LogLayer>) -> Result<(), TelemetryError> {
    let filter = EnvFilter::builder()
        .parse(level)
        .map_err(|e| TelemetryError::Filter { directive: level.to_owned(), message: e.to_string() })?;
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let stderr = match format {
        LogFormat::Text => stderr.boxed(),
        LogFormat::Json => stderr.json().flatten_event(true).with_current_span(false).boxed(),
    };
    // A second init (tests, embedding) keeps the first subscriber; that is not an error.
    let _ = tracing_subscriber::registry().with(filter).with(stderr).with(gateway).try_init();
    Ok(())
}
