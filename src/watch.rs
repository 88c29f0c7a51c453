//! Polling: [`WatchedFile`], a local file (policy, provider credentials, inference routes)
//! whose new contents count only once they have settled, and [`every`], the one loop shape
//! of every file and gateway poller (a tick per interval until shutdown).

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::Instant;

use crate::shutdown::Shutdown;

/// How long new contents of a watched file must stay unchanged before they count: a writer
/// that is half way through (not writing to a temporary file and renaming) can leave a
/// prefix that is itself valid and different, for example a policy endpoint cut before its
/// `protocol` (an inspected endpoint turned plain tunnel), or a credentials file cut
/// inside a value.
pub const SETTLE: Duration = Duration::from_secs(1);

/// A file read on each check and compared with the version in force.
#[derive(Debug)]
pub struct WatchedFile {
    path: PathBuf,
    settle: Duration,
    /// The contents in force (`None` once the file could not be read).
    last: Option<Vec<u8>>,
    /// Changed contents not yet settled, and when they were first read.
    pending: Option<(Vec<u8>, Instant)>,
}

/// What one check of a [`WatchedFile`] found.
#[derive(Debug)]
pub enum Change {
    /// The contents in force, or a failure to read already reported.
    Same,
    /// New contents, not yet the same for the settle time.
    Settling,
    /// New contents that have settled: they are now the version in force.
    New(Vec<u8>),
    /// The file cannot be read (reported once per outage; the version in force stays).
    Unreadable(io::Error),
}

impl WatchedFile {
    /// Reads `path`: its contents are the version in force, and the watcher of later ones.
    pub fn open(path: &Path) -> io::Result<(Self, Vec<u8>)> {
        let contents = std::fs::read(path)?;
        let file = WatchedFile { path: path.to_owned(), settle: SETTLE, last: Some(contents.clone()), pending: None };
        Ok((file, contents))
    }

    /// A watcher of `path` whose version in force is what it holds now (none if unreadable).
    pub fn new(path: &Path) -> Self {
        WatchedFile { path: path.to_owned(), settle: SETTLE, last: std::fs::read(path).ok(), pending: None }
    }

    /// The same watcher with another settle time (tests).
    pub fn with_settle(mut self, settle: Duration) -> Self {
        self.settle = settle;
        self
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file once: contents that differ from the version in force and have read
    /// the same for the settle time become the version in force.
    pub fn check(&mut self) -> Change {
        let contents = match std::fs::read(&self.path) {
            Ok(contents) => contents,
            Err(e) => {
                self.pending = None;
                return if self.last.take().is_some() { Change::Unreadable(e) } else { Change::Same };
            }
        };
        if self.last.as_deref() == Some(contents.as_slice()) {
            self.pending = None;
            return Change::Same;
        }
        let first_read = match &self.pending {
            Some((pending, at)) if *pending == contents => *at,
            _ => {
                let now = Instant::now();
                self.pending = Some((contents.clone(), now));
                now
            }
        };
        if first_read.elapsed() < self.settle {
            tracing::debug!(path = %self.path.display(), "the file changed; it counts once it stays unchanged");
            return Change::Settling;
        }
        self.pending = None;
        self.last = Some(contents.clone());
        Change::New(contents)
    }

    /// How long until a change being waited for has settled (`None` when none is).
    pub fn settles_in(&self) -> Option<Duration> {
        self.pending.as_ref().map(|(_, at)| self.settle.saturating_sub(at.elapsed()))
    }
}

/// The ticks of a poller: one per `interval`, the first one interval after the start.
#[derive(Debug)]
pub struct Every {
    interval: Duration,
    shutdown: Shutdown,
}

/// Ticks every `interval` until `shutdown`: `while ticks.tick(None).await { poll }`.
pub fn every(interval: Duration, shutdown: Shutdown) -> Every {
    Every { interval, shutdown }
}

impl Every {
    /// Waits for the next tick, or `sooner` when that is shorter (a watched file's
    /// [`WatchedFile::settles_in`]). `false` once shutdown has started: stop polling.
    pub async fn tick(&self, sooner: Option<Duration>) -> bool {
        let pause = sooner.map_or(self.interval, |sooner| sooner.min(self.interval));
        tokio::select! {
            biased;
            () = self.shutdown.signalled() => false,
            () = tokio::time::sleep(pause) => true,
        }
    }
}

#[cfg(test)]
mod tests;
