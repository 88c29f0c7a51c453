//! Proxy mode with a gateway (docs/architecture.md, "Proxy mode", startup step 2): opens
//! the log stream, fetches the policy, the provider environment and the inference bundle
//! before any listener exists, and after `.ready` spawns the pollers that keep them
//! current. A local file (policy, provider env, inference routes) wins over the gateway's
//! value. The only part of the proxy that uses the gateway module.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::ProxyConfig;
use crate::config::ValidationFailureMode;
use crate::gateway::backoff::RetrySchedule;
use crate::gateway::config::{ConfigPoller, PolicySink, SandboxConfig, fetch_with_retries, report_status};
use crate::gateway::inference::InferencePoller;
use crate::gateway::logs::{LogQueue, LogShipper};
use crate::gateway::proto::PolicyStatus;
use crate::gateway::provider::ProviderPoller;
use crate::gateway::{GatewayClient, GatewayError};
use crate::policy::{PolicyEngine, RegoRules};
use crate::shutdown::Shutdown;
use crate::volume;

use super::ProxyError;
use super::credentials::{ProviderEnvironment, SecretStore};
use super::l7::routes::{InferenceBundle, RoutesHandle};
use super::policy_source::PolicyHandle;

/// How long startup waits for the log stream to open before going on without it.
pub const LOG_STREAM_WAIT: Duration = Duration::from_secs(3);

/// What the gateway gave at startup, and the client to keep polling it.
pub struct GatewayStart {
    client: GatewayClient,
    /// The gateway's configuration and its compiled engine (`None` when a local policy file wins).
    policy: Option<(SandboxConfig, Option<PolicyEngine>)>,
    /// The provider environment's revision installed (`None` when a local env file wins).
    provider_revision: Option<u64>,
    secrets: Arc<SecretStore>,
    /// The bundle installed (`None` when a local routes file wins).
    bundle: Option<InferenceBundle>,
    routes: Arc<RoutesHandle>,
    poll_interval: Duration,
    tls_dir: PathBuf,
}

impl std::fmt::Debug for GatewayStart {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayStart")
            .field("endpoint", &self.client.endpoint())
            .field("policy_version", &self.policy.as_ref().map(|(c, _)| c.origin.version))
            .field("provider_revision", &self.provider_revision)
            .field("bundle_revision", &self.bundle.as_ref().map(|b| &b.revision))
            .finish_non_exhaustive()
    }
}

/// The contract's startup with the gateway of `config`, if any: the log stream (when
/// `logs` is given) opened first, waited for at most [`LOG_STREAM_WAIT`]; then
/// `GetSandboxConfig` with its retries (validated and compiled like a file, reported
/// LOADED, or FAILED and fatal); `GetSandboxProviderEnvironment` (failure: warn, no
/// credentials); `GetInferenceBundle` (failure: warn, no routes until a poll succeeds).
pub async fn start(
    config: &ProxyConfig,
    logs: Option<LogQueue>,
    schedule: &RetrySchedule,
    shutdown: &Shutdown,
) -> Result<Option<GatewayStart>, ProxyError> {
    let Some(gateway) = &config.gateway else { return Ok(None) };
    let client = GatewayClient::new(gateway)?;
    client.check_token()?;
    if let Some(queue) = logs {
        let shipper = LogShipper::new(client.clone(), queue);
        let mut opened = shipper.opened();
        shutdown.spawn(shipper.run(shutdown.clone()));
        if tokio::time::timeout(LOG_STREAM_WAIT, opened.wait_for(|open| *open)).await.is_err() {
            tracing::warn!(
                "the gateway log stream did not open within {LOG_STREAM_WAIT:?}; going on, lines wait in the queue"
            );
        }
    }
    let policy = match &config.common.policy_file {
        Some(path) => {
            tracing::info!(path = %path.display(), "the local policy file wins over the gateway's policy");
            None
        }
        None => Some(gateway_policy(&client, config, schedule).await?),
    };
    let secrets = Arc::new(SecretStore::empty());
    let provider_revision = match &config.provider_env_file {
        Some(_) => None,
        None => Some(provider_environment(&client, &secrets, policy.as_ref().map(|(c, _)| c)).await),
    };
    let bundle = match &config.inference_routes {
        Some(_) => None,
        None => Some(match client.get_inference_bundle().await {
            Ok(bundle) => {
                tracing::info!(revision = bundle.revision, routes = bundle.routes.len(), "inference routes loaded");
                bundle
            }
            Err(e) => {
                tracing::warn!("{e}; inference.local has no routes until a poll succeeds");
                InferenceBundle::default()
            }
        }),
    };
    let routes = Arc::new(RoutesHandle::new(bundle.clone().unwrap_or_default()));
    Ok(Some(GatewayStart {
        client,
        policy,
        provider_revision,
        secrets,
        bundle,
        routes,
        poll_interval: config.common.policy_poll_interval,
        tls_dir: config.common.tls_dir.clone(),
    }))
}

/// `GetSandboxConfig` with retries, compiled as generation 1 and reported LOADED; an
/// invalid policy or one that does not compile is reported FAILED and ends startup (no
/// status for the gateway's global policy).
async fn gateway_policy(
    client: &GatewayClient,
    config: &ProxyConfig,
    schedule: &RetrySchedule,
) -> Result<(SandboxConfig, Option<PolicyEngine>), ProxyError> {
    let fetched = fetch_with_retries(client, schedule).await?;
    fetched.log_warnings();
    let rules = RegoRules::load(config.common.policy_rules.as_deref())?;
    let engine = match PolicyEngine::new(fetched.policy.clone(), &rules, 1) {
        Ok(engine) => engine,
        Err(e) => {
            report_status(client, &fetched.origin, PolicyStatus::Failed, &e.summary()).await;
            return Err(e.into());
        }
    };
    tracing::info!(hash = fetched.policy_hash, "loaded {}", fetched.origin);
    report_status(client, &fetched.origin, PolicyStatus::Loaded, "").await;
    Ok((fetched, Some(engine)))
}

/// Installs the gateway's provider environment into `secrets`; returns the revision in
/// force (0 when the call failed, so the poller fetches again on the announced revision).
async fn provider_environment(client: &GatewayClient, secrets: &SecretStore, config: Option<&SandboxConfig>) -> u64 {
    match client.get_provider_environment().await {
        Ok(env) => match secrets.install(&env) {
            Ok(()) => {
                tracing::info!(revision = env.revision, keys = env.environment.len(), "provider credentials loaded");
                config.map_or(env.revision, |c| c.provider_env_revision)
            }
            Err(e) => {
                tracing::warn!("starting with no provider credentials: {e}");
                0
            }
        },
        Err(e) => {
            tracing::warn!("starting with no provider credentials: {e}");
            0
        }
    }
}

impl GatewayStart {
    /// The engine built from the gateway's policy, taken once by startup; `None` when
    /// the local policy file wins.
    pub fn take_engine(&mut self) -> Option<PolicyEngine> {
        self.policy.as_mut().and_then(|(_, engine)| engine.take())
    }

    /// The credentials from the gateway's provider environment, kept current by the
    /// provider poller (empty when a local env file wins: that file is the source then).
    pub fn secrets(&self) -> Arc<SecretStore> {
        self.secrets.clone()
    }

    /// The `inference.local` routes in force, kept current by the inference poller
    /// (`None` when a local routes file wins).
    pub fn routes(&self) -> Option<Arc<RoutesHandle>> {
        self.bundle.as_ref().map(|_| self.routes.clone())
    }

    /// After `.ready`: the config poller (installing into `policy` through the same
    /// validation and engine, reporting every reload), the provider poller on the config
    /// poller's revisions, and the inference poller every 5 s; each for what the gateway
    /// provides.
    pub fn spawn_pollers(self, policy: &PolicyHandle, rules: &RegoRules, shutdown: &Shutdown) {
        let revisions = match &self.policy {
            Some((installed, _)) => {
                let sink = GatewayPolicy { handle: policy.clone(), rules: rules.clone() };
                let poller = ConfigPoller::new(self.client.clone(), sink, self.poll_interval).starting_from(installed);
                let revisions = poller.provider_revisions();
                shutdown.spawn(poller.run(shutdown.clone()));
                Some(revisions)
            }
            None => None,
        };
        if let (Some(current), Some(revisions)) = (self.provider_revision, revisions) {
            let (secrets, tls_dir) = (self.secrets.clone(), self.tls_dir.clone());
            let sink = move |env: ProviderEnvironment| {
                secrets.install(&env).map_err(|e| e.to_string())?;
                if let Err(e) = volume::write_child_env(&tls_dir, &secrets.child_env()) {
                    tracing::warn!("the new credentials are in force, but child-env.json was not rewritten: {e}");
                }
                Ok(())
            };
            let poller =
                ProviderPoller::new(self.client.clone(), sink, revisions, current).refetch_on(self.secrets.expired());
            shutdown.spawn(poller.run(shutdown.clone()));
        }
        if let Some(bundle) = &self.bundle {
            let routes = self.routes.clone();
            let sink = move |bundle: InferenceBundle| {
                routes.install(bundle);
                Ok(())
            };
            let poller = InferencePoller::new(self.client.clone(), sink).starting_from(bundle);
            shutdown.spawn(poller.run(shutdown.clone()));
        }
    }
}

/// The [`PolicySink`] a gateway `ConfigPoller` installs through: each valid policy is
/// compiled with `rules` as the next generation; a policy that does not validate or
/// compile is rejected with the gateway's failure mode.
#[derive(Debug)]
struct GatewayPolicy {
    /// The holder to install into.
    handle: PolicyHandle,
    /// The Rego rules to compile with.
    rules: RegoRules,
}

impl PolicySink for GatewayPolicy {
    fn install(&self, config: SandboxConfig) -> Result<(), String> {
        let engine =
            PolicyEngine::new(config.policy, &self.rules, self.handle.next_generation()).map_err(|e| e.summary())?;
        self.handle.install(engine);
        Ok(())
    }

    fn reject(&self, error: &str, mode: ValidationFailureMode) {
        self.handle.reject(error, mode);
    }
}

impl From<GatewayError> for ProxyError {
    fn from(e: GatewayError) -> Self {
        ProxyError::Gateway(Box::new(e))
    }
}
