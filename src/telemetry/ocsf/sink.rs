//! Where OCSF JSON lines go: stderr (`OPENSHELL_LOG_FORMAT=ocsf`), a file
//! (`OPENSHELL_OCSF_FILE`, appended), or a writer (tests). Installed once per process with
//! the sandbox's identity; with no sink installed, [`emit`] costs one atomic load.

use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use super::Event;
use super::json;

/// Who emits: stamped on every event (`device`, `metadata.product.feature`).
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// The sandbox id (`device.uid`), when known.
    pub sandbox_id: Option<String>,
    /// The sandbox name (`device.name`), when known.
    pub sandbox_name: Option<String>,
    /// This container's host name (`device.hostname`).
    pub hostname: String,
    /// `proxy` or `agent` (`metadata.product.feature.name`, `metadata.log_provider`).
    pub feature: &'static str,
}

impl Identity {
    /// The identity of a process in `feature` mode: the host name from the kernel.
    pub fn new(feature: &'static str, sandbox_id: Option<String>, sandbox_name: Option<String>) -> Self {
        let hostname = nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        Identity { sandbox_id, sandbox_name, hostname, feature }
    }
}

/// Where the JSON lines go.
pub enum Output {
    /// Standard error, one line per event.
    Stderr,
    /// Appended to this file.
    File(PathBuf),
    /// A writer (tests).
    Writer(Box<dyn Write + Send>),
}

/// The OCSF sink could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The file named by `OPENSHELL_OCSF_FILE` cannot be opened for appending.
    #[error("cannot open the OCSF event file {path} (OPENSHELL_OCSF_FILE) for appending: {source}")]
    Open {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

struct Sink {
    identity: Identity,
    fixed: json::Fixed,
    writers: Mutex<Vec<Box<dyn Write + Send>>>,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Sets the identity and the outputs, once per process (a second call changes nothing).
pub fn install(identity: Identity, outputs: Vec<Output>) -> Result<(), SinkError> {
    let mut writers: Vec<Box<dyn Write + Send>> = Vec::new();
    for output in outputs {
        match output {
            Output::Stderr => writers.push(Box::new(std::io::stderr())),
            Output::File(path) => writers.push(Box::new(open(&path)?)),
            Output::Writer(writer) => writers.push(writer),
        }
    }
    if !writers.is_empty() {
        let fixed = json::Fixed::new(&identity);
        let _ = SINK.set(Sink { identity, fixed, writers: Mutex::new(writers) });
    }
    Ok(())
}

fn open(path: &Path) -> Result<File, SinkError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| SinkError::Open { path: path.to_owned(), source })
}

/// Writes `event` as one JSON line to every output, when any is installed. A failed write
/// is dropped: auditing never stops the traffic it describes.
pub fn emit(event: &Event<'_>) {
    let Some(sink) = SINK.get() else { return };
    thread_local! {
        static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }
    LINE.with_borrow_mut(|line| {
        line.clear();
        if json::write(line, event, &sink.identity, &sink.fixed).is_err() {
            return;
        }
        line.push(b'\n');
        let mut writers = sink.writers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        for writer in writers.iter_mut() {
            let _ = writer.write_all(line);
        }
    });
}
