//! The canonical form of an origin-form request target: what L7 policy judges and what goes
//! upstream, so the two can never disagree. Escapes of unreserved characters are decoded,
//! dot segments resolved (never above the root), `//` collapsed; anything an upstream might
//! read as another path (`;` parameters, `\`, `%25XX`, bad UTF-8, trailing `.`) is refused.

use std::collections::BTreeMap;

use crate::{Exit, ExitStatus};

/// The longest path (before `?`) accepted, in bytes. The query is bounded by the head limit.
pub const MAX_PATH_LEN: usize = 4096;

/// What to do with an encoded `/` (`%2F`) in the path.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum EncodedSlash {
    /// Refuse the request (the default: `a%2F..` may mean `a/..` to the upstream).
    #[default]
    Refuse,
    /// Keep it encoded as `%2F`, inside its segment (endpoint `allow_encoded_slash: true`).
    Keep,
}

impl EncodedSlash {
    /// From a policy endpoint's `allow_encoded_slash`.
    pub fn from_allow(allow: bool) -> Self {
        if allow { EncodedSlash::Keep } else { EncodedSlash::Refuse }
    }
}

/// A canonical request target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Canonical {
    /// The path: starts with `/`, no `.` or `..` segment, no `//`.
    pub path: String,
    /// The query as sent (without `?`), if there was a `?`.
    pub query: Option<String>,
}

impl Canonical {
    /// The target to send upstream: path, then `?query` when there was one.
    pub fn target(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{q}", self.path),
            None => self.path.clone(),
        }
    }

    /// The query parsed into `{name: [values]}` for the L7 rules.
    pub fn query_params(&self) -> BTreeMap<String, Vec<String>> {
        self.query.as_deref().map(crate::policy::request::parse_query).unwrap_or_default()
    }
}

/// Why a request target was refused. Offsets count bytes from the start of the target.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Not origin-form (`/path`): absolute-form, authority-form, `*` or empty.
    #[error("the request target is not origin-form (it must start with `/`)")]
    NotOriginForm,
    /// The target has a `#fragment`, which clients never send.
    #[error("the request target has a fragment (`#` at byte {offset})")]
    Fragment {
        /// Where the `#` is.
        offset: usize,
    },
    /// The path is longer than [`MAX_PATH_LEN`].
    #[error("the request path is {len} bytes, more than the {MAX_PATH_LEN} allowed")]
    TooLong {
        /// Its length.
        len: usize,
    },
    /// A control byte, raw or percent-encoded (`%00`-`%1F`, `%7F`).
    #[error("the request target has a control byte 0x{byte:02X} at byte {offset}{}", if *.encoded { " (percent-encoded)" } else { "" })]
    ControlByte {
        /// The byte.
        byte: u8,
        /// Where it is.
        offset: usize,
        /// Whether it was written as `%XX`.
        encoded: bool,
    },
    /// A raw byte that may not appear in a request target (space or non-ASCII).
    #[error("the request target has the byte 0x{byte:02X} at byte {offset}, which must be percent-encoded")]
    InvalidByte {
        /// The byte.
        byte: u8,
        /// Where it is.
        offset: usize,
    },
    /// A `%` not followed by two hex digits.
    #[error("the request target has a malformed percent-escape at byte {offset}")]
    MalformedEscape {
        /// Where the `%` is.
        offset: usize,
    },
    /// An encoded `/` while the endpoint does not set `allow_encoded_slash`.
    #[error(
        "the request path has an encoded `/` (%2F) at byte {offset}; the endpoint does not set allow_encoded_slash"
    )]
    EncodedSlash {
        /// Where the `%` is.
        offset: usize,
    },
    /// A `;` (raw or `%3B`): Tomcat and Spring cut path parameters out before routing, so
    /// `/public/..;/admin` reaches `/admin` there.
    #[error(
        "the request path has a `;` at byte {offset}; path parameters (`..;/`, `;jsessionid=`) are refused because servers such as Tomcat and Spring remove them before routing"
    )]
    PathParameter {
        /// Where the `;` (or its `%`) is.
        offset: usize,
    },
    /// A backslash (raw or `%5C`), which IIS and Windows frameworks read as `/`.
    #[error("the request path has a backslash at byte {offset}, which Windows servers (IIS) read as `/`")]
    Backslash {
        /// Where the backslash (or its `%`) is.
        offset: usize,
    },
    /// An encoded `%` followed by two hex digits: a server that decodes twice sees another path.
    #[error(
        "the request path has an encoded `%` followed by two hex digits at byte {offset} (double encoding); a server that decodes twice would see another path"
    )]
    DoubleEncoded {
        /// Where the `%25` escape is.
        offset: usize,
    },
    /// Escapes that do not decode to UTF-8, such as the overlong `/` in `%C0%AF`.
    #[error(
        "the request path's escapes at byte {offset} do not decode to valid UTF-8 (overlong forms such as %C0%AF are refused)"
    )]
    InvalidUtf8 {
        /// Where the escape of the first invalid byte is.
        offset: usize,
    },
    /// A segment ending in `.` or a space (`/admin./`, `/admin%20/`, `/.../`), which Windows
    /// servers (IIS) trim from file and directory names.
    #[error(
        "a segment of the request path ends with `.` or a space at byte {offset}; Windows servers (IIS) trim those, so it could name another path"
    )]
    TrimmedSegment {
        /// Where the last character of the segment (or its `%`) is.
        offset: usize,
    },
    /// A `..` segment would climb above `/`.
    #[error("the request path climbs above the root with `..`")]
    AboveRoot,
}

impl ExitStatus for PathError {
    /// A refused request never ends the process; mapped for completeness.
    fn exit_status(&self) -> Exit {
        Exit::Internal
    }
}

/// Canonicalises an origin-form request target (`/path?query`).
pub fn canonicalize(target: &str, encoded_slash: EncodedSlash) -> Result<Canonical, PathError> {
    if !target.starts_with('/') {
        return Err(PathError::NotOriginForm);
    }
    if let Some(offset) = target.find('#') {
        return Err(PathError::Fragment { offset });
    }
    for (offset, &byte) in target.as_bytes().iter().enumerate() {
        if byte < 0x20 || byte == 0x7F {
            return Err(PathError::ControlByte { byte, offset, encoded: false });
        }
        if byte == b' ' || !byte.is_ascii() {
            return Err(PathError::InvalidByte { byte, offset });
        }
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    if path.len() > MAX_PATH_LEN {
        return Err(PathError::TooLong { len: path.len() });
    }
    let decoded = decode_unreserved(path, encoded_slash)?;
    decoded.check_utf8()?;
    decoded.check_double_encoding()?;
    decoded.check_trimmed_segments()?;
    Ok(Canonical { path: resolve_segments(&decoded.text)?, query })
}

/// Whether `b` is an RFC 3986 unreserved character.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// A path with the escapes of unreserved characters decoded and the others upper-cased;
/// `origin[i]` is the offset in the target of the byte or escape output byte `i` came from.
struct Decoded {
    text: String,
    origin: Vec<usize>,
}

/// Decodes escapes of unreserved characters, upper-cases the hex of the others; refuses
/// encoded control bytes, `;` and `\` raw or encoded, and (unless kept) encoded slashes.
/// Input is ASCII.
fn decode_unreserved(path: &str, encoded_slash: EncodedSlash) -> Result<Decoded, PathError> {
    let bytes = path.as_bytes();
    let mut out = Decoded { text: String::with_capacity(path.len()), origin: Vec::with_capacity(path.len()) };
    let mut i = 0;
    while i < bytes.len() {
        let encoded = bytes[i] == b'%';
        let byte = if encoded {
            let hex = |j: usize| bytes.get(j).and_then(|&b| (b as char).to_digit(16));
            let (Some(hi), Some(lo)) = (hex(i + 1), hex(i + 2)) else {
                return Err(PathError::MalformedEscape { offset: i });
            };
            (hi * 16 + lo) as u8
        } else {
            bytes[i]
        };
        match byte {
            0..0x20 | 0x7F => return Err(PathError::ControlByte { byte, offset: i, encoded }),
            b';' => return Err(PathError::PathParameter { offset: i }),
            b'\\' => return Err(PathError::Backslash { offset: i }),
            b'/' if encoded && encoded_slash == EncodedSlash::Refuse => {
                return Err(PathError::EncodedSlash { offset: i });
            }
            _ => {}
        }
        if !encoded || is_unreserved(byte) {
            out.text.push(byte as char);
        } else {
            out.text.push_str(&format!("%{byte:02X}"));
        }
        out.origin.resize(out.text.len(), i);
        i += if encoded { 3 } else { 1 };
    }
    Ok(out)
}

impl Decoded {
    /// The bytes the path stands for (every escape decoded) must be UTF-8: no overlong
    /// form (`%C0%AF`), surrogate or stray continuation byte.
    fn check_utf8(&self) -> Result<(), PathError> {
        let text = self.text.as_bytes();
        let (mut bytes, mut origin) = (Vec::with_capacity(text.len()), Vec::with_capacity(text.len()));
        let mut i = 0;
        while i < text.len() {
            if text[i] == b'%' {
                let hex = std::str::from_utf8(&text[i + 1..i + 3]).unwrap_or_default();
                bytes.push(u8::from_str_radix(hex, 16).unwrap_or_default());
                i += 3;
            } else {
                bytes.push(text[i]);
                i += 1;
            }
            origin.push(self.origin[i - 1]);
        }
        std::str::from_utf8(&bytes).map(drop).map_err(|e| PathError::InvalidUtf8 { offset: origin[e.valid_up_to()] })
    }

    /// No `%25` followed by two hex digits (they may come from escapes of their own).
    fn check_double_encoding(&self) -> Result<(), PathError> {
        let found = self
            .text
            .as_bytes()
            .windows(5)
            .position(|w| w.starts_with(b"%25") && w[3].is_ascii_hexdigit() && w[4].is_ascii_hexdigit());
        match found {
            Some(at) => Err(PathError::DoubleEncoded { offset: self.origin[at] }),
            None => Ok(()),
        }
    }

    /// No segment other than `.` and `..` ends with `.` or an encoded space.
    fn check_trimmed_segments(&self) -> Result<(), PathError> {
        let mut end = 0;
        for segment in self.text.split('/') {
            end += segment.len();
            let last = if matches!(segment, "" | "." | "..") {
                None
            } else if segment.ends_with('.') {
                Some(end - 1)
            } else if segment.ends_with("%20") {
                Some(end - 3)
            } else {
                None
            };
            if let Some(at) = last {
                return Err(PathError::TrimmedSegment { offset: self.origin[at] });
            }
            end += 1;
        }
        Ok(())
    }
}

/// Resolves `.` and `..` segments (refusing to climb above the root) and drops empty
/// segments; a trailing `/` (or a final `.`/`..`) is kept as a trailing `/`.
fn resolve_segments(path: &str) -> Result<String, PathError> {
    let mut kept: Vec<&str> = Vec::new();
    let mut trailing_slash = false;
    for segment in path.split('/').skip(1) {
        trailing_slash = matches!(segment, "" | "." | "..");
        match segment {
            "" | "." => {}
            ".." => {
                kept.pop().ok_or(PathError::AboveRoot)?;
            }
            s => kept.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for segment in &kept {
        out.push('/');
        out.push_str(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push('/');
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
