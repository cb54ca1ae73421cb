//! The persister on its own: an overrun is written down as an exact `_server` line, and a
//! completion waits for every line it covers.

use std::time::Duration;

use sluice_router::{Envelope, Filter, Router, RouterConfig, Selector, Shard, Start};
use sluice_store::persister::{DirLock, Fsync, LOCK_FILE, Persister, PersisterConfig, file_path};
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

/// The `line` of every line of a JSONL file (none if there is no file).
fn messages(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["line"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect()
}

/// One line, `round N`, to each of `s0`..`s{sources - 1}`.
fn publish_round(router: &Router, sources: usize, round: usize) {
    for s in 0..sources {
        router
            .publish(vec![Envelope::new(
                format!("s{s}"),
                format!("round {round}"),
            )])
            .unwrap();
    }
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
        publish_round(&router, 20, round);
    }
    for s in 0..20 {
        handle.complete(&format!("s{s}"), 3, None).await.unwrap();
        let rounds = messages(&file_path(&dir, &format!("s{s}")));
        assert_eq!(rounds, ["round 0", "round 1", "round 2"]);
    }
    // A source that never logged completes at once, with no file.
    assert_eq!(handle.complete("silent", 0, None).await.unwrap().path, None);
    stop.cancel();
    task.await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

fn counter(c: &std::sync::atomic::AtomicU64) -> u64 {
    c.load(std::sync::atomic::Ordering::Relaxed)
}

/// Waits for `done` to hold, looking every 10 ms for at most 20 s; fails the test naming `what`.
async fn until(what: &str, done: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

struct Running {
    router: Router,
    handle: sluice_store::persister::PersisterHandle,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    async fn stop(self) {
        self.stop.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
    }
}

/// A persister of `writers` over 4 open files whose closed files gather lines for an hour
/// unless someone asks: a test of gathering cannot pass by waiting it out.
fn gathering_for_an_hour(dir: &std::path::Path, writers: usize) -> Running {
    let router = Router::new(RouterConfig::default());
    let mut cfg = config(dir);
    cfg.fsync = Fsync::Interval;
    cfg.fsync_interval = Duration::from_secs(3600);
    let lock = DirLock::take(dir).unwrap();
    let (shards, handle) = Persister::sharded(cfg, &router, lock, writers).unwrap();
    let stop = CancellationToken::new();
    let tasks = shards
        .into_iter()
        .enumerate()
        .map(|(index, (persister, control))| {
            let shard = Shard { index, of: writers };
            let cursor = router
                .subscribe(Selector::Shard(shard), Filter::default(), Start::Live)
                .unwrap();
            tokio::spawn(persister.run(cursor, control, stop.clone()))
        })
        .collect();
    Running {
        router,
        handle,
        stop,
        tasks,
    }
}

/// Lines of sources whose files are closed are gathered and written in one go: nothing is
/// lost or reordered, whoever waits for the disk gets it at once, and a stop writes the rest.
#[tokio::test]
async fn more_sources_than_open_files_gather_their_lines_and_a_waiter_or_a_stop_writes_them() {
    gather_and_write_when_asked("gather", 1).await;
}

/// The same with three writers: a waiter has the writer of its own source write at once,
/// whichever of them that is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_writers_gather_and_each_writes_at_once_for_a_waiter() {
    gather_and_write_when_asked("gather-sharded", 3).await;
}

async fn gather_and_write_when_asked(name: &str, writers: usize) {
    let dir = temp(name);
    let p = gathering_for_an_hour(&dir, writers);
    let lines_of = |s: usize| messages(&file_path(&dir, &format!("s{s}")));
    // 500 sources through 4 open files, three lines each, the persister reading each round
    // before the next: none is written yet (each would have been opened and closed per round).
    for round in 0..3 {
        publish_round(&p.router, 500, round);
        let read = 500 * (round as u64 + 1);
        until("the persister reads the round", || {
            counter(&p.handle.counters.read) >= read
        })
        .await;
    }
    assert!(
        (0..500).all(|s| lines_of(s).is_empty()),
        "lines of closed files are gathered, not written a round at a time"
    );
    // An ack=durable producer (or a reader behind the ring) waits: what is gathered is
    // written now, not in an hour (by every writer: the waits after the first find their
    // sources written or being written).
    for s in [250, 0, 1, 499] {
        tokio::time::timeout(
            Duration::from_secs(20),
            p.router
                .durability()
                .wait(&format!("s{s}"), 1, 3, Duration::from_secs(20)),
        )
        .await
        .expect("a waiter has gathered lines written at once")
        .unwrap();
        assert_eq!(lines_of(s), ["round 0", "round 1", "round 2"], "s{s}");
    }
    // More rounds, then a stop: nothing gathered is left behind, in order, appended to the
    // files written above (their sizes remembered, not looked up again).
    until(
        "every writer has written what it gathered before the waits",
        || counter(&p.handle.counters.lines) >= 1500,
    )
    .await;
    publish_round(&p.router, 500, 3);
    publish_round(&p.router, 500, 4);
    let handle = p.handle.clone();
    p.stop().await;
    let want: Vec<String> = (0..5).map(|r| format!("round {r}")).collect();
    for s in 0..500 {
        assert_eq!(lines_of(s), want, "s{s}");
    }
    assert_eq!(counter(&handle.counters.lines), 2500);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A source that gathers 64 KiB is written at once, even when its lines come in one run.
#[tokio::test]
async fn a_busy_source_is_written_once_it_has_gathered_enough_without_waiting_the_interval() {
    let dir = temp("busy");
    let p = gathering_for_an_hour(&dir, 1);
    // ~250 KB of lines in one batch: one run for the persister, its file not open yet.
    p.router
        .publish(
            (0..1000)
                .map(|i| Envelope::new("busy", format!("{i:0>150}")))
                .collect(),
        )
        .unwrap();
    until(
        "the busy source written without waiting out the hour",
        || counter(&p.handle.counters.lines) == 1000,
    )
    .await;
    p.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// Three writers, each holding its own shard: senders that wait lose nothing through rings of
/// 8 entries, each source's file is whole and in order, a completion is answered by the writer
/// of its source, the counters add up over the shards, and the directory is marked stopped
/// cleanly only once all three have stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_writers_write_every_line_of_their_own_sources() {
    let dir = temp("sharded");
    let router = Router::new(RouterConfig {
        ring_max_entries: 8,
        ..RouterConfig::default()
    });
    let mut cfg = config(&dir);
    cfg.max_open_files = 3; // one each
    let lock = DirLock::take(&dir).unwrap();
    let (shards, handle) = Persister::sharded(cfg, &router, lock, 3).unwrap();
    assert_eq!(handle.shards(), 3);
    let mut tasks = Vec::new();
    for (index, (persister, control)) in shards.into_iter().enumerate() {
        let cursor = router.subscribe_held(Shard { index, of: 3 }, Filter::default(), Start::Live);
        let stop = CancellationToken::new();
        let task = tokio::spawn(persister.run(cursor, control, stop.clone()));
        tasks.push((stop, task));
    }
    let sources: Vec<String> = (0..7).map(|s| format!("src-{s}")).collect();
    let mut senders = Vec::new();
    for id in sources.clone() {
        let router = router.clone();
        senders.push(tokio::spawn(async move {
            for chunk in 0..20 {
                let batch = (0..50)
                    .map(|i| Envelope::new(id.as_str(), format!("line {}", chunk * 50 + i)))
                    .collect();
                router.publish_waiting(batch, None).await.unwrap();
            }
        }));
    }
    for s in senders {
        s.await.unwrap();
    }
    for id in &sources {
        let done = handle.complete(id, 1000, None).await.unwrap();
        let lines = messages(&done.path.unwrap());
        let want: Vec<String> = (0..1000).map(|i| format!("line {i}")).collect();
        assert_eq!(lines, want, "{id}");
    }
    assert_eq!(counter(&handle.counters.lines), 7000);
    assert_eq!(counter(&handle.counters.writers_running), 3);
    assert_eq!(counter(&handle.counters.lost), 0);
    assert!(router.waited_for_room_total() > 0, "the rings were full");
    // Two writers stopped: not yet clean.
    let (stop_last, last) = tasks.pop().unwrap();
    for (stop, task) in tasks {
        stop.cancel();
        task.await.unwrap();
    }
    let mark = || std::fs::read_to_string(dir.join(LOCK_FILE)).unwrap();
    assert_ne!(mark().trim(), "stopped");
    assert_eq!(counter(&handle.counters.writers_running), 1);
    stop_last.cancel();
    last.await.unwrap();
    assert_eq!(mark().trim(), "stopped");
    assert_eq!(counter(&handle.counters.open_files), 0);
    assert_eq!(counter(&handle.counters.writers_running), 0);
    assert_eq!(counter(&handle.counters.gathered_bytes), 0);
    let _ = std::fs::remove_dir_all(&dir);
}
