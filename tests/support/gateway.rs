//! A test gateway: a small tonic server implementing every method of the contract
//! (docs/architecture.md, "The gateway") on 127.0.0.1:0. It records every call in order
//! (method, sandbox id, bearer token, payload), serves a policy, provider environment and
//! inference bundle that tests change while it runs, can answer UNAVAILABLE to the
//! first N calls of a method, opens relays on demand, and can be stopped and restarted
//! on the same port. It is a stand-in: the contract's facts are docs/architecture.md's.

pub mod certs;
mod relays;
mod service;
mod state;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use openshell_sandbox::config::{GatewayConfig, GatewayEndpoint, GatewayTls, Secret, TokenSource};
use openshell_sandbox::gateway::proto::inference::inference_server::InferenceServer;
use openshell_sandbox::gateway::proto::open_shell_server::OpenShellServer;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Certificate, Identity, Server, ServerTlsConfig};

pub use relays::RelayPipe;
pub use state::{Call, Payload, SessionReply, State};

/// The token tests give the client unless they say otherwise.
pub const TOKEN: &str = "test-sandbox-jwt";
/// The sandbox id tests use.
pub const SANDBOX_ID: &str = "sandbox-1";

/// Server-side TLS: the gateway's certificate and the CA its clients must present.
#[derive(Clone)]
pub struct ServerTls {
    pub cert_pem: String,
    pub key_pem: String,
    pub client_ca_pem: String,
}

/// A running (or stopped) test gateway.
pub struct TestGateway {
    pub addr: SocketAddr,
    pub state: Arc<State>,
    tls: Option<ServerTls>,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

impl TestGateway {
    /// Starts a plaintext gateway on 127.0.0.1:0.
    pub async fn start() -> Self {
        Self::start_with(None).await
    }

    /// Starts an mTLS gateway on 127.0.0.1:0.
    pub async fn start_tls(tls: ServerTls) -> Self {
        Self::start_with(Some(tls)).await
    }

    /// Starts a plaintext gateway on a listener the test bound itself (in another network
    /// namespace, say). Call it inside a tokio runtime.
    pub fn start_on(listener: std::net::TcpListener) -> Self {
        listener.set_nonblocking(true).unwrap();
        let listener = TcpListener::from_std(listener).unwrap();
        let addr = listener.local_addr().unwrap();
        let mut gateway = TestGateway { addr, state: Arc::new(State::default()), tls: None, running: None };
        gateway.serve(listener);
        gateway
    }

    async fn start_with(tls: Option<ServerTls>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut gateway = TestGateway { addr, state: Arc::new(State::default()), tls, running: None };
        gateway.serve(listener);
        gateway
    }

    fn serve(&mut self, listener: TcpListener) {
        let stop = CancellationToken::new();
        self.state.set_stop(stop.clone());
        let mut builder = Server::builder();
        if let Some(tls) = &self.tls {
            let config = ServerTlsConfig::new()
                .identity(Identity::from_pem(&tls.cert_pem, &tls.key_pem))
                .client_ca_root(Certificate::from_pem(&tls.client_ca_pem));
            builder = builder.tls_config(config).unwrap();
        }
        let router = builder
            .add_service(OpenShellServer::new(service::Service(self.state.clone())))
            .add_service(InferenceServer::new(service::Service(self.state.clone())));
        let signal = stop.clone();
        let task = tokio::spawn(async move {
            let incoming = TcpIncoming::from(listener);
            let _ = router.serve_with_incoming_shutdown(incoming, signal.cancelled_owned()).await;
        });
        self.running = Some((stop, task));
    }

    /// `http://127.0.0.1:PORT` (or https).
    pub fn url(&self) -> String {
        format!("{}://{}", if self.tls.is_some() { "https" } else { "http" }, self.addr)
    }

    /// Stops serving: open streams end with UNAVAILABLE, connections close, the port is free.
    pub async fn stop(&mut self) {
        if let Some((stop, mut task)) = self.running.take() {
            stop.cancel();
            if tokio::time::timeout(Duration::from_secs(5), &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    /// Serves again on the same address, with the same state and records.
    pub async fn restart(&mut self) {
        self.stop().await;
        let listener = bind_again(self.addr).await;
        self.serve(listener);
    }

    /// A client configuration for this gateway with the test token in the environment.
    pub fn client_config(&self) -> GatewayConfig {
        self.client_config_with(TokenSource::Env(Secret::new(TOKEN)), None)
    }

    /// A client configuration with a given token source and TLS files.
    pub fn client_config_with(&self, token: TokenSource, tls: Option<GatewayTls>) -> GatewayConfig {
        GatewayConfig {
            endpoint: GatewayEndpoint::parse(&self.url()).unwrap(),
            tls,
            server_name: None,
            token,
            sandbox_id: SANDBOX_ID.into(),
            sandbox_name: None,
        }
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if let Some((stop, task)) = self.running.take() {
            stop.cancel();
            task.abort();
        }
    }
}

/// The port was ours a moment ago; another bind can race for it only briefly.
async fn bind_again(addr: SocketAddr) -> TcpListener {
    for _ in 0..100 {
        if let Ok(listener) = TcpListener::bind(addr).await {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("could not bind {addr} again");
}

/// Polls `check` every 10 ms until it returns `Some`, failing after `limit`.
pub async fn eventually<T>(limit: Duration, what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out after {limit:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Writes `text` to `path` (test helper for token and certificate files).
pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}
