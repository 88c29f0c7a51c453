//! Logging: tracing to stderr, as text or JSON lines, with an EnvFilter directive; and
//! audit events ([`audit!`]) as OCSF ([`ocsf`]): their shorthand is the message of a
//! tracing event under [`AUDIT_TARGET`], their JSON goes to the OCSF outputs
//! (`OPENSHELL_LOG_FORMAT=ocsf`, `OPENSHELL_OCSF_FILE`). With a gateway, one more layer
//! ships the same events to it (`gateway::logs`), audit events with level `OCSF`.

pub mod ocsf;

use std::path::PathBuf;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;
use crate::gateway::logs::LogLayer;

/// The target of audit events: one per policy decision, connection end, SSH session,
/// process and configuration change.
pub const AUDIT_TARGET: &str = "openshell::audit";

/// Emits an audit event: `$event` (an [`ocsf::Event`]) as JSON to the OCSF outputs, and
/// one tracing event under [`AUDIT_TARGET`] at `$level` whose message is its shorthand,
/// with the given fields and `ocsf.severity_id`.
macro_rules! audit {
    ($level:ident, $event:expr $(, $($field:tt)+)?) => {{
        let event = &$event;
        $crate::telemetry::ocsf::emit(event);
        ::tracing::event!(
            target: $crate::telemetry::AUDIT_TARGET,
            ::tracing::Level::$level,
            ocsf.severity_id = event.severity as u32,
            $($($field)+ ,)?
            "{}",
            event.shorthand()
        );
    }};
}
pub(crate) use audit;

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
    /// The OCSF output cannot be opened.
    #[error(transparent)]
    Ocsf(#[from] ocsf::SinkError),
}

/// What to set up: the format and filter of stderr, and where OCSF events go.
pub struct Logging<'a> {
    /// The stderr format.
    pub format: LogFormat,
    /// The EnvFilter directive.
    pub level: &'a str,
    /// A file OCSF events are appended to, besides stderr in `ocsf` format.
    pub ocsf_file: Option<PathBuf>,
    /// Who emits (stamped on OCSF events).
    pub identity: ocsf::Identity,
}

/// Installs the global subscriber and the OCSF outputs. Call once, before anything logs.
pub fn init(format: LogFormat, level: &str) -> Result<(), TelemetryError> {
    init_with(Logging { format, level, ocsf_file: None, identity: ocsf::Identity::new("sandbox", None, None) }, None)
}

/// Like [`init`], with the gateway's log layer when there is a gateway: it sees the
/// events the filter lets through, as stderr does.
pub fn init_with(logging: Logging<'_>, gateway: Option<LogLayer>) -> Result<(), TelemetryError> {
    let Logging { format, level, ocsf_file, identity } = logging;
    let filter = EnvFilter::builder()
        .parse(level)
        .map_err(|e| TelemetryError::Filter { directive: level.to_owned(), message: e.to_string() })?;
    let mut outputs = Vec::new();
    if format == LogFormat::Ocsf {
        outputs.push(ocsf::Output::Stderr);
    }
    if let Some(path) = ocsf_file {
        outputs.push(ocsf::Output::File(path));
    }
    ocsf::install(identity, outputs)?;
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let stderr = match format {
        LogFormat::Text => stderr.boxed(),
        LogFormat::Json => stderr.json().flatten_event(true).with_current_span(false).boxed(),
        // Audit events are on stderr as OCSF already; the other lines stay JSON.
        LogFormat::Ocsf => stderr
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| meta.target() != AUDIT_TARGET))
            .boxed(),
    };
    // A second init (tests, embedding) keeps the first subscriber; that is not an error.
    let _ = tracing_subscriber::registry().with(filter).with(stderr).with(gateway).try_init();
    Ok(())
}
