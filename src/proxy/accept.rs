//! What an accept loop does when `accept()` fails (out of file descriptors, mostly): back
//! off with a doubling pause instead of spinning, warn once per episode instead of once
//! per attempt, and say when accepting works again and how long it did not.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::net::{TcpListener, TcpStream};

use crate::shutdown::Shutdown;

/// The first pause after a failed accept.
const FIRST_PAUSE: Duration = Duration::from_millis(10);
/// The longest pause: the time a recovered listener may wait before it accepts again.
const MAX_PAUSE: Duration = Duration::from_millis(500);
/// A failure episode that lasts longer than this is warned about again.
const REWARN_AFTER: Duration = Duration::from_secs(60);

/// The failure state of one accept loop.
#[derive(Debug)]
pub struct AcceptBackoff {
    listener: &'static str,
    pause: Duration,
    failures: u64,
    since: Option<Instant>,
    warned: Option<Instant>,
}

impl AcceptBackoff {
    /// The state of the loop of `listener` (named in the log lines).
    pub fn new(listener: &'static str) -> Self {
        AcceptBackoff { listener, pause: FIRST_PAUSE, failures: 0, since: None, warned: None }
    }

    /// The next connection on `listener`, backing off while accepting fails; `None` once
    /// shutdown has started. The one accept step of every listener of the proxy.
    pub async fn next(&mut self, listener: &TcpListener, shutdown: &Shutdown) -> Option<(TcpStream, SocketAddr)> {
        loop {
            tokio::select! {
                _ = shutdown.signalled() => return None,
                accepted = listener.accept() => match accepted {
                    Ok(pair) => {
                        self.succeeded();
                        return Some(pair);
                    }
                    Err(e) => self.failed(&e).await,
                },
            }
        }
    }

    /// Records a failed accept, logs it (a warning only at the start of an episode and
    /// once a minute after), and sleeps the pause, which doubles up to [`MAX_PAUSE`].
    async fn failed(&mut self, error: &std::io::Error) {
        let pause = self.record_failure(error);
        tokio::time::sleep(pause).await;
    }

    /// Counts and logs a failure; returns the pause to take before the next accept.
    fn record_failure(&mut self, error: &std::io::Error) -> Duration {
        let now = Instant::now();
        self.failures += 1;
        let since = *self.since.get_or_insert(now);
        if self.warned.is_none_or(|at| now.duration_since(at) >= REWARN_AFTER) {
            self.warned = Some(now);
            tracing::warn!(
                listener = self.listener,
                error = %error,
                failures = self.failures,
                for_ms = now.duration_since(since).as_millis() as u64,
                "accept failed; backing off until it works again (out of file descriptors? raise `ulimit -n` or lower OPENSHELL_PROXY_MAX_CONNECTIONS)"
            );
        } else {
            tracing::debug!(listener = self.listener, error = %error, "accept failed again");
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(MAX_PAUSE);
        pause
    }

    /// Records a successful accept; ends an episode with one line.
    fn succeeded(&mut self) {
        if let Some(since) = self.since.take() {
            tracing::info!(
                listener = self.listener,
                failures = self.failures,
                for_ms = since.elapsed().as_millis() as u64,
                "accepting again"
            );
            self.failures = 0;
            self.pause = FIRST_PAUSE;
            self.warned = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pause_doubles_to_its_cap_and_resets_on_success() {
        let mut backoff = AcceptBackoff::new("test");
        let error = std::io::Error::from_raw_os_error(24);
        let pauses: Vec<u128> = (0..8).map(|_| backoff.record_failure(&error).as_millis()).collect();
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 500, 500]);
        assert_eq!(backoff.failures, 8);
        assert!(backoff.warned.is_some());
        backoff.succeeded();
        assert_eq!((backoff.failures, backoff.pause, backoff.since, backoff.warned), (0, FIRST_PAUSE, None, None));
    }
}
