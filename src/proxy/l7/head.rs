//! The request head around the target, checked before the rules: exactly one host named (it
//! must be the judged one, and the upstream gets it as the only `Host`), no `Connection`
//! list naming `Host`, no `CONNECT`, and upgrades only for `websocket` to websocket endpoints.

use http::Method;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http::uri::Authority;

use super::deny;
use crate::policy::host::unbracketed;
use crate::proxy::answer::Refusal;
use crate::{Exit, ExitStatus};

/// Why a request head is refused with 400 `bad_request`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// More than one `Host` header (RFC 9112 section 3.2).
    #[error("the request has {count} Host headers; exactly one is accepted")]
    ManyHosts {
        /// How many.
        count: usize,
    },
    /// A `Host` or `:authority` that is not `host[:port]`.
    #[error("the {field} is not a valid host[:port]")]
    InvalidHost {
        /// `Host header` or `request target`.
        field: &'static str,
    },
    /// A `Host` or `:authority` with `user@` (RFC 9113 section 8.3.1 forbids it).
    #[error("the {field} has userinfo (`user@host`), which a request may not carry")]
    Userinfo {
        /// `Host header` or `request target`.
        field: &'static str,
    },
    /// The target's authority (`:authority`, absolute URI) and `Host` name different hosts.
    #[error("the request target and the Host header name different hosts")]
    HostsDiffer,
    /// `Connection: host`: `Host` is end to end, never removed on the way.
    #[error("the Connection header names Host, which is end to end and never removed")]
    ConnectionNamesHost,
    /// A header some upstreams read as the request's path or host in place of the judged one.
    #[error(
        "the request carries `{name}`, which some upstreams read as its {what} in place of the one judged; send the request to that {what} instead"
    )]
    Override {
        /// The header.
        name: &'static str,
        /// `path` or `host`.
        what: &'static str,
    },
    /// `CONNECT` inside an inspected connection (HTTP/1.1, or HTTP/2 with or without `:protocol`).
    #[error("CONNECT inside an inspected connection is not relayed; send CONNECT to the proxy itself")]
    Connect,
    /// An upgrade other than a WebSocket `GET` to a `protocol: websocket` endpoint.
    #[error(
        "upgrades are relayed only for GET with `Upgrade: websocket` to endpoints with `protocol: websocket`; {why}"
    )]
    Upgrade {
        /// Which condition failed.
        why: &'static str,
    },
}

impl ExitStatus for HeadError {
    /// A refused request never ends the process; mapped for completeness.
    fn exit_status(&self) -> Exit {
        Exit::Internal
    }
}

/// Why [`check`] refused a request.
#[derive(Debug)]
pub enum HeadRefusal {
    /// 400 `bad_request`.
    Bad(HeadError),
    /// 403 `policy_denied`: the one host the request names is not the judged one.
    OtherHost(String),
}

impl HeadRefusal {
    /// The refusal of a request on the connection allowed for `host:port`.
    pub fn refusal(&self, host: &str, port: u16) -> Refusal {
        match self {
            HeadRefusal::Bad(e) => deny::bad_head(e),
            HeadRefusal::OtherHost(named) => deny::host_mismatch(host, port, named),
        }
    }
}

impl From<HeadError> for HeadRefusal {
    fn from(e: HeadError) -> Self {
        HeadRefusal::Bad(e)
    }
}

/// Headers that some upstreams (IIS URL Rewrite, Symfony, frameworks behind a reverse proxy)
/// read as the request's path: refused whatever they say.
const PATH_OVERRIDES: [&str; 3] = ["x-original-url", "x-rewrite-url", "x-override-url"];

/// Headers that some upstreams read as the request's host: refused unless they name the
/// judged host. `Forwarded` is checked for its `host=` parameters.
const HOST_OVERRIDES: [&str; 5] =
    ["x-forwarded-host", "x-host", "x-forwarded-server", "x-http-host-override", "x-original-host"];

/// Checks the head of a request to `host:port` and sets its one `Host` to the judged host.
/// `websocket`: every matched inspected endpoint is `protocol: websocket`, so a WebSocket
/// upgrade may pass (the only upgrade that ever does).
pub fn check(parts: &mut Parts, host: &str, port: u16, websocket: bool) -> Result<(), HeadRefusal> {
    if parts.method == Method::CONNECT {
        return Err(HeadError::Connect.into());
    }
    check_upgrade(&parts.method, &parts.headers, websocket)?;
    if connection_lists(&parts.headers, "host") {
        return Err(HeadError::ConnectionNamesHost.into());
    }
    check_overrides(&parts.headers, host, port)?;
    let count = parts.headers.get_all(header::HOST).iter().count();
    if count > 1 {
        return Err(HeadError::ManyHosts { count }.into());
    }
    let target = parts.uri.authority().map(|a| named(a.as_str(), "request target", port)).transpose()?;
    let host_header = parts.headers.get(header::HOST).map(|v| {
        let text = v.to_str().map_err(|_| HeadError::InvalidHost { field: "Host header" })?;
        named(text, "Host header", port)
    });
    let host_header = host_header.transpose()?;
    let name = match (target, host_header) {
        (Some(t), Some(h)) if (&t.host, t.port) != (&h.host, h.port) => return Err(HeadError::HostsDiffer.into()),
        (Some(n), _) | (None, Some(n)) => Some(n),
        (None, None) => None,
    };
    if let Some(Named { shown, host: named_host, port: named_port }) = name
        && (named_port != port || named_host != bare(host))
    {
        return Err(HeadRefusal::OtherHost(shown));
    }
    let value = match (host.contains(':'), port) {
        (true, 443 | 80) => format!("[{}]", bare(host)),
        (true, _) => format!("[{}]:{port}", bare(host)),
        (false, 443 | 80) => host.to_owned(),
        (false, _) => format!("{host}:{port}"),
    };
    let value = HeaderValue::from_str(&value).map_err(|_| HeadError::InvalidHost { field: "judged host" })?;
    parts.headers.insert(header::HOST, value);
    Ok(())
}

/// A request that asks to upgrade (an `Upgrade` header, or `upgrade` in `Connection`) must
/// be a WebSocket handshake: `GET`, `Upgrade` exactly `websocket`, to a websocket endpoint.
fn check_upgrade(method: &Method, headers: &HeaderMap, websocket: bool) -> Result<(), HeadError> {
    let listed = connection_lists(headers, "upgrade");
    if !headers.contains_key(header::UPGRADE) && !listed {
        return Ok(());
    }
    let mut upgrade = headers.get_all(header::UPGRADE).iter();
    let only_websocket = matches!((upgrade.next(), upgrade.next()), (Some(v), None)
        if v.as_bytes().trim_ascii().eq_ignore_ascii_case(b"websocket"));
    let why = if !websocket {
        "this endpoint is not `protocol: websocket` in every policy that matches it"
    } else if !only_websocket {
        "the Upgrade header must be exactly `websocket`"
    } else if method != Method::GET {
        "the method must be GET"
    } else if !listed {
        "the Connection header must list `upgrade`"
    } else {
        return Ok(());
    };
    Err(HeadError::Upgrade { why })
}

/// No header names another path than the target, or another host than the judged one.
fn check_overrides(headers: &HeaderMap, host: &str, port: u16) -> Result<(), HeadError> {
    if let Some(name) = PATH_OVERRIDES.into_iter().find(|name| headers.contains_key(*name)) {
        return Err(HeadError::Override { name, what: "path" });
    }
    let judged = bare(host);
    let is_judged = |value: &str| {
        let value = value.trim().trim_matches('"');
        named(value, "override", port).is_ok_and(|n| n.host == judged && n.port == port)
    };
    for name in HOST_OVERRIDES {
        for value in headers.get_all(name) {
            let text = value.to_str().map_err(|_| HeadError::Override { name, what: "host" })?;
            if !text.split(',').all(is_judged) {
                return Err(HeadError::Override { name, what: "host" });
            }
        }
    }
    for value in headers.get_all(header::FORWARDED) {
        let text = value.to_str().map_err(|_| HeadError::Override { name: "forwarded", what: "host" })?;
        let hosts = text.split([',', ';']).filter_map(|pair| pair.trim().split_once('='));
        for (key, value) in hosts {
            if key.trim().eq_ignore_ascii_case("host") && !is_judged(value) {
                return Err(HeadError::Override { name: "forwarded", what: "host" });
            }
        }
    }
    Ok(())
}

/// Whether a `Connection` header lists `token` (case-insensitive).
fn connection_lists(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// A host a request names, compared without case, brackets or a trailing dot, with the
/// judged port when it gives none.
#[derive(Debug)]
struct Named {
    /// As written (cut), for the answer.
    shown: String,
    host: String,
    port: u16,
}

fn named(text: &str, field: &'static str, default_port: u16) -> Result<Named, HeadError> {
    if text.contains('@') {
        return Err(HeadError::Userinfo { field });
    }
    let authority: Authority = text.parse().map_err(|_| HeadError::InvalidHost { field })?;
    // `Authority` ignores a port that is not a number; an IPv6 literal's `:`s are in `[]`.
    let after_literal = text.rsplit_once(']').map_or(text, |(_, rest)| rest);
    if after_literal.rsplit_once(':').is_some_and(|(_, port)| port.parse::<u16>().is_err()) {
        return Err(HeadError::InvalidHost { field });
    }
    Ok(Named {
        shown: text.chars().take(256).collect(),
        host: bare(authority.host()),
        port: authority.port_u16().unwrap_or(default_port),
    })
}

/// `host` lower-cased, without `[]` or a trailing dot.
fn bare(host: &str) -> String {
    unbracketed(host).trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests;
