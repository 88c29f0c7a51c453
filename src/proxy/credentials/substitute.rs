//! Swapping placeholders in a request head: whole header values, `Scheme <placeholder>`,
//! Basic user and password, placeholders anywhere in path segments and query values
//! (literal or percent-encoded). A placeholder anywhere else is refused, so a placeholder
//! is never forwarded; only keys the request names are looked up, each through its binding.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::HeaderValue;
use http::uri::{PathAndQuery, Uri};

use super::binding::Destination;
use super::find::{hides_placeholder, placeholders};
use super::{CredentialError, PLACEHOLDER_PREFIX, Snapshot, placeholder_key};

/// Looks keys up in one snapshot for one destination, and remembers what was swapped in.
pub(super) struct Resolver<'a> {
    pub snapshot: &'a Snapshot,
    pub to: &'a Destination,
    /// Secret keys swapped in, in first-use order.
    pub used: Vec<String>,
    /// Encoded forms of values written into the request (percent-encoded, JSON-escaped,
    /// Basic base64), each with the text the client sent in its place.
    pub forms: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<'a> Resolver<'a> {
    pub fn new(snapshot: &'a Snapshot, to: &'a Destination) -> Self {
        Resolver { snapshot, to, used: Vec::new(), forms: Vec::new() }
    }

    /// The value of `key`, if it may be swapped into this request (see [`Snapshot::resolve`]).
    pub fn value(&mut self, key: &str) -> Result<&'a str, CredentialError> {
        let value = self.snapshot.resolve(key, self.to)?;
        if self.snapshot.is_secret(key) && !self.used.iter().any(|k| k == key) {
            self.used.push(key.to_owned());
        }
        Ok(value)
    }

    /// Remembers that `written` stands in the request where the client sent `sent`.
    pub fn wrote(&mut self, written: &[u8], sent: &[u8]) {
        if written != sent && !self.forms.iter().any(|(w, _)| w == written) {
            self.forms.push((written.to_vec(), sent.to_vec()));
        }
    }

    /// `raw` with every placeholder (found through `%XX` escapes when `percent`) replaced by
    /// `encode(value)`; `place` names it in errors. `None` when it names no placeholder.
    pub fn replace_in(
        &mut self,
        raw: &[u8],
        percent: bool,
        place: &str,
        encode: impl Fn(&str) -> String,
    ) -> Result<Option<Vec<u8>>, CredentialError> {
        let found = placeholders(raw, percent);
        if found.is_empty() {
            return Ok(None);
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut at = 0;
        for f in found {
            let Some(key) = f.key else { return Err(misplaced(format!("{place} (a placeholder without a key)"))) };
            let encoded = encode(self.value(&key)?);
            self.wrote(encoded.as_bytes(), &raw[f.start..f.end]);
            out.extend_from_slice(&raw[at..f.start]);
            out.extend_from_slice(encoded.as_bytes());
            at = f.end;
        }
        out.extend_from_slice(&raw[at..]);
        Ok(Some(out))
    }
}

/// Substitutes in `parts`. Changes are applied only when all succeed.
pub(super) fn request(r: &mut Resolver<'_>, parts: &mut http::request::Parts) -> Result<(), CredentialError> {
    let mut new_headers = Vec::new();
    for (name, value) in &parts.headers {
        new_headers.push(header(r, name.as_str(), value)?);
    }
    let new_uri = uri(r, &parts.uri)?;
    for ((_, value), new) in parts.headers.iter_mut().zip(new_headers) {
        if let Some(new) = new {
            *value = new;
        }
    }
    if let Some(new) = new_uri {
        parts.uri = new;
    }
    Ok(())
}

fn misplaced(place: impl Into<String>) -> CredentialError {
    CredentialError::Misplaced { place: place.into() }
}

/// The new value of one header, if it names a placeholder.
fn header(r: &mut Resolver<'_>, name: &str, value: &HeaderValue) -> Result<Option<HeaderValue>, CredentialError> {
    let place = || format!("header {name}");
    let Ok(text) = value.to_str() else {
        return if hides_placeholder(value.as_bytes()) { Err(misplaced(place())) } else { Ok(None) };
    };
    let (new, key) = if let Some(key) = placeholder_key(text) {
        (r.value(key)?.to_owned(), key.to_owned())
    } else if let Some((scheme, token)) = scheme_and_token(text) {
        if let Some(key) = placeholder_key(token) {
            (format!("{scheme} {}", r.value(key)?), key.to_owned())
        } else if scheme.eq_ignore_ascii_case("basic") && !token.contains(PLACEHOLDER_PREFIX) {
            match basic(r, token, &place())? {
                Some(swapped) => (format!("{scheme} {}", swapped.0), swapped.1),
                None => return Ok(None),
            }
        } else if hides_placeholder(text.as_bytes()) {
            return Err(misplaced(place()));
        } else {
            return Ok(None);
        }
    } else if hides_placeholder(text.as_bytes()) {
        return Err(misplaced(place()));
    } else {
        return Ok(None);
    };
    let mut value = HeaderValue::from_str(&new)
        .map_err(|_| CredentialError::Unusable { key, place: format!("{} (not a valid header value)", place()) })?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// `Scheme token` with an HTTP token scheme and a single space, as in `Bearer abc`.
fn scheme_and_token(text: &str) -> Option<(&str, &str)> {
    let (scheme, token) = text.split_once(' ')?;
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    (!scheme.is_empty() && scheme.bytes().all(tchar) && !token.is_empty() && !token.contains(' '))
        .then_some((scheme, token))
}

/// Swaps placeholders in Basic credentials; `None` when they name none. Returns the new
/// base64 token and the first key used; the new token is remembered for scrubbing.
fn basic(r: &mut Resolver<'_>, token: &str, place: &str) -> Result<Option<(String, String)>, CredentialError> {
    let Some(decoded) = STANDARD.decode(token).ok().and_then(|d| String::from_utf8(d).ok()) else {
        return Ok(None);
    };
    if !decoded.contains(PLACEHOLDER_PREFIX) {
        return Ok(None);
    }
    // A placeholder user holds `:` itself: it ends at the first `:` after the prefix.
    let split = match decoded.strip_prefix(PLACEHOLDER_PREFIX) {
        Some(rest) => rest.find(':').map(|i| PLACEHOLDER_PREFIX.len() + i),
        None => decoded.find(':'),
    };
    let Some((user, password)) = split.map(|i| (&decoded[..i], &decoded[i + 1..])) else {
        return Err(misplaced(format!("{place} (Basic credentials without `:`)")));
    };
    let mut first_key = None;
    let mut swap = |part: &str, what: &str| -> Result<String, CredentialError> {
        match placeholder_key(part) {
            Some(key) => {
                first_key.get_or_insert_with(|| key.to_owned());
                Ok(r.value(key)?.to_owned())
            }
            None if part.contains(PLACEHOLDER_PREFIX) => Err(misplaced(format!("{place} (Basic {what})"))),
            None => Ok(part.to_owned()),
        }
    };
    let new_user = swap(user, "user")?;
    let new_password = swap(password, "password")?;
    let Some(key) = first_key else {
        return Err(misplaced(format!("{place} (Basic credentials)")));
    };
    if new_user.contains(':') {
        return Err(CredentialError::Unusable { key, place: format!("{place} (a Basic user may not contain `:`)") });
    }
    let blob = STANDARD.encode(format!("{new_user}:{new_password}"));
    r.wrote(blob.as_bytes(), token.as_bytes());
    Ok(Some((blob, key)))
}

/// The new URI, if its path or query names placeholders: each is replaced, in place, by
/// its value percent-encoded. A placeholder in the authority (an absolute- or
/// authority-form target's `user:password@`) or in a query parameter name is refused, and
/// so is one that is still there afterwards (encoded twice, say).
fn uri(r: &mut Resolver<'_>, uri: &Uri) -> Result<Option<Uri>, CredentialError> {
    if uri.authority().is_some_and(|a| hides_placeholder(a.as_str().as_bytes())) {
        return Err(misplaced("the request authority"));
    }
    let path = uri.path();
    let query = uri.query();
    let path_hides = hides_placeholder(path.as_bytes());
    let query_hides = query.is_some_and(|q| hides_placeholder(q.as_bytes()));
    if !path_hides && !query_hides {
        return Ok(None);
    }
    let new_path = match r.replace_in(path.as_bytes(), true, "the request path", encode_segment)? {
        Some(bytes) => String::from_utf8(bytes).map_err(|_| misplaced("the request path"))?,
        None => path.to_owned(),
    };
    if hides_placeholder(new_path.as_bytes()) {
        return Err(misplaced("the request path (an encoded placeholder)"));
    }
    let new_query = match query {
        Some(q) if query_hides => Some(self::query(r, q)?),
        other => other.map(str::to_owned),
    };
    let target = match &new_query {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    // Percent-encoded values keep the target valid; refused rather than trusted.
    let rebuilt = PathAndQuery::try_from(target).ok().and_then(|pq| {
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(pq);
        Uri::from_parts(parts).ok()
    });
    rebuilt.map(Some).ok_or_else(|| misplaced("the request target (it cannot be rebuilt)"))
}

/// The query with each placeholder in a value swapped for its value, form-encoded.
fn query(r: &mut Resolver<'_>, query: &str) -> Result<String, CredentialError> {
    let mut pairs = Vec::new();
    for pair in query.split('&') {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if hides_placeholder(name.as_bytes()) {
            return Err(misplaced("a query parameter name"));
        }
        let shown: String =
            form_urlencoded::parse(name.as_bytes()).next().map(|(n, _)| n.into_owned()).unwrap_or_default();
        let place = format!("query parameter {}", shown.chars().take(64).collect::<String>());
        let encode = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
        let new_value = match r.replace_in(value.as_bytes(), true, &place, encode)? {
            Some(bytes) => String::from_utf8(bytes).map_err(|_| misplaced(place.clone()))?,
            None => value.to_owned(),
        };
        if hides_placeholder(new_value.as_bytes()) {
            return Err(misplaced(format!("{place} (an encoded placeholder)")));
        }
        pairs.push(if pair.contains('=') { format!("{name}={new_value}") } else { pair.to_owned() });
    }
    Ok(pairs.join("&"))
}

/// A value for a path segment: everything but unreserved characters percent-encoded, so
/// it can add no segment, query or fragment.
pub(super) fn encode_segment(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests;
