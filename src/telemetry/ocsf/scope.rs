//! The connection or session an event belongs to: a task-local [`Scope`] set where a
//! connection is accepted and carried into the tasks it spawns ([`crate::shutdown::Shutdown::spawn`]),
//! so every event of one connection or SSH session shares one `correlation_uid`.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

tokio::task_local! {
    static SCOPE: Scope;
}

/// One proxied connection or one SSH session.
#[derive(Clone, Debug)]
pub struct Scope {
    /// A fresh UUID: `connection_info.uid`, `actor.session.uid`, `metadata.correlation_uid`.
    pub uid: Arc<str>,
    /// The client's address (`src_endpoint`), when it has one.
    pub peer: Option<SocketAddr>,
}

impl Scope {
    /// A new scope with a fresh uid.
    pub fn new(peer: Option<SocketAddr>) -> Self {
        Scope { uid: uuid::Uuid::new_v4().to_string().into(), peer }
    }

    /// Runs `f` (synchronous) in this scope: for callbacks that run in tasks the scope's
    /// owner did not spawn (russh's session task calls the SSH handler).
    pub fn enter<R>(&self, f: impl FnOnce() -> R) -> R {
        SCOPE.sync_scope(self.clone(), f)
    }

    /// The scope of the running task, if it has one.
    pub fn current() -> Option<Scope> {
        SCOPE.try_with(Clone::clone).ok()
    }
}

/// Runs `task` in `scope`.
pub fn scoped<F: Future>(scope: Scope, task: F) -> impl Future<Output = F::Output> {
    SCOPE.scope(scope, task)
}

/// Runs `task` in the running task's scope, if it has one (for tasks it spawns).
pub fn inherit<F: Future>(task: F) -> impl Future<Output = F::Output> {
    let scope = Scope::current();
    async move {
        match scope {
            Some(scope) => SCOPE.scope(scope, task).await,
            None => task.await,
        }
    }
}
