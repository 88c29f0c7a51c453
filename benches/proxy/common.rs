//! What the proxy benches share: the GET upstream, the proxy under test (started in the
//! running runtime), and a keep-alive client.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use openshell_sandbox::config::{CommonConfig, LogFormat, ProxyConfig, ProxyLimits};
use openshell_sandbox::proxy::{Listeners, prepare};
use openshell_sandbox::shutdown::Shutdown;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

use crate::https;

/// Upstream for GETs: a hyper server answering a short body.
pub async fn http_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { return };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_req: hyper::Request<Incoming>| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(b"ok"))))
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

/// Starts the proxy allowing loopback upstreams on `ports` (relayed as bytes) and the
/// HTTPS upstream `inspected` (intercepted, verified against `upstream_ca`); keeps `dir` alive.
/// With `scrub`, a provider env file binds a secret to the inspected endpoint, so every
/// inspected answer is scrubbed.
pub async fn start_proxy(
    dir: &std::path::Path,
    ports: &[u16],
    inspected: u16,
    upstream_ca: &str,
    scrub: bool,
) -> SocketAddr {
    let mut yaml = String::from("version: 1\nnetwork_policies:\n  bench:\n    endpoints:\n");
    for port in ports {
        yaml.push_str(&format!("      - host: 127.0.0.1\n        port: {port}\n"));
    }
    yaml.push_str(&format!(
        "      - {{host: {}, port: {inspected}, protocol: rest, access: full, credential_binding: {{provider: bench}}}}\n",
        https::HOST
    ));
    let provider_env_file = scrub.then(|| {
        let path = dir.join("provider.env");
        std::fs::write(&path, "[bench]\nBENCH_TOKEN=sk-bench-SECRET-value-0123456789\n").unwrap();
        path
    });
    let ca_file = dir.join("upstream-ca.pem");
    std::fs::write(&ca_file, upstream_ca).unwrap();
    let policy = dir.join("policy.yaml");
    std::fs::write(&policy, yaml).unwrap();
    let config = ProxyConfig {
        common: CommonConfig {
            log_format: LogFormat::Text,
            log_level: "warn".into(),
            ocsf_file: None,
            tls_dir: dir.join("tls"),
            policy_file: Some(policy),
            policy_rules: None,
            policy_poll_interval: Duration::from_secs(10),
        },
        gateway: None,
        listen: "127.0.0.1:0".parse().unwrap(),
        forward_listen: "127.0.0.1:0".parse().unwrap(),
        state_dir: dir.join("state"),
        allow_loopback_upstreams: true,
        allowed_clients: Vec::new(),
        gateway_fallback_hosts: Vec::new(),
        provider_env_file,
        policy_validation_failure_mode: Default::default(),
        inference_routes: None,
        upstream_ca_file: Some(ca_file),
        limits: ProxyLimits::default(),
        dns: None,
    };
    let prepared = prepare(config).unwrap();
    let listeners = Listeners::bind(prepared.config()).await.unwrap();
    let addr = listeners.proxy.local_addr().unwrap();
    tokio::spawn(prepared.serve(listeners, Shutdown::new()));
    addr
}

/// A keep-alive HTTP/1.1 client connection to `addr`.
pub async fn client(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.unwrap();
    tokio::spawn(conn);
    sender
}

/// One GET on `sender`, its `ok` answer read whole.
pub async fn get(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, uri: &str, host: &str) {
    sender.ready().await.unwrap();
    let request = hyper::Request::get(uri).header("host", host).body(Empty::new()).unwrap();
    let response = sender.send_request(request).await.unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"ok");
}

/// Reads a response head byte by byte, so nothing after it is consumed.
pub async fn read_head(stream: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    head
}
