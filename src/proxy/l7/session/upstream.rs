//! The upstream side of an inspected session: TLS to the real host, verified against the
//! trust roots with the real host as SNI, never unverified. HTTP/1.1 connections are reused
//! while open (keep-alive); when the client speaks HTTP/2, `h2` is offered upstream too and,
//! if taken, one multiplexed connection carries every stream. The response timeout bounds
//! the wait for an answer head once the request body is sent (a long upload is bounded by
//! the idle timeout between its frames instead).

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response, header};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

use super::Dial;
use crate::proxy::answer::Refusal;
use crate::proxy::counted::{Counted, Source, answer_within};
use crate::proxy::l7::deny::{self, ANSWER_IN_TIME, CONNECT_IN_TIME, HANDSHAKE_IN_TIME, Refused};

/// Why a request could not be exchanged with the upstream.
#[derive(Debug)]
pub(super) enum UpstreamError {
    /// Dialing, the TLS handshake or the response head took too long (the response timeout).
    Timeout(&'static str),
    /// The TLS handshake failed (certificate not verified, protocol mismatch).
    Tls(String),
    /// The connection could not be made or broke.
    Io(String),
}

impl UpstreamError {
    /// The refusal answering the client's `request`.
    pub(super) fn refusal(&self, request: Refused<'_>) -> Refusal {
        match self {
            UpstreamError::Timeout(what) => deny::upstream_timeout(request, what),
            UpstreamError::Tls(detail) => deny::upstream_tls_failed(request, detail),
            UpstreamError::Io(detail) => deny::upstream_unreachable(request, detail),
        }
    }
}

/// An open upstream connection; request bodies are the client's, cut when silent too long.
pub(super) enum Sender {
    H1(http1::SendRequest<Counted>),
    H2(http2::SendRequest<Counted>),
}

/// The connection(s) to one upstream host for the requests of one client connection.
pub(super) struct Upstream {
    host: String,
    port: u16,
    tls: TlsConnector,
    dial: Dial,
    connect_timeout: Duration,
    answer_timeout: Duration,
    /// Bound on a request body's silence while it is sent.
    body_idle: Duration,
    /// The client multiplexes (HTTP/2): never wait for a busy HTTP/1.1 connection.
    concurrent: bool,
    idle: Mutex<Option<Sender>>,
}

impl Upstream {
    /// `offer_h2`: offer `h2` by ALPN (only when the client speaks HTTP/2). `timeouts`:
    /// connect (and TLS handshake), answer head, request body silence.
    pub(super) fn new(
        host: &str,
        port: u16,
        tls: &Arc<rustls::ClientConfig>,
        offer_h2: bool,
        dial: Dial,
        timeouts: (Duration, Duration, Duration),
    ) -> Self {
        let tls = if offer_h2 {
            let mut config = (**tls).clone();
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            Arc::new(config)
        } else {
            tls.clone()
        };
        Upstream {
            host: host.to_owned(),
            port,
            tls: TlsConnector::from(tls),
            dial,
            connect_timeout: timeouts.0,
            answer_timeout: timeouts.1,
            body_idle: timeouts.2,
            concurrent: offer_h2,
            idle: Mutex::new(None),
        }
    }

    /// Sends one request on `sender` (from [`Upstream::connection`]) and returns the response
    /// head (the body streams), waiting at most the response timeout for the head once the
    /// request body is sent. A `101` takes its connection over for the upgrade.
    pub(super) async fn send(
        &self,
        sender: Sender,
        request: Request<impl Into<Source>>,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let (parts, body) = request.into_parts();
        let (body, sent) = Counted::request(body, Arc::default(), self.body_idle);
        let request = Request::from_parts(parts, body);
        let answer = self.answer_timeout;
        let timed_out = |_| UpstreamError::Timeout(ANSWER_IN_TIME);
        let failed = |e: hyper::Error| UpstreamError::Io(format!("the exchange failed: {e}"));
        match sender {
            Sender::H2(mut sender) => {
                *self.idle.lock().await = Some(Sender::H2(sender.clone()));
                let request = self.absolute(request);
                let response = answer_within(sender.send_request(request), sent, answer).await;
                if response.is_err() {
                    // The stream is reset; the next request opens a new connection (streams
                    // still running on this one finish on it).
                    self.idle.lock().await.take();
                }
                response.map_err(timed_out)?.map_err(failed)
            }
            Sender::H1(mut sender) => {
                let mut request = request;
                *request.version_mut() = http::Version::HTTP_11;
                // On timeout the sender is dropped with the request: hyper closes that
                // connection, it is never reused.
                let response = answer_within(sender.send_request(request), sent, answer)
                    .await
                    .map_err(timed_out)?
                    .map_err(failed)?;
                if response.status() != http::StatusCode::SWITCHING_PROTOCOLS {
                    let mut idle = self.idle.lock().await;
                    if idle.is_none() {
                        *idle = Some(Sender::H1(sender));
                    }
                }
                Ok(response)
            }
        }
    }

    /// A usable connection: the idle one if it still works, else a new one. An HTTP/1.1
    /// connection busy with another request is not waited for: a new one is opened.
    pub(super) async fn connection(&self) -> Result<Sender, UpstreamError> {
        let kept = self.idle.lock().await.take();
        let usable = match kept {
            Some(Sender::H2(mut sender)) => {
                (!sender.is_closed() && sender.ready().await.is_ok()).then_some(Sender::H2(sender))
            }
            Some(Sender::H1(sender)) if self.concurrent && !sender.is_ready() => None,
            Some(Sender::H1(mut sender)) => {
                (!sender.is_closed() && sender.ready().await.is_ok()).then_some(Sender::H1(sender))
            }
            None => None,
        };
        match usable {
            Some(sender) => Ok(sender),
            None => self.connect().await,
        }
    }

    /// HTTP/2 requests carry the authority (the judged host) in the URI, and no `Host`.
    fn absolute(&self, mut request: Request<Counted>) -> Request<Counted> {
        let authority = if self.port == 443 { self.host.clone() } else { format!("{}:{}", self.host, self.port) };
        let mut parts = request.uri().clone().into_parts();
        parts.scheme = Some(Scheme::HTTPS);
        parts.authority = authority.parse::<Authority>().ok();
        if let Ok(uri) = Uri::from_parts(parts) {
            *request.uri_mut() = uri;
        }
        request.headers_mut().remove(header::HOST);
        *request.version_mut() = http::Version::HTTP_2;
        request
    }

    async fn connect(&self) -> Result<Sender, UpstreamError> {
        let tcp = tokio::time::timeout(self.connect_timeout, (self.dial)())
            .await
            .map_err(|_| UpstreamError::Timeout(CONNECT_IN_TIME))?
            .map_err(|e| UpstreamError::Io(e.to_string()))?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| UpstreamError::Tls(format!("`{}` is not a TLS server name", self.host)))?;
        let tls = tokio::time::timeout(self.connect_timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| UpstreamError::Timeout(HANDSHAKE_IN_TIME))?
            .map_err(|e| UpstreamError::Tls(e.to_string()))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let io = TokioIo::new(tls);
        let host = self.host.clone();
        let handshake_failed = |e: hyper::Error| UpstreamError::Io(format!("the HTTP handshake failed: {e}"));
        if h2 {
            let (sender, connection) = http2::handshake(TokioExecutor::new(), io).await.map_err(handshake_failed)?;
            tokio::spawn(async move {
                if let Err(e) = connection.await {
                    tracing::debug!(host, "upstream HTTP/2 connection ended: {e}");
                }
            });
            return Ok(Sender::H2(sender));
        }
        let (sender, connection) = http1::handshake(io).await.map_err(handshake_failed)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(host, "upstream connection ended: {e}");
            }
        });
        Ok(Sender::H1(sender))
    }
}
