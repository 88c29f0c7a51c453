//! The proxy's data path against the direct no-proxy baseline, on loopback: bulk
//! throughput through one CONNECT tunnel, CONNECT setup latency, and small absolute-form
//! GETs on a keep-alive connection. Targets (issue 3): bulk at least 0.8x direct,
//! keep-alive GET at least 0.7x direct, CONNECT setup median at most 0.25 ms. The inspected
//! HTTPS groups (issue 4) are in `proxy/https.rs`. Last, the keep-alive GETs again with every
//! audit event written as an OCSF JSON line, the audit path alone, and the events per second
//! it sustained while serving GETs (issue 17: the keep-alive ratio may fall at most 5 %).

#[path = "proxy/common.rs"]
mod common;
#[path = "proxy/https.rs"]
mod https;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::{client, get, http_server, read_head, start_proxy};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use openshell_sandbox::proxy::audit::{self, Outcome, Subject};
use openshell_sandbox::proxy::credentials::{Scrubbed, Scrubber};
use rustls::ClientConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;

/// Bytes moved per bulk iteration.
const BULK: usize = 16 * 1024 * 1024;

/// Upstream for bulk: each 8-byte big-endian length asks for that many bytes back.
async fn source_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let chunk = vec![7u8; 256 * 1024];
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let chunk = chunk.clone();
            tokio::spawn(async move {
                let _ = stream.set_nodelay(true);
                let mut len = [0u8; 8];
                while stream.read_exact(&mut len).await.is_ok() {
                    let mut left = u64::from_be_bytes(len) as usize;
                    while left > 0 {
                        let n = left.min(chunk.len());
                        if stream.write_all(&chunk[..n]).await.is_err() {
                            return;
                        }
                        left -= n;
                    }
                }
            });
        }
    });
    addr
}

/// Opens a CONNECT tunnel and reads the 200 head.
async fn tunnel(proxy: SocketAddr, target: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(proxy).await.unwrap();
    stream.set_nodelay(true).unwrap();
    stream.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes()).await.unwrap();
    let head = read_head(&mut stream).await;
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    stream
}

async fn pull(stream: &mut TcpStream, buf: &mut [u8]) {
    stream.write_all(&(BULK as u64).to_be_bytes()).await.unwrap();
    let mut left = BULK;
    while left > 0 {
        let n = stream.read(buf).await.unwrap();
        assert!(n > 0, "the source closed early");
        left -= n;
    }
}

fn bench(c: &mut Criterion) {
    let rt = Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let upstream_ca = https::ca();
    let (source, web, secure) = rt.block_on(async {
        let big = Bytes::from(vec![7u8; BULK]);
        (source_server().await, http_server().await, https::server(&upstream_ca, big).await)
    });
    let proxy =
        rt.block_on(start_proxy(dir.path(), &[source.port(), web.port()], secure.port(), &upstream_ca.pem, false));
    let scrub_dir = tempfile::tempdir().unwrap();
    let scrubbing = rt.block_on(start_proxy(scrub_dir.path(), &[], secure.port(), &upstream_ca.pem, true));
    let mut buf = vec![0u8; 256 * 1024];

    let mut group = c.benchmark_group("bulk 16 MiB");
    group.throughput(Throughput::Bytes(BULK as u64)).sample_size(20);
    let mut direct = rt.block_on(async { TcpStream::connect(source).await.unwrap() });
    group.bench_function("direct", |b| b.iter(|| rt.block_on(pull(&mut direct, &mut buf))));
    let mut tunneled = rt.block_on(tunnel(proxy, source));
    group.bench_function("through a CONNECT tunnel", |b| b.iter(|| rt.block_on(pull(&mut tunneled, &mut buf))));
    group.finish();

    let mut group = c.benchmark_group("connection setup");
    group.bench_function("direct TCP connect", |b| {
        b.iter(|| rt.block_on(async { drop(TcpStream::connect(source).await.unwrap()) }))
    });
    group.bench_function("CONNECT through the proxy", |b| {
        b.iter(|| rt.block_on(async { drop(tunnel(proxy, source).await) }))
    });
    group.finish();

    let mut group = c.benchmark_group("keep-alive GET");
    group.throughput(Throughput::Elements(1));
    let host = web.to_string();
    let mut direct = rt.block_on(client(web));
    group.bench_function("direct", |b| b.iter(|| rt.block_on(get(&mut direct, "/", &host))));
    let absolute = format!("http://{web}/");
    let mut proxied = rt.block_on(client(proxy));
    group.bench_function("absolute-form through the proxy", |b| {
        b.iter(|| rt.block_on(get(&mut proxied, &absolute, &host)))
    });
    group.finish();

    let via_proxy = https::client_config(&https::proxy_ca_der(&dir.path().join("tls")));
    let direct = https::client_config(&upstream_ca.der);
    https_groups(c, &rt, proxy, secure, &via_proxy, &direct);
    let via_scrubbing = https::client_config(&https::proxy_ca_der(&scrub_dir.path().join("tls")));
    scrubbed_download(c, &rt, (proxy, &via_proxy), (scrubbing, &via_scrubbing), secure, &direct);
    // Last: the OCSF output, once installed, stays for the rest of the process.
    ocsf_groups(c, &rt, (proxy, web), secure, &via_proxy);
}

/// The keep-alive GETs again with every audit event written as an OCSF JSON line (to a
/// writer that counts them), then the events per second the audit path sustained while
/// serving them: compare with "keep-alive GET" and "HTTPS keep-alive GET" of the same run.
fn ocsf_groups(
    c: &mut Criterion,
    rt: &Runtime,
    (proxy, web): (SocketAddr, SocketAddr),
    secure: SocketAddr,
    via_proxy: &Arc<ClientConfig>,
) {
    use openshell_sandbox::telemetry::ocsf;
    let lines = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let identity = ocsf::Identity::new("proxy", Some("bench".into()), None);
    ocsf::install(identity, vec![ocsf::Output::Writer(Box::new(CountLines(lines.clone())))]).unwrap();

    let mut group = c.benchmark_group("keep-alive GET with OCSF JSON lines");
    group.throughput(Throughput::Elements(1));
    let (host, absolute) = (web.to_string(), format!("http://{web}/"));
    let mut proxied = rt.block_on(client(proxy));
    group.bench_function("absolute-form through the proxy", |b| {
        b.iter(|| rt.block_on(get(&mut proxied, &absolute, &host)))
    });
    let mut inspected = rt.block_on(https::client(via_proxy, secure, Some(proxy)));
    group.bench_function("HTTPS inspected through the proxy", |b| {
        b.iter(|| rt.block_on(https::fetch(&mut inspected, "/")))
    });
    group.finish();

    // The audit path alone: the two events of one absolute-form GET, serialized and written.
    let mut group = c.benchmark_group("OCSF audit path alone");
    group.throughput(Throughput::Elements(2));
    let subject = Subject { kind: "http", host: "127.0.0.1", port: web.port(), request: Some(("GET", "/")) };
    group.bench_function("decision and close of one GET", |b| {
        b.iter(|| {
            audit::allowed(&subject, Some("bench"), Some("bench.endpoints[1]"), "allowed by bench");
            audit::closed(&subject, Some(200), (80, 120), Duration::from_micros(150), Outcome::Eof);
        })
    });
    group.finish();

    let mut proxied = rt.block_on(client(proxy));
    let (requests, started) = (20_000u64, std::time::Instant::now());
    let before = lines.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..requests {
        rt.block_on(get(&mut proxied, &absolute, &host));
    }
    let events = lines.load(std::sync::atomic::Ordering::Relaxed) - before;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "OCSF audit path: {events} events for {requests} keep-alive GETs in {secs:.2} s: {:.0} events/s, {:.0} requests/s",
        events as f64 / secs,
        requests as f64 / secs
    );
}

/// Counts the lines written to it.
struct CountLines(Arc<std::sync::atomic::AtomicU64>);

impl std::io::Write for CountLines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let lines = buf.iter().filter(|b| **b == b'\n').count() as u64;
        self.0.fetch_add(lines, std::sync::atomic::Ordering::Relaxed);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A 16 MiB inspected download with response scrubbing on (a provider secret is bound to
/// the endpoint) beside the same without a secret and direct (issue 13: at least 0.9x direct).
fn scrubbed_download(
    c: &mut Criterion,
    rt: &Runtime,
    plain: (SocketAddr, &Arc<ClientConfig>),
    scrubbing: (SocketAddr, &Arc<ClientConfig>),
    upstream: SocketAddr,
    direct: &Arc<ClientConfig>,
) {
    let mut group = c.benchmark_group("HTTPS download 16 MiB scrubbing");
    group.throughput(Throughput::Bytes(BULK as u64)).sample_size(20);
    let ways = [
        ("direct", direct, None),
        ("inspected, no secret", plain.1, Some(plain.0)),
        ("inspected, answer scrubbed", scrubbing.1, Some(scrubbing.0)),
    ];
    for (name, tls, via) in ways {
        let mut sender = rt.block_on(https::client(tls, upstream, via));
        group.bench_function(name, |b| b.iter(|| assert_eq!(rt.block_on(https::fetch(&mut sender, "/big")), BULK)));
    }
    group.finish();

    // The scrubber alone, in memory: what it costs per byte of answer.
    let mut group = c.benchmark_group("scrubber alone");
    group.throughput(Throughput::Bytes(BULK as u64)).sample_size(20);
    let pairs = (0..4).map(|i| {
        (format!("sk-bench-SECRET-{i}-0123456789").into_bytes(), format!("openshell:resolve:env:K{i}").into_bytes())
    });
    let scrubber = Arc::new(Scrubber::new(pairs).unwrap());
    let chunk = Bytes::from(vec![7u8; 16 * 1024]);
    group.bench_function("16 MiB in 16 KiB chunks, 4 secrets", |b| {
        b.iter(|| {
            let frames = (0..BULK / chunk.len()).map(|_| Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone())));
            let body = Scrubbed::new(StreamBody::new(futures_util::stream::iter(frames)), scrubber.clone());
            assert_eq!(rt.block_on(body.collect()).unwrap().to_bytes().len(), BULK);
        })
    });
    group.finish();
}

/// Direct HTTPS beside HTTPS through an intercepting (`protocol: rest`) endpoint.
fn https_groups(
    c: &mut Criterion,
    rt: &Runtime,
    proxy: SocketAddr,
    upstream: SocketAddr,
    via_proxy: &Arc<ClientConfig>,
    direct: &Arc<ClientConfig>,
) {
    let ways = [("direct", direct, None), ("inspected through the proxy", via_proxy, Some(proxy))];

    let mut group = c.benchmark_group("HTTPS keep-alive GET");
    group.throughput(Throughput::Elements(1));
    for (name, tls, via) in ways {
        let mut sender = rt.block_on(https::client(tls, upstream, via));
        group.bench_function(name, |b| b.iter(|| rt.block_on(https::fetch(&mut sender, "/"))));
    }
    group.finish();

    let mut group = c.benchmark_group("HTTPS download 16 MiB");
    group.throughput(Throughput::Bytes(BULK as u64)).sample_size(20);
    for (name, tls, via) in ways {
        let mut sender = rt.block_on(https::client(tls, upstream, via));
        group.bench_function(name, |b| b.iter(|| assert_eq!(rt.block_on(https::fetch(&mut sender, "/big")), BULK)));
    }
    group.finish();

    let mut group = c.benchmark_group("new HTTPS connection + GET");
    for (name, tls, via) in ways {
        group.bench_function(name, |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut sender = https::client(tls, upstream, via).await;
                    https::fetch(&mut sender, "/").await
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
