//! Clients of the real proxy for the L7 tests: `CONNECT` through it, then TLS trusting the
//! proxy's own `ca.pem` from its shared TLS dir (or another CA), then HTTP/1.1.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::session::ClientBody;
use super::{Ca, client_config};
use crate::support::proxy::read_head;

/// The proxy's CA as read from `ca.pem` in its shared TLS dir (no key: clients only).
pub fn proxy_ca(tls_dir: &Path) -> Ca {
    let pem = std::fs::read_to_string(tls_dir.join("ca.pem")).unwrap();
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec();
    Ca { der, pem, key_pem: String::new() }
}

/// `CONNECT target` on a new connection; returns the stream after the answer head, and the head.
pub async fn connect_raw(proxy: SocketAddr, target: &str) -> (TcpStream, String) {
    let mut tcp = TcpStream::connect(proxy).await.unwrap();
    tcp.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.unwrap();
    let head = read_head(&mut tcp).await;
    (tcp, head)
}

/// `CONNECT target`, then TLS as `name` trusting only `ca`, offering HTTP/1.1.
pub async fn tls_through(proxy: SocketAddr, target: &str, name: &str, ca: &Ca) -> TlsStream<TcpStream> {
    tls_through_alpn(proxy, target, name, ca, &[b"http/1.1"]).await
}

/// `CONNECT target`, then TLS as `name` trusting only `ca`, offering `alpn`.
pub async fn tls_through_alpn(
    proxy: SocketAddr,
    target: &str,
    name: &str,
    ca: &Ca,
    alpn: &[&[u8]],
) -> TlsStream<TcpStream> {
    let (tcp, head) = connect_raw(proxy, target).await;
    assert!(head.starts_with("HTTP/1.1 200 "), "CONNECT {target}: {head}");
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let tls = TlsConnector::from(client_config(ca, alpn)).connect(name, tcp);
    tokio::time::timeout(Duration::from_secs(10), tls).await.unwrap().unwrap()
}

/// An HTTP/2 client (`h2` by ALPN) on an inspected tunnel to `host:port`, trusting the proxy's CA.
pub async fn h2_client_through(
    proxy: SocketAddr,
    host: &str,
    port: u16,
    tls_dir: &Path,
) -> hyper::client::conn::http2::SendRequest<ClientBody> {
    let tls = tls_through_alpn(proxy, &format!("{host}:{port}"), host, &proxy_ca(tls_dir), &[b"h2"]).await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the proxy takes h2");
    let io = TokioIo::new(tls);
    let (sender, connection) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
    tokio::spawn(connection);
    sender
}

/// An HTTP/1.1 client on an inspected tunnel to `host:port`, trusting the proxy's CA.
pub async fn client_through(proxy: SocketAddr, host: &str, port: u16, tls_dir: &Path) -> SendRequest<ClientBody> {
    let tls = tls_through(proxy, &format!("{host}:{port}"), host, &proxy_ca(tls_dir)).await;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.unwrap();
    tokio::spawn(connection.with_upgrades());
    sender
}

/// A request without a `Host` header (the proxy sets it to the CONNECT host).
pub fn request(method: &str, target: &str, headers: &[(&str, String)], body: &str) -> Request<ClientBody> {
    let mut b = Request::builder().method(method).uri(target);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(Full::new(Bytes::from(body.to_owned())).boxed()).unwrap()
}

/// Sends on `sender` (bounded) and returns the status and the body as JSON (or a JSON string).
pub async fn exchange(sender: &mut SendRequest<ClientBody>, req: Request<ClientBody>) -> (StatusCode, Value) {
    tokio::time::timeout(Duration::from_secs(10), sender.ready()).await.unwrap().unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(req)).await.unwrap().unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_else(|_| json!(String::from_utf8_lossy(&body))))
}
