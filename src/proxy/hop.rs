//! Hop-by-hop headers (RFC 9110 section 7.6.1) and upgrade detection, one rule for every
//! request and answer the proxy forwards. `Host` is never removed (the judge or the
//! absolute-form handler set it), and `HTTP2-Settings` never passes (h2c).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// `Connection: upgrade` with an `Upgrade` header (WebSocket).
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// Removes the headers that belong to one hop: those a `Connection` list names (never
/// `Host`), every `Proxy-*`, `Keep-Alive`, `Transfer-Encoding`, `Trailer`, `HTTP2-Settings`,
/// and `TE` unless it is `trailers` (gRPC needs it end to end). `upgrade` (a judged
/// WebSocket upgrade) keeps exactly `Connection: upgrade` and `Upgrade: websocket`; without
/// it both go.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages have neither a `Connection` list nor a `Proxy-*` header: no allocation then.
    let named = headers.contains_key(header::CONNECTION);
    let proxy = headers.keys().any(|k| k.as_str().starts_with("proxy-"));
    if named || proxy {
        let doomed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|t| HeaderName::try_from(t.trim()).ok())
            .filter(|name| !(upgrade && *name == header::UPGRADE) && *name != header::HOST)
            .chain(headers.keys().filter(|k| k.as_str().starts_with("proxy-")).cloned())
            .collect();
        for name in doomed {
            headers.remove(name);
        }
    }
    for name in [KEEP_ALIVE, HTTP2_SETTINGS, header::TRAILER, header::TRANSFER_ENCODING] {
        headers.remove(name);
    }
    if headers.get(header::TE).is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"trailers")) {
        headers.remove(header::TE);
    }
    if upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    } else {
        headers.remove(header::CONNECTION);
        headers.remove(header::UPGRADE);
    }
}

#[cfg(test)]
mod tests;
