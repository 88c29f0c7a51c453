//! Swapping placeholders in a request head: whole header values, `Scheme <placeholder>`,
//! Basic user and password, whole query values. A placeholder anywhere else is refused, so
//! a placeholder is never forwarded; only keys the request names are ever looked up.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::header::HeaderValue;
use http::uri::{PathAndQuery, Uri};

use super::{CredentialError, PLACEHOLDER_PREFIX, Snapshot, placeholder_key};

/// Looks keys up in one snapshot and remembers which were used.
struct Resolver<'a> {
    snapshot: &'a Snapshot,
    used: Vec<String>,
}

impl Resolver<'_> {
    fn value(&mut self, key: &str) -> Result<&str, CredentialError> {
        let secret = self.snapshot.get(key).ok_or_else(|| CredentialError::Unresolved { key: key.to_owned() })?;
        if !self.used.iter().any(|k| k == key) {
            self.used.push(key.to_owned());
        }
        Ok(secret.expose())
    }
}

/// Substitutes in `parts`; returns the keys used. Changes are applied only when all succeed.
pub(super) fn request(snapshot: &Snapshot, parts: &mut http::request::Parts) -> Result<Vec<String>, CredentialError> {
    let mut resolver = Resolver { snapshot, used: Vec::new() };
    let mut new_headers = Vec::new();
    for (name, value) in &parts.headers {
        new_headers.push(header(&mut resolver, name.as_str(), value)?);
    }
    let new_uri = uri(&mut resolver, &parts.uri)?;
    for ((_, value), new) in parts.headers.iter_mut().zip(new_headers) {
        if let Some(new) = new {
            *value = new;
        }
    }
    if let Some(new) = new_uri {
        parts.uri = new;
    }
    Ok(resolver.used)
}

fn misplaced(place: impl Into<String>) -> CredentialError {
    CredentialError::Misplaced { place: place.into() }
}

/// The new value of one header, if it names a placeholder.
fn header(r: &mut Resolver<'_>, name: &str, value: &HeaderValue) -> Result<Option<HeaderValue>, CredentialError> {
    let place = || format!("header {name}");
    let Ok(text) = value.to_str() else {
        let has = value.as_bytes().windows(PLACEHOLDER_PREFIX.len()).any(|w| w == PLACEHOLDER_PREFIX.as_bytes());
        return if has { Err(misplaced(place())) } else { Ok(None) };
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
        } else if text.contains(PLACEHOLDER_PREFIX) {
            return Err(misplaced(place()));
        } else {
            return Ok(None);
        }
    } else if text.contains(PLACEHOLDER_PREFIX) {
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
/// base64 token and the first key used.
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
    Ok(Some((STANDARD.encode(format!("{new_user}:{new_password}")), key)))
}

/// The new URI, if its query names placeholders. A placeholder in the path is refused.
fn uri(r: &mut Resolver<'_>, uri: &Uri) -> Result<Option<Uri>, CredentialError> {
    if decoded_contains_prefix(uri.path()) {
        return Err(misplaced("the request path"));
    }
    let Some(query) = uri.query() else { return Ok(None) };
    if !decoded_contains_prefix(query) {
        return Ok(None);
    }
    let mut pairs = Vec::new();
    for pair in query.split('&') {
        let (raw_name, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
        let (name, value) = form_urlencoded::parse(pair.as_bytes()).next().unwrap_or_default();
        if name.contains(PLACEHOLDER_PREFIX) {
            return Err(misplaced("a query parameter name"));
        }
        let new_value = match placeholder_key(&value) {
            Some(key) => form_urlencoded::byte_serialize(r.value(key)?.as_bytes()).collect(),
            None if value.contains(PLACEHOLDER_PREFIX) => return Err(misplaced(format!("query parameter {name}"))),
            None => raw_value.to_owned(),
        };
        pairs.push(if pair.contains('=') { format!("{raw_name}={new_value}") } else { pair.to_owned() });
    }
    // Percent-encoded values keep the target valid; refused rather than trusted.
    let rebuilt = PathAndQuery::try_from(format!("{}?{}", uri.path(), pairs.join("&"))).ok().and_then(|pq| {
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(pq);
        Uri::from_parts(parts).ok()
    });
    rebuilt.map(Some).ok_or_else(|| misplaced("the query (it cannot be rebuilt)"))
}

/// Whether `s`, percent- and `+`-decoded, contains the placeholder prefix.
fn decoded_contains_prefix(s: &str) -> bool {
    s.contains(PLACEHOLDER_PREFIX)
        || (s.contains('%')
            && percent_decoded(s).windows(PLACEHOLDER_PREFIX.len()).any(|w| w == PLACEHOLDER_PREFIX.as_bytes()))
}

/// `%XX` escapes decoded and `+` read as a space; a malformed escape is kept as it is.
fn percent_decoded(s: &str) -> Vec<u8> {
    let bytes = s.as_bytes();
    let hex = |j: usize| bytes.get(j).and_then(|&b| (b as char).to_digit(16));
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match (bytes[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b'+', ..) => {
                out.push(b' ');
                i += 1;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests;
