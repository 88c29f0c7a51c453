//! Hop-by-hop headers (RFC 9110 section 7.6.1) and upgrade detection for forwarding.
//! `Host` is never removed (the judge set it), and `HTTP2-Settings` never passes (h2c).

use http::header::{self, HeaderMap, HeaderName};

/// `Connection: upgrade` with an `Upgrade` header (WebSocket).
pub(in crate::proxy::l7) fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// Removes the headers that belong to one hop (RFC 9110 section 7.6.1), keeping
/// `Connection: upgrade` and `Upgrade: websocket` for a (judged) WebSocket upgrade. A
/// `Connection` list never removes `Host`.
pub(in crate::proxy::l7) fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::try_from(t.trim()).ok())
        .filter(|name| !(upgrade && *name == header::UPGRADE) && *name != header::HOST)
        .collect();
    for name in listed {
        headers.remove(name);
    }
    for name in
        ["keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization", "trailer", "http2-settings"]
    {
        headers.remove(name);
    }
    // `TE: trailers` stays: gRPC needs it end to end.
    if headers.get(header::TE).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(header::TE);
    }
    if !upgrade {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    } else {
        headers.insert(header::CONNECTION, http::HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, http::HeaderValue::from_static("websocket"));
    }
}

#[cfg(test)]
mod tests;
