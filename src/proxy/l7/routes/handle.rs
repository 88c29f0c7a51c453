//! The inference routes in force: replaced as a whole (requests keep the bundle they took),
//! by the local file's reloader here or by a gateway poller through [`RoutesHandle::install`].

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use super::{InferenceBundle, RoutesError, parse_routes_file};
use crate::shutdown::Shutdown;
use crate::watch::{Change, WatchedFile, every};

/// The current routes bundle.
#[derive(Debug)]
pub struct RoutesHandle {
    current: RwLock<Arc<InferenceBundle>>,
    /// The routes file, when the routes come from one.
    file: Option<Mutex<WatchedFile>>,
}

impl RoutesHandle {
    /// A handle holding `bundle`.
    pub fn new(bundle: InferenceBundle) -> Self {
        RoutesHandle { current: RwLock::new(Arc::new(bundle)), file: None }
    }

    /// Reads the routes file ([`parse_routes_file`]) and watches it for the reloader.
    pub fn from_file(path: &Path) -> Result<Self, RoutesError> {
        let (file, bytes) =
            WatchedFile::open(path).map_err(|source| RoutesError::Read { path: path.to_owned(), source })?;
        let bundle = parse_routes_file(&bytes, path)?;
        Ok(RoutesHandle { current: RwLock::new(Arc::new(bundle)), file: Some(Mutex::new(file)) })
    }

    /// The routes in force now.
    pub fn current(&self) -> Arc<InferenceBundle> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Puts `bundle` in force for the next request.
    pub fn install(&self, bundle: InferenceBundle) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(bundle);
    }

    /// Re-reads the routes file: new contents that have settled ([`crate::watch::SETTLE`])
    /// are parsed, and `Ok(true)` means they are in force. A bad (or missing) file keeps the
    /// routes in force and is reported once. No file: `Ok(false)`.
    pub fn reload_if_changed(&self) -> Result<bool, RoutesError> {
        let Some(file) = &self.file else { return Ok(false) };
        let mut file = file.lock().unwrap_or_else(PoisonError::into_inner);
        let path = file.path().to_owned();
        let bytes = match file.check() {
            Change::Same | Change::Settling => return Ok(false),
            Change::Unreadable(source) => return Err(RoutesError::Read { path, source }),
            Change::New(bytes) => bytes,
        };
        drop(file);
        self.install(parse_routes_file(&bytes, &path)?);
        Ok(true)
    }

    /// Re-reads the routes file every `interval` until shutdown ([`Self::reload_if_changed`];
    /// the error names the file and YAML path, never an API key).
    pub async fn run_file_reloader(self: Arc<Self>, interval: Duration, shutdown: Shutdown) {
        let ticks = every(interval, shutdown);
        while ticks.tick(self.settles_in()).await {
            match self.reload_if_changed() {
                Ok(false) => {}
                Ok(true) => tracing::info!(routes = self.current().routes.len(), "inference routes reloaded"),
                Err(e) => tracing::warn!("kept the previous inference routes: {e}"),
            }
        }
    }

    /// How long until a change of the routes file has settled (`None` when none is waiting).
    fn settles_in(&self) -> Option<Duration> {
        let file = self.file.as_ref()?;
        file.lock().unwrap_or_else(PoisonError::into_inner).settles_in()
    }
}

#[cfg(test)]
mod tests;
