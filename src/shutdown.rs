//! The one shutdown and drain mechanism for every task: a cancellation signal that
//! servers select on to stop accepting, and a task tracker that the process waits on,
//! for a bounded grace period, before it exits.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};
use tokio_util::task::TaskTracker;

/// Cheap to clone; all clones share one signal and one set of tracked tasks.
#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// A fresh, untriggered shutdown.
    pub fn new() -> Self {
        Shutdown::default()
    }

    /// Starts the shutdown: every `signalled()` future completes.
    pub fn trigger(&self) {
        self.token.cancel();
    }

    /// Completes once shutdown has started. Servers stop accepting on it.
    pub fn signalled(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// A shutdown signalled with this one or by its own [`Shutdown::trigger`] (which leaves
    /// this one alone); its tasks are tracked with this one's, so the drain waits for them.
    pub fn child(&self) -> Shutdown {
        Shutdown { token: self.token.child_token(), tracker: self.tracker.clone() }
    }

    /// Whether shutdown has started.
    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Spawns a task that the drain waits for, in the audit scope (connection or session)
    /// of the task that spawns it.
    pub fn spawn<F>(&self, task: F) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(crate::telemetry::ocsf::inherit(task))
    }

    /// Number of tracked tasks still running (connections, relays, pollers).
    pub fn tasks(&self) -> usize {
        self.tracker.len()
    }

    /// Triggers SIGTERM and SIGINT handling: either signal starts the shutdown.
    pub fn trigger_on_signals(&self) -> std::io::Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let token = self.token.clone();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::info!(signal = name, "shutting down");
            token.cancel();
        });
        Ok(())
    }

    /// Triggers the shutdown if needed, then waits up to `grace` for tracked tasks to
    /// finish. Returns how many were still running when the grace period ended.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.trigger();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_ok() { 0 } else { self.tracker.len() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn drain_waits_for_tasks_that_finish_in_time() {
        let shutdown = Shutdown::new();
        let s = shutdown.clone();
        shutdown.spawn(async move {
            s.signalled().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        });
        assert_eq!(shutdown.tasks(), 1);
        assert_eq!(shutdown.drain(Duration::from_secs(5)).await, 0);
        assert!(shutdown.is_triggered());
    }

    #[tokio::test]
    async fn a_child_is_signalled_with_its_parent_or_alone() {
        let parent = Shutdown::new();
        let child = parent.child();
        child.trigger();
        assert!(child.is_triggered() && !parent.is_triggered(), "a child's trigger stays with the child");
        let other = parent.child();
        other.spawn(std::future::pending::<()>());
        assert_eq!(parent.tasks(), 1, "a child's tasks are the parent's");
        parent.trigger();
        assert!(other.is_triggered());
        other.signalled().await;
    }

    #[tokio::test]
    async fn drain_gives_up_after_the_grace_period() {
        let shutdown = Shutdown::new();
        shutdown.spawn(std::future::pending::<()>());
        let started = std::time::Instant::now();
        assert_eq!(shutdown.drain(Duration::from_millis(50)).await, 1);
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
