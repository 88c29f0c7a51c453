//! The gRPC channel to the gateway (plaintext `http://`, or `https://` with the client
//! certificate and the configured CA as the only root) and the interceptor that puts
//! `authorization: Bearer <sandbox token>` on every call, reading the token afresh each
//! time so a rotated token file is picked up.

use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Response, Status};

use super::proto::inference::inference_client::InferenceClient;
use super::proto::open_shell_client::OpenShellClient;
use super::tls_cause::{self, TlsFacts};
use super::{CallFailure, GatewayError, Method};
use crate::config::{GatewayConfig, GatewayTls, Secret, TOKEN_ENV, TokenSource};

/// Metadata key on a locally made status that says "the token could not be read".
const TOKEN_ERROR_KEY: &str = "x-openshell-local-token-error";
/// A token file larger than this is not a token.
const MAX_TOKEN_BYTES: u64 = 64 * 1024;

/// Timeouts of the gateway connection.
#[derive(Clone, Copy, Debug)]
pub struct ClientOptions {
    /// TCP connect (and TLS handshake) limit. Default 5 s.
    pub connect_timeout: Duration,
    /// Limit of one unary call. Default 15 s.
    pub call_timeout: Duration,
    /// HTTP/2 PING interval that detects a dead connection under long streams. Default 20 s.
    pub keepalive_interval: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connect_timeout: Duration::from_secs(5),
            call_timeout: Duration::from_secs(15),
            keepalive_interval: Duration::from_secs(20),
        }
    }
}

type Authed = InterceptedService<Channel, BearerToken>;

/// A connection to the gateway: cheap to clone, reconnects by itself when the gateway
/// comes back. Every call carries the bearer token.
#[derive(Clone, Debug)]
pub struct GatewayClient {
    openshell: OpenShellClient<Authed>,
    inference: InferenceClient<Authed>,
    sandbox_id: Arc<str>,
    endpoint: Arc<str>,
    /// For naming TLS failures (`None`: plaintext).
    tls: Option<Arc<TlsFacts>>,
    token: BearerToken,
    options: ClientOptions,
}

impl GatewayClient {
    /// A client for `config` with default timeouts. Connects lazily (the first call
    /// connects; a refused connection is an `Unavailable` call failure), so it must be
    /// called inside a tokio runtime. Fails only on unusable TLS material.
    pub fn new(config: &GatewayConfig) -> Result<Self, GatewayError> {
        Self::with_options(config, ClientOptions::default())
    }

    /// Like [`GatewayClient::new`] with explicit timeouts.
    pub fn with_options(config: &GatewayConfig, options: ClientOptions) -> Result<Self, GatewayError> {
        let url = config.endpoint.url.as_str();
        let connect_error = |message: String| GatewayError::Connect { endpoint: url.to_owned(), message };
        let mut endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| connect_error(format!("OPENSHELL_ENDPOINT is not usable: {e}")))?
            .connect_timeout(options.connect_timeout)
            .tcp_nodelay(true)
            .http2_keep_alive_interval(options.keepalive_interval)
            .keep_alive_timeout(options.connect_timeout)
            .keep_alive_while_idle(false);
        let mut facts = None;
        if config.endpoint.tls {
            let Some(tls) = &config.tls else {
                return Err(connect_error("an https endpoint needs OPENSHELL_TLS_CA".into()));
            };
            let server_name = config.server_name.clone().unwrap_or_else(|| config.endpoint.host.clone());
            let (channel_tls, probe_tls) =
                tls_configs(tls, &server_name, options.connect_timeout).map_err(connect_error)?;
            facts = Some(Arc::new(TlsFacts {
                ca: tls.ca.clone(),
                client_cert: tls.cert.is_some() && tls.key.is_some(),
                server_name,
                address: (config.endpoint.host.clone(), config.endpoint.port),
                config: probe_tls,
            }));
            endpoint = endpoint.tls_config(channel_tls).map_err(|e| connect_error(format!("TLS setup failed: {e}")))?;
        }
        let channel = endpoint.connect_lazy();
        let token = BearerToken::new(config.token.clone());
        Ok(GatewayClient {
            openshell: OpenShellClient::with_interceptor(channel.clone(), token.clone()),
            inference: InferenceClient::with_interceptor(channel, token.clone()),
            sandbox_id: config.sandbox_id.as_str().into(),
            endpoint: url.into(),
            tls: facts,
            token,
            options,
        })
    }

    /// This sandbox's id, sent in every request that has the field.
    pub fn sandbox_id(&self) -> &str {
        &self.sandbox_id
    }

    /// The gateway's URL, for messages.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Reads the token once, so a missing token file is reported before any call.
    pub fn check_token(&self) -> Result<(), GatewayError> {
        read_token(&self.token.source).map(drop)
    }

    /// The generated OpenShell client (token attached), for streaming calls.
    pub(crate) fn openshell(&self) -> OpenShellClient<Authed> {
        self.openshell.clone()
    }

    /// The generated Inference client (token attached).
    pub(crate) fn inference(&self) -> InferenceClient<Authed> {
        self.inference.clone()
    }

    /// Runs one unary call with the call timeout, mapping failures to `method`'s variant.
    pub(crate) async fn unary<T>(
        &self,
        method: Method,
        call: impl Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, GatewayError> {
        match tokio::time::timeout(self.options.call_timeout, call).await {
            Err(_) => Err(method.failed(CallFailure::timeout(&self.endpoint, self.options.call_timeout))),
            Ok(Err(status)) => Err(self.failure_probed(method, &status).await),
            Ok(Ok(response)) => Ok(response.into_inner()),
        }
    }

    /// Like [`GatewayClient::failure`]; when TLS is in use and the call only saw its
    /// connection close, a probe handshake names the TLS failure behind it, if there is one.
    async fn failure_probed(&self, method: Method, status: &Status) -> GatewayError {
        if let Some(tls) = &self.tls
            && tls_cause::diagnose(status, tls).is_none()
            && tls_cause::closed_under_call(status)
            && let Some(message) = tls_cause::probe(tls, self.options.connect_timeout).await
        {
            return method.failed(CallFailure { endpoint: self.endpoint.to_string(), code: status.code(), message });
        }
        self.failure(method, status)
    }

    /// Maps a status to `method`'s error; a token that could not be read stays a token error.
    pub(crate) fn failure(&self, method: Method, status: &Status) -> GatewayError {
        if status.metadata().contains_key(TOKEN_ERROR_KEY) {
            return GatewayError::Token { message: status.message().to_owned() };
        }
        method.failed(CallFailure::from_status_with(&self.endpoint, status, self.tls.as_deref()))
    }
}

/// The channel's TLS settings, and the same trust and identity as a rustls configuration
/// for [`tls_cause::probe`]. Only the configured CA is trusted: no system roots.
fn tls_configs(
    tls: &GatewayTls,
    server_name: &str,
    timeout: Duration,
) -> Result<(ClientTlsConfig, Arc<rustls::ClientConfig>), String> {
    let ca = read_pem(&tls.ca, "CA certificate", "OPENSHELL_TLS_CA")?;
    let no_certificate =
        |path: &Path, setting: &str| format!("{} ({setting}) holds no PEM certificate", path.display());
    let roots: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&ca)
        .collect::<Result<_, _>>()
        .map_err(|_| no_certificate(&tls.ca, "OPENSHELL_TLS_CA"))?;
    let mut store = rustls::RootCertStore::empty();
    let (added, _) = store.add_parsable_certificates(roots);
    if added == 0 {
        return Err(no_certificate(&tls.ca, "OPENSHELL_TLS_CA"));
    }
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name(server_name)
        .assume_http2(true)
        .timeout(timeout);
    let probe = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(store);
    let mut probe = match (&tls.cert, &tls.key) {
        (Some(cert_path), Some(key_path)) => {
            let cert = read_pem(cert_path, "client certificate", "OPENSHELL_TLS_CERT")?;
            let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert)
                .collect::<Result<_, _>>()
                .ok()
                .filter(|c: &Vec<_>| !c.is_empty())
                .ok_or_else(|| no_certificate(cert_path, "OPENSHELL_TLS_CERT"))?;
            let key = read_pem(key_path, "client key", "OPENSHELL_TLS_KEY")?;
            let private = PrivateKeyDer::from_pem_slice(&key)
                .map_err(|_| format!("{} (OPENSHELL_TLS_KEY) holds no PEM private key", key_path.display()))?;
            config = config.identity(Identity::from_pem(cert, key));
            probe.with_client_auth_cert(chain, private).map_err(|e| {
                format!(
                    "the client certificate (OPENSHELL_TLS_CERT) and key (OPENSHELL_TLS_KEY) do not go together: {e}"
                )
            })?
        }
        _ => probe.with_no_client_auth(),
    };
    probe.alpn_protocols = vec![b"h2".to_vec()];
    Ok((config, Arc::new(probe)))
}

fn read_pem(path: &Path, what: &str, setting: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read the {what} {} ({setting}): {e}", path.display()))
}

/// Reads the sandbox token from its source: the environment value, or the file, trimmed.
/// Errors name the file and the fix, never the token.
pub fn read_token(source: &TokenSource) -> Result<Secret, GatewayError> {
    let path = match source {
        TokenSource::Env(secret) => return Ok(secret.clone()),
        TokenSource::File(path) => path,
    };
    let fail = |problem: String| GatewayError::Token {
        message: format!(
            "sandbox token file {} (OPENSHELL_SANDBOX_TOKEN_FILE): {problem}; mount the token there or set {TOKEN_ENV}",
            path.display()
        ),
    };
    let size = std::fs::metadata(path).map_err(|e| fail(e.to_string()))?.len();
    if size > MAX_TOKEN_BYTES {
        return Err(fail(format!("{size} bytes is too large for a token")));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail("the file is empty".into()));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail("the token holds spaces or characters not allowed in an HTTP header".into()));
    }
    Ok(Secret::new(token))
}

/// Adds `authorization: Bearer <token>` to every call, reading the token each time.
#[derive(Clone, Debug)]
pub struct BearerToken {
    source: TokenSource,
}

impl BearerToken {
    /// An interceptor reading from `source`.
    pub fn new(source: TokenSource) -> Self {
        BearerToken { source }
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let local_error = |message: String| {
            let mut status = Status::unauthenticated(message);
            status.metadata_mut().insert(TOKEN_ERROR_KEY, MetadataValue::from_static("1"));
            status
        };
        let token = read_token(&self.source).map_err(|e| local_error(e.to_string()))?;
        let mut value = MetadataValue::try_from(format!("Bearer {}", token.expose()))
            .map_err(|_| local_error(format!("the sandbox token from {TOKEN_ENV} is not a valid header value")))?;
        value.set_sensitive(true);
        request.metadata_mut().insert("authorization", value);
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_file_is_trimmed_and_reread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandbox.jwt");
        std::fs::write(&path, "  first.jwt\n").unwrap();
        let mut interceptor = BearerToken::new(TokenSource::File(path.clone()));
        let header = |i: &mut BearerToken| {
            i.call(Request::new(())).unwrap().metadata().get("authorization").unwrap().to_str().unwrap().to_owned()
        };
        assert_eq!(header(&mut interceptor), "Bearer first.jwt");
        std::fs::write(&path, "second.jwt").unwrap();
        assert_eq!(header(&mut interceptor), "Bearer second.jwt");
    }

    #[test]
    fn token_problems_name_the_file_never_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sandbox.jwt");
        let err = read_token(&TokenSource::File(path.clone())).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()) && err.contains("OPENSHELL_SANDBOX_TOKEN"), "{err}");
        std::fs::write(&path, "\n \n").unwrap();
        assert!(read_token(&TokenSource::File(path.clone())).unwrap_err().to_string().contains("empty"));
        std::fs::write(&path, "abc def-secret").unwrap();
        let err = read_token(&TokenSource::File(path.clone())).unwrap_err().to_string();
        assert!(!err.contains("def-secret"), "{err}");
        let status = BearerToken::new(TokenSource::File(dir.path().join("none"))).call(Request::new(())).unwrap_err();
        assert!(status.metadata().contains_key(TOKEN_ERROR_KEY));
    }
}
