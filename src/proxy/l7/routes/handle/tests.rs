use super::*;

const ONE: &str = "routes:\n  - name: a\n    base_url: http://127.0.0.1:8080\n    protocols: [openai]\n";
const TWO: &str = "routes:\n  - name: a\n    base_url: http://127.0.0.1:8080\n    protocols: [openai]\n  - name: b\n    base_url: http://127.0.0.1:8081\n    protocols: [anthropic]\n";

fn names(handle: &RoutesHandle) -> Vec<String> {
    handle.current().routes.iter().map(|r| r.name.clone()).collect()
}

fn watched(path: &Path, settle: Duration) -> RoutesHandle {
    let mut handle = RoutesHandle::from_file(path).unwrap();
    let file = handle.file.take().map(|f| f.into_inner().unwrap().with_settle(settle));
    handle.file = file.map(Mutex::new);
    handle
}

#[test]
fn a_half_written_routes_file_is_not_picked_up_before_it_settles() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, TWO).unwrap();
    let handle = watched(&path, Duration::from_millis(300));
    assert_eq!(names(&handle), ["a", "b"]);
    // A writer half way through rewriting it: the prefix alone is a valid, smaller file.
    std::fs::write(&path, ONE).unwrap();
    assert!(!handle.reload_if_changed().unwrap(), "a fresh change waits");
    std::fs::write(&path, TWO.replace("8081", "8082")).unwrap();
    assert!(!handle.reload_if_changed().unwrap(), "a change still changing waits");
    assert_eq!(names(&handle), ["a", "b"]);
    std::thread::sleep(Duration::from_millis(350));
    assert!(handle.reload_if_changed().unwrap(), "a settled change applies");
    assert_eq!(handle.current().routes[1].base_url, "http://127.0.0.1:8082", "the cut version never applied");
}

#[test]
fn a_bad_or_missing_routes_file_keeps_the_routes_and_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("routes.yaml");
    std::fs::write(&path, ONE).unwrap();
    let handle = watched(&path, Duration::ZERO);
    assert!(!handle.reload_if_changed().unwrap(), "unchanged");
    std::fs::write(&path, "routes:\n  - name: x\n").unwrap();
    assert!(handle.reload_if_changed().unwrap_err().to_string().contains("routes[0].base_url"));
    assert!(!handle.reload_if_changed().unwrap(), "the same bad file is not reported again");
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(handle.reload_if_changed(), Err(RoutesError::Read { .. })));
    assert!(!handle.reload_if_changed().unwrap(), "a missing file is reported once");
    assert_eq!(names(&handle), ["a"]);
    std::fs::write(&path, TWO).unwrap();
    assert!(handle.reload_if_changed().unwrap());
    assert_eq!(names(&handle), ["a", "b"]);
    assert!(!RoutesHandle::new(InferenceBundle::default()).reload_if_changed().unwrap(), "no file");
}
