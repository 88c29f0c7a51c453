//! Reaching an upstream: resolve the host in the proxy (getaddrinfo, so /etc/hosts is
//! honoured), check every resolved address against the SSRF rules, and dial only the
//! validated addresses, each within the connect timeout.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::TcpStream;

use crate::policy::address::{AddressClass, carried_ipv4, classify};
use crate::policy::host::DestinationHost;
use crate::policy::model::Endpoint;

use super::answer::Refusal;

/// What the SSRF check needs to know about the allowed destination.
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    /// The host as asked, parsed where the target was read.
    pub host: &'a DestinationHost,
    /// Destination port.
    pub port: u16,
    /// Every endpoint the policy decision matched.
    pub endpoints: &'a [&'a Endpoint],
    /// `--allow-loopback-upstreams`: loopback (only loopback) becomes reachable.
    pub allow_loopback: bool,
}

/// Resolves the target and checks every address; any refused address refuses all.
/// The name resolved is the one the policy matched: lower case, without a trailing dot
/// (`LocalHost.` resolves as `localhost`, which /etc/hosts knows).
pub async fn resolve(target: &Target<'_>, timeout: Duration) -> Result<Vec<SocketAddr>, Refusal> {
    let host = target.host.name();
    let lookup = tokio::time::timeout(timeout, tokio::net::lookup_host((host, target.port)));
    let addrs: Vec<SocketAddr> = match lookup.await {
        Err(_) => return Err(Refusal::Timeout(format!("resolving {host} took longer than {timeout:?}"))),
        Ok(Err(e)) => return Err(Refusal::Unreachable(format!("{host} does not resolve: {e}"))),
        Ok(Ok(addrs)) => addrs.collect(),
    };
    if addrs.is_empty() {
        return Err(Refusal::Unreachable(format!("{host} resolves to no address")));
    }
    for addr in &addrs {
        check(target, addr.ip()).map_err(|reason| Refusal::Ssrf { reason })?;
    }
    Ok(addrs)
}

/// The SSRF rule for one resolved address (docs/policy.md, "Endpoint: `allowed_ips`").
/// An IPv6 address carrying an IPv4 one is judged by it; `allowed_ips` (IPv4 ranges only
/// for those) admits only the IPv4-mapped form, which `to_canonical` has made IPv4.
pub fn check(target: &Target<'_>, ip: IpAddr) -> Result<(), String> {
    let ip = ip.to_canonical();
    let host = target.host.shown();
    let carried = if let IpAddr::V6(v6) = ip { carried_ipv4(v6) } else { None };
    let shown = carried.map_or_else(|| ip.to_string(), |c| format!("{ip} ({}, carrying {})", c.form, c.ipv4));
    match classify(ip) {
        AddressClass::Public => Ok(()),
        // The development flag opens loopback itself, never an address that only carries it.
        AddressClass::Forbidden("loopback") if target.allow_loopback && ip.is_loopback() => Ok(()),
        AddressClass::Forbidden(what) => {
            Err(format!("{host} resolves to {shown}, a {what} address; the proxy never connects to {what} addresses"))
        }
        AddressClass::Private(what) => {
            let named = target.endpoints.iter().any(|e| e.host.is_exact() && e.host.as_str() == target.host.name());
            let listed = target.endpoints.iter().any(|e| e.allowed_ips.iter().any(|net| net.contains(&ip)));
            if named || listed {
                Ok(())
            } else {
                Err(format!(
                    "{host} resolves to {shown}, a {what} address; private addresses are reachable only through an endpoint that names the host exactly or lists the address in `allowed_ips`"
                ))
            }
        }
    }
}

/// Resolves, checks and connects: the one way the proxy reaches an upstream.
pub async fn open(target: &Target<'_>, timeout: Duration) -> Result<TcpStream, Refusal> {
    let addrs = resolve(target, timeout).await?;
    dial(target.host.shown(), &addrs, timeout).await
}

/// Connects to the first address that accepts, each attempt within `timeout`.
pub async fn dial(host: &str, addrs: &[SocketAddr], timeout: Duration) -> Result<TcpStream, Refusal> {
    let mut last = None;
    let mut timed_out = false;
    for addr in addrs {
        match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
            Ok(Ok(stream)) => {
                let _ = stream.set_nodelay(true);
                return Ok(stream);
            }
            Ok(Err(e)) => last = Some(format!("{addr}: {e}")),
            Err(_) => {
                timed_out = true;
                last = Some(format!("{addr}: no answer within {timeout:?}"));
            }
        }
    }
    let detail = last.unwrap_or_else(|| "no address".into());
    let message = format!("cannot connect to {host} ({detail})");
    Err(if timed_out { Refusal::Timeout(message) } else { Refusal::Unreachable(message) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::host::HostPattern;

    fn endpoint(host: &str, allowed: &[&str]) -> Endpoint {
        let yaml = format!(
            "version: 1\nnetwork_policies:\n  p:\n    endpoints:\n      - host: \"{host}\"\n        port: 80\n"
        );
        let mut policy = crate::policy::parse_yaml(&yaml, "test").unwrap();
        let mut ep = policy.network_policies.pop_first().unwrap().1.endpoints.remove(0);
        assert_eq!(ep.host, HostPattern::parse(host).unwrap());
        ep.allowed_ips = allowed.iter().map(|a| a.parse().unwrap()).collect();
        ep
    }

    fn verdict(host: &str, ep: &Endpoint, ip: &str, allow_loopback: bool) -> Result<(), String> {
        let endpoints = [ep];
        let host = DestinationHost::parse(host).unwrap();
        check(&Target { host: &host, port: 80, endpoints: &endpoints, allow_loopback }, ip.parse().unwrap())
    }

    #[test]
    fn forbidden_ranges_are_refused_even_when_named() {
        let ep = endpoint("metadata.internal", &[]);
        let err = verdict("metadata.internal", &ep, "169.254.169.254", true).unwrap_err();
        assert!(err.contains("link-local"), "{err}");
        assert!(verdict("metadata.internal", &ep, "127.0.0.1", false).unwrap_err().contains("loopback"));
        assert!(verdict("metadata.internal", &ep, "::ffff:127.0.0.1", false).is_err());
        assert!(verdict("metadata.internal", &ep, "127.0.0.1", true).is_ok());
        assert!(verdict("metadata.internal", &ep, "::ffff:127.0.0.1", true).is_ok(), "mapped loopback is loopback");
        for carrying in ["::127.0.0.1", "::ffff:0:127.0.0.1", "2002:7f00:1::1", "2001:0:4136:e378:8000:63bf:80ff:fffe"]
        {
            let err = verdict("metadata.internal", &ep, carrying, true).unwrap_err();
            assert!(err.contains("carrying 127.0.0.1), a loopback address"), "{carrying}: {err}");
        }
    }

    #[test]
    fn private_needs_an_exact_host_or_allowed_ips() {
        let glob = endpoint("*.corp.example", &[]);
        let err = verdict("db.corp.example", &glob, "10.1.2.3", false).unwrap_err();
        assert!(err.contains("allowed_ips"), "{err}");
        let listed = endpoint("*.corp.example", &["10.1.0.0/16"]);
        assert!(verdict("db.corp.example", &listed, "10.1.2.3", false).is_ok());
        assert!(verdict("db.corp.example", &listed, "10.2.0.1", false).is_err());
        let exact = endpoint("db.corp.example", &[]);
        assert!(verdict("DB.corp.example.", &exact, "10.1.2.3", false).is_ok());
        assert!(verdict("db.corp.example", &glob, "93.184.216.34", false).is_ok());
        // An IPv4 range admits the mapped form only; other carrying forms need the exact host.
        assert!(verdict("db.corp.example", &listed, "::ffff:10.1.2.3", false).is_ok());
        for carrying in ["2002:a01:203::1", "::10.1.2.3", "::ffff:0:10.1.2.3"] {
            let err = verdict("db.corp.example", &listed, carrying, false).unwrap_err();
            assert!(err.contains("carrying 10.1.2.3), a private (RFC 1918) address"), "{carrying}: {err}");
            assert!(verdict("DB.corp.example.", &exact, carrying, false).is_ok(), "{carrying}");
        }
    }
}
