use super::*;

fn text(response: &Response<Bytes>) -> &str {
    std::str::from_utf8(response.body()).unwrap()
}

#[test]
fn policy_denial_is_403_json_with_the_header_and_close() {
    let refusal = Refusal::Policy { reason: "no policy allows it".into(), policy: Some("github".into()) };
    let r = refusal.response("example.com", 443, None);
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(r.headers()[POLICY_HEADER], "deny");
    assert_eq!(r.headers()[header::CONNECTION], "close");
    assert_eq!(r.headers()[header::CONTENT_TYPE], "application/json");
}

#[test]
fn statuses() {
    assert_eq!(Refusal::Ssrf { reason: String::new() }.status(), StatusCode::FORBIDDEN);
    assert_eq!(Refusal::BadRequest(String::new()).status(), StatusCode::BAD_REQUEST);
    assert_eq!(Refusal::Unreachable(String::new()).status(), StatusCode::BAD_GATEWAY);
    assert_eq!(Refusal::Timeout(String::new()).status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(Refusal::PayloadTooLarge(String::new()).status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(Refusal::NoInferenceRoute(String::new()).status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(Refusal::CredentialExpired(String::new()).status(), StatusCode::FORBIDDEN);
    assert!(String::from_utf8(over_capacity()).unwrap().starts_with("HTTP/1.1 503 "));
}

/// The exact bytes every answer has had: keys in name order, `policy`, `method` and `path`
/// only when known, one newline.
#[test]
fn the_body_is_compact_json_in_name_order() {
    let policy = Refusal::Policy { reason: "no \"rule\"".into(), policy: Some("github".into()) };
    assert_eq!(
        text(&policy.render("api.github.com", 443, Some(("DELETE", "/repos/x")))),
        "{\"error\":\"policy_denied\",\"host\":\"api.github.com\",\"method\":\"DELETE\",\"path\":\"/repos/x\",\"policy\":\"github\",\"port\":443,\"reason\":\"no \\\"rule\\\"\"}\n"
    );
    let connect = Refusal::BadRequest("bad".into()).render("", 0, None);
    assert_eq!(text(&connect), "{\"error\":\"bad_request\",\"host\":\"\",\"port\":0,\"reason\":\"bad\"}\n");
    assert!(connect.headers().get(POLICY_HEADER).is_none());
    let no_policy = Refusal::Policy { reason: "r".into(), policy: None }.render("h", 80, Some(("GET", "/")));
    assert_eq!(
        text(&no_policy),
        "{\"error\":\"policy_denied\",\"host\":\"h\",\"method\":\"GET\",\"path\":\"/\",\"port\":80,\"reason\":\"r\"}\n"
    );
}

#[test]
fn long_paths_are_cut_on_a_character_boundary() {
    let long = format!("/{}", "é".repeat(400));
    let r = Refusal::BadRequest("long".into()).render("h", 443, Some(("GET", &long)));
    let body: serde_json::Value = serde_json::from_slice(r.body()).unwrap();
    let shown = body["path"].as_str().unwrap();
    assert!(shown.len() <= MAX_SHOWN_PATH + 3 && shown.ends_with("...") && long.starts_with(&shown[..shown.len() - 3]));
}
