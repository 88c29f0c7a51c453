use super::*;

#[test]
fn new_contents_count_once_they_have_settled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, "one").unwrap();
    let (file, contents) = WatchedFile::open(&path).unwrap();
    let mut file = file.with_settle(Duration::from_millis(200));
    assert_eq!(contents, b"one");
    assert!(matches!(file.check(), Change::Same));
    assert_eq!(file.settles_in(), None);

    std::fs::write(&path, "tw").unwrap();
    assert!(matches!(file.check(), Change::Settling), "a fresh change waits");
    std::fs::write(&path, "two").unwrap();
    assert!(matches!(file.check(), Change::Settling), "a change still changing waits");
    assert!(file.settles_in().is_some_and(|d| d <= Duration::from_millis(200)));
    std::thread::sleep(Duration::from_millis(250));
    assert!(matches!(file.check(), Change::New(c) if c == b"two"), "a settled change counts");
    assert!(matches!(file.check(), Change::Same));
}

#[test]
fn an_unreadable_file_is_reported_once_and_its_return_is_new() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, "one").unwrap();
    let mut file = WatchedFile::open(&path).unwrap().0.with_settle(Duration::ZERO);
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(file.check(), Change::Unreadable(_)));
    assert!(matches!(file.check(), Change::Same), "reported once");
    std::fs::write(&path, "one").unwrap();
    assert!(matches!(file.check(), Change::New(c) if c == b"one"), "the same contents back are new");
    assert!(WatchedFile::open(&dir.path().join("missing")).is_err());
}

#[tokio::test]
async fn every_ticks_per_interval_or_sooner_until_shutdown() {
    let shutdown = Shutdown::new();
    let ticks = every(Duration::from_millis(400), shutdown.clone());
    let start = Instant::now();
    assert!(ticks.tick(None).await);
    assert!(start.elapsed() >= Duration::from_millis(400));
    let start = Instant::now();
    assert!(ticks.tick(Some(Duration::from_millis(20))).await);
    assert!(start.elapsed() < Duration::from_millis(400), "sooner when asked");
    let start = Instant::now();
    assert!(ticks.tick(Some(Duration::from_secs(60))).await);
    assert!(start.elapsed() < Duration::from_secs(30), "never later than the interval");
    shutdown.trigger();
    assert!(!ticks.tick(Some(Duration::ZERO)).await, "shutdown stops the loop");
}
