//! The inference routes in force: replaced as a whole (requests keep the bundle they took),
//! by the local file's reloader here or by a gateway poller through [`RoutesHandle::install`].

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use super::{InferenceBundle, RoutesError, load_routes_file};
use crate::shutdown::Shutdown;

/// The file identity the reloader compares: modification time, length, inode.
type Stamp = Option<(Option<SystemTime>, u64, u64)>;

/// The current routes bundle.
#[derive(Debug)]
pub struct RoutesHandle {
    current: RwLock<Arc<InferenceBundle>>,
    /// The routes file as it was when last read.
    read: Mutex<Stamp>,
}

impl RoutesHandle {
    /// A handle holding `bundle`.
    pub fn new(bundle: InferenceBundle) -> Self {
        RoutesHandle { current: RwLock::new(Arc::new(bundle)), read: Mutex::new(None) }
    }

    /// Reads the routes file ([`load_routes_file`]), remembering its identity for the reloader.
    pub fn from_file(path: &Path) -> Result<Self, RoutesError> {
        let before = stamp(path);
        let handle = RoutesHandle::new(load_routes_file(path)?);
        *handle.read.lock().unwrap_or_else(PoisonError::into_inner) = before;
        Ok(handle)
    }

    /// The routes in force now.
    pub fn current(&self) -> Arc<InferenceBundle> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts `bundle` in force for the next request.
    pub fn install(&self, bundle: InferenceBundle) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(bundle);
    }

    /// Re-reads the routes file every `interval` when its modification time or length
    /// changed, until shutdown. A bad file keeps the routes in force and is reported once
    /// (the error names the file and YAML path, never an API key).
    pub async fn run_file_reloader(self: Arc<Self>, path: PathBuf, interval: Duration, shutdown: Shutdown) {
        loop {
            tokio::select! {
                () = shutdown.signalled() => return,
                () = tokio::time::sleep(interval) => {}
            }
            let now = stamp(&path);
            {
                let mut last = self.read.lock().unwrap_or_else(PoisonError::into_inner);
                if *last == now {
                    continue;
                }
                *last = now;
            }
            match load_routes_file(&path) {
                Ok(bundle) => {
                    tracing::info!(path = %path.display(), routes = bundle.routes.len(), "inference routes reloaded");
                    self.install(bundle);
                }
                Err(e) => tracing::warn!("kept the previous inference routes: {e}"),
            }
        }
    }
}

fn stamp(path: &Path) -> Stamp {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.modified().ok(), m.len(), m.ino()))
}
