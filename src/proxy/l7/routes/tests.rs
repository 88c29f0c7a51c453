use std::time::Duration;

use super::*;

const GOOD: &str = "\
routes:
  - name: default
    base_url: https://api.openai.com/v1
    protocols: [openai]
    api_key: sk-test-SECRET-1
    model_id: gpt-4o-mini
    provider_type: openai
    timeout_secs: 60
  - name: claude
    base_url: http://127.0.0.1:8080
    protocols:
      - anthropic
    timeout_secs: 0
  - name: vertex
    base_url: https://vertex.example/v1/models
    protocols: [anthropic]
    model_id: claude@1
    model_in_path: true
    request_path_override: \":rawPredict\"
";

fn issues(text: &str) -> String {
    parse_routes(text).expect_err(text).iter().map(ToString::to_string).collect::<Vec<_>>().join("\n")
}

#[test]
fn a_full_file_becomes_gateway_routes() {
    let routes = parse_routes(GOOD).unwrap();
    assert_eq!(routes.len(), 3);
    let r = &routes[0];
    assert_eq!((r.name.as_str(), r.base_url.as_str()), ("default", "https://api.openai.com/v1"));
    assert_eq!(r.protocols, ["openai"]);
    assert_eq!(r.api_key.expose(), "sk-test-SECRET-1");
    assert_eq!((r.model_id.as_str(), r.provider_type.as_str()), ("gpt-4o-mini", "openai"));
    assert_eq!(r.timeout, Some(Duration::from_secs(60)));
    let c = &routes[1];
    assert_eq!((c.api_key.expose(), c.model_id.as_str(), c.timeout), ("", "", None));
    assert!(!c.model_in_path && c.request_path_override.is_none());
    let v = &routes[2];
    assert_eq!((v.model_in_path, v.request_path_override.as_deref()), (true, Some(":rawPredict")));
    assert!(!format!("{routes:?}").contains("SECRET"), "the key is redacted in Debug");
    assert!(parse_routes("routes: []").unwrap().is_empty());
}

#[test]
fn a_file_loads_as_a_bundle_and_problems_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, GOOD).unwrap();
    let bundle = RoutesHandle::from_file(&path).unwrap().current();
    assert_eq!((bundle.routes.len(), bundle.revision.as_str()), (3, FILE_REVISION));
    std::fs::write(&path, "routes:\n  - name: x\n").unwrap();
    let e = RoutesHandle::from_file(&path).unwrap_err();
    assert!(e.to_string().contains("routes.yaml") && e.to_string().contains("routes[0].base_url"), "{e}");
    assert_eq!(e.exit_status(), Exit::Usage);
    let e = RoutesHandle::from_file(&dir.path().join("missing.yaml")).unwrap_err();
    assert!(e.to_string().contains("missing.yaml") && e.to_string().contains("OPENSHELL_INFERENCE_ROUTES"));
}

#[test]
fn every_problem_is_reported_with_path_and_line() {
    let text = "\
routes:
  - name: a
    base_url: ftp://x
    protocols: []
    timeout_secs: soon
    modle_id: m
  - name: a
    base_url: https://h
    protocols: [openai]
";
    let all = issues(text);
    for want in [
        "routes[0].base_url (line 3): must start with https:// or http://",
        "routes[0].protocols (line 4): expected a non-empty list",
        "routes[0].timeout_secs (line 5): expected a whole number",
        "routes[0].modle_id (line 6): unknown key `modle_id`",
        "routes[1].name (line 7): the route name `a` is used twice",
    ] {
        assert!(all.contains(want), "missing {want:?} in:\n{all}");
    }
}

#[test]
fn required_keys_are_named() {
    let all = issues("routes:\n  - api_key: k\n");
    for want in ["routes[0].name", "routes[0].base_url", "routes[0].protocols"] {
        assert!(all.contains(want), "{want} in {all}");
    }
    assert!(
        issues("routes:\n  - name: ''\n    base_url: https://h\n    protocols: [x]\n").contains("must not be empty")
    );
    assert!(issues("other: 1").contains("unknown key `other`"));
    assert!(issues("{}").contains("missing: the file needs `routes:`"));
    assert!(issues("routes: {a: 1}").contains("expected a list of routes"));
    assert!(issues("- a").contains("top level must be a mapping"));
}

#[test]
fn urls_with_credentials_and_unsafe_keys_are_refused_without_echo() {
    let text = "routes:\n  - name: a\n    base_url: https://user:hunter2@h.example/v1\n    protocols: [openai]\n    api_key: \"k\\r\\nX: hunter2\"\n";
    let all = issues(text);
    assert!(all.contains("routes[0].base_url") && all.contains("user:password@"), "{all}");
    assert!(all.contains("routes[0].api_key") && all.contains("line break"), "{all}");
    assert!(!all.contains("hunter2"), "{all}");
    for (url, want) in
        [("not a url", "is not a URL"), ("https://h/p?x=1", "must not have a query"), ("/v1", "must start with")]
    {
        let text = format!("routes:\n  - name: a\n    base_url: \"{url}\"\n    protocols: [openai]\n");
        assert!(issues(&text).contains(want), "{url}: {}", issues(&text));
    }
}

#[test]
fn duplicate_keys_and_bad_yaml_are_reported() {
    assert!(issues("routes: []\nroutes: []\n").contains("`routes` appears twice"));
    assert!(issues("routes: [\n").contains("not valid YAML"));
}

#[test]
fn the_model_in_the_path_needs_a_model_and_a_boolean() {
    let text = "routes:\n  - {name: a, base_url: https://h, protocols: [openai], model_in_path: true}\n  - {name: b, base_url: https://h, protocols: [openai], model_in_path: yes}\n";
    let found = issues(text);
    assert!(found.contains("routes[0].model_in_path (line 2): needs model_id"), "{found}");
    assert!(found.contains("routes[1].model_in_path (line 3): expected true or false"), "{found}");
}
