//! The one global tracing subscriber of a test binary, started by the first call of [`text`],
//! [`json`] or [`ocsf`]: every event of every level as text lines, the events of level INFO
//! and up as JSON lines as `OPENSHELL_LOG_FORMAT=json` writes them, and every audit event as
//! an OCSF JSON line as `OPENSHELL_LOG_FORMAT=ocsf` writes it. Global because scoped
//! subscribers miss events when tests on other threads share callsites.

use std::sync::{Arc, Mutex, OnceLock};

use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::SubscriberExt;

type Buffer = Arc<Mutex<Vec<u8>>>;

/// The sandbox id the OCSF events of the tests carry (`device.uid`).
pub const SANDBOX_ID: &str = "sandbox-under-test";

/// The text, JSON and OCSF captures, installing the subscriber on the first call.
fn buffers() -> &'static (Buffer, Buffer, Buffer) {
    static BUFFERS: OnceLock<(Buffer, Buffer, Buffer)> = OnceLock::new();
    BUFFERS.get_or_init(|| {
        let (text, json, ocsf) = (Buffer::default(), Buffer::default(), Buffer::default());
        let identity = openshell_sandbox::telemetry::ocsf::Identity::new("proxy", Some(SANDBOX_ID.into()), None);
        let output = openshell_sandbox::telemetry::ocsf::Output::Writer(Box::new(CaptureWriter(ocsf.clone())));
        openshell_sandbox::telemetry::ocsf::install(identity, vec![output]).expect("a writer needs no setup");
        let (text_writer, json_writer) = (text.clone(), json.clone());
        let subscriber = tracing_subscriber::registry()
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(move || CaptureWriter(text_writer.clone())),
            )
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(move || CaptureWriter(json_writer.clone()))
                    .with_filter(LevelFilter::INFO),
            );
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this test binary");
        (text, json, ocsf)
    })
}

/// Every event logged so far in this test binary's run, as text lines.
pub fn text() -> String {
    String::from_utf8_lossy(&buffers().0.lock().unwrap()).into_owned()
}

/// Every event of level INFO and up logged so far in this test binary's run, as JSON lines.
pub fn json() -> String {
    String::from_utf8_lossy(&buffers().1.lock().unwrap()).into_owned()
}

/// Every audit event written so far in this test binary's run, as OCSF JSON lines.
pub fn ocsf() -> String {
    String::from_utf8_lossy(&buffers().2.lock().unwrap()).into_owned()
}

struct CaptureWriter(Buffer);

impl std::io::Write for CaptureWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
