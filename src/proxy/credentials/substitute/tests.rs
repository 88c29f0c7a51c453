use std::collections::BTreeSet;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use http::Request;

use super::super::binding::Destination;
use super::super::{BindingEndpoint, CredentialError, PLACEHOLDER_PREFIX, ProviderEnvironment, Snapshot, placeholder};
use super::Resolver;
use crate::config::Secret;

/// Every key bound to `h.example:443`, any path.
pub(in crate::proxy::credentials) fn snapshot(pairs: &[(&str, &str)]) -> Snapshot {
    let bound = vec![BindingEndpoint { host: "h.example".into(), port: 443, path: String::new() }];
    let env = ProviderEnvironment {
        environment: pairs.iter().map(|(k, v)| (k.to_string(), Secret::new(*v))).collect(),
        bindings: pairs.iter().map(|(k, _)| (k.to_string(), bound.clone())).collect(),
        ..Default::default()
    };
    Snapshot::from_provider(&env, Default::default()).unwrap()
}

/// Substitutes for `h.example:443` and the request's own path; returns the keys used.
fn request(snapshot: &Snapshot, parts: &mut http::request::Parts) -> Result<Vec<String>, CredentialError> {
    let to = Destination::plain("h.example", 443, parts.uri.path(), false);
    let mut r = Resolver::new(snapshot, &to);
    super::request(&mut r, parts)?;
    Ok(r.used)
}

fn percent_decoded(s: &str) -> Vec<u8> {
    form_urlencoded::parse(format!("x={s}").as_bytes()).next().unwrap().1.into_owned().into_bytes()
}

fn parts(uri: &str, headers: &[(&str, String)]) -> http::request::Parts {
    let mut b = Request::builder().uri(uri);
    for (k, v) in headers {
        b = b.header(*k, v.as_str());
    }
    b.body(()).unwrap().into_parts().0
}

fn store() -> Snapshot {
    snapshot(&[("API_KEY", "sk-live-123"), ("USER", "alice"), ("PASS", "p@ss w:rd/+&="), ("BAD", "a\u{1}b")])
}

#[test]
fn whole_header_values_and_scheme_tokens_are_swapped() {
    let mut p = parts(
        "https://api.example.com/v1",
        &[
            ("x-api-key", placeholder("API_KEY")),
            ("authorization", format!("Bearer {}", placeholder("API_KEY"))),
            ("x-other", format!("Token {}", placeholder("USER"))),
            ("accept", "application/json".into()),
        ],
    );
    let used = request(&store(), &mut p).unwrap();
    assert_eq!(used, ["API_KEY", "USER"]);
    assert_eq!(p.headers["x-api-key"], "sk-live-123");
    assert_eq!(p.headers["authorization"], "Bearer sk-live-123");
    assert_eq!(p.headers["x-other"], "Token alice");
    assert_eq!(p.headers["accept"], "application/json");
    assert!(p.headers["authorization"].is_sensitive());
    assert!(!format!("{:?}", p.headers).contains("sk-live"));
}

#[test]
fn basic_user_and_password_are_swapped_and_re_encoded() {
    let creds = STANDARD.encode(format!("{}:{}", placeholder("USER"), placeholder("PASS")));
    let mut p = parts("/", &[("authorization", format!("Basic {creds}"))]);
    assert_eq!(request(&store(), &mut p).unwrap(), ["USER", "PASS"]);
    let token = p.headers["authorization"].to_str().unwrap().strip_prefix("Basic ").unwrap().to_owned();
    assert_eq!(String::from_utf8(STANDARD.decode(token).unwrap()).unwrap(), "alice:p@ss w:rd/+&=");

    let only_password = STANDARD.encode(format!("bob:{}", placeholder("API_KEY")));
    let mut p = parts("/", &[("authorization", format!("basic {only_password}"))]);
    request(&store(), &mut p).unwrap();
    assert_eq!(p.headers["authorization"], format!("basic {}", STANDARD.encode("bob:sk-live-123")));

    let plain = format!("Basic {}", STANDARD.encode("bob:secret"));
    let mut p = parts("/", &[("authorization", plain.clone())]);
    assert!(request(&store(), &mut p).unwrap().is_empty());
    assert_eq!(p.headers["authorization"], plain.as_str());
}

#[test]
fn a_basic_user_containing_a_colon_is_unusable() {
    let s = snapshot(&[("U", "a:b")]);
    let creds = STANDARD.encode(format!("{}:x", placeholder("U")));
    let e = request(&s, &mut parts("/", &[("authorization", format!("Basic {creds}"))])).unwrap_err();
    assert!(matches!(&e, CredentialError::Unusable { key, .. } if key == "U"), "{e}");
}

#[test]
fn query_values_are_compared_decoded_and_re_encoded() {
    let uri = format!(
        "https://h.example/p?a=1&key={}&k2=openshell%3Aresolve%3Aenv%3APASS&flag&z=%20",
        placeholder("API_KEY")
    );
    let mut p = parts(&uri, &[]);
    assert_eq!(request(&store(), &mut p).unwrap(), ["API_KEY", "PASS"]);
    assert_eq!(p.uri.to_string(), "https://h.example/p?a=1&key=sk-live-123&k2=p%40ss+w%3Ard%2F%2B%26%3D&flag&z=%20");
    let q = crate::policy::request::parse_query(p.uri.query().unwrap());
    assert_eq!(q["k2"], ["p@ss w:rd/+&="]);
}

#[test]
fn an_unknown_key_is_unresolved_and_nothing_changes() {
    let mut p = parts(
        "/x?a=openshell:resolve:env:API_KEY",
        &[("x-a", placeholder("API_KEY")), ("authorization", format!("Bearer {}", placeholder("MISSING")))],
    );
    let before = p.headers.clone();
    let e = request(&store(), &mut p).unwrap_err();
    assert!(matches!(&e, CredentialError::Unresolved { key } if key == "MISSING"), "{e}");
    assert!(e.to_string().starts_with("credential_unresolved") && e.to_string().contains("`MISSING`"));
    assert_eq!(p.headers, before, "no header changed");
    assert_eq!(p.uri, "/x?a=openshell:resolve:env:API_KEY");
}

/// Target, headers, and the place the error must name.
type Case = (String, Vec<(&'static str, String)>, &'static str);

#[test]
fn placeholders_in_other_positions_are_refused() {
    let ph = placeholder("API_KEY");
    let cases: Vec<Case> = vec![
        ("/".into(), vec![("cookie", format!("session={ph}"))], "header cookie"),
        ("/".into(), vec![("authorization", format!("Bearer  {ph}"))], "header authorization"),
        ("/".into(), vec![("authorization", format!("Bearer {ph}x-"))], "header authorization"),
        ("/".into(), vec![("x-k", PLACEHOLDER_PREFIX.to_string())], "header x-k"),
        (format!("/?{ph}=1"), vec![], "a query parameter name"),
        ("/?openshell%3Aresolve%3Aenv%3AAPI_KEY=1".into(), vec![], "a query parameter name"),
        ("/?q=openshell%253Aresolve%253Aenv%253AAPI_KEY".into(), vec![], "query parameter q (an encoded placeholder)"),
        ("/a/openshell%253Aresolve%253Aenv%253AAPI_KEY".into(), vec![], "the request path (an encoded placeholder)"),
        ("/a/openshell:resolve:env:".into(), vec![], "the request path (a placeholder without a key)"),
        ("/".into(), vec![("x-k", "openshell%3Aresolve%3Aenv%3AAPI_KEY".into())], "header x-k"),
        (
            "/".into(),
            vec![("authorization", format!("Basic {}", STANDARD.encode(format!("u:x{ph}"))))],
            "header authorization (Basic password)",
        ),
        ("/".into(), vec![("authorization", format!("Basic {}", STANDARD.encode(&ph)))], "without `:`"),
        (
            "/".into(),
            vec![("authorization", format!("Basic {}", STANDARD.encode(format!("x{ph}:pw"))))],
            "header authorization (Basic credentials)",
        ),
    ];
    for (uri, headers, place) in cases {
        let e = request(&store(), &mut parts(&uri, &headers)).unwrap_err();
        assert!(matches!(e, CredentialError::Misplaced { .. }), "{uri} {headers:?}: {e}");
        assert!(e.to_string().contains(place), "{e}");
    }
}

#[test]
fn a_value_that_is_not_a_header_value_is_unusable_and_not_shown() {
    let e = request(&store(), &mut parts("/", &[("x-k", placeholder("BAD"))])).unwrap_err();
    assert!(matches!(&e, CredentialError::Unusable { key, .. } if key == "BAD"), "{e}");
    assert!(!e.to_string().contains('\u{1}'));
}

#[test]
fn path_segments_and_query_values_take_placeholders_anywhere_in_them() {
    let ph = placeholder("PASS");
    let mut p = parts(&format!("/bot{ph}/send/openshell%3Aresolve%3Aenv%3AAPI_KEY?q=pre-{ph}-post&k=x"), &[]);
    assert_eq!(request(&store(), &mut p).unwrap(), ["PASS", "API_KEY"]);
    assert_eq!(p.uri.path(), "/botp%40ss%20w%3Ard%2F%2B%26%3D/send/sk-live-123");
    assert_eq!(p.uri.query(), Some("q=pre-p%40ss+w%3Ard%2F%2B%26%3D-post&k=x"));
}

#[test]
fn encoded_forms_written_are_remembered_for_scrubbing() {
    let ph = placeholder("PASS");
    let creds = STANDARD.encode(format!("{}:x", placeholder("USER")));
    let mut p = parts(&format!("/a/{ph}?q={ph}"), &[("authorization", format!("Basic {creds}"))]);
    let snap = store();
    let to = Destination::plain("h.example", 443, p.uri.path(), false);
    let mut r = Resolver::new(&snap, &to);
    super::request(&mut r, &mut p).unwrap();
    let forms: Vec<(String, String)> = r
        .forms
        .iter()
        .map(|(w, s)| (String::from_utf8(w.clone()).unwrap(), String::from_utf8(s.clone()).unwrap()))
        .collect();
    assert!(forms.contains(&(STANDARD.encode("alice:x"), creds.clone())), "{forms:?}");
    assert!(forms.contains(&("p%40ss%20w%3Ard%2F%2B%26%3D".into(), ph.clone())), "{forms:?}");
    assert!(forms.contains(&("p%40ss+w%3Ard%2F%2B%26%3D".into(), ph.clone())), "{forms:?}");
    assert!(!forms.iter().any(|(w, _)| w == "alice"), "a raw value is the snapshot's, not a form");
}

#[test]
fn a_key_not_bound_here_is_refused_naming_key_and_host() {
    let mut p = parts("/", &[("x-api-key", placeholder("API_KEY"))]);
    let to = Destination::plain("other.example", 443, "/", false);
    let snap = store();
    let e = super::request(&mut Resolver::new(&snap, &to), &mut p).unwrap_err();
    assert!(matches!(&e, CredentialError::NotBound { key, host, .. } if key == "API_KEY" && host == "other.example"));
    assert!(e.to_string().contains("h.example:443 only"), "{e}");
    assert_eq!(p.headers["x-api-key"], placeholder("API_KEY").as_str(), "nothing changed");
    let to = Destination::plain("h.example", 80, "/", true);
    let e = super::request(&mut Resolver::new(&snap, &to), &mut p).unwrap_err();
    assert!(matches!(&e, CredentialError::Cleartext { key } if key == "API_KEY"), "{e}");
}

/// xorshift64*: deterministic generated requests, no extra crate.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 33) as usize % n
    }
}

const KEYS: &[&str] = &["K0", "K1", "K2", "K3", "NOPE", "GONE"];

fn secret_of(key: &str) -> String {
    format!("S3CR3T-{key}-value")
}

fn fragment(rng: &mut Rng) -> (String, Option<&'static str>) {
    let key = KEYS[rng.below(KEYS.len())];
    let ph = placeholder(key);
    let s = match rng.below(8) {
        0 => ph,
        1 => format!("Bearer {ph}"),
        2 => format!("Basic {}", STANDARD.encode(format!("{ph}:pw"))),
        3 => format!("Basic {}", STANDARD.encode(format!("user:{ph}"))),
        4 => format!("x{ph}"),
        5 => return ("plain-value".into(), None),
        6 => return (format!("Basic {}", STANDARD.encode("u:p")), None),
        _ => format!("Token {ph} trailing"),
    };
    (s, Some(key))
}

#[test]
fn property_never_emits_a_placeholder_or_an_unnamed_secret() {
    let snap = snapshot(&[
        ("K0", &secret_of("K0")),
        ("K1", &secret_of("K1")),
        ("K2", &secret_of("K2")),
        ("K3", &secret_of("K3")),
    ]);
    let mut rng = Rng(0xDEAD_BEEF_1234_5678);
    let (mut swapped, mut refused) = (0, 0);
    for _ in 0..5_000 {
        let mut named = BTreeSet::new();
        let mut headers = Vec::new();
        for i in 0..rng.below(4) {
            let (value, key) = fragment(&mut rng);
            named.extend(key);
            headers.push((["authorization", "x-api-key", "x-custom", "cookie"][i], value));
        }
        let mut query = Vec::new();
        for i in 0..rng.below(3) {
            let key = KEYS[rng.below(KEYS.len())];
            let value = match rng.below(3) {
                0 => placeholder(key),
                1 => placeholder(key).replace(':', "%3A"),
                _ => "v".to_owned(),
            };
            if value != "v" {
                named.insert(key);
            }
            query.push(format!("q{i}={value}"));
        }
        let uri = format!("https://h.example/p?{}", query.join("&"));
        let mut p = parts(&uri, &headers);
        match request(&snap, &mut p) {
            Ok(used) => {
                swapped += 1;
                let mut out: Vec<String> = p.headers.values().map(|v| v.to_str().unwrap().to_owned()).collect();
                for v in p.headers.values().filter_map(|v| v.to_str().ok()?.strip_prefix("Basic ")) {
                    out.push(String::from_utf8(STANDARD.decode(v).unwrap()).unwrap());
                }
                out.push(p.uri.to_string());
                out.push(String::from_utf8(percent_decoded(p.uri.query().unwrap_or(""))).unwrap());
                let all = out.join("\n");
                assert!(!all.contains(PLACEHOLDER_PREFIX), "{uri} {headers:?} -> {all}");
                for key in KEYS {
                    if all.contains(&secret_of(key)) {
                        assert!(named.contains(key), "secret of {key} not named by {uri} {headers:?}");
                    }
                }
                assert!(used.iter().all(|k| named.contains(k.as_str())), "{used:?} {named:?}");
            }
            Err(CredentialError::Unresolved { key }) => {
                refused += 1;
                assert!(named.contains(key.as_str()) && snap.get(&key).is_none(), "{key}");
            }
            Err(CredentialError::Misplaced { .. }) => refused += 1,
            Err(e) => panic!("{uri} {headers:?}: {e}"),
        }
    }
    assert!(swapped > 500 && refused > 500, "swapped {swapped}, refused {refused}");
}

#[test]
fn a_placeholder_in_the_authority_is_refused() {
    // Found by the l7_substitute fuzz target: the userinfo of an absolute- or
    // authority-form target was forwarded with its placeholder.
    for uri in [
        format!("http://{}@api.example.com/v1", placeholder("USER")),
        format!("{}@api.example.com:443", placeholder("USER")),
        "http://openshell%3Aresolve%3Aenv%3AUSER@api.example.com/".to_owned(),
    ] {
        let mut p = parts(&uri, &[]);
        let err = request(&store(), &mut p).unwrap_err();
        assert!(
            matches!(&err, CredentialError::Misplaced { place } if place == "the request authority"),
            "{uri}: {err}"
        );
    }
}

#[test]
fn an_injection_shows_no_value_in_debug() {
    let store = super::super::SecretStore::from_provider(&ProviderEnvironment {
        environment: [("PASS".to_owned(), Secret::new("p@ss w:rd"))].into(),
        bindings: [(
            "PASS".to_owned(),
            vec![BindingEndpoint { host: "h.example".into(), port: 443, path: String::new() }],
        )]
        .into(),
        ..Default::default()
    })
    .unwrap();
    let mut p = parts(&format!("/a/{}", placeholder("PASS")), &[]);
    let injection = store.substitute(&mut p, Destination::plain("h.example", 443, "/a", false), true).unwrap();
    let debug = format!("{injection:?}");
    assert!(injection.keys() == ["PASS"] && !debug.contains("p%40ss") && !debug.contains("112, 37"), "{debug}");
}
