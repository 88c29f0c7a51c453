//! The gateway connection settings, resolved and checked: the endpoint URL, mTLS files,
//! where the sandbox token comes from, and the sandbox's identity.

use std::path::PathBuf;

use serde::Serialize;

use super::layers::GatewayLayer;
use super::{ConfigError, Secret};
use crate::policy::host::unbracketed;

/// The environment variable holding the sandbox JWT (the only place besides a file).
pub const TOKEN_ENV: &str = "OPENSHELL_SANDBOX_TOKEN";

/// The gateway's address, parsed from `OPENSHELL_ENDPOINT`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GatewayEndpoint {
    /// The URL as given.
    pub url: String,
    /// `https` (true) or `http`.
    pub tls: bool,
    /// Host name or address, without brackets.
    pub host: String,
    /// Port, defaulting to 80 or 443 by scheme.
    pub port: u16,
}

impl GatewayEndpoint {
    /// Parses `http://host:port` or `https://host:port`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("`{url}` is not a URL ({e}); write http://HOST:PORT or https://HOST:PORT"))?;
        let tls = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("`{url}` must start with http:// or https://")),
        };
        let host = uri.host().filter(|h| !h.is_empty()).ok_or_else(|| format!("`{url}` has no host"))?;
        if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
            return Err(format!("`{url}` has a path; give only scheme, host and port"));
        }
        let host = unbracketed(host).to_owned();
        Ok(GatewayEndpoint {
            url: url.to_owned(),
            tls,
            host,
            port: uri.port_u16().unwrap_or(if tls { 443 } else { 80 }),
        })
    }
}

/// TLS material for an `https` endpoint.
#[derive(Clone, Debug, Serialize)]
pub struct GatewayTls {
    /// The only trusted root (PEM).
    pub ca: PathBuf,
    /// Client certificate (PEM), with `key`.
    pub cert: Option<PathBuf>,
    /// Client key path (PEM), with `cert`.
    pub key: Option<PathBuf>,
}

/// Where the bearer token comes from.
#[derive(Clone, Debug, Serialize)]
pub enum TokenSource {
    /// `OPENSHELL_SANDBOX_TOKEN`.
    Env(Secret),
    /// A file, read and trimmed on every call (drivers mount `/etc/openshell/auth/sandbox.jwt`).
    File(PathBuf),
}

/// Everything needed to call the gateway.
#[derive(Clone, Debug, Serialize)]
pub struct GatewayConfig {
    /// Where the gateway is.
    pub endpoint: GatewayEndpoint,
    /// mTLS files, for `https` only.
    pub tls: Option<GatewayTls>,
    /// Server name to verify; default the endpoint's host.
    pub server_name: Option<String>,
    /// The sandbox JWT's source.
    pub token: TokenSource,
    /// This sandbox's id.
    pub sandbox_id: String,
    /// This sandbox's name, for logs.
    pub sandbox_name: Option<String>,
}

impl GatewayConfig {
    /// `None` when no endpoint is configured. `env_token` is the value of
    /// `OPENSHELL_SANDBOX_TOKEN`, passed in so that resolution stays a pure function.
    pub fn resolve(
        cli: &GatewayLayer,
        file: &GatewayLayer,
        env_token: Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        let pick = |a: &Option<PathBuf>, b: &Option<PathBuf>| a.clone().or_else(|| b.clone());
        let Some(url) = cli.endpoint.clone().or_else(|| file.endpoint.clone()).filter(|u| !u.trim().is_empty()) else {
            return Ok(None);
        };
        let endpoint = GatewayEndpoint::parse(url.trim()).map_err(|message| ConfigError::Invalid {
            setting: "--endpoint / OPENSHELL_ENDPOINT / [gateway] endpoint",
            message,
        })?;
        let (ca, cert, key) =
            (pick(&cli.tls_ca, &file.tls_ca), pick(&cli.tls_cert, &file.tls_cert), pick(&cli.tls_key, &file.tls_key));
        let tls = match (endpoint.tls, ca) {
            (false, _) => None,
            (true, None) => {
                return Err(ConfigError::Missing {
                    message: format!(
                        "{} is https but no CA is set: set OPENSHELL_TLS_CA to the gateway's CA certificate",
                        endpoint.url
                    ),
                });
            }
            (true, Some(ca)) => {
                if cert.is_some() != key.is_some() {
                    return Err(ConfigError::Missing {
                        message: "a client certificate needs both OPENSHELL_TLS_CERT and OPENSHELL_TLS_KEY".into(),
                    });
                }
                Some(GatewayTls { ca, cert, key })
            }
        };
        let token = match (
            env_token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty()),
            pick(&cli.token_file, &file.token_file),
        ) {
            (Some(t), _) => TokenSource::Env(Secret::new(t)),
            (None, Some(path)) => TokenSource::File(path),
            (None, None) => {
                return Err(ConfigError::Missing {
                    message: format!(
                        "OPENSHELL_ENDPOINT is set ({}) but there is no sandbox token: set {TOKEN_ENV}, or OPENSHELL_SANDBOX_TOKEN_FILE to the token file (drivers mount /etc/openshell/auth/sandbox.jwt)",
                        endpoint.url
                    ),
                });
            }
        };
        let sandbox_id =
            cli.sandbox_id.clone().or_else(|| file.sandbox_id.clone()).filter(|s| !s.trim().is_empty()).ok_or_else(
                || ConfigError::Missing {
                    message:
                        "OPENSHELL_ENDPOINT is set but OPENSHELL_SANDBOX_ID is not: the gateway needs the sandbox id"
                            .into(),
                },
            )?;
        Ok(Some(GatewayConfig {
            endpoint,
            tls,
            server_name: cli.tls_server_name.clone().or_else(|| file.tls_server_name.clone()),
            token,
            sandbox_id,
            sandbox_name: cli.sandbox_name.clone().or_else(|| file.sandbox_name.clone()),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_default_ports() {
        let e = GatewayEndpoint::parse("http://gw:8081").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port), (false, "gw", 8081));
        let e = GatewayEndpoint::parse("https://[::1]").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port), (true, "::1", 443));
        assert!(GatewayEndpoint::parse("gw:8081").unwrap_err().contains("http://"));
        assert!(GatewayEndpoint::parse("http://gw:1/x").unwrap_err().contains("path"));
    }

    #[test]
    fn a_missing_token_says_where_to_put_it() {
        let layer =
            GatewayLayer { endpoint: Some("http://gw:1".into()), sandbox_id: Some("s".into()), ..Default::default() };
        let err = GatewayConfig::resolve(&layer, &GatewayLayer::default(), None).unwrap_err().to_string();
        assert!(err.contains("OPENSHELL_SANDBOX_TOKEN"), "{err}");
        let ok = GatewayConfig::resolve(&layer, &GatewayLayer::default(), Some(" jwt \n".into())).unwrap().unwrap();
        assert!(matches!(ok.token, TokenSource::Env(ref s) if s.expose() == "jwt"));
    }

    #[test]
    fn no_endpoint_means_no_gateway() {
        assert!(
            GatewayConfig::resolve(&GatewayLayer::default(), &GatewayLayer::default(), Some("t".into()))
                .unwrap()
                .is_none()
        );
    }
}
