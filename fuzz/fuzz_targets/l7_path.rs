//! Request-target canonicalisation (`proxy::l7::path::canonicalize`). Properties: a
//! canonical path starts with `/` and never holds `//`, a `.` or `..` segment, an escape of
//! an unreserved character, lower-case hex, (unless kept) `%2F`, a `;` or backslash raw or
//! encoded, `%25` before two hex digits, a segment ending in `.` or `%20`, or escapes that
//! are not UTF-8; canonicalising the result again changes nothing; every refusal is true of
//! the input at the offset it names.

#![no_main]

use libfuzzer_sys::fuzz_target;
use openshell_sandbox::proxy::l7::path::{EncodedSlash, MAX_PATH_LEN, PathError, canonicalize};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let Ok(target) = std::str::from_utf8(rest) else { return };
    let mode = if mode & 1 == 1 { EncodedSlash::Keep } else { EncodedSlash::Refuse };
    match canonicalize(target, mode) {
        Ok(c) => {
            let p = &c.path;
            assert!(p.starts_with('/'), "{p:?}");
            assert!(!p.contains("//"), "{p:?}");
            assert!(p.split('/').all(|s| s != "." && s != ".."), "{p:?}");
            assert!(!p.contains(['?', '#', ';', '\\']), "{p:?}");
            assert!(p.split('/').all(|s| !s.ends_with('.') && !s.ends_with("%20")), "trimmable segment: {p:?}");
            let b = p.as_bytes();
            let mut decoded = Vec::new();
            let mut i = 0;
            while i < b.len() {
                decoded.push(if b[i] == b'%' { hex_at(b, i).expect("a canonical escape") } else { b[i] });
                i += if b[i] == b'%' { 3 } else { 1 };
            }
            assert!(std::str::from_utf8(&decoded).is_ok(), "escapes that are not UTF-8: {p:?}");
            for (i, _) in p.match_indices('%') {
                let hex = &b[i + 1..i + 3];
                assert!(hex.iter().all(|h| h.is_ascii_digit() || (b'A'..=b'F').contains(h)), "{p:?}");
                let byte = u8::from_str_radix(std::str::from_utf8(hex).unwrap(), 16).unwrap();
                assert!(!(byte.is_ascii_alphanumeric() || b"-._~".contains(&byte)), "unreserved left escaped: {p:?}");
                assert!(byte >= 0x20 && byte != 0x7F, "control byte kept: {p:?}");
                assert!(byte != b'/' || mode == EncodedSlash::Keep, "%2F kept while refused: {p:?}");
                assert!(byte != b';' && byte != b'\\', "{p:?}");
                assert!(byte != b'%' || hex_at(b, i + 2).is_none(), "double encoding kept: {p:?}");
            }
            assert_eq!(c.query.as_deref(), target.split_once('?').map(|(_, q)| q), "the query is kept as sent");
            let again = canonicalize(&c.target(), mode).expect("a canonical target is accepted");
            assert_eq!(again, c, "canonicalising twice changes something: {target:?}");
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            check_refusal(target, mode, &e);
        }
    }
});

fn hex_at(b: &[u8], i: usize) -> Option<u8> {
    let h = b.get(i + 1..i + 3)?;
    u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok().filter(|_| h.iter().all(u8::is_ascii_hexdigit))
}

fn check_refusal(target: &str, mode: EncodedSlash, e: &PathError) {
    let b = target.as_bytes();
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    match *e {
        PathError::NotOriginForm => assert!(!target.starts_with('/')),
        PathError::Fragment { offset } => assert_eq!(b[offset], b'#'),
        PathError::TooLong { len } => assert!(len == path.len() && len > MAX_PATH_LEN),
        PathError::ControlByte { byte, offset, encoded: false } => {
            assert!(b[offset] == byte && (byte < 0x20 || byte == 0x7F), "{e}: {target:?}")
        }
        PathError::ControlByte { byte, offset, encoded: true } => {
            assert!(b[offset] == b'%' && hex_at(b, offset) == Some(byte) && (byte < 0x20 || byte == 0x7F), "{e}")
        }
        PathError::InvalidByte { byte, offset } => {
            assert!(b[offset] == byte && (byte == b' ' || !byte.is_ascii()), "{e}: {target:?}")
        }
        PathError::MalformedEscape { offset } => {
            assert!(offset < path.len() && b[offset] == b'%' && hex_at(b, offset).is_none(), "{e}: {target:?}")
        }
        PathError::EncodedSlash { offset } => {
            assert!(mode == EncodedSlash::Refuse && offset < path.len() && hex_at(b, offset) == Some(b'/'), "{e}")
        }
        PathError::PathParameter { offset } => assert!(b[offset] == b';' || hex_at(b, offset) == Some(b';'), "{e}"),
        PathError::Backslash { offset } => assert!(b[offset] == b'\\' || hex_at(b, offset) == Some(b'\\'), "{e}"),
        PathError::DoubleEncoded { offset } => assert!(b[offset] == b'%' && hex_at(b, offset) == Some(b'%'), "{e}"),
        PathError::InvalidUtf8 { offset } => {
            assert!(b[offset] == b'%' && hex_at(b, offset).is_some_and(|x| x >= 0x80), "{e}: {target:?}")
        }
        PathError::TrimmedSegment { offset } => {
            let trimmed = |x| x == b'.' || x == b' ';
            assert!(trimmed(b[offset]) || hex_at(b, offset).is_some_and(trimmed), "{e}: {target:?}")
        }
        PathError::AboveRoot => {
            // Decoding `%2E` as `.`, some `..` segment climbs above the root.
            let decoded = path.replace("%2e", ".").replace("%2E", ".");
            let mut depth = 0i64;
            let mut climbed = false;
            for segment in decoded.split('/').skip(1) {
                match segment {
                    "" | "." => {}
                    ".." => {
                        depth -= 1;
                        climbed |= depth < 0;
                    }
                    _ => depth += 1,
                }
            }
            assert!(climbed, "AboveRoot for a path that stays below the root: {target:?}");
        }
    }
}
