//! The client side of a session: the TLS handshake, then hyper serving HTTP/1.1 (with
//! upgrades) or HTTP/2 with each request answered by a handler, until close or shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::TlsAcceptor;

use super::{Body, SessionError};
use crate::shutdown::Shutdown;

/// The client's TLS handshake, bounded by `timeout`.
pub(in crate::proxy::l7) async fn accept_client_tls<IO>(
    raw: IO,
    server_config: Arc<rustls::ServerConfig>,
    timeout: Duration,
    host: &str,
) -> Result<tokio_rustls::server::TlsStream<IO>, SessionError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let accept = TlsAcceptor::from(server_config).accept(raw);
    tokio::time::timeout(timeout, accept)
        .await
        .map_err(|_| SessionError::HandshakeTimeout { host: host.to_owned() })?
        .map_err(|source| SessionError::ClientHandshake { host: host.to_owned(), source })
}

/// Serves `client` with HTTP/2 when `h2` (the client chose it by ALPN; streams are judged and
/// forwarded concurrently), else HTTP/1.1 with upgrades, answering each request with `handle`,
/// until the client closes, a request head takes longer than `idle`, or shutdown (which lets
/// the requests in flight finish).
pub(in crate::proxy::l7) async fn serve_requests<IO, F, Fut>(
    client: IO,
    h2: bool,
    idle: Duration,
    shutdown: Shutdown,
    handle: F,
) -> Result<(), hyper::Error>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    let handle = Arc::new(handle);
    let service = service_fn(move |request| {
        let handle = handle.clone();
        async move { Ok::<_, Infallible>(handle(request).await) }
    });
    let io = TokioIo::new(client);
    if h2 {
        let connection = http2::Builder::new(Scoped)
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(idle / 2))
            .keep_alive_timeout(Duration::from_secs(20))
            .serve_connection(io, service);
        until_shutdown(connection, &shutdown, |c| c.graceful_shutdown()).await
    } else {
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(idle)
            .serve_connection(io, service)
            .with_upgrades();
        until_shutdown(connection, &shutdown, |c| c.graceful_shutdown()).await
    }
}

/// Runs `connection` to its end; at shutdown, `graceful` first asks it to finish.
async fn until_shutdown<C>(connection: C, shutdown: &Shutdown, graceful: impl FnOnce(Pin<&mut C>)) -> hyper::Result<()>
where
    C: Future<Output = hyper::Result<()>>,
{
    let mut connection = std::pin::pin!(connection);
    tokio::select! {
        result = connection.as_mut() => result,
        () = shutdown.signalled() => {
            graceful(connection.as_mut());
            connection.await
        }
    }
}

/// hyper's executor for the HTTP/2 streams of an inspected connection: each stream (its
/// request and its answer's body) runs in the connection's audit scope, so its events carry
/// the connection's uid.
#[derive(Clone, Copy)]
struct Scoped;

impl<F> hyper::rt::Executor<F> for Scoped
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, stream: F) {
        tokio::spawn(crate::telemetry::ocsf::inherit(stream));
    }
}
