//! Proxy-mode settings, resolved: listeners, directories, credential and route sources,
//! and the limits that keep a hostile or broken client from hurting the proxy.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ipnet::IpNet;
use serde::Serialize;

use super::layers::{FileConfig, GatewayLayer, ProxyLayer};
use super::{CommonConfig, ConfigError, GatewayConfig, ValidationFailureMode, as_secs, dirs, secs};

/// Default proxy listener.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:3128";
/// Default gateway forward listener.
pub const DEFAULT_FORWARD_LISTEN: &str = "0.0.0.0:8081";
/// Default private state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/openshell/proxy";
/// Default fallback hosts for the gateway forward.
pub const DEFAULT_FALLBACK_HOSTS: &[&str] = &["host.containers.internal", "host.docker.internal"];

/// Everything proxy mode needs.
#[derive(Clone, Debug, Serialize)]
pub struct ProxyConfig {
    /// Shared settings.
    pub common: CommonConfig,
    /// The gateway, when an endpoint is configured.
    pub gateway: Option<GatewayConfig>,
    /// Proxy listener. Default 0.0.0.0:3128.
    pub listen: SocketAddr,
    /// Gateway forward listener. Default 0.0.0.0:8081.
    pub forward_listen: SocketAddr,
    /// Private state directory for the CA key; never the TLS dir, inside it or around it.
    /// Default /var/lib/openshell/proxy.
    pub state_dir: PathBuf,
    /// Allow loopback upstreams (development and tests only). Default false.
    pub allow_loopback_upstreams: bool,
    /// Client CIDRs allowed to connect; empty means any. Default empty.
    pub allowed_clients: Vec<IpNet>,
    /// Hosts tried when the gateway host does not resolve or refuses.
    pub gateway_fallback_hosts: Vec<String>,
    /// Local provider credentials file. Default none.
    pub provider_env_file: Option<PathBuf>,
    /// What a changed local policy file that fails validation does. Default fail_closed.
    pub policy_validation_failure_mode: ValidationFailureMode,
    /// Local inference routes file. Default none.
    pub inference_routes: Option<PathBuf>,
    /// Extra upstream CA certificates. Default none.
    pub upstream_ca_file: Option<PathBuf>,
    /// Limits and timeouts.
    pub limits: ProxyLimits,
    /// The policy DNS and the transparent listeners. Default none (off).
    pub dns: Option<DnsConfig>,
}

/// The policy DNS and the transparent listeners (docs/transparent.md).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct DnsConfig {
    /// Address of the DNS listeners (UDP and TCP).
    pub listen: SocketAddr,
    /// Most names holding a synthetic address at once. Default 16384.
    pub max_names: usize,
    /// Time a name keeps its address after its last use. Default 900 s.
    #[serde(serialize_with = "as_secs")]
    pub name_lifetime: Duration,
}

/// Limits and timeouts of the proxy listener.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ProxyLimits {
    /// Largest request head in bytes; larger gets 431. Default 65536.
    pub max_head_bytes: usize,
    /// Most concurrent client connections; more get 503. Default 4096.
    pub max_connections: usize,
    /// Time to receive a complete request head. Default 10 s.
    #[serde(serialize_with = "as_secs")]
    pub header_timeout: Duration,
    /// Time a connection may be silent both ways. Default 300 s.
    #[serde(serialize_with = "as_secs")]
    pub idle_timeout: Duration,
    /// Time to connect to an upstream. Default 10 s.
    #[serde(serialize_with = "as_secs")]
    pub connect_timeout: Duration,
    /// Time to receive an upstream's response head, counted from the end of the request body
    /// (a long upload is bounded by the idle timeout instead). Default 120 s.
    #[serde(serialize_with = "as_secs")]
    pub response_timeout: Duration,
    /// Drain time after SIGTERM. Default 10 s.
    #[serde(serialize_with = "as_secs")]
    pub shutdown_grace: Duration,
}

impl Default for ProxyLimits {
    fn default() -> Self {
        ProxyLimits::resolve(&ProxyLayer::default(), &ProxyLayer::default())
    }
}

impl ProxyLimits {
    fn resolve(cli: &ProxyLayer, file: &ProxyLayer) -> Self {
        ProxyLimits {
            max_head_bytes: cli.max_head_bytes.or(file.max_head_bytes).map_or(64 * 1024, |n| n.get()),
            max_connections: cli.max_connections.or(file.max_connections).map_or(4096, |n| n.get()),
            header_timeout: secs(cli.header_timeout_secs.or(file.header_timeout_secs), 10),
            idle_timeout: secs(cli.idle_timeout_secs.or(file.idle_timeout_secs), 300),
            connect_timeout: secs(cli.connect_timeout_secs.or(file.connect_timeout_secs), 10),
            response_timeout: secs(cli.response_timeout_secs.or(file.response_timeout_secs), 120),
            shutdown_grace: secs(cli.shutdown_grace_secs.or(file.shutdown_grace_secs), 10),
        }
    }
}

impl ProxyConfig {
    /// Applies precedence and defaults; fails when neither a policy file nor a gateway is set.
    pub fn resolve(
        common: CommonConfig,
        gateway_cli: &GatewayLayer,
        cli: &ProxyLayer,
        file: &FileConfig,
        env_token: Option<String>,
    ) -> Result<Self, ConfigError> {
        let gateway = GatewayConfig::resolve(gateway_cli, &file.gateway, env_token)?;
        if common.policy_file.is_none() && gateway.is_none() {
            return Err(ConfigError::Missing {
                message: "no policy source: set OPENSHELL_POLICY_DATA (or --policy) to a policy YAML file, or OPENSHELL_ENDPOINT to the gateway".into(),
            });
        }
        let f = &file.proxy;
        let addr = |a: Option<SocketAddr>, b: Option<SocketAddr>, default: &str| {
            a.or(b).unwrap_or_else(|| default.parse().expect("valid default"))
        };
        let state_dir =
            cli.state_dir.clone().or_else(|| f.state_dir.clone()).unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        dirs::keep_apart(&state_dir, &common.tls_dir)?;
        Ok(ProxyConfig {
            common,
            gateway,
            listen: addr(cli.listen, f.listen, DEFAULT_LISTEN),
            forward_listen: addr(cli.forward_listen, f.forward_listen, DEFAULT_FORWARD_LISTEN),
            state_dir,
            allow_loopback_upstreams: cli.allow_loopback_upstreams.or(f.allow_loopback_upstreams).unwrap_or(false),
            allowed_clients: cli.allowed_clients.clone().or_else(|| f.allowed_clients.clone()).unwrap_or_default(),
            gateway_fallback_hosts: cli
                .gateway_fallback_hosts
                .clone()
                .or_else(|| f.gateway_fallback_hosts.clone())
                .unwrap_or_else(|| DEFAULT_FALLBACK_HOSTS.iter().map(|h| (*h).to_owned()).collect())
                .into_iter()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect(),
            provider_env_file: cli.provider_env_file.clone().or_else(|| f.provider_env_file.clone()),
            policy_validation_failure_mode: cli
                .policy_validation_failure_mode
                .or(f.policy_validation_failure_mode)
                .unwrap_or_default(),
            inference_routes: cli.inference_routes.clone().or_else(|| f.inference_routes.clone()),
            upstream_ca_file: cli.upstream_ca_file.clone().or_else(|| f.upstream_ca_file.clone()),
            limits: ProxyLimits::resolve(cli, f),
            dns: cli.dns_listen.or(f.dns_listen).map(|listen| DnsConfig {
                listen,
                max_names: cli.dns_max_names.or(f.dns_max_names).map_or(16_384, |n| n.get()),
                name_lifetime: secs(cli.dns_name_lifetime_secs.or(f.dns_name_lifetime_secs), 900),
            }),
        })
    }
}
