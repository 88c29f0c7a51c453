//! Finding placeholders in text: literally, or through `%XX` escapes (so
//! `openshell%3Aresolve%3Aenv%3AKEY` is found with its span covering the escapes), and
//! telling whether text still hides one under further rounds of percent-decoding.

use memchr::memmem;

use super::{PLACEHOLDER_PREFIX, is_key};

/// One placeholder: its byte span in the raw text and its key (`None` when the prefix is
/// not followed by a variable name).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Found {
    pub start: usize,
    pub end: usize,
    pub key: Option<String>,
}

/// The placeholders of `raw`, in order; with `percent`, `%XX` escapes are decoded first.
pub(super) fn placeholders(raw: &[u8], percent: bool) -> Vec<Found> {
    let prefix = PLACEHOLDER_PREFIX.as_bytes();
    if !percent || !raw.contains(&b'%') {
        return memmem::find_iter(raw, prefix)
            .map(|start| {
                let (len, key) = key_after(&raw[start + prefix.len()..]);
                Found { start, end: start + prefix.len() + len, key }
            })
            .collect();
    }
    let (decoded, starts) = decode_mapped(raw);
    let raw_at = |i: usize| starts.get(i).copied().unwrap_or(raw.len());
    memmem::find_iter(&decoded, prefix)
        .map(|start| {
            let (len, key) = key_after(&decoded[start + prefix.len()..]);
            Found { start: raw_at(start), end: raw_at(start + prefix.len() + len), key }
        })
        .collect()
}

/// The variable name at the start of `rest` (its length, and the key when it is one).
fn key_after(rest: &[u8]) -> (usize, Option<String>) {
    let len = rest.iter().take_while(|b| b.is_ascii_alphanumeric() || **b == b'_').count();
    let key = std::str::from_utf8(&rest[..len]).ok().filter(|k| is_key(k)).map(str::to_owned);
    (len, key)
}

/// `raw` with `%XX` decoded, and where in `raw` each decoded byte starts.
fn decode_mapped(raw: &[u8]) -> (Vec<u8>, Vec<usize>) {
    let hex = |j: usize| raw.get(j).and_then(|&b| (b as char).to_digit(16));
    let (mut out, mut starts) = (Vec::with_capacity(raw.len()), Vec::with_capacity(raw.len()));
    let mut i = 0;
    while i < raw.len() {
        starts.push(i);
        match (raw[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, ..) => {
                out.push(b);
                i += 1;
            }
        }
    }
    (out, starts)
}

/// Whether `raw` holds the placeholder prefix as it is or after up to three rounds of
/// percent-decoding (a double-encoded placeholder would reach a server that decodes twice).
pub(super) fn hides_placeholder(raw: &[u8]) -> bool {
    let prefix = PLACEHOLDER_PREFIX.as_bytes();
    let mut text = std::borrow::Cow::Borrowed(raw);
    for _ in 0..4 {
        if memmem::find(&text, prefix).is_some() {
            return true;
        }
        if !text.contains(&b'%') {
            return false;
        }
        text = std::borrow::Cow::Owned(decode_mapped(&text).0);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(raw: &str, percent: bool) -> Vec<(String, Option<String>)> {
        placeholders(raw.as_bytes(), percent).into_iter().map(|f| (raw[f.start..f.end].to_owned(), f.key)).collect()
    }

    #[test]
    fn literal_placeholders_inside_text() {
        let got = keys("/botopenshell:resolve:env:TG_TOKEN/send?x=openshell:resolve:env:", false);
        assert_eq!(got[0], ("openshell:resolve:env:TG_TOKEN".to_owned(), Some("TG_TOKEN".to_owned())));
        assert_eq!(got[1], ("openshell:resolve:env:".to_owned(), None));
        assert_eq!(keys("openshell:resolve:env:1A", false)[0].1, None, "a key cannot start with a digit");
        assert!(keys("openshell%3Aresolve%3Aenv%3AK", false).is_empty(), "literal mode does not decode");
    }

    #[test]
    fn escaped_placeholders_have_raw_spans() {
        let raw = "a=openshell%3aresolve%3Aenv%3A%41PI_KEY&b=openshell:resolve:env:B%2Fx";
        let got = keys(raw, true);
        assert_eq!(got[0], ("openshell%3aresolve%3Aenv%3A%41PI_KEY".to_owned(), Some("API_KEY".to_owned())));
        assert_eq!(got[1], ("openshell:resolve:env:B".to_owned(), Some("B".to_owned())));
        assert_eq!(got.len(), 2);
    }

    #[test]
    fn double_encoding_is_seen() {
        assert!(hides_placeholder(b"openshell%253Aresolve%253Aenv%253AK"));
        assert!(hides_placeholder(b"x openshell:resolve:env:K"));
        assert!(!hides_placeholder(b"openshell%253Aresolv"));
        assert!(!hides_placeholder(b"%%%%41"));
    }
}
