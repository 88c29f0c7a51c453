//! The upstream side of an inspected session: one TLS connection to the real host, verified
//! against the trust roots with the real host as SNI, reused while it stays open
//! (keep-alive) and made again when it closed. Never an unverified connection.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;

use super::Dial;
use crate::proxy::l7::deny::{self, Refused};

/// Why a request could not be exchanged with the upstream.
#[derive(Debug)]
pub(super) enum UpstreamError {
    /// Dialing, the TLS handshake or the response head took too long.
    Timeout(&'static str),
    /// The TLS handshake failed (certificate not verified, protocol mismatch).
    Tls(String),
    /// The connection could not be made or broke.
    Io(String),
}

impl UpstreamError {
    /// The JSON answer for the client.
    pub(super) fn response(&self, request: Refused<'_>) -> Response<Bytes> {
        match self {
            UpstreamError::Timeout(what) => deny::upstream_timeout(request, what),
            UpstreamError::Tls(detail) => deny::upstream_tls_failed(request, detail),
            UpstreamError::Io(detail) => deny::upstream_unreachable(request, detail),
        }
    }
}

/// The connection to one upstream host, shared by the requests of one client connection.
pub(super) struct Upstream {
    host: String,
    tls: TlsConnector,
    dial: Dial,
    connect_timeout: Duration,
    answer_timeout: Duration,
    sender: Mutex<Option<SendRequest<Incoming>>>,
}

impl Upstream {
    pub(super) fn new(
        host: &str,
        tls: Arc<rustls::ClientConfig>,
        dial: Dial,
        connect_timeout: Duration,
        answer_timeout: Duration,
    ) -> Self {
        let tls = TlsConnector::from(tls);
        Upstream { host: host.to_owned(), tls, dial, connect_timeout, answer_timeout, sender: Mutex::new(None) }
    }

    /// Sends one request and returns the response head (the body streams). A `101` takes
    /// the connection over for the upgrade; the next request opens a new one.
    pub(super) async fn send(&self, request: Request<Incoming>) -> Result<Response<Incoming>, UpstreamError> {
        let mut slot = self.sender.lock().await;
        if let Some(sender) = slot.as_mut()
            && (sender.is_closed() || sender.ready().await.is_err())
        {
            *slot = None;
        }
        let sender = match slot.as_mut() {
            Some(sender) => sender,
            None => slot.insert(self.connect().await?),
        };
        let response = tokio::time::timeout(self.answer_timeout, sender.send_request(request))
            .await
            .map_err(|_| UpstreamError::Timeout("answer"))?
            .map_err(|e| UpstreamError::Io(format!("the exchange failed: {e}")))?;
        if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
            *slot = None;
        }
        Ok(response)
    }

    async fn connect(&self) -> Result<SendRequest<Incoming>, UpstreamError> {
        let tcp = tokio::time::timeout(self.connect_timeout, (self.dial)())
            .await
            .map_err(|_| UpstreamError::Timeout("connect"))?
            .map_err(|e| UpstreamError::Io(e.to_string()))?;
        let name = ServerName::try_from(self.host.clone())
            .map_err(|_| UpstreamError::Tls(format!("`{}` is not a TLS server name", self.host)))?;
        let tls = tokio::time::timeout(self.connect_timeout, self.tls.connect(name, tcp))
            .await
            .map_err(|_| UpstreamError::Timeout("complete the TLS handshake"))?
            .map_err(|e| UpstreamError::Tls(e.to_string()))?;
        let (sender, connection) = http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| UpstreamError::Io(format!("the HTTP/1.1 handshake failed: {e}")))?;
        let host = self.host.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(host, "upstream connection ended: {e}");
            }
        });
        Ok(sender)
    }
}
