//! An `inference.local` connection (HTTP/1.1, or HTTP/2 when the client picks `h2`): each
//! request is shaped for its route ([`super::prepare`]) and sent over HTTP/1.1 on a new
//! connection to the route's base URL (TLS verified for `https`); the answer streams back as
//! it arrives, so server-sent events are not held. The answer head is awaited for the route's
//! `timeout_secs` when it sets one, else the proxy's response timeout; each connection ends
//! with one audit `close` event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use super::usage::{Metered, OnEnd};
use super::{INFERENCE_HOST, MAX_BODY, Prepared, Shape, prepare};
use crate::policy::host::unbracketed;
use crate::proxy::answer::{self, Body, Refusal};
use crate::proxy::audit;
use crate::proxy::credentials::scrub_answer;
use crate::proxy::drain::drained;
use crate::proxy::hop::strip_hop_by_hop;
use crate::proxy::l7::deny::{self, CONNECT_IN_TIME, HANDSHAKE_IN_TIME, ROUTE_ANSWER_IN_TIME, Refused};
use crate::proxy::l7::path::{EncodedSlash, PathError, canonicalize};
use crate::proxy::l7::routes::InferenceBundle;
use crate::proxy::l7::session::{SessionError, accept_client_tls, serve_requests, served_then_closed, upstream_failed};
use crate::shutdown::Shutdown;
use crate::telemetry::ocsf::Api;

/// The routes in force now (a new bundle applies to the next request).
pub type CurrentRoutes = Arc<dyn Fn() -> Arc<InferenceBundle> + Send + Sync>;

/// Everything an `inference.local` connection needs.
#[derive(Clone)]
pub struct InferenceSession {
    /// The current routes.
    pub routes: CurrentRoutes,
    /// TLS for `https` base URLs ([`crate::proxy::tls::upstream_client_config`]).
    pub upstream_tls: Arc<rustls::ClientConfig>,
    /// Bound on connecting (and each TLS handshake).
    pub connect_timeout: Duration,
    /// Bound on a request head (the keep-alive idle bound).
    pub idle_timeout: Duration,
    /// Bound on an answer head when the route sets no `timeout_secs` (the route's wins).
    pub response_timeout: Duration,
}

/// Accepts TLS (a leaf for `inference.local`), then serves the connection's requests;
/// writes the connection's audit `close` event when it ends.
pub async fn serve_inference_tls<IO>(
    raw: IO,
    server_config: Arc<rustls::ServerConfig>,
    session: InferenceSession,
    shutdown: Shutdown,
) -> Result<(), SessionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let tracker = shutdown.clone();
    served_then_closed(raw, INFERENCE_HOST, 443, &tracker, |raw, tally| async move {
        let tls = accept_client_tls(raw, server_config, session.connect_timeout, INFERENCE_HOST).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let idle = session.idle_timeout;
        let session = Arc::new(session);
        let handle = move |request| {
            let (session, tally) = (session.clone(), tally.clone());
            async move {
                tally.request();
                handle(&session, request).await
            }
        };
        let served = serve_requests(tls, h2, idle, shutdown, handle).await;
        served.map_err(|source| SessionError::Http { host: INFERENCE_HOST.to_owned(), source })
    })
    .await
}

async fn handle(session: &InferenceSession, request: Request<Incoming>) -> Response<Body> {
    let (mut parts, mut body) = request.into_parts();
    let method = parts.method.as_str().to_owned();
    let target = parts.uri.path_and_query().map_or("/", |pq| pq.as_str()).to_owned();
    let refused = |path| Refused { host: INFERENCE_HOST, port: 443, method: &method, path };
    let refuse = |refusal: Refusal, path: &str| {
        audit::inference_refused(&method, path, &refusal);
        Refused { host: INFERENCE_HOST, port: 443, method: &method, path }.answer(&refusal)
    };
    let canonical = match canonicalize(&target, EncodedSlash::Refuse) {
        Ok(c) => c,
        Err(e) => return drained(refuse(deny::bad_path(&e), parts.uri.path()), body),
    };
    let path = canonical.path.clone();
    if Shape::of(&parts.method, &path).is_none() {
        return drained(refuse(deny::inference_path_denied(), &path), body);
    }
    let declared = parts.headers.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let too_large = || refuse(deny::body_too_large(MAX_BODY), &path);
    if declared.is_some_and(|n| n > MAX_BODY) {
        return drained(too_large(), body);
    }
    // Read through `&mut`: past the limit, the rest of the body is still there to drain.
    let bytes = match Limited::new(&mut body, MAX_BODY as usize).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return drained(too_large(), body),
    };
    let Ok(uri) = canonical.target().parse() else {
        return refuse(deny::bad_path(&PathError::NotOriginForm), &path);
    };
    parts.uri = uri;
    let prepared = match prepare(&(session.routes)(), parts, bytes) {
        Ok(prepared) => prepared,
        Err(refusal) => return refuse(refusal, &path),
    };
    let scrubber = prepared.scrubber.clone();
    let call = Call {
        method: method.clone(),
        path: path.clone(),
        route: prepared.route.clone(),
        model: prepared.model.clone(),
        provider: prepared.provider.clone(),
        started: Instant::now(),
    };
    // Encodings are checked before `Connection` can name their headers away.
    let answer = send(session, prepared).await.and_then(|response| match &scrubber {
        Some(scrubber) => scrub_answer(scrubber, response, true, false).map_err(SendError::Failed),
        None => Ok(response.map(answer::boxed)),
    });
    match answer {
        Ok(mut response) => {
            strip_hop_by_hop(response.headers_mut(), false);
            call.metered(response)
        }
        Err(e) => {
            let upstream = refused(&path);
            let refusal = match e {
                SendError::Timeout(what) => deny::upstream_timeout(upstream, what),
                SendError::Failed(detail) => deny::upstream_unreachable(upstream, &detail),
            };
            upstream_failed("inference", upstream, &refusal);
            upstream.answer(&refusal)
        }
    }
}

/// One routed call, audited when its answer ends (API Activity: route, model, provider,
/// status, token counts, latency).
struct Call {
    method: String,
    path: String,
    route: String,
    model: Option<String>,
    provider: Option<String>,
    started: Instant,
}

impl Call {
    /// The answer, its body watched for token counts and its end audited.
    fn metered(self, response: Response<Body>) -> Response<Body> {
        let status = response.status().as_u16();
        let events = response
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|t| t.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
        response.map(move |body| {
            let on_end: OnEnd = Box::new(move |tokens| {
                audit::inference_answered(&Api {
                    method: &self.method,
                    path: &self.path,
                    route: Some(&self.route),
                    model: self.model.as_deref(),
                    provider: self.provider.as_deref(),
                    tokens,
                    status: Some(status),
                    latency_ms: Some(self.started.elapsed().as_millis() as u64),
                });
            });
            answer::boxed(Metered::new(body, events, on_end))
        })
    }
}

#[derive(Debug)]
enum SendError {
    Timeout(&'static str),
    Failed(String),
}

impl std::fmt::Display for SendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SendError::Timeout(what) => write!(f, "did not {what}"),
            SendError::Failed(detail) => f.write_str(detail),
        }
    }
}

/// Sends the prepared request on a new connection to its route; returns the answer head.
async fn send(session: &InferenceSession, prepared: Prepared) -> Result<Response<Incoming>, SendError> {
    let Prepared { mut parts, body, timeout, .. } = prepared;
    let uri = parts.uri.clone();
    let host = uri.host().ok_or_else(|| SendError::Failed("the route's base URL has no host".into()))?.to_owned();
    let https = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
    parts.uri = uri.path_and_query().map_or("/", |pq| pq.as_str()).parse().expect("a path is a valid URI");
    parts.version = http::Version::HTTP_11;
    let request = Request::from_parts(parts, Full::new(body));
    let bound = |what| move |_| SendError::Timeout(what);
    let tcp = tokio::time::timeout(session.connect_timeout, TcpStream::connect((unbracketed(&host), port)))
        .await
        .map_err(bound(CONNECT_IN_TIME))?
        .map_err(|e| SendError::Failed(format!("cannot connect to {host}:{port}: {e}")))?;
    let answer = timeout.unwrap_or(session.response_timeout);
    if https {
        let name = ServerName::try_from(unbracketed(&host).to_owned())
            .map_err(|_| SendError::Failed(format!("`{host}` is not a TLS server name")))?;
        let tls = tokio::time::timeout(
            session.connect_timeout,
            TlsConnector::from(session.upstream_tls.clone()).connect(name, tcp),
        )
        .await
        .map_err(bound(HANDSHAKE_IN_TIME))?
        .map_err(|e| SendError::Failed(format!("TLS with {host} failed: {e}")))?;
        exchange(tls, request, answer).await
    } else {
        exchange(tcp, request, answer).await
    }
}

async fn exchange<IO>(io: IO, request: Request<Full<Bytes>>, answer: Duration) -> Result<Response<Incoming>, SendError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| SendError::Failed(format!("HTTP/1.1 handshake failed: {e}")))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("inference upstream connection ended: {e}");
        }
    });
    tokio::time::timeout(answer, sender.send_request(request))
        .await
        .map_err(|_| SendError::Timeout(ROUTE_ANSWER_IN_TIME))?
        .map_err(|e| SendError::Failed(format!("the exchange failed: {e}")))
}
