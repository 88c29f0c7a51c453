//! Provider credentials from the gateway: `GetSandboxProviderEnvironment` (this
//! supervisor does not support static credential bindings, so it says so and gets plain
//! values), and the poller that fetches them again whenever the provider revision
//! announced by `GetSandboxConfig` changes. Values are secrets: never logged.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::watch;

use super::backoff::Backoff;
use super::proto::GetSandboxProviderEnvironmentRequest;
use super::{GatewayClient, GatewayError, Method, Sink};
use crate::config::Secret;
use crate::shutdown::Shutdown;

/// The provider environment: credential names and their (secret) values.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProviderEnvironment {
    /// Name to value; Debug prints `[redacted]` for every value.
    pub environment: BTreeMap<String, Secret>,
    /// The gateway's revision of this environment.
    pub revision: u64,
    /// Names whose values are not secret (they may be given to the agent as they are).
    pub non_secret_keys: BTreeSet<String>,
}

impl ProviderEnvironment {
    /// Whether `key`'s value must stay behind a placeholder.
    pub fn is_secret(&self, key: &str) -> bool {
        !self.non_secret_keys.contains(key)
    }
}

impl GatewayClient {
    /// One `GetSandboxProviderEnvironment` call.
    pub async fn get_provider_environment(&self) -> Result<ProviderEnvironment, GatewayError> {
        let request = GetSandboxProviderEnvironmentRequest {
            sandbox_id: self.sandbox_id().to_owned(),
            supports_static_credential_bindings: false,
        };
        let response = self
            .unary(Method::GetSandboxProviderEnvironment, self.openshell().get_sandbox_provider_environment(request))
            .await?;
        if !response.static_credential_bindings.is_empty() {
            tracing::warn!(
                bindings = response.static_credential_bindings.len(),
                "the gateway sent static credential bindings although this supervisor does not support them; they are ignored"
            );
        }
        Ok(ProviderEnvironment {
            environment: response.environment.into_iter().map(|(k, v)| (k, Secret::new(v))).collect(),
            revision: response.provider_env_revision,
            non_secret_keys: response.non_secret_environment_keys.into_iter().collect(),
        })
    }
}

/// Fetches the provider environment again each time its announced revision changes.
pub struct ProviderPoller<S> {
    client: GatewayClient,
    sink: S,
    revisions: watch::Receiver<u64>,
    current: u64,
    backoff: Backoff,
}

impl<S: Sink<ProviderEnvironment>> ProviderPoller<S> {
    /// `revisions` comes from [`super::config::ConfigPoller::provider_revisions`];
    /// `current` is the revision of the environment installed at startup.
    pub fn new(client: GatewayClient, sink: S, revisions: watch::Receiver<u64>, current: u64) -> Self {
        ProviderPoller { client, sink, revisions, current, backoff: Backoff::reconnect() }
    }

    /// Replaces the delays between failed fetches (tests use short ones).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Runs until shutdown: on each revision change, fetch (retrying with backoff while
    /// the gateway fails) and install. A refused environment is logged; the old one stays.
    pub async fn run(mut self, shutdown: Shutdown) {
        loop {
            let wanted = *self.revisions.borrow_and_update();
            if wanted == self.current {
                tokio::select! {
                    () = shutdown.signalled() => return,
                    changed = self.revisions.changed() => if changed.is_err() { return },
                }
                continue;
            }
            match self.client.get_provider_environment().await {
                Ok(env) => {
                    self.backoff.reset();
                    self.current = wanted;
                    let (revision, keys) = (env.revision, env.environment.len());
                    match self.sink.install(env) {
                        Ok(()) => tracing::info!(revision, keys, "applied the new provider environment"),
                        Err(e) => tracing::warn!(revision, "kept the previous provider environment: {e}"),
                    }
                }
                Err(e) => {
                    let delay = self.backoff.next_delay();
                    tracing::warn!("provider environment revision {wanted}: {e}; trying again in {delay:?}");
                    tokio::select! {
                        () = shutdown.signalled() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}
