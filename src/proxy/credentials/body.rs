//! Placeholders in request bodies. On an endpoint with `request_body_credential_rewrite:
//! true`, JSON, form and `text/*` bodies up to [`BODY_LIMIT`] are read whole, their
//! placeholders swapped (JSON-escaped, form-encoded or as they are) and `Content-Length`
//! set; a larger one is 413. Elsewhere such a body with a known length up to the limit is
//! read and checked: a placeholder in it is refused, as it would reach the upstream as text.
//! Other bodies (other types, unknown or larger lengths) stream on unread.

use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::request::Parts;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::CredentialError;
use super::find::hides_placeholder;
use super::substitute::Resolver;
use crate::proxy::counted::Source;

/// The largest body whose placeholders are swapped (and, without the opt-in, checked).
pub const BODY_LIMIT: usize = 256 * 1024;

/// The body types whose placeholders can be found and swapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `application/json`, `*/*+json`: values JSON-escaped.
    Json,
    /// `application/x-www-form-urlencoded`: placeholders found through `%XX`, values form-encoded.
    Form,
    /// `text/*`: values as they are.
    Text,
}

fn kind(headers: &HeaderMap) -> Option<Kind> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mime = value.split(';').next()?.trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/x-www-form-urlencoded" => Some(Kind::Form),
        m if m == "application/json" || (m.starts_with("application/") && m.ends_with("+json")) => Some(Kind::Json),
        m if m.starts_with("text/") => Some(Kind::Text),
        _ => None,
    }
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(header::CONTENT_LENGTH)?.to_str().ok()?.trim().parse().ok()
}

/// The body to forward. `r` resolves keys (its destination says whether the endpoint opted
/// in); `idle` bounds the wait for the body when it is read whole. `Err` gives the body back
/// with the refusal: what of it was not read yet is drained once the refusal is sent.
pub(super) async fn body(
    r: &mut Resolver<'_>,
    parts: &mut Parts,
    mut body: Incoming,
    idle: Duration,
) -> Result<Source, (CredentialError, Incoming)> {
    match checked(r, parts, &mut body, idle).await {
        Ok(Some(bytes)) => Ok(bytes.into()),
        Ok(None) => Ok(body.into()),
        Err(e) => Err((e, body)),
    }
}

/// The body stage on `body`: `Some` a body read (and maybe rewritten) whole, `None` the body
/// streams on unread.
async fn checked(
    r: &mut Resolver<'_>,
    parts: &mut Parts,
    body: &mut Incoming,
    idle: Duration,
) -> Result<Option<Bytes>, CredentialError> {
    let Some(kind) = kind(&parts.headers) else { return Ok(None) };
    let declared = declared_length(&parts.headers);
    let fits = declared.is_some_and(|n| n <= BODY_LIMIT as u64);
    if !r.to.body_rewrite {
        if !fits {
            return Ok(None);
        }
        let bytes = read(body, idle).await?;
        if hides_placeholder(&bytes) {
            return Err(CredentialError::BodyNotOptedIn);
        }
        return Ok(Some(bytes));
    }
    if declared.is_some() && !fits {
        return Err(CredentialError::BodyTooLarge { limit: BODY_LIMIT });
    }
    let bytes = read(body, idle).await?;
    let new = match kind {
        Kind::Json => r.replace_in(&bytes, false, "the JSON body", json_escaped)?,
        Kind::Form => {
            r.replace_in(&bytes, true, "the form body", |v| form_urlencoded::byte_serialize(v.as_bytes()).collect())?
        }
        Kind::Text => r.replace_in(&bytes, false, "the text body", str::to_owned)?,
    };
    let Some(new) = new else {
        check_escaped(kind, &bytes)?;
        return Ok(Some(bytes));
    };
    check_escaped(kind, &new)?;
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts.headers.insert(header::CONTENT_LENGTH, HeaderValue::from(new.len()));
    Ok(Some(Bytes::from(new)))
}

/// Reads a whole body of at most [`BODY_LIMIT`] bytes, each frame within `idle`; past the
/// limit the rest stays in `body`.
async fn read(body: &mut Incoming, idle: Duration) -> Result<Bytes, CredentialError> {
    let mut limited = Limited::new(body, BODY_LIMIT);
    let mut out = Vec::new();
    loop {
        let frame = tokio::time::timeout(idle, limited.frame())
            .await
            .map_err(|_| CredentialError::BodyRead(format!("it was silent for {idle:?}")))?;
        match frame {
            None => return Ok(Bytes::from(out)),
            Some(Ok(frame)) => out.extend_from_slice(frame.data_ref().map_or(&[][..], |d| &d[..])),
            Some(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
                return Err(CredentialError::BodyTooLarge { limit: BODY_LIMIT });
            }
            Some(Err(e)) => return Err(CredentialError::BodyRead(e.to_string())),
        }
    }
}

/// A value inside a JSON string: escaped as JSON escapes it, without the quotes.
fn json_escaped(value: &str) -> String {
    let quoted = serde_json::Value::from(value).to_string();
    quoted[1..quoted.len() - 1].to_owned()
}

/// Refuses a placeholder still in the body after the swap: one hidden behind JSON `\u`
/// escapes, or percent-encoded twice in a form.
fn check_escaped(kind: Kind, body: &[u8]) -> Result<(), CredentialError> {
    let hidden = match kind {
        Kind::Json => memchr::memmem::find(body, b"\\u").is_some() && json_hides_placeholder(body),
        Kind::Form => hides_placeholder(body),
        Kind::Text => false,
    };
    if hidden {
        let place = if kind == Kind::Json {
            "the JSON body (an escaped placeholder)"
        } else {
            "the form body (an encoded placeholder)"
        };
        return Err(CredentialError::Misplaced { place: place.to_owned() });
    }
    Ok(())
}

fn json_hides_placeholder(body: &[u8]) -> bool {
    fn walk(v: &serde_json::Value) -> bool {
        match v {
            serde_json::Value::String(s) => hides_placeholder(s.as_bytes()),
            serde_json::Value::Array(items) => items.iter().any(walk),
            serde_json::Value::Object(map) => map.iter().any(|(k, v)| hides_placeholder(k.as_bytes()) || walk(v)),
            _ => false,
        }
    }
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| walk(&v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_by_content_type() {
        let k = |ct: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).unwrap());
            kind(&h)
        };
        assert_eq!(k("application/json; charset=utf-8"), Some(Kind::Json));
        assert_eq!(k("application/vnd.api+json"), Some(Kind::Json));
        assert_eq!(k("Application/X-WWW-Form-Urlencoded"), Some(Kind::Form));
        assert_eq!(k("text/plain"), Some(Kind::Text));
        assert_eq!(k("multipart/form-data; boundary=x"), None);
        assert_eq!(k("application/octet-stream"), None);
        assert_eq!(kind(&HeaderMap::new()), None);
    }

    #[test]
    fn json_escaping_and_hidden_placeholders() {
        assert_eq!(json_escaped("a\"b\\c\td"), "a\\\"b\\\\c\\td");
        assert!(check_escaped(Kind::Json, br#"{"k": "openshell\u003aresolve:env:K"}"#).is_err());
        assert!(check_escaped(Kind::Json, br#"{"k": "\u0041 plain"}"#).is_ok());
        assert!(check_escaped(Kind::Form, b"a=openshell%253Aresolve%253Aenv%253AK").is_err());
    }
}
