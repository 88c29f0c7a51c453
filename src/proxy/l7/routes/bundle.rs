//! The inference routes the proxy serves `inference.local` with, whichever source gave
//! them: the local routes file or the gateway's `GetInferenceBundle` (converted in
//! `gateway::inference`). API keys are secrets: never logged.

use std::time::Duration;

use crate::config::Secret;

/// The routes in force for this sandbox.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct InferenceBundle {
    /// The routes, in the source's order.
    pub routes: Vec<Route>,
    /// The source's revision of the bundle ([`super::FILE_REVISION`] for the local file).
    pub revision: String,
    /// When the gateway answered (ms since the Unix epoch); not a sign of change.
    pub generated_at_ms: i64,
}

impl InferenceBundle {
    /// Whether `other` is the bundle this one is: the same revision (and, for a gateway
    /// that sends none, the same routes).
    pub fn same_as(&self, other: &InferenceBundle) -> bool {
        self.revision == other.revision && (!self.revision.is_empty() || self.routes == other.routes)
    }
}

/// One inference route.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Route name (what callers ask for).
    pub name: String,
    /// Upstream base URL.
    pub base_url: String,
    /// API shapes the route accepts (like `openai`, `anthropic`).
    pub protocols: Vec<String>,
    /// The upstream API key.
    pub api_key: Secret,
    /// The model sent upstream.
    pub model_id: String,
    /// The provider's type.
    pub provider_type: String,
    /// Upstream request timeout; `None` when unset (0).
    pub timeout: Option<Duration>,
    /// The model id goes in the URL path (Vertex AI style); see
    /// [`crate::proxy::l7::inference::upstream_uri`].
    pub model_in_path: bool,
    /// Replaces the request's path (with `model_in_path`: the suffix after the model id).
    pub request_path_override: Option<String>,
}
