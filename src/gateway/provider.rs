//! Provider credentials from the gateway: `GetSandboxProviderEnvironment` (this supervisor
//! enforces static credential bindings, so it says so and gets the values with the
//! endpoints each may go to), converted into the proxy's [`ProviderEnvironment`]; and the
//! poller that fetches them again whenever the provider revision announced by
//! `GetSandboxConfig` changes, or when a value has expired. Values are secrets: never logged.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, watch};

use super::backoff::Backoff;
use super::proto::GetSandboxProviderEnvironmentRequest;
use super::{GatewayClient, GatewayError, Method, Sink};
use crate::config::Secret;
use crate::proxy::credentials::{BindingEndpoint, ProviderEnvironment};
use crate::shutdown::Shutdown;

impl GatewayClient {
    /// One `GetSandboxProviderEnvironment` call.
    pub async fn get_provider_environment(&self) -> Result<ProviderEnvironment, GatewayError> {
        let request = GetSandboxProviderEnvironmentRequest {
            sandbox_id: self.sandbox_id().to_owned(),
            supports_static_credential_bindings: true,
        };
        let response = self
            .unary(Method::GetSandboxProviderEnvironment, self.openshell().get_sandbox_provider_environment(request))
            .await?;
        let endpoint =
            |e: super::proto::StaticCredentialEndpoint| BindingEndpoint { host: e.host, port: e.port, path: e.path };
        Ok(ProviderEnvironment {
            environment: response.environment.into_iter().map(|(k, v)| (k, Secret::new(v))).collect(),
            revision: response.provider_env_revision,
            non_secret_keys: response.non_secret_environment_keys.into_iter().collect(),
            bindings: response
                .static_credential_bindings
                .into_iter()
                .map(|(key, binding)| (key, binding.endpoints.into_iter().map(endpoint).collect()))
                .collect(),
            expires_at_ms: response.credential_expires_at_ms.into_iter().collect(),
        })
    }
}

/// The shortest time between two fetches asked for because a value expired.
pub const EXPIRED_REFETCH_SPACING: Duration = Duration::from_secs(2);

/// Fetches the provider environment again each time its announced revision changes, or
/// when the proxy found an expired value (at most every [`EXPIRED_REFETCH_SPACING`]).
pub struct ProviderPoller<S> {
    client: GatewayClient,
    sink: S,
    revisions: watch::Receiver<u64>,
    current: u64,
    backoff: Backoff,
    expired: Arc<Notify>,
}

impl<S: Sink<ProviderEnvironment>> ProviderPoller<S> {
    /// `revisions` comes from [`super::config::ConfigPoller::provider_revisions`];
    /// `current` is the revision of the environment installed at startup.
    pub fn new(client: GatewayClient, sink: S, revisions: watch::Receiver<u64>, current: u64) -> Self {
        ProviderPoller { client, sink, revisions, current, backoff: Backoff::reconnect(), expired: Arc::default() }
    }

    /// Also fetches when `expired` is notified (the credential store does on an expired value).
    pub fn refetch_on(mut self, expired: Arc<Notify>) -> Self {
        self.expired = expired;
        self
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
                    () = self.expired.notified() => {
                        tracing::info!("a provider credential has expired; fetching the provider environment again");
                        self.fetch_and_install(wanted).await;
                        tokio::select! {
                            () = shutdown.signalled() => return,
                            () = tokio::time::sleep(EXPIRED_REFETCH_SPACING) => {}
                        }
                    }
                }
                continue;
            }
            if !self.fetch_and_install(wanted).await {
                let delay = self.backoff.next_delay();
                tokio::select! {
                    () = shutdown.signalled() => return,
                    () = tokio::time::sleep(delay) => {}
                }
            }
        }
    }

    /// One fetch for revision `wanted`, installed; `false` when the gateway failed (logged).
    async fn fetch_and_install(&mut self, wanted: u64) -> bool {
        match self.client.get_provider_environment().await {
            Ok(env) => {
                self.backoff.reset();
                self.current = wanted;
                let (revision, keys) = (env.revision, env.environment.len());
                match self.sink.install(env) {
                    Ok(()) => tracing::info!(revision, keys, "applied the new provider environment"),
                    Err(e) => tracing::warn!(revision, "kept the previous provider environment: {e}"),
                }
                true
            }
            Err(e) => {
                tracing::warn!("provider environment revision {wanted}: {e}; trying again");
                false
            }
        }
    }
}
