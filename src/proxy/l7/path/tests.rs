use super::*;

fn ok(target: &str) -> String {
    canonicalize(target, EncodedSlash::Refuse).unwrap_or_else(|e| panic!("{target}: {e}")).target()
}

fn err(target: &str) -> PathError {
    canonicalize(target, EncodedSlash::Refuse).expect_err(target)
}

#[test]
fn dot_segments_are_resolved() {
    assert_eq!(ok("/a/../admin"), "/admin");
    assert_eq!(ok("/a/./b/../c"), "/a/c");
    assert_eq!(ok("/a/b/.."), "/a/");
    assert_eq!(ok("/a/b/."), "/a/b/");
    assert_eq!(ok("/a/.."), "/");
    assert_eq!(ok("/."), "/");
    assert_eq!(ok("/"), "/");
    assert_eq!(ok("/a/..b/c.d"), "/a/..b/c.d");
    assert_eq!(ok("/.well-known/x"), "/.well-known/x");
}

#[test]
fn encoded_dots_are_resolved_after_decoding() {
    assert_eq!(ok("/a/%2e%2E/admin"), "/admin");
    assert_eq!(ok("/a/.%2e/b"), "/b");
    assert_eq!(ok("/a/%2E/b"), "/a/b");
    assert_eq!(err("/%2e%2e/etc/passwd"), PathError::AboveRoot);
}

#[test]
fn climbing_above_the_root_is_refused() {
    for t in ["/..", "/../a", "/a/../..", "/a/b/../../../c", "//..", "/./.."] {
        assert_eq!(err(t), PathError::AboveRoot, "{t}");
    }
}

#[test]
fn double_slashes_collapse_and_a_trailing_slash_stays() {
    assert_eq!(ok("//a///b//"), "/a/b/");
    assert_eq!(ok("/a/b/"), "/a/b/");
    assert_eq!(ok("/a/b"), "/a/b");
    assert_eq!(ok("//"), "/");
}

#[test]
fn only_unreserved_escapes_are_decoded_and_others_upper_cased() {
    assert_eq!(ok("/%41%7a%30%2d%2E%5f%7E"), "/Az0-._~");
    assert_eq!(ok("/a%20b%3a%3F%25"), "/a%20b%3A%3F%25");
    assert_eq!(ok("/%c3%a9t%C3%A9"), "/%C3%A9t%C3%A9");
}

#[test]
fn the_query_is_kept_as_sent_and_parsed() {
    let c = canonicalize("/a/../s?q=a%20b&q=c&x", EncodedSlash::Refuse).unwrap();
    assert_eq!(c.path, "/s");
    assert_eq!(c.query.as_deref(), Some("q=a%20b&q=c&x"));
    assert_eq!(c.query_params()["q"], vec!["a b", "c"]);
    assert_eq!(c.target(), "/s?q=a%20b&q=c&x");
    let empty = canonicalize("/s?", EncodedSlash::Refuse).unwrap();
    assert_eq!(empty.query.as_deref(), Some(""));
    assert_eq!(empty.target(), "/s?");
    assert!(canonicalize("/s", EncodedSlash::Refuse).unwrap().query_params().is_empty());
}

#[test]
fn encoded_slash_is_refused_unless_kept() {
    assert_eq!(err("/a%2Fb"), PathError::EncodedSlash { offset: 2 });
    assert_eq!(err("/a%2fb"), PathError::EncodedSlash { offset: 2 });
    let kept = canonicalize("/a%2fb/../c%2F..%2Fd", EncodedSlash::Keep).unwrap();
    assert_eq!(kept.path, "/c%2F..%2Fd");
    let trimmed = canonicalize("/c%2F..", EncodedSlash::Keep);
    assert_eq!(trimmed, Err(PathError::TrimmedSegment { offset: 6 }), "a kept %2F does not hide a trailing `.`");
    assert_eq!(EncodedSlash::from_allow(true), EncodedSlash::Keep);
    assert_eq!(EncodedSlash::from_allow(false), EncodedSlash::Refuse);
}

#[test]
fn control_bytes_are_refused_raw_or_encoded() {
    assert_eq!(err("/a%00"), PathError::ControlByte { byte: 0, offset: 2, encoded: true });
    assert_eq!(err("/a%0d%0A"), PathError::ControlByte { byte: 0x0D, offset: 2, encoded: true });
    assert_eq!(err("/%7f"), PathError::ControlByte { byte: 0x7F, offset: 1, encoded: true });
    assert_eq!(err("/%1F"), PathError::ControlByte { byte: 0x1F, offset: 1, encoded: true });
    assert_eq!(err("/a\tb"), PathError::ControlByte { byte: 9, offset: 2, encoded: false });
    assert_eq!(err("/a?b=\x7f"), PathError::ControlByte { byte: 0x7F, offset: 5, encoded: false });
    assert!(err("/a%00").to_string().contains("0x00"));
}

#[test]
fn raw_space_and_non_ascii_are_refused() {
    assert_eq!(err("/a b"), PathError::InvalidByte { byte: b' ', offset: 2 });
    assert_eq!(err("/é"), PathError::InvalidByte { byte: 0xC3, offset: 1 });
}

#[test]
fn malformed_escapes_are_refused() {
    for (t, offset) in [("/%", 1), ("/%4", 1), ("/a%zz", 2), ("/%%41", 1), ("/ok/%g0", 4)] {
        assert_eq!(err(t), PathError::MalformedEscape { offset }, "{t}");
    }
}

#[test]
fn fragments_and_other_forms_are_refused() {
    assert_eq!(err("/a#frag"), PathError::Fragment { offset: 2 });
    assert_eq!(err("/a?b#c"), PathError::Fragment { offset: 4 });
    for t in ["", "*", "a/b", "http://example.com/", "example.com:443", "%2F"] {
        assert_eq!(err(t), PathError::NotOriginForm, "{t:?}");
    }
}

#[test]
fn path_parameters_are_refused_raw_or_encoded() {
    for (t, offset) in [
        ("/public/..;/admin", 10),
        ("/.;/admin", 2),
        ("/a/..;jsessionid=1/b", 5),
        ("/a;jsessionid=1", 2),
        ("/a/b;", 4),
        ("/a%3Bb", 2),
        ("/x/..%3b/admin", 5),
        ("/%2e%2e;/admin", 7),
    ] {
        assert_eq!(err(t), PathError::PathParameter { offset }, "{t}");
    }
    assert_eq!(ok("/a?b=1;c=2"), "/a?b=1;c=2", "the query is not a path");
}

#[test]
fn backslashes_are_refused_raw_or_encoded() {
    for (t, offset) in [("/a\\b", 2), ("/..\\admin", 3), ("/a%5Cb", 2), ("/a%5c..%5cadmin", 2), ("/%5C", 1)] {
        assert_eq!(err(t), PathError::Backslash { offset }, "{t}");
    }
}

#[test]
fn double_encoding_is_refused_even_when_the_digits_are_escaped_too() {
    for (t, offset) in
        [("/%252e%252e/admin", 1), ("/a%252F", 2), ("/a/%2541", 3), ("/%25%34%31", 1), ("/x%25%41b", 2), ("/%25aF", 1)]
    {
        assert_eq!(err(t), PathError::DoubleEncoded { offset }, "{t}");
    }
    assert_eq!(ok("/100%25"), "/100%25");
    assert_eq!(ok("/100%25-off"), "/100%25-off");
    assert_eq!(ok("/a%25zz"), "/a%25zz");
}

#[test]
fn escapes_that_are_not_utf8_are_refused() {
    for (t, offset) in [
        ("/%C0%AF", 1),
        ("/a%E0%80%AFb", 2),
        ("/%c0%ae%c0%ae/admin", 1),
        ("/%ED%A0%80", 1),
        ("/%F4%90%80%80", 1),
        ("/%80", 1),
        ("/%C3", 1),
        ("/ok/%C3%A9%C3/x", 10),
        ("/%C3x", 1),
    ] {
        assert_eq!(err(t), PathError::InvalidUtf8 { offset }, "{t}");
    }
    assert_eq!(ok("/%F0%9F%98%80/%c3%a9"), "/%F0%9F%98%80/%C3%A9");
}

#[test]
fn segments_windows_would_trim_are_refused() {
    for (t, offset) in [
        ("/admin./", 6),
        ("/admin.", 6),
        ("/admin%2E", 6),
        ("/admin%20/x", 6),
        ("/admin%20", 6),
        ("/...", 3),
        ("/.../x", 3),
        ("/a/%2e%2e%2e/", 9),
        ("/x/..%20/admin", 5),
        ("/x/.%20", 4),
        ("/a%20./b", 5),
        ("/a./../b", 2),
    ] {
        assert_eq!(err(t), PathError::TrimmedSegment { offset }, "{t}");
    }
    assert_eq!(ok("/a%20b/v1.0/x.y"), "/a%20b/v1.0/x.y");
    assert_eq!(ok("/a/./b/../c/"), "/a/c/");
}

#[test]
fn every_refusal_names_its_class_in_the_reason() {
    let reason = |t: &str| err(t).to_string();
    assert!(reason("/a;b").contains("Tomcat"), "{}", reason("/a;b"));
    assert!(reason("/a%5Cb").contains("IIS"));
    assert!(reason("/%252e").contains("double encoding"));
    assert!(reason("/%C0%AF").contains("UTF-8"));
    assert!(reason("/admin./").contains("trim"));
}

#[test]
fn paths_over_4_kib_are_refused_but_long_queries_are_not() {
    let at_limit = format!("/{}", "a".repeat(MAX_PATH_LEN - 1));
    assert_eq!(ok(&at_limit), at_limit);
    let over = format!("/{}", "a".repeat(MAX_PATH_LEN));
    assert_eq!(err(&over), PathError::TooLong { len: MAX_PATH_LEN + 1 });
    let long_query = format!("/a?{}", "q".repeat(3 * MAX_PATH_LEN));
    assert_eq!(ok(&long_query), long_query);
}

/// xorshift64*: deterministic inputs for the property tests, no extra crate.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

const PIECES: &[&str] = &[
    "/",
    "/",
    "/",
    "/",
    "a",
    "b",
    "b",
    "Z9",
    ".",
    "..",
    "%2e",
    "%2E",
    "%2e%2E",
    ".%2e",
    "%2f",
    "%2F",
    "%41",
    "%7e",
    "%7E",
    "%20",
    "%3a",
    "%c3%A9",
    "%00",
    "%1f",
    "%7F",
    "%zz",
    "%",
    "~",
    "-",
    "_",
    "?",
    "=",
    "&",
    "#",
    " ",
    "\t",
    "é",
    ";",
    "%3b",
    "\\",
    "%5C",
    "%25",
    "%32",
    "%c0%af",
    "%e0%80%af",
    "%80",
    "%C3",
];

fn generated(rng: &mut Rng) -> String {
    let mut s = String::from("/");
    for _ in 0..rng.below(14) {
        s.push_str(PIECES[rng.below(PIECES.len())]);
    }
    s
}

#[test]
fn property_output_is_canonical_and_stable() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut accepted = 0;
    for _ in 0..20_000 {
        let target = generated(&mut rng);
        for mode in [EncodedSlash::Refuse, EncodedSlash::Keep] {
            let Ok(c) = canonicalize(&target, mode) else { continue };
            accepted += 1;
            let p = &c.path;
            assert!(p.starts_with('/'), "{target:?} -> {p:?}");
            assert!(!p.contains("//"), "{target:?} -> {p:?}");
            assert!(p.split('/').all(|s| s != "." && s != ".."), "{target:?} -> {p:?}");
            assert!(p.len() <= target.len(), "{target:?} -> {p:?}");
            assert!(!p.to_ascii_lowercase().contains("%2e"), "{target:?} -> {p:?}");
            assert!(!p.contains([';', '\\']) && !p.contains("%3B") && !p.contains("%5C"), "{target:?} -> {p:?}");
            assert!(p.split('/').all(|s| !s.ends_with('.') && !s.ends_with("%20")), "{target:?} -> {p:?}");
            assert!(
                !p.as_bytes().windows(5).any(|w| w.starts_with(b"%25") && w[3..].iter().all(u8::is_ascii_hexdigit))
            );
            if mode == EncodedSlash::Refuse {
                assert!(!p.to_ascii_lowercase().contains("%2f"), "{target:?} -> {p:?}");
            }
            let again = canonicalize(&c.target(), mode).unwrap_or_else(|e| panic!("{target:?}: second pass {e}"));
            assert_eq!(again, c, "{target:?}");
        }
    }
    assert!(accepted > 5_000, "the generator should produce many valid targets, got {accepted}");
}

#[test]
fn property_every_refusal_names_a_real_cause() {
    let mut rng = Rng(42);
    for _ in 0..20_000 {
        let target = generated(&mut rng);
        match canonicalize(&target, EncodedSlash::Keep) {
            Err(PathError::Fragment { offset }) => assert_eq!(target.as_bytes()[offset], b'#'),
            Err(PathError::MalformedEscape { offset } | PathError::EncodedSlash { offset }) => {
                assert_eq!(target.as_bytes()[offset], b'%', "{target:?}")
            }
            Err(PathError::ControlByte { offset, encoded: true, .. }) => assert_eq!(target.as_bytes()[offset], b'%'),
            Err(PathError::ControlByte { byte, offset, encoded: false }) => assert_eq!(target.as_bytes()[offset], byte),
            Err(
                PathError::PathParameter { offset }
                | PathError::Backslash { offset }
                | PathError::DoubleEncoded { offset }
                | PathError::InvalidUtf8 { offset },
            ) => assert!(b";\\%".contains(&target.as_bytes()[offset]), "{target:?}"),
            Err(PathError::TrimmedSegment { offset }) => {
                assert!(b".%".contains(&target.as_bytes()[offset]), "{target:?}")
            }
            Err(PathError::AboveRoot) => assert!(target.contains("..") || target.to_lowercase().contains("%2e")),
            Err(e @ (PathError::NotOriginForm | PathError::TooLong { .. })) => panic!("{target:?}: {e}"),
            Err(PathError::InvalidByte { .. }) | Ok(_) => {}
        }
    }
}
