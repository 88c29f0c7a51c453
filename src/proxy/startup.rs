//! The startup sequence of docs/architecture.md, "Proxy mode": policy, provider
//! credentials, CA (and the leaf issuer and upstream TLS trust built from it), inference
//! routes, listeners, the shared TLS dir with `child-env.json` and then `.ready` last;
//! serving until shutdown, the drain.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, UdpSocket};

use crate::config::ProxyConfig;
use crate::policy::RegoRules;
use crate::shutdown::Shutdown;
use crate::volume::{self, CA_BUNDLE_FILE, Ready};
use crate::watch::every;

use super::ProxyError;
use super::ca::CertificateAuthority;
use super::credentials::SecretStore;
use super::ctx::Ctx;
use super::dns::{PolicyDns, SyntheticMap, serve_tcp, serve_udp};
use super::gateway_source::GatewayStart;
use super::l7::routes::RoutesHandle;
use super::policy_source::{FileReloader, PolicyHandle, load_engine};
use super::server;
use super::tcp_forward::{self, ForwardTarget};
use super::tls::{LeafIssuer, upstream_client_config};
use super::transparent::{Transparent, serve_ports};
use crate::route;

/// System root bundles, first found wins (`SSL_CERT_FILE` first).
const SYSTEM_BUNDLES: &[&str] =
    &["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"];

/// The longest wait between checks of the local inference routes file (the gateway's bundle poll: 5 s);
/// a shorter policy poll interval applies to it too.
const ROUTES_POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Most leaf certificates kept issued (one per intercepted host).
const LEAF_CACHE: usize = 1024;

/// ALPN offered to clients of intercepted connections: HTTP/2 when they want it.
const CLIENT_ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Policy, rules, credentials, CA and inference routes loaded; the shared TLS dir holds
/// `ca.pem` and `ca-bundle.pem`.
#[derive(Debug)]
pub struct Prepared {
    config: ProxyConfig,
    rules: RegoRules,
    policy: PolicyHandle,
    ca: Arc<CertificateAuthority>,
    secrets: Arc<SecretStore>,
    leaves: Arc<LeafIssuer>,
    upstream_tls: Arc<rustls::ClientConfig>,
    inference: Option<Arc<RoutesHandle>>,
    /// What the gateway gave at startup; its pollers start once `.ready` is written.
    gateway: Option<GatewayStart>,
}

/// The bound listeners: the proxy, and the gateway forward when there is a gateway.
#[derive(Debug)]
pub struct Listeners {
    /// The proxy listener.
    pub proxy: TcpListener,
    /// The gateway forward listener.
    pub forward: Option<TcpListener>,
    /// The policy DNS (UDP and TCP on one address), when configured.
    pub dns: Option<(UdpSocket, TcpListener)>,
}

impl Listeners {
    /// Binds the configured addresses; the forward only when a gateway endpoint is set.
    pub async fn bind(config: &ProxyConfig) -> Result<Self, ProxyError> {
        let bind = |address, setting| async move {
            TcpListener::bind(address).await.map_err(|source| ProxyError::Bind { address, setting, source })
        };
        let proxy = bind(config.listen, "OPENSHELL_PROXY_LISTEN").await?;
        let forward = match config.gateway {
            Some(_) => Some(bind(config.forward_listen, "OPENSHELL_FORWARD_LISTEN").await?),
            None => None,
        };
        let dns = match &config.dns {
            Some(dns) => Some(bind_dns(dns.listen).await?),
            None => None,
        };
        Ok(Listeners { proxy, forward, dns })
    }
}

/// How many ports a DNS address with port 0 tries before giving up: the port UDP is
/// given may already be taken for TCP by another socket.
const DNS_PORT_ZERO_ATTEMPTS: usize = 16;

/// Binds UDP and TCP on one address. With port 0 (tests), TCP takes the port UDP got,
/// and another port is tried when that one is taken for TCP.
async fn bind_dns(address: SocketAddr) -> Result<(UdpSocket, TcpListener), ProxyError> {
    let fail = |source| ProxyError::Bind { address, setting: "OPENSHELL_DNS_LISTEN", source };
    let mut attempt = 1;
    loop {
        let udp = UdpSocket::bind(address).await.map_err(fail)?;
        let both = udp.local_addr().map_err(fail)?;
        match TcpListener::bind(both).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e)
                if address.port() == 0
                    && e.kind() == std::io::ErrorKind::AddrInUse
                    && attempt < DNS_PORT_ZERO_ATTEMPTS =>
            {
                attempt += 1;
            }
            Err(source) => return Err(ProxyError::Bind { address: both, setting: "OPENSHELL_DNS_LISTEN", source }),
        }
    }
}

/// Steps 1 to 4 of the startup: policy (exit 65 listing every error when invalid),
/// provider credentials (exit 64 naming the file and line), CA with `ca.pem` and
/// `ca-bundle.pem`, the leaf issuer and upstream TLS trust, inference routes. A stale
/// `.ready` from an earlier run is removed first.
pub fn prepare(config: ProxyConfig) -> Result<Prepared, ProxyError> {
    prepare_with(config, None)
}

/// [`prepare`] with what the gateway gave at startup: its policy, credentials and routes
/// unless a local file wins for each; its pollers are spawned once `.ready` is written.
pub fn prepare_with(config: ProxyConfig, mut gateway: Option<GatewayStart>) -> Result<Prepared, ProxyError> {
    let tls_dir = config.common.tls_dir.clone();
    usable_tls_dir(&tls_dir)?;
    volume::remove_ready(&tls_dir)?;
    let rules = RegoRules::load(config.common.policy_rules.as_deref())?;
    let engine = match gateway.as_mut().and_then(GatewayStart::take_engine) {
        Some(engine) => engine,
        None => {
            let path = config.common.policy_file.clone().ok_or(ProxyError::NoPolicySource)?;
            let engine = load_engine(&path, &rules, 1)?;
            tracing::info!(path = %path.display(), "policy loaded");
            engine
        }
    };
    let secrets = match (&config.provider_env_file, &gateway) {
        (Some(path), _) => {
            let store = SecretStore::from_file(path)?;
            tracing::info!(path = %path.display(), keys = store.snapshot().keys().count(), "provider credentials loaded");
            Arc::new(store)
        }
        (None, Some(gateway)) => gateway.secrets(),
        (None, None) => Arc::new(SecretStore::empty()),
    };
    if let Some(unbound) = secrets.unbound(engine.policy()).into_iter().next() {
        return Err(unbound.into());
    }
    let ca = CertificateAuthority::load_or_generate(&config.state_dir, &tls_dir)?;
    write_bundle(&tls_dir, &ca)?;
    let leaves = LeafIssuer::new(ca.cert_der(), ca.key_pem(), LEAF_CACHE)?.with_alpn(CLIENT_ALPN);
    let upstream_tls = upstream_client_config(config.upstream_ca_file.as_deref())?;
    let inference = match &config.inference_routes {
        Some(path) => {
            let routes = RoutesHandle::from_file(path)?;
            tracing::info!(path = %path.display(), routes = routes.current().routes.len(), "inference routes loaded");
            Some(Arc::new(routes))
        }
        None => gateway.as_ref().and_then(GatewayStart::routes),
    };
    if config.allow_loopback_upstreams {
        tracing::warn!(
            "--allow-loopback-upstreams is set: loopback destinations are reachable through the proxy; for development and tests only"
        );
    }
    Ok(Prepared {
        config,
        rules,
        policy: PolicyHandle::new(engine),
        ca: Arc::new(ca),
        secrets,
        leaves: Arc::new(leaves),
        upstream_tls,
        inference,
        gateway,
    })
}

impl Prepared {
    /// The configuration this proxy runs with.
    pub fn config(&self) -> &ProxyConfig {
        &self.config
    }

    /// The policy holder (a gateway poller installs new generations through it).
    pub fn policy(&self) -> &PolicyHandle {
        &self.policy
    }

    /// The sandbox CA.
    pub fn ca(&self) -> &CertificateAuthority {
        &self.ca
    }

    /// Serves on `listeners` until `shutdown` is triggered: spawns the reloader and the
    /// accept loops, writes `.ready`; at shutdown removes `.ready` and drains.
    pub async fn serve(mut self, listeners: Listeners, shutdown: Shutdown) -> Result<(), ProxyError> {
        let config = &self.config;
        let tls_dir = &config.common.tls_dir;
        let proxy_listen = listeners.proxy.local_addr().map_err(ProxyError::Runtime)?;
        let forward_listen = match &listeners.forward {
            Some(l) => Some(l.local_addr().map_err(ProxyError::Runtime)?),
            None => None,
        };
        if let Some(path) = &config.common.policy_file {
            let reloader = FileReloader::new(
                path.clone(),
                self.rules.clone(),
                self.policy.clone(),
                config.common.policy_poll_interval,
                config.policy_validation_failure_mode,
            );
            shutdown.spawn(reloader.run(shutdown.clone()));
        }
        if let (Some(routes), Some(_)) = (&self.inference, &config.inference_routes) {
            let interval = config.common.policy_poll_interval.min(ROUTES_POLL_INTERVAL);
            let reload = routes.clone().run_file_reloader(interval, shutdown.clone());
            shutdown.spawn(reload);
        }
        if config.provider_env_file.is_some() {
            let (secrets, dir, policy) = (self.secrets.clone(), tls_dir.clone(), self.policy.clone());
            let interval = config.common.policy_poll_interval;
            shutdown.spawn(reload_credentials(secrets, dir, policy, interval, shutdown.clone()));
        }
        let ctx = Arc::new(Ctx {
            policy: self.policy.clone(),
            limits: config.limits.clone(),
            allow_loopback: config.allow_loopback_upstreams,
            ca: self.ca.clone(),
            leaves: self.leaves.clone(),
            secrets: self.secrets.clone(),
            upstream_tls: self.upstream_tls.clone(),
            inference: self.inference.clone(),
            shutdown: shutdown.clone(),
        });
        let dns_listen = match (listeners.dns, &config.dns) {
            (Some((udp, tcp)), Some(dns)) => {
                let listen = udp.local_addr().map_err(ProxyError::Runtime)?;
                let map = Arc::new(SyntheticMap::new(route::synthetic_range(), dns.max_names, dns.name_lifetime));
                let policy_dns = Arc::new(PolicyDns::new(self.policy.clone(), map));
                let clients = config.allowed_clients.clone();
                shutdown.spawn(serve_udp(udp, policy_dns.clone(), clients.clone(), shutdown.clone()));
                shutdown.spawn(serve_tcp(tcp, policy_dns.clone(), clients.clone(), shutdown.clone()));
                let transparent = Arc::new(Transparent::new(ctx.clone(), policy_dns, clients));
                shutdown.spawn(serve_ports(transparent, Ipv4Addr::UNSPECIFIED.into(), shutdown.clone()));
                Some(listen)
            }
            _ => None,
        };
        shutdown.spawn(server::serve(listeners.proxy, ctx, config.allowed_clients.clone()));
        if let (Some(listener), Some(gateway)) = (listeners.forward, &config.gateway) {
            let mut hosts = vec![gateway.endpoint.host.clone()];
            hosts.extend(config.gateway_fallback_hosts.iter().cloned());
            let target = ForwardTarget {
                hosts,
                port: gateway.endpoint.port,
                connect_timeout: config.limits.connect_timeout,
                idle_timeout: config.limits.idle_timeout,
            };
            shutdown.spawn(tcp_forward::serve(listener, target, shutdown.clone()));
        }
        volume::write_child_env(tls_dir, &self.secrets.child_env())?;
        let ready = Ready {
            pid: std::process::id(),
            proxy_listen,
            forward_listen,
            ca_sha256: self.ca.fingerprint_sha256(),
            time: volume::now_rfc3339(),
        };
        volume::write_ready(tls_dir, &ready)?;
        tracing::info!(proxy = %proxy_listen, forward = ?forward_listen, dns = ?dns_listen, "proxy ready");
        if let Some(gateway) = self.gateway.take() {
            gateway.spawn_pollers(&self.policy, &self.rules, &shutdown);
        }
        shutdown.signalled().await;
        let removed = volume::remove_ready(tls_dir);
        let left = shutdown.drain(config.limits.shutdown_grace).await;
        if left > 0 {
            tracing::warn!(open = left, grace = ?config.limits.shutdown_grace, "grace period over; closing what is still open");
        }
        removed?;
        Ok(())
    }
}

/// Creates the shared TLS dir and proves that a file can be created in it, before the
/// policy or the CA is touched: root ignores permission bits, so only a real write tells
/// (a read-only mount, a directory of /proc, a path under a regular file).
fn usable_tls_dir(dir: &Path) -> Result<(), ProxyError> {
    let fail = |source| ProxyError::TlsDir { path: dir.to_owned(), source };
    std::fs::create_dir_all(dir).map_err(fail)?;
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    std::fs::write(&probe, b"").map_err(fail)?;
    std::fs::remove_file(&probe).map_err(fail)
}

/// Re-reads the provider env file every `interval` until shutdown; each new set of
/// credentials (once settled) is in force for the next request and rewrites `child-env.json`. A bad file
/// keeps the last good credentials and is reported once (never with a value); a key the
/// policy in force binds nowhere is reported (its requests get `credential_not_bound`).
async fn reload_credentials(
    secrets: Arc<SecretStore>,
    tls_dir: PathBuf,
    policy: PolicyHandle,
    interval: Duration,
    shutdown: Shutdown,
) {
    let ticks = every(interval, shutdown);
    while ticks.tick(secrets.settles_in()).await {
        match secrets.reload_if_changed() {
            Ok(false) => {}
            Ok(true) => {
                tracing::info!(keys = secrets.snapshot().keys().count(), "provider credentials reloaded");
                for unbound in secrets.unbound(policy.current().policy()) {
                    tracing::warn!("{unbound}");
                }
                if let Err(e) = volume::write_child_env(&tls_dir, &secrets.child_env()) {
                    tracing::warn!("the new credentials are in force, but child-env.json was not rewritten: {e}");
                }
            }
            Err(e) => tracing::warn!("kept the previous provider credentials: {e}"),
        }
    }
}

/// Writes `ca-bundle.pem`: the system roots, then the sandbox CA.
fn write_bundle(tls_dir: &Path, ca: &CertificateAuthority) -> Result<(), ProxyError> {
    let from_env = std::env::var_os("SSL_CERT_FILE").map(std::path::PathBuf::from);
    let system = from_env
        .into_iter()
        .chain(SYSTEM_BUNDLES.iter().map(Into::into))
        .find_map(|path| std::fs::read_to_string(&path).ok().map(|text| (path, text)));
    let mut bundle = match &system {
        Some((path, text)) => {
            tracing::debug!(path = %path.display(), "system roots for ca-bundle.pem");
            text.clone()
        }
        None => {
            tracing::warn!("no system root bundle found; ca-bundle.pem holds only the sandbox CA");
            String::new()
        }
    };
    if !bundle.is_empty() && !bundle.ends_with('\n') {
        bundle.push('\n');
    }
    bundle.push_str(ca.cert_pem());
    volume::write_atomic(tls_dir, CA_BUNDLE_FILE, bundle.as_bytes(), 0o644)?;
    Ok(())
}
