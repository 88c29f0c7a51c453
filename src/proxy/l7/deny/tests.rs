use http::{StatusCode, header};
use serde_json::Value;

use super::*;
use crate::policy::model::Enforcement;
use crate::proxy::answer::{MAX_SHOWN_PATH, POLICY_HEADER};
use crate::proxy::credentials::CredentialError;
use crate::proxy::l7::path::{EncodedSlash, canonicalize};

const REQUEST: Refused<'static> = Refused { host: "api.github.com", port: 443, method: "DELETE", path: "/repos/x" };

fn body(response: &Response<Bytes>) -> Value {
    serde_json::from_slice(response.body()).unwrap()
}

fn assert_json_close(response: &Response<Bytes>) {
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(response.headers()[header::CONNECTION], "close");
}

#[test]
fn policy_denial_names_policy_method_and_path() {
    let decision = L7Decision {
        allow: false,
        policy: Some("github".into()),
        rule: Some("github.endpoints[0].rules[0]".into()),
        reason: "access read-only allows GET, HEAD and OPTIONS".into(),
        enforcement: Enforcement::Enforce,
    };
    let r = REQUEST.render(&policy_denied(&decision));
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.headers()[POLICY_HEADER], "deny");
    assert_json_close(&r);
    let b = body(&r);
    assert_eq!(b["error"], "policy_denied");
    assert_eq!(b["reason"], "access read-only allows GET, HEAD and OPTIONS");
    assert_eq!((b["host"].as_str(), b["port"].as_u64()), (Some("api.github.com"), Some(443)));
    assert_eq!(
        (b["policy"].as_str(), b["method"].as_str(), b["path"].as_str()),
        (Some("github"), Some("DELETE"), Some("/repos/x"))
    );

    let no_policy = L7Decision { policy: None, ..decision };
    assert!(body(&REQUEST.render(&policy_denied(&no_policy))).get("policy").is_none());
}

#[test]
fn credential_refusals_name_the_key_only() {
    let e = CredentialError::Unresolved { key: "GITHUB_TOKEN".into() };
    let r = REQUEST.render(&e.refusal());
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.headers()[POLICY_HEADER], "deny");
    assert_json_close(&r);
    let b = body(&r);
    assert_eq!(b["error"], "credential_unresolved");
    let reason = b["reason"].as_str().unwrap();
    assert!(reason.contains("`GITHUB_TOKEN`") && !reason.starts_with("credential_unresolved"), "{reason}");
    let misplaced = CredentialError::Misplaced { place: "header cookie".into() };
    assert!(body(&REQUEST.render(&misplaced.refusal()))["reason"].as_str().unwrap().contains("header cookie"));
    let hint = "the gateway binds it to api.github.com:443 only".to_owned();
    let e = CredentialError::NotBound { key: "GITHUB_TOKEN".into(), host: "pypi.org".into(), port: 443, hint };
    let r = REQUEST.render(&e.refusal());
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let b = body(&r);
    assert_eq!(b["error"], "credential_not_bound");
    let reason = b["reason"].as_str().unwrap();
    assert!(reason.starts_with("`GITHUB_TOKEN` may not be sent to pypi.org:443: the gateway binds"), "{reason}");
    let r = REQUEST.render(&CredentialError::BodyTooLarge { limit: 262_144 }.refusal());
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body(&r)["error"], "payload_too_large");
}

#[test]
fn a_refused_path_is_400_with_the_reason() {
    let e = canonicalize("/a%2Fb", EncodedSlash::Refuse).unwrap_err();
    let r = Refused { path: "/a%2Fb", ..REQUEST }.render(&bad_path(&e));
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.headers().get(POLICY_HEADER).is_none());
    assert_json_close(&r);
    let b = body(&r);
    assert_eq!((b["error"].as_str(), b["path"].as_str()), (Some("bad_request"), Some("/a%2Fb")));
    assert!(b["reason"].as_str().unwrap().contains("allow_encoded_slash"));
}

#[test]
fn long_paths_are_cut_on_a_character_boundary() {
    let long = format!("/{}", "é".repeat(400));
    let b = body(&Refused { path: &long, ..REQUEST }.render(&bad_path(&PathError::TooLong { len: long.len() })));
    let shown = b["path"].as_str().unwrap();
    assert!(shown.len() <= MAX_SHOWN_PATH + 3 && shown.ends_with("...") && long.starts_with(&shown[..shown.len() - 3]));
}

#[test]
fn inference_and_upstream_answers() {
    let req = Refused { host: "inference.local", port: 443, method: "POST", path: "/v1/files" };
    let r = req.render(&inference_path_denied());
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    let b = body(&r);
    assert_eq!((b["error"].as_str(), b["policy"].as_str()), (Some("policy_denied"), Some("inference.local")));
    assert!(b["reason"].as_str().unwrap().contains("/v1/chat/completions"));

    let r = req.render(&body_too_large(10 * 1024 * 1024));
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(body(&r)["error"], "payload_too_large");
    assert!(body(&r)["reason"].as_str().unwrap().contains("10485760"));

    let r = REQUEST.render(&upstream_tls_failed(REQUEST, "invalid peer certificate: UnknownIssuer"));
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert_json_close(&r);
    let reason = body(&r)["reason"].as_str().unwrap().to_owned();
    assert!(reason.contains("api.github.com") && reason.contains("OPENSHELL_UPSTREAM_CA_FILE"), "{reason}");
}
