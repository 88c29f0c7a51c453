//! Inference routes for `inference.local`: `GetInferenceBundle`, polled every 5 s, each
//! answer converted into the proxy's [`InferenceBundle`]. A bundle with a new `revision`
//! is installed (the gateway stamps `generated_at_ms` on every answer, so that says
//! nothing); a failed poll keeps the last good bundle. API keys are secrets: never logged.

use std::time::Duration;

use super::proto::inference::{GetInferenceBundleRequest, ResolvedRoute};
use super::{GatewayClient, GatewayError, Method, Sink};
use crate::config::Secret;
use crate::proxy::l7::routes::{InferenceBundle, Route};
use crate::shutdown::Shutdown;
use crate::watch::every;

/// The contract's poll interval.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

impl From<ResolvedRoute> for Route {
    fn from(r: ResolvedRoute) -> Self {
        Route {
            name: r.name,
            base_url: r.base_url,
            protocols: r.protocols,
            api_key: Secret::new(r.api_key),
            model_id: r.model_id,
            provider_type: r.provider_type,
            timeout: (r.timeout_secs > 0).then(|| Duration::from_secs(r.timeout_secs)),
            model_in_path: r.model_in_path,
            request_path_override: r.request_path_override,
        }
    }
}

impl GatewayClient {
    /// One `GetInferenceBundle` call (the sandbox is identified by its token).
    pub async fn get_inference_bundle(&self) -> Result<InferenceBundle, GatewayError> {
        let response = self
            .unary(Method::GetInferenceBundle, self.inference().get_inference_bundle(GetInferenceBundleRequest {}))
            .await?;
        Ok(InferenceBundle {
            routes: response.routes.into_iter().map(Route::from).collect(),
            revision: response.revision,
            generated_at_ms: response.generated_at_ms,
        })
    }
}

/// Polls the bundle and installs it when its revision changed.
pub struct InferencePoller<S> {
    client: GatewayClient,
    sink: S,
    interval: Duration,
    last: Option<InferenceBundle>,
}

impl<S: Sink<InferenceBundle>> InferencePoller<S> {
    /// A poller at the contract's 5 s interval.
    pub fn new(client: GatewayClient, sink: S) -> Self {
        InferencePoller { client, sink, interval: POLL_INTERVAL, last: None }
    }

    /// Another interval (tests).
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Starts from the bundle installed at startup, so an unchanged bundle is not reinstalled.
    pub fn starting_from(mut self, installed: &InferenceBundle) -> Self {
        self.last = Some(installed.clone());
        self
    }

    /// One poll: `Ok(true)` when a bundle with a new revision was installed. On error
    /// nothing changes.
    pub async fn poll_once(&mut self) -> Result<bool, GatewayError> {
        let bundle = self.client.get_inference_bundle().await?;
        if self.last.as_ref().is_some_and(|last| last.same_as(&bundle)) {
            return Ok(false);
        }
        let (revision, routes) = (bundle.revision.clone(), bundle.routes.len());
        match self.sink.install(bundle.clone()) {
            Ok(()) => {
                tracing::info!(revision, routes, "applied the new inference routes");
                self.last = Some(bundle);
                Ok(true)
            }
            Err(e) => {
                tracing::warn!(revision, "kept the previous inference routes: {e}");
                Ok(false)
            }
        }
    }

    /// Polls until shutdown; failures keep the last good bundle and are logged once per outage.
    pub async fn run(mut self, shutdown: Shutdown) {
        let mut failing = false;
        let ticks = every(self.interval, shutdown);
        while ticks.tick(None).await {
            match self.poll_once().await {
                Ok(_) if failing => {
                    failing = false;
                    tracing::info!("inference route polling works again");
                }
                Ok(_) => {}
                Err(e) if !failing => {
                    failing = true;
                    tracing::warn!("inference route poll failed, the last good routes stay: {e}");
                }
                Err(e) => tracing::debug!("inference route poll failed again: {e}"),
            }
        }
    }
}
