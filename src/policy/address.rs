//! Which destination addresses the proxy may dial (the SSRF rules of design.md): some
//! ranges are never reachable, private ranges only for endpoints that name the host
//! exactly or list the range in `allowed_ips`, everything else is public.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// What kind of destination an address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AddressClass {
    /// Routable on the internet.
    Public,
    /// RFC 1918, CGNAT or IPv6 unique-local: allowed only by an exact host or `allowed_ips`.
    Private(&'static str),
    /// Loopback, link-local (cloud metadata), unspecified, multicast or reserved: never.
    Forbidden(&'static str),
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len))
}

const fn v6(first: u16, len: u8) -> IpNet {
    IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::new(first, 0, 0, 0, 0, 0, 0, 0), len))
}

const FORBIDDEN: &[(IpNet, &str)] = &[
    (v4(0, 0, 0, 0, 8), "unspecified"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 0, 0, 16), "link-local"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved"),
    (v6(0, 128), "unspecified"),
    (IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)), "loopback"),
    (v6(0xfe80, 10), "link-local"),
    (v6(0xff00, 8), "multicast"),
];
const PRIVATE: &[(IpNet, &str)] = &[
    (v4(10, 0, 0, 0, 8), "private (RFC 1918)"),
    (v4(172, 16, 0, 0, 12), "private (RFC 1918)"),
    (v4(192, 168, 0, 0, 16), "private (RFC 1918)"),
    (v4(100, 64, 0, 0, 10), "carrier-grade NAT"),
    (v6(0xfc00, 7), "unique-local"),
    (v6(0xfec0, 10), "site-local"),
];
const IPV4_MAPPED: IpNet = IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96));

fn find(table: &[(IpNet, &'static str)], ip: IpAddr) -> Option<&'static str> {
    table.iter().find(|(net, _)| net.contains(&ip)).map(|(_, what)| *what)
}

/// The IPv4 address carried inside an IPv4-mapped or NAT64 IPv6 address.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return Some(v4);
    }
    let s = ip.segments();
    (s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0, 0, 0, 0]).then(|| Ipv4Addr::from(u128::from(ip) as u32))
}

/// Classifies one resolved address.
pub fn classify(ip: IpAddr) -> AddressClass {
    let ip = match ip {
        IpAddr::V6(v6) => embedded_v4(v6).map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if let Some(what) = find(FORBIDDEN, ip) {
        return AddressClass::Forbidden(what);
    }
    if let Some(what) = find(PRIVATE, ip) {
        return AddressClass::Private(what);
    }
    AddressClass::Public
}

/// For `allowed_ips`: the kind of never-reachable range `net` overlaps, if any.
pub fn forbidden_overlap(net: &IpNet) -> Option<&'static str> {
    let overlaps = |other: &IpNet| other.contains(&net.network()) || net.contains(&other.network());
    FORBIDDEN
        .iter()
        .find(|(range, _)| overlaps(range))
        .map(|(_, what)| *what)
        .or_else(|| overlaps(&IPV4_MAPPED).then_some("IPv4-mapped IPv6 (write the IPv4 range instead)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> AddressClass {
        classify(s.parse().unwrap())
    }

    #[test]
    fn classes() {
        assert_eq!(c("127.0.0.1"), AddressClass::Forbidden("loopback"));
        assert_eq!(c("169.254.169.254"), AddressClass::Forbidden("link-local"));
        assert_eq!(c("0.0.0.0"), AddressClass::Forbidden("unspecified"));
        assert_eq!(c("239.1.1.1"), AddressClass::Forbidden("multicast"));
        assert_eq!(c("10.1.2.3"), AddressClass::Private("private (RFC 1918)"));
        assert_eq!(c("100.100.1.1"), AddressClass::Private("carrier-grade NAT"));
        assert_eq!(c("fd00::1"), AddressClass::Private("unique-local"));
        assert_eq!(c("::1"), AddressClass::Forbidden("loopback"));
        assert_eq!(c("fe80::1"), AddressClass::Forbidden("link-local"));
        assert_eq!(c("93.184.216.34"), AddressClass::Public);
        assert_eq!(c("2606:4700::1111"), AddressClass::Public);
    }

    #[test]
    fn embedded_ipv4_is_classified_as_ipv4() {
        assert_eq!(c("::ffff:127.0.0.1"), AddressClass::Forbidden("loopback"));
        assert_eq!(c("::ffff:169.254.169.254"), AddressClass::Forbidden("link-local"));
        assert_eq!(c("64:ff9b::a9fe:a9fe"), AddressClass::Forbidden("link-local"));
        assert_eq!(c("::ffff:10.0.0.1"), AddressClass::Private("private (RFC 1918)"));
    }

    #[test]
    fn allowed_ips_may_not_cover_forbidden_ranges() {
        let o = |s: &str| forbidden_overlap(&s.parse().unwrap());
        assert_eq!(o("10.0.0.0/8"), None);
        assert_eq!(o("fd00::/8"), None);
        assert_eq!(o("127.0.0.1/32"), Some("loopback"));
        assert_eq!(o("0.0.0.0/0"), Some("unspecified"));
        assert_eq!(o("169.254.169.254/32"), Some("link-local"));
        assert_eq!(o("::/0"), Some("unspecified"));
        assert_eq!(o("::ffff:10.0.0.0/104"), Some("IPv4-mapped IPv6 (write the IPv4 range instead)"));
    }
}
