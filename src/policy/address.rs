//! Which destination addresses the proxy may dial (the SSRF rules of docs/policy.md,
//! "Endpoint: `allowed_ips`"): some ranges are never reachable, private ranges only for
//! endpoints that name the host exactly or list the range in `allowed_ips`, everything
//! else is public. An IPv6 address
//! that carries an IPv4 address (mapped, compatible, SIIT, NAT64, 6to4, Teredo) is judged
//! by the IPv4 address it carries.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// What kind of destination an address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum AddressClass {
    /// Routable on the internet.
    Public,
    /// RFC 1918, CGNAT, IPv6 unique-local or NAT64 local-use: allowed only by an exact
    /// host or `allowed_ips`.
    Private(&'static str),
    /// Loopback, link-local (cloud metadata), unspecified, multicast, documentation,
    /// benchmarking or reserved (and IPv6 outside global unicast): never.
    Forbidden(&'static str),
}

/// An IPv4 address carried inside an IPv6 one, and the form that carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Carried {
    /// The form, like `6to4`.
    pub form: &'static str,
    /// The IPv4 address the address is judged by.
    pub ipv4: Ipv4Addr,
}

const fn v4(a: u8, b: u8, c: u8, d: u8, len: u8) -> IpNet {
    IpNet::V4(Ipv4Net::new_assert(Ipv4Addr::new(a, b, c, d), len))
}

const fn v6(segments: [u16; 3], len: u8) -> IpNet {
    let [a, b, c] = segments;
    IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::new(a, b, c, 0, 0, 0, 0, 0), len))
}

/// Never dialled, whatever the policy says (IANA special-purpose registries).
const FORBIDDEN: &[(IpNet, &str)] = &[
    (v4(0, 0, 0, 0, 8), "unspecified"),
    (v4(127, 0, 0, 0, 8), "loopback"),
    (v4(169, 254, 0, 0, 16), "link-local"),
    (v4(192, 0, 0, 0, 24), "reserved (IETF protocol assignments)"),
    (v4(192, 0, 2, 0, 24), "documentation"),
    (v4(192, 88, 99, 0, 24), "reserved (6to4 relay anycast)"),
    // The proxy's own synthetic addresses come from here too: never a destination.
    (v4(198, 18, 0, 0, 15), "benchmarking"),
    (v4(198, 51, 100, 0, 24), "documentation"),
    (v4(203, 0, 113, 0, 24), "documentation"),
    (v4(224, 0, 0, 0, 4), "multicast"),
    (v4(240, 0, 0, 0, 4), "reserved"),
    (v6([0, 0, 0], 128), "unspecified"),
    (IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128)), "loopback"),
    (v6([0x100, 0, 0], 64), "discard-only"),
    (v6([0x2001, 2, 0], 48), "benchmarking"),
    (v6([0x2001, 0x10, 0], 28), "reserved (ORCHID)"),
    (v6([0x2001, 0x20, 0], 28), "reserved (ORCHIDv2)"),
    (v6([0x2001, 0xdb8, 0], 32), "documentation"),
    (v6([0x3fff, 0, 0], 20), "documentation"),
    (v6([0xfe80, 0, 0], 10), "link-local"),
    (v6([0xfec0, 0, 0], 10), "site-local (deprecated)"),
    (v6([0xff00, 0, 0], 8), "multicast"),
];

/// Dialled only for an endpoint that names the host exactly or lists it in `allowed_ips`.
const PRIVATE: &[(IpNet, &str)] = &[
    (v4(10, 0, 0, 0, 8), "private (RFC 1918)"),
    (v4(172, 16, 0, 0, 12), "private (RFC 1918)"),
    (v4(192, 168, 0, 0, 16), "private (RFC 1918)"),
    (v4(100, 64, 0, 0, 10), "carrier-grade NAT"),
    // Where the IPv4 address sits depends on the operator's prefix length (RFC 8215):
    // the address reaches the local translator's network, so it is private as a whole.
    (v6([0x64, 0xff9b, 1], 48), "NAT64 local-use"),
    (v6([0xfc00, 0, 0], 7), "unique-local"),
];

/// IPv6 global unicast. IPv6 space outside it that no table names is reserved: never dialled.
const GLOBAL_UNICAST: IpNet = v6([0x2000, 0, 0], 3);

/// IPv6 ranges whose addresses carry an IPv4 address; `allowed_ips` may not list them.
const CARRYING: &[(IpNet, &str)] = &[
    (v6([0, 0, 0], 96), "IPv4-compatible"),
    (IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0, 0xffff, 0, 0), 96)), "IPv4-mapped"),
    (IpNet::V6(Ipv6Net::new_assert(Ipv6Addr::new(0, 0, 0, 0, 0xffff, 0, 0, 0), 96)), "SIIT"),
    (v6([0x64, 0xff9b, 0], 96), "NAT64"),
    (v6([0x2001, 0, 0], 32), "Teredo"),
    (v6([0x2002, 0, 0], 16), "6to4"),
];

fn find(table: &[(IpNet, &'static str)], ip: IpAddr) -> Option<&'static str> {
    table.iter().find(|(net, _)| net.contains(&ip)).map(|(_, what)| *what)
}

/// The IPv4 address `ip` carries and is judged by, when its form carries one. Teredo
/// carries two (its server's, and the client's inverted): the stricter one is judged.
pub fn carried_ipv4(ip: Ipv6Addr) -> Option<Carried> {
    let form = find(CARRYING, IpAddr::V6(ip))?;
    let bits = u128::from(ip);
    let low = Ipv4Addr::from(bits as u32);
    let ipv4 = match form {
        // `::` and `::1` are themselves, not IPv4 0.0.0.0 and 0.0.0.1.
        "IPv4-compatible" if bits <= 1 => return None,
        "6to4" => Ipv4Addr::from((bits >> 80) as u32),
        "Teredo" => {
            let server = Ipv4Addr::from((bits >> 64) as u32);
            let client = Ipv4Addr::from(!(bits as u32));
            if classify_v4(server) > classify_v4(client) { server } else { client }
        }
        _ => low,
    };
    Some(Carried { form, ipv4 })
}

fn classify_v4(ip: Ipv4Addr) -> AddressClass {
    classify_in(IpAddr::V4(ip)).unwrap_or(AddressClass::Public)
}

fn classify_in(ip: IpAddr) -> Option<AddressClass> {
    find(FORBIDDEN, ip).map(AddressClass::Forbidden).or_else(|| find(PRIVATE, ip).map(AddressClass::Private))
}

/// Classifies one resolved address.
pub fn classify(ip: IpAddr) -> AddressClass {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => match (find(FORBIDDEN, ip), carried_ipv4(v6)) {
            (Some(what), _) => AddressClass::Forbidden(what),
            (None, Some(carried)) => classify_v4(carried.ipv4),
            (None, None) => classify_in(ip).unwrap_or(if GLOBAL_UNICAST.contains(&ip) {
                AddressClass::Public
            } else {
                AddressClass::Forbidden("reserved")
            }),
        },
    }
}

/// For `allowed_ips`: why `net` cannot be listed, when it overlaps a never-reachable range
/// or a range of IPv6 addresses that carry IPv4 ones (those are judged by the IPv4 address).
pub fn forbidden_overlap(net: &IpNet) -> Option<String> {
    let overlaps = |other: &IpNet| other.contains(&net.network()) || net.contains(&other.network());
    if let Some((_, what)) = FORBIDDEN.iter().find(|(range, _)| overlaps(range)) {
        return Some(format!("covers {what} addresses, which are never reachable through the proxy"));
    }
    if let Some((_, form)) = CARRYING.iter().find(|(range, _)| overlaps(range)) {
        return Some(format!(
            "covers {form} addresses, which are judged by the IPv4 address they carry: write the IPv4 range instead"
        ));
    }
    let known = |range: &IpNet| range.contains(net);
    let reserved = matches!(net, IpNet::V6(_)) && !known(&GLOBAL_UNICAST) && !PRIVATE.iter().any(|(r, _)| known(r));
    reserved.then(|| "covers reserved addresses, which are never reachable through the proxy".to_owned())
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
        assert_eq!(c("::"), AddressClass::Forbidden("unspecified"));
        assert_eq!(c("fe80::1"), AddressClass::Forbidden("link-local"));
        assert_eq!(c("93.184.216.34"), AddressClass::Public);
        assert_eq!(c("2606:4700::1111"), AddressClass::Public);
    }

    #[test]
    fn documentation_benchmarking_and_reserved_ranges_are_never_dialled() {
        for (ip, what) in [
            ("192.0.0.1", "reserved (IETF protocol assignments)"),
            ("192.0.0.170", "reserved (IETF protocol assignments)"),
            ("192.0.2.1", "documentation"),
            ("198.51.100.7", "documentation"),
            ("203.0.113.255", "documentation"),
            ("198.18.0.0", "benchmarking"),
            ("198.19.255.255", "benchmarking"),
            ("192.88.99.1", "reserved (6to4 relay anycast)"),
            ("255.255.255.255", "reserved"),
            ("2001:db8::1", "documentation"),
            ("3fff:fff::1", "documentation"),
            ("100::1", "discard-only"),
            ("2001:2::1", "benchmarking"),
            ("2001:10::1", "reserved (ORCHID)"),
            ("2001:2f::1", "reserved (ORCHIDv2)"),
            ("5f00::1", "reserved"),
            ("4000::1", "reserved"),
            ("100:0:0:1::1", "reserved"),
            ("1::1", "reserved"),
            ("::1:0:0:1", "reserved"),
            ("fec0::1", "site-local (deprecated)"),
            ("feff:ffff::1", "site-local (deprecated)"),
        ] {
            assert_eq!(c(ip), AddressClass::Forbidden(what), "{ip}");
        }
        // Just outside those ranges.
        for ip in ["198.17.255.255", "198.20.0.0", "192.0.1.255", "192.0.3.0", "2001:db9::1", "3fff:1000::1"] {
            assert_eq!(c(ip), AddressClass::Public, "{ip}");
        }
    }

    #[test]
    fn embedded_ipv4_is_classified_as_ipv4() {
        for (ip, class) in [
            // IPv4-mapped and NAT64 well-known prefix.
            ("::ffff:127.0.0.1", AddressClass::Forbidden("loopback")),
            ("::ffff:169.254.169.254", AddressClass::Forbidden("link-local")),
            ("64:ff9b::a9fe:a9fe", AddressClass::Forbidden("link-local")),
            ("::ffff:10.0.0.1", AddressClass::Private("private (RFC 1918)")),
            // IPv4-compatible, ::/96 (but `::` and `::1` stay themselves).
            ("::127.0.0.1", AddressClass::Forbidden("loopback")),
            ("::169.254.169.254", AddressClass::Forbidden("link-local")),
            ("::10.1.2.3", AddressClass::Private("private (RFC 1918)")),
            ("::0.0.0.2", AddressClass::Forbidden("unspecified")),
            ("::198.18.0.1", AddressClass::Forbidden("benchmarking")),
            ("::93.184.216.34", AddressClass::Public),
            // SIIT, ::ffff:0:0/96.
            ("::ffff:0:127.0.0.1", AddressClass::Forbidden("loopback")),
            ("::ffff:0:a9fe:a9fe", AddressClass::Forbidden("link-local")),
            ("::ffff:0:192.168.1.1", AddressClass::Private("private (RFC 1918)")),
            // 6to4: the IPv4 address in bits 16..48, whatever follows.
            ("2002:7f00:1::", AddressClass::Forbidden("loopback")),
            ("2002:a9fe:a9fe:1:2:3:4:5", AddressClass::Forbidden("link-local")),
            ("2002:c0a8:101::1", AddressClass::Private("private (RFC 1918)")),
            ("2002:c612:1::1", AddressClass::Forbidden("benchmarking")),
            ("2002:5db8:d822::1", AddressClass::Public),
            // Teredo: server in bits 32..64, client inverted in the last 32; the stricter.
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", AddressClass::Forbidden("loopback")),
            ("2001:0:7f00:1:8000:63bf:a247:27dd", AddressClass::Forbidden("loopback")),
            ("2001:0:4136:e378:8000:63bf:f5ff:fffe", AddressClass::Private("private (RFC 1918)")),
            ("2001:0:4136:e378:8000:63bf:a247:27dd", AddressClass::Public),
            // NAT64 local-use: private as a whole.
            ("64:ff9b:1::5db8:d822", AddressClass::Private("NAT64 local-use")),
            ("64:ff9b:1:ffff::1", AddressClass::Private("NAT64 local-use")),
        ] {
            assert_eq!(c(ip), class, "{ip}");
        }
        let carried = |s: &str| carried_ipv4(s.parse().unwrap());
        assert_eq!(carried("2002:7f00:1::"), Some(Carried { form: "6to4", ipv4: Ipv4Addr::LOCALHOST }));
        assert_eq!(carried("::1"), None);
        assert_eq!(carried("2606:4700::1111"), None);
    }

    #[test]
    fn allowed_ips_may_not_cover_forbidden_or_carrying_ranges() {
        let o = |s: &str| forbidden_overlap(&s.parse().unwrap());
        let never = |s: &str, what: &str| {
            assert_eq!(o(s), Some(format!("covers {what} addresses, which are never reachable through the proxy")))
        };
        assert_eq!(o("10.0.0.0/8"), None);
        assert_eq!(o("fd00::/8"), None);
        assert_eq!(o("64:ff9b:1::/48"), None);
        never("127.0.0.1/32", "loopback");
        never("0.0.0.0/0", "unspecified");
        never("169.254.169.254/32", "link-local");
        never("198.18.0.0/16", "benchmarking");
        never("192.0.2.0/25", "documentation");
        never("fec0::/16", "site-local (deprecated)");
        never("::/0", "unspecified");
        never("4000::/16", "reserved");
        never("1::/16", "reserved");
        for (net, form) in [
            ("::ffff:10.0.0.0/104", "IPv4-mapped"),
            ("::10.0.0.0/104", "IPv4-compatible"),
            ("::ffff:0:10.0.0.0/104", "SIIT"),
            ("64:ff9b::10.0.0.0/104", "NAT64"),
            ("2002:a00::/24", "6to4"),
            ("2001::/32", "Teredo"),
        ] {
            let why = o(net).unwrap_or_else(|| panic!("{net} is accepted"));
            assert!(why.starts_with(&format!("covers {form} addresses")) && why.contains("IPv4 range"), "{net}: {why}");
        }
    }
}
