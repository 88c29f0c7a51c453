//! An inspected connection: after the proxy answered `200` to a CONNECT for an endpoint with
//! an L7 `protocol`, it hands the client stream here. Each request (HTTP/1.1, or HTTP/2 when
//! the client negotiated `h2`) is judged ([`super::judge`]), its body checked for
//! placeholders ([`crate::proxy::credentials::finish`]), then forwarded on a reused,
//! verified upstream connection with both bodies streamed (chunked, `Expect: 100-continue`,
//! server-sent events as they arrive, trailers); a WebSocket upgrade (the only upgrade ever
//! passed, to websocket endpoints) is judged as its GET, then relayed as bytes after a `101`
//! that switches to `websocket`. The wait for each answer head is bounded by the response
//! timeout (504 on expiry); answers are scrubbed of every secret value; the proxy's own answers are sent whole before the request body is
//! drained ([`crate::proxy::drain`]); each connection ends with one audit `close` event.

mod closing;
mod conn;
mod relay;
mod upstream;

pub(in crate::proxy::l7) use closing::{Tally, served_then_closed};
pub(in crate::proxy::l7) use conn::{accept_client_tls, serve_requests};
use relay::relay_upgraded;

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::header;
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

use super::deny::{self, Refused};
use super::judge::{Verdict, judge};
use crate::policy::{L7Decision, PolicyEngine};
use crate::proxy::answer::{Body, Refusal, empty};
use crate::proxy::audit;
use crate::proxy::counted::Source;
use crate::proxy::credentials::{Injection, SecretStore, finish};
use crate::proxy::drain::drained;
use crate::proxy::hop::{strip_hop_by_hop, wants_upgrade};
use crate::shutdown::Shutdown;
use crate::{Exit, ExitStatus};
use upstream::{Upstream, UpstreamError};

/// Opens a TCP connection to the upstream's already validated (SSRF-checked) addresses.
pub type Dial = Arc<dyn Fn() -> Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send>> + Send + Sync>;

/// The policy engine in force now (a reload between two requests applies to the second).
pub type CurrentPolicy = Arc<dyn Fn() -> Arc<PolicyEngine> + Send + Sync>;

/// Everything one inspected connection needs.
#[derive(Clone)]
pub struct Inspected {
    /// The CONNECT host: policy subject, upstream SNI and certificate name.
    pub host: String,
    /// The CONNECT port.
    pub port: u16,
    /// The current policy.
    pub policy: CurrentPolicy,
    /// The credentials swapped into allowed requests.
    pub secrets: Arc<SecretStore>,
    /// Upstream TLS ([`crate::proxy::tls::upstream_client_config`]).
    pub upstream_tls: Arc<rustls::ClientConfig>,
    /// Dials the upstream.
    pub dial: Dial,
    /// Bound on dialing and each TLS handshake.
    pub connect_timeout: Duration,
    /// Bound on waiting for each upstream answer head (not its body, so streams go on).
    pub response_timeout: Duration,
    /// Bound on waiting for a request head (also the keep-alive idle bound).
    pub idle_timeout: Duration,
}

/// Why an inspected connection ended abnormally (logged by the caller; never exits).
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client's TLS handshake failed.
    #[error("TLS handshake with the client for {host} failed: {source}")]
    ClientHandshake {
        /// The CONNECT host.
        host: String,
        /// The error.
        source: io::Error,
    },
    /// The client did not complete the TLS handshake in time.
    #[error("the client did not complete the TLS handshake for {host} in time")]
    HandshakeTimeout {
        /// The CONNECT host.
        host: String,
    },
    /// The HTTP exchange with the client failed.
    #[error("HTTP/1.1 with the client for {host} failed: {source}")]
    Http {
        /// The CONNECT host.
        host: String,
        /// The error.
        source: hyper::Error,
    },
}

impl ExitStatus for SessionError {
    fn exit_status(&self) -> Exit {
        Exit::Internal
    }
}

/// Accepts TLS from the client with `server_config` (a leaf for the CONNECT host, see
/// [`crate::proxy::tls::LeafIssuer`]), then serves it like [`serve`]. Writes the
/// connection's audit `close` event when it ends (bytes as on the client's wire).
pub async fn serve_tls<IO>(
    raw: IO,
    server_config: Arc<rustls::ServerConfig>,
    session: Inspected,
    shutdown: Shutdown,
) -> Result<(), SessionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (host, port, tracker) = (session.host.clone(), session.port, shutdown.clone());
    served_then_closed(raw, &host, port, &tracker, |raw, tally| async move {
        let tls = accept_client_tls(raw, server_config, session.connect_timeout, &session.host).await?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        serve_as(tls, session, shutdown, h2, tally).await
    })
    .await
}

/// Serves HTTP/1.1 requests from a decrypted client stream until it closes, idles out, or
/// shutdown (which lets the request in flight finish). No `close` event: see [`serve_tls`].
pub async fn serve<IO>(client: IO, session: Inspected, shutdown: Shutdown) -> Result<(), SessionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    serve_as(client, session, shutdown, false, Arc::default()).await
}

/// Serves HTTP/2 (`h2`: the client chose it by ALPN) or HTTP/1.1.
async fn serve_as<IO>(
    client: IO,
    session: Inspected,
    shutdown: Shutdown,
    h2: bool,
    tally: Arc<Tally>,
) -> Result<(), SessionError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let host = session.host.clone();
    let timeouts = (session.connect_timeout, session.response_timeout, session.idle_timeout);
    let upstream =
        Upstream::new(&session.host, session.port, &session.upstream_tls, h2, session.dial.clone(), timeouts);
    let idle = session.idle_timeout;
    let upgraded = Mutex::default();
    let state = Arc::new(State { session, upstream, shutdown: shutdown.clone(), tally, upgraded });
    let serving = state.clone();
    let handle = move |request| {
        let state = serving.clone();
        async move { state.handle(request).await }
    };
    let served = serve_requests(client, h2, idle, shutdown, handle).await;
    // After a `101` the connection lives on in the relay: it ends (and is counted) there.
    let relay = state.upgraded.lock().unwrap_or_else(PoisonError::into_inner).take();
    if let Some(relay) = relay {
        let _ = relay.await;
    }
    served.map_err(|source| SessionError::Http { host, source })
}

struct State {
    session: Inspected,
    upstream: Upstream,
    shutdown: Shutdown,
    tally: Arc<Tally>,
    /// The relay of an upgraded (WebSocket) connection, once there is one.
    upgraded: Mutex<Option<JoinHandle<()>>>,
}

impl State {
    async fn handle(&self, request: Request<Incoming>) -> Response<Body> {
        self.tally.request();
        let (mut parts, body) = request.into_parts();
        let (host, port) = (self.session.host.as_str(), self.session.port);
        let engine = (self.session.policy)();
        let verdict = judge(&engine, host, port, &self.session.secrets, &mut parts);
        let finished = finish(verdict, &mut parts, body, (host, port), self.session.idle_timeout).await;
        let (credentials, body) = match finished {
            Ok(forward) => forward,
            Err((answer, unread)) => return drained(answer, unread),
        };
        // The judge refused every upgrade but a WebSocket one to a websocket endpoint.
        let upgrade = wants_upgrade(&parts.headers);
        let client_upgrade = if upgrade { parts.extensions.remove::<OnUpgrade>() } else { None };
        strip_hop_by_hop(&mut parts.headers, upgrade);
        parts.headers.remove(header::EXPECT);
        let (method, path) = (parts.method.to_string(), credentials.path().to_owned());
        let refused = Refused { host, port, method: &method, path: &path };
        let failed = |e: UpstreamError| {
            let refusal = e.refusal(refused);
            upstream_failed("l7", refused, &refusal);
            refused.answer(&refusal)
        };
        let sender = match self.upstream.connection().await {
            Ok(sender) => sender,
            Err(e) => {
                return match body {
                    Source::Incoming(unread) => drained(failed(e), unread),
                    Source::Whole(_) => failed(e),
                };
            }
        };
        let mut response = match self.upstream.send(sender, Request::from_parts(parts, body)).await {
            Ok(response) => response,
            Err(e) => return failed(e),
        };
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let switched_to_websocket = response
                .headers()
                .get(header::UPGRADE)
                .is_some_and(|v| v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
            let client_upgrade = match client_upgrade {
                Some(client_upgrade) if switched_to_websocket => client_upgrade,
                Some(_) => {
                    let detail = "it answered 101 switching to another protocol than websocket";
                    return refused.answer(&deny::upstream_unreachable(refused, detail));
                }
                None => {
                    let detail = "it answered 101 to a request that did not ask to upgrade";
                    return refused.answer(&deny::upstream_unreachable(refused, detail));
                }
            };
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let (shutdown, host, idle) = (self.shutdown.clone(), host.to_owned(), self.session.idle_timeout);
            let relay = self.shutdown.spawn(async move {
                tokio::select! {
                    () = relay_upgraded(client_upgrade, upstream_upgrade, &host, idle) => {}
                    () = shutdown.signalled() => tracing::debug!(host, "upgraded connection closed at shutdown"),
                }
            });
            *self.upgraded.lock().unwrap_or_else(PoisonError::into_inner) = Some(relay);
            credentials.scrub_head(&mut response);
            return response.map(|_| empty());
        }
        // Encodings are checked before `Connection` can name their headers away.
        let mut response = credentials
            .response(response)
            .unwrap_or_else(|detail| refused.answer(&deny::upstream_unreachable(refused, &detail)));
        strip_hop_by_hop(response.headers_mut(), false);
        response
    }
}

/// One audit event per request decision of a plain `http://` request (names of credentials
/// only, never values; the path of a forwarded request as judged, before any credential
/// went into it).
pub(crate) fn audit(host: &str, port: u16, method: &str, path: &str, verdict: &Verdict) {
    let request = audit::Request { scheme: "http", host, port, method, path };
    match verdict {
        Verdict::Forward { decision, credentials } => decided(request, decision, credentials),
        Verdict::Refuse { decision, refusal, .. } => refused(request, decision.as_ref(), refusal),
    }
}

/// The audit event of a forwarded request on an inspected TLS connection (`audit` for an
/// audited would-be denial).
pub(crate) fn audit_forward(host: &str, port: u16, method: &str, decision: &L7Decision, credentials: &Injection) {
    let request = audit::Request { scheme: "https", host, port, method, path: credentials.path() };
    decided(request, decision, credentials);
}

/// The audit event of a refused request on an inspected TLS connection; the reason is the
/// refusal's.
pub(crate) fn audit_refusal(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    decision: Option<&L7Decision>,
    refusal: &Refusal,
) {
    refused(audit::Request { scheme: "https", host, port, method, path }, decision, refusal);
}

fn decided(request: audit::Request<'_>, decision: &L7Decision, credentials: &Injection) {
    audit::l7_decision(&request, Some(decision), &credentials.keys().join(","), &decision.reason, None);
}

fn refused(request: audit::Request<'_>, decision: Option<&L7Decision>, refusal: &Refusal) {
    audit::l7_decision(&request, decision, "", refusal.reason(), Some(refusal));
}

/// An audit `error` event (warn level) for a request the upstream failed: no answer head
/// in time (504) or a broken exchange (502). Names host, method and path, never the query.
/// `kind` is `l7` or `inference`, as in the request's decision event.
pub(in crate::proxy::l7) fn upstream_failed(kind: &'static str, request: Refused<'_>, refusal: &Refusal) {
    let Refused { host, port, method, path } = request;
    audit::upstream_failed(kind, &audit::Request { scheme: "https", host, port, method, path }, refusal);
}
