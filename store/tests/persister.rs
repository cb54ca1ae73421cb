//! The persister on its own: an overrun is written down as an exact `_server` line, and a
//! completion waits for every line it covers.

use std::time::Duration;

use sluice_router::{Envelope, Filter, Router, RouterConfig, Selector, Start};
use sluice_store::persister::{Fsync, Persister, PersisterConfig, file_path};
use tokio_util::sync::CancellationToken;

fn config(dir: &std::path::Path) -> PersisterConfig {
    PersisterConfig {
        local_dir: dir.to_owned(),
        fsync: Fsync::Never,
        fsync_interval: Duration::from_secs(1),
        max_file_size_bytes: 1 << 30,
        max_files: 2,
        max_open_files: 4,
        keep_segments: 0,
    }
}

fn temp(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sluice-persister-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

#[tokio::test]
async fn an_overrun_persister_writes_the_exact_loss_as_a_server_line() {
    let dir = temp("overrun");
    let router = Router::new(RouterConfig {
        ring_max_entries: 10,
        ..RouterConfig::default()
    });
    let cursor = router
        .subscribe(Selector::All, Filter::default(), Start::Live)
        .unwrap();
    let (persister, handle, control) = Persister::new(config(&dir), &router).unwrap();
    // 50 published before the persister reads anything: the ring keeps the last 10.
    router
        .publish(
            (0..50)
                .map(|i| Envelope::new("job", format!("line {i}")))
                .collect(),
        )
        .unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(persister.run(cursor, control, stop.clone()));
    let done = handle.complete("job", 50, None).await.unwrap();
    assert_eq!(done.path.as_deref(), Some(file_path(&dir, "job").as_path()));
    stop.cancel();
    task.await.unwrap();

    let text = std::fs::read_to_string(file_path(&dir, "job")).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 11);
    let server = &lines[0];
    assert_eq!(server["step"], "_server");
    assert_eq!(server["stream"], "stderr");
    assert_eq!(server["origin"], "LGR/0");
    assert_eq!(server["seq"], 40);
    let msg = server["line"].as_str().unwrap();
    assert!(
        msg.starts_with("sluice dropped 40 messages for this persister since ")
            && msg.ends_with(": consumer too slow"),
        "{msg}"
    );
    let seqs: Vec<u64> = lines[1..]
        .iter()
        .map(|l| l["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (41..=50).collect::<Vec<_>>());
    assert_eq!(
        handle
            .counters
            .lost
            .load(std::sync::atomic::Ordering::Relaxed),
        40
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn completion_waits_for_lines_not_yet_read_and_many_sources_share_few_open_files() {
    let dir = temp("complete");
    let router = Router::new(RouterConfig::default());
    let cursor = router
        .subscribe(Selector::All, Filter::default(), Start::Live)
        .unwrap();
    let (persister, handle, control) = Persister::new(config(&dir), &router).unwrap();
    let stop = CancellationToken::new();
    let task = tokio::spawn(persister.run(cursor, control, stop.clone()));
    // Twenty sources, four open files at most: files are closed and reopened for appending.
    for round in 0..3 {
        for s in 0..20 {
            router
                .publish(vec![Envelope::new(
                    format!("s{s}"),
                    format!("round {round}"),
                )])
                .unwrap();
        }
    }
    for s in 0..20 {
        handle.complete(&format!("s{s}"), 3, None).await.unwrap();
        let text = std::fs::read_to_string(file_path(&dir, &format!("s{s}"))).unwrap();
        let rounds: Vec<String> = text
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["line"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        assert_eq!(rounds, ["round 0", "round 1", "round 2"]);
    }
    // A source that never logged completes at once, with no file.
    assert_eq!(handle.complete("silent", 0, None).await.unwrap().path, None);
    stop.cancel();
    task.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
