//! The persister (SPEC §6): every source's envelopes as JSONL lines in its own file, written in
//! batches by writer threads, each with a cursor over its own shard of the sources (so each
//! file has one writer, and a big machine writes with several cores).
//!
//! - Files: `local_dir/<stem>.jsonl` (see [`names::file_stem`]), rotated at
//!   `max_file_size_bytes` to `<stem>.jsonl.1`, `.2`, … keeping `max_files` files in all.
//!   With an archive (`keep_segments` > 0), the file rotated out is not deleted but kept as a
//!   segment (`.archive/segments/<stem>/<stem>.jsonl.sNNNNNNNN`) until the source completes,
//!   so a job that rotates is archived whole. Whatever is deleted (beyond `keep_segments`, or
//!   without an archive) is counted and announced: a `_server` notice with the exact count.
//! - `fsync`: `never`, `interval` (every `fsync_interval_millis`), or `always` (after each batch).
//! - Writes: a source whose file is open is written after each batch. With more active sources
//!   than `max_open_files`, a source whose file is closed has its lines gathered (up to
//!   [`GATHER_BYTES`], for at most `fsync_interval`) and written in one open-write-close, so a
//!   hundred thousand sources cost a file open per source per interval, not one per line.
//!   Someone waiting on [`Durability`] (`ack=durable`, a reader behind the ring) has everything
//!   written at once; `fsync: always` gathers nothing.
//! - When the persister's cursor is overrun it writes a `_server` line with the exact count lost.
//! - A write that fails (disk full) keeps its bytes for the next try, up to a bound; past it the
//!   lines are counted and announced with a `_server` line once writing works again.
//! - [`Durability`] tells native ingest when a batch is on disk, for `ack=durable`.
//!
//! # Layout
//!
//! - this module: the writer task (batches, buffers, retries, fsync, the LRU of open files).
//! - `line`: the JSONL line, written by hand for speed. `names`: file names from source ids.
//! - `rotate`: rotation, segments, deletions counted and announced, off the writer's thread.
//! - `keytags`: the tags an archive key takes, kept beside the files (lines keep no tags).
//! - `completion`: a source written through, closed and moved aside for the archive.
//! - `lock`: the directory's lock and the mark a clean stop leaves (once every shard stopped
//!   clean).

mod completion;
pub mod keytags;
pub mod line;
mod lock;
pub mod names;
mod rotate;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_router::{
    Cursor, Delivery, Durability, Entry, Envelope, Fields, MAX_SHARDS, MissedNotice, Router,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use completion::CompletionError;
use keytags::KeyTags;
pub use line::{Line, SERVER_STEP, write_line};
use lock::SharedLock;
pub use lock::{DirLock, LOCK_FILE};
pub use names::file_stem;
use rotate::{Deleted, in_background};
pub use rotate::{segments, segments_dir};

/// When written lines are forced to disk.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fsync {
    Never,
    #[default]
    Interval,
    Always,
}

/// The persister's part of `log_storage`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PersisterConfig {
    pub local_dir: PathBuf,
    pub fsync: Fsync,
    pub fsync_interval: Duration,
    pub max_file_size_bytes: u64,
    pub max_files: usize,
    pub max_open_files: usize,
    /// Files rotated out kept per source for the archive; 0: deleted (no archive).
    pub keep_segments: usize,
}

/// Appended to the name of a file a rotation is deleting in the background.
const DOOMED_SUFFIX: &str = ".deleting";

/// Bytes a failing file may hold back for a retry before its lines are counted lost.
const MAX_RETRY_BYTES: usize = 16 * 1024 * 1024;
/// Deliveries read from the cursor per batch.
const BATCH: usize = 4096;
/// How long the writer lets lines gather after reading a small batch (under a quarter of
/// `BATCH`): an idle writer woken for every frame costs ingest a wake-up per frame (5% of a
/// connection at 2 M lines/s); the ring holds far more than this gathers.
const LINGER: Duration = Duration::from_millis(1);
/// A source whose file is closed is written once it has gathered this much.
pub const GATHER_BYTES: usize = 64 * 1024;
/// Gathered lines of all sources together; past this the oldest are written early.
const MAX_GATHERED_BYTES: usize = 64 * 1024 * 1024;
/// Past this many files to sync at once, the persister syncs the file system (`syncfs`).
const SYNCFS_ABOVE: usize = 256;

/// What the persister has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct PersisterCounters {
    pub lines: AtomicU64,
    pub bytes: AtomicU64,
    pub lost: AtomicU64,
    pub errors: AtomicU64,
    pub rotations: AtomicU64,
    /// Lines in files that rotation deleted (`max_files`, `keep_segments`).
    pub deleted_lines: AtomicU64,
    /// Envelopes taken from the cursor (written, gathered or waiting for a retry).
    pub read: AtomicU64,
    /// Files held open now, all shards together (updated after each batch).
    pub open_files: AtomicU64,
    /// Bytes of lines waiting in the persister's buffers now, most of them gathered by closed
    /// files (updated after each batch).
    pub gathered_bytes: AtomicU64,
    /// Writer threads (shards).
    pub writers: AtomicU64,
    /// Writers running now: fewer than `writers` while the server runs means one stopped (a
    /// panic), and its sources are no longer written.
    pub writers_running: AtomicU64,
}

/// Requests to the persister task.
#[derive(Debug)]
pub enum Control {
    /// Close `source`'s file once every seq up to `upto` is written, and answer with it; with
    /// `move_to`, move the completed files there first (the archive's own folder for this
    /// completion), so that later lines of the source start a file of their own.
    Complete {
        source: String,
        upto: u64,
        move_to: Option<PathBuf>,
        reply: oneshot::Sender<Result<Completed, CompletionError>>,
    },
}

/// A source's file after completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completed {
    /// The current file (absent if nothing was ever written).
    pub path: Option<PathBuf>,
    /// Rotated files, oldest first.
    pub rotated: Vec<PathBuf>,
    /// The archive key's tags, each as the newest line that had it gave it (kept across
    /// restarts and forgetting: see `keytags`).
    pub tags: BTreeMap<String, String>,
}

/// One writer of a sharded persister, and where its requests arrive.
pub type Writer = (Persister, mpsc::Receiver<Control>);

/// A handle to ask the persister things.
#[derive(Debug, Clone)]
pub struct PersisterHandle {
    /// One per shard, in shard order.
    control: Arc<[mpsc::Sender<Control>]>,
    router: Router,
    pub counters: Arc<PersisterCounters>,
    pub config: Arc<PersisterConfig>,
}

impl PersisterHandle {
    /// How many writers (shards) the persister has.
    pub fn shards(&self) -> usize {
        self.control.len()
    }

    /// Waits until `source` is written through `upto`, then closes its file (and moves its
    /// files into `move_to`, when given).
    pub async fn complete(
        &self,
        source: &str,
        upto: u64,
        move_to: Option<PathBuf>,
    ) -> Result<Completed, CompletionError> {
        let (reply, rx) = oneshot::channel();
        // The shard that writes the source answers. An invalid id has no file, any will say so;
        // nor has a stored source refused past `router.max_sources` an open one: any closes it.
        let shard = self.router.shard_of(source, self.shards()).unwrap_or(0);
        self.control[shard]
            .send(Control::Complete {
                source: source.to_owned(),
                upto,
                move_to,
                reply,
            })
            .await
            .map_err(|_| CompletionError::Stopping)?;
        rx.await.map_err(|_| CompletionError::Stopping)?
    }
}

struct OpenFile {
    /// Shared with a background sync while one runs, so syncing costs no second descriptor.
    file: Option<Arc<File>>,
    path: PathBuf,
    /// Bytes in the file plus `buf`.
    size: u64,
    /// Lines not yet written to the file.
    buf: Vec<u8>,
    buf_lines: u64,
    /// Highest seq in `buf` (or written).
    seq: u64,
    unsynced: bool,
    /// Its key in the persister's `lru` while a descriptor is open; 0 when none is.
    last_used: u64,
    /// Lines given up on after repeated write failures, to announce.
    dropped: u64,
    /// The seq of the last line given up on: never written, so the notice takes it (a seq of
    /// its own, as the persister's overrun notice takes the last one it missed).
    dropped_seq: u64,
    /// The file ends in the middle of a line (a write was cut short): the rest of that line is
    /// at the front of `buf`, and must be written before anything else.
    partial: bool,
    last_error: Option<String>,
    /// Lines the file holds and the seq of its first, when this persister has seen all of
    /// them (it started the file); `None` otherwise. A rotation that deletes the file says
    /// how many lines went without reading it back (`rotate`).
    counted: Option<Counted>,
    /// The archive key's tags its lines gave, while it has some (`keytags`).
    key: Option<Box<KeyTags>>,
}

/// How many lines a file holds, and the seq of its first line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Counted {
    pub(super) lines: u64,
    pub(super) first_seq: Option<u64>,
}

impl Counted {
    const EMPTY: Counted = Counted {
        lines: 0,
        first_seq: None,
    };

    /// One more line, of `seq`.
    fn add(counted: &mut Option<Counted>, seq: u64) {
        if let Some(c) = counted {
            c.lines += 1;
            c.first_seq.get_or_insert(seq);
        }
    }
}

/// What the persister remembers of a file it closed: its size, and its lines when counted.
#[derive(Debug, Clone)]
struct Known {
    size: u64,
    counted: Option<Counted>,
    key: Option<Box<KeyTags>>,
}

/// The persister task's state.
pub struct Persister {
    config: Arc<PersisterConfig>,
    durability: Arc<Durability>,
    counters: Arc<PersisterCounters>,
    files: HashMap<Arc<str>, OpenFile>,
    /// Sizes of files this persister wrote and has since forgotten (closed): opened again, they
    /// need no `stat` and no check for a torn last line.
    known: HashMap<Arc<str>, Known>,
    /// Per source, what this persister counted of its rotated files, `.1` first; a file
    /// rotated before this start, or after a failed rename, is not in it.
    rotated: HashMap<Arc<str>, std::collections::VecDeque<Option<Counted>>>,
    /// Files with a descriptor open, least recently written first (keys are `last_used`).
    lru: BTreeMap<u64, Arc<str>>,
    /// Sources to write at the next `write_out`: their file is open, or they gathered enough.
    dirty: Vec<Arc<str>>,
    /// Sources gathering lines while their file is closed, oldest first, with when they began.
    /// (An entry may be stale: its source was written meanwhile; writing it again is a no-op.)
    gathering: VecDeque<(Instant, Arc<str>)>,
    /// Bytes in every file's `buf`.
    buffered: usize,
    /// How long a closed file's lines may be gathered: `fsync_interval`, none with `always`.
    hold: Duration,
    /// Sources whose last write failed (or left lines to announce): tried again every 500 ms.
    failing: HashSet<Arc<str>>,
    /// Highest seq handled (written or lost) per source, for completions.
    handled: HashMap<Arc<str>, u64>,
    pending: Vec<Control>,
    tick: u64,
    /// When the next `fsync: interval` sync is due (or, while one still runs, looked at again).
    next_sync: Instant,
    /// Losses not yet logged: an overrun persister says so at most once a second.
    unlogged_loss: u64,
    last_loss_log: Option<Instant>,
    /// The `fsync: interval` sync in progress, on a thread of its own.
    background_sync: Option<std::thread::JoinHandle<Option<Deleted>>>,
    /// Rotations finishing off this thread: syncing the closed file, deleting the oldest; with
    /// the descriptors each holds meanwhile.
    rotations: Vec<(std::thread::JoinHandle<Option<Deleted>>, usize)>,
    /// Where notices about deleted lines are published (they reach the file that way too).
    notices: Option<Router>,
    /// Descriptors open for `files` and for `rotations`. With one more for a background sync
    /// while it runs, never more than `max_open_files`.
    open_fds: usize,
    /// Files written since the last interval sync and closed since: the next sync opens each
    /// by path, one at a time, off this thread. Closing a file never waits for the disk.
    closed_unsynced: Vec<PathBuf>,
    /// The exclusive lock on `local_dir`, held while the persister runs, shared by its shards.
    lock: Arc<SharedLock>,
    /// What this shard last added to the counters' `open_files` and `gathered_bytes`.
    reported: (u64, u64),
    /// Counts this writer in `writers_running` from its creation until it is dropped: its run
    /// ended, or it panicked.
    _running: Running,
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persister")
            .field("dir", &self.config.local_dir)
            .finish()
    }
}

/// The most seqs of one source that a server can have published and not yet written when it
/// dies: a full ring (the persister never lags more with `when_behind: block`, and is
/// overtaken past it with `overwrite`), a batch being written, and the lines a failing disk
/// leaves waiting for a retry or a closed file gathers (a line is at least 64 bytes).
pub fn unwritten_bound(ring_max_entries: usize) -> u64 {
    (ring_max_entries + BATCH + (MAX_RETRY_BYTES + GATHER_BYTES) / 64) as u64
}

/// The current file of a source, and its `n`th rotated file.
pub fn file_path(dir: &Path, source: &str) -> PathBuf {
    dir.join(format!("{}.jsonl", file_stem(source)))
}

pub fn rotated_path(dir: &Path, source: &str, n: usize) -> PathBuf {
    dir.join(format!("{}.jsonl.{n}", file_stem(source)))
}

/// The legacy plain-text log of a source (`<stem>.log`), read if present.
pub fn legacy_path(dir: &Path, source: &str) -> PathBuf {
    dir.join(format!("{}.log", file_stem(source)))
}

impl Persister {
    /// Locks and creates the directory, and makes the handle; run the returned persister with
    /// [`Persister::run`]. Its notices go through `router`, and it moves `router`'s durability
    /// watermark.
    pub fn new(
        config: PersisterConfig,
        router: &Router,
    ) -> std::io::Result<(Persister, PersisterHandle, mpsc::Receiver<Control>)> {
        let lock = DirLock::take(&config.local_dir)?;
        Persister::with_lock(config, router, lock)
    }

    /// [`Persister::new`] on a directory already locked.
    pub fn with_lock(
        config: PersisterConfig,
        router: &Router,
        lock: DirLock,
    ) -> std::io::Result<(Persister, PersisterHandle, mpsc::Receiver<Control>)> {
        let (mut shards, handle) = Persister::sharded(config, router, lock, 1)?;
        let (persister, control) = shards.pop().expect("one shard");
        Ok((persister, handle, control))
    }

    /// A persister of `shards` writers (at most [`MAX_SHARDS`]) on a directory already locked:
    /// run the `i`th with a cursor over [`sluice_router::Shard`] `i` of `shards`, each on a
    /// thread of its own. They share `max_open_files` and the counters; the directory is marked
    /// stopped cleanly once every one of them has stopped having written all it read.
    pub fn sharded(
        config: PersisterConfig,
        router: &Router,
        lock: DirLock,
        shards: usize,
    ) -> std::io::Result<(Vec<Writer>, PersisterHandle)> {
        let shards = shards.clamp(1, MAX_SHARDS);
        // Files a rotation was deleting when the process stopped.
        for entry in std::fs::read_dir(&config.local_dir)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(DOOMED_SUFFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let config = Arc::new(config);
        // Each shard opens at most its part of the files.
        let shard_config = Arc::new(PersisterConfig {
            max_open_files: (config.max_open_files / shards).max(1),
            ..(*config).clone()
        });
        let counters = Arc::new(PersisterCounters {
            writers: AtomicU64::new(shards as u64),
            ..PersisterCounters::default()
        });
        let lock = Arc::new(SharedLock::new(lock, shards));
        let mut senders = Vec::with_capacity(shards);
        let mut persisters = Vec::with_capacity(shards);
        for _ in 0..shards {
            let (tx, rx) = mpsc::channel(64);
            senders.push(tx);
            persisters.push((
                Persister::shard(shard_config.clone(), router, &counters, lock.clone()),
                rx,
            ));
        }
        let handle = PersisterHandle {
            control: senders.into(),
            router: router.clone(),
            counters,
            config,
        };
        Ok((persisters, handle))
    }

    fn shard(
        config: Arc<PersisterConfig>,
        router: &Router,
        counters: &Arc<PersisterCounters>,
        lock: Arc<SharedLock>,
    ) -> Persister {
        let durability = router.durability().clone();
        Persister {
            config: config.clone(),
            durability: durability.clone(),
            counters: counters.clone(),
            files: HashMap::new(),
            known: HashMap::new(),
            rotated: HashMap::new(),
            lru: BTreeMap::new(),
            dirty: Vec::new(),
            gathering: VecDeque::new(),
            buffered: 0,
            hold: match config.fsync {
                Fsync::Always => Duration::ZERO,
                Fsync::Interval | Fsync::Never => config.fsync_interval,
            },
            failing: HashSet::new(),
            handled: HashMap::new(),
            pending: Vec::new(),
            tick: 0,
            next_sync: Instant::now() + config.fsync_interval,
            unlogged_loss: 0,
            last_loss_log: None,
            background_sync: None,
            rotations: Vec::new(),
            notices: Some(router.clone()),
            open_fds: 0,
            closed_unsynced: Vec::new(),
            lock,
            reported: (0, 0),
            _running: Running::count(counters),
        }
    }

    /// Runs until `shutdown`, then writes what its cursor still holds, syncs and returns.
    pub async fn run(
        mut self,
        mut cursor: Cursor,
        mut control: mpsc::Receiver<Control>,
        shutdown: CancellationToken,
    ) {
        self.lock.running();
        cursor.track_forgotten();
        let mut deliveries = Vec::with_capacity(BATCH);
        let durability = self.durability.clone();
        let mut waits_seen = 0;
        // After a small batch the next read waits `LINGER` first, unless someone waits for the
        // disk: lines gather in the ring meanwhile, and ingest is spared a wake-up per frame.
        let mut linger = false;
        loop {
            // (Checked per loop, so kept cheap: no walk over every file.)
            let unsynced = self.config.fsync == Fsync::Interval
                && (!self.files.is_empty() || !self.closed_unsynced.is_empty());
            let sync_at = self.next_sync;
            let retry = !self.failing.is_empty();
            let rotating = !self.rotations.is_empty();
            let gathered_until = self.gathering.front().map(|(t, _)| *t + self.hold);
            // Someone began waiting for the disk: everything gathered is written now, even if
            // the wait is over by the time this writer looks (another writer's source, written
            // first), so no writer's lines sit out the interval behind a waiter's.
            let mut asked = false;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(c) = control.recv() => self.pending.push(c),
                () = durability.wanted(&mut waits_seen), if gathered_until.is_some() => asked = true,
                () = tokio::time::sleep_until(sync_at), if unsynced => {}
                () = tokio::time::sleep(Duration::from_millis(500)), if retry => {}
                // Rotations finishing in the background: announce what they deleted.
                () = tokio::time::sleep(Duration::from_millis(50)), if rotating => {}
                () = tokio::time::sleep_until(gathered_until.unwrap_or(sync_at)), if gathered_until.is_some() => {}
                () = tokio::time::sleep(LINGER), if linger => linger = false,
                _ = cursor.next_batch(&mut deliveries, BATCH), if !linger => {
                    linger = deliveries.len() < BATCH / 4 && !durability.has_waiters();
                }
            }
            // Before the lines read with them: a source made again after it was forgotten
            // starts from its files, as after a restart.
            for source in cursor.take_forgotten() {
                self.forget(&source);
            }
            self.write(&mut deliveries);
            self.write_out(asked);
            self.report();
        }
        // Shutting down: take what is already published, write it, sync it.
        while cursor.poll_into(&mut deliveries, BATCH) > 0 {
            for source in cursor.take_forgotten() {
                self.forget(&source);
            }
            self.write(&mut deliveries);
        }
        self.write_out(true);
        self.sync_all(true);
        for (r, _) in std::mem::take(&mut self.rotations) {
            if let Ok(Some(deleted)) = r.join() {
                self.announce_deleted(&deleted);
            }
        }
        for c in self.pending.drain(..) {
            let Control::Complete { reply, .. } = c;
            let _ = reply.send(Err(CompletionError::Stopping));
        }
        // Everything published is written: the next start need not skip seqs (once every
        // shard has said so).
        let clean = self
            .files
            .values()
            .all(|f| f.buf.is_empty() && f.dropped == 0);
        self.lock.stopped(clean);
        self.open_fds = 0;
        self.buffered = 0;
        self.report();
    }

    /// Drops what this writer keeps of a source the router forgot, every line of which it has
    /// written: its descriptor (synced with the next interval's, as a file closed for room
    /// is), its size, its rotated files' counts. A source made again under the id, by this
    /// writer or another, starts from its files as after a restart.
    fn forget(&mut self, source: &Arc<str>) {
        if let Some(f) = self.files.get(source)
            && (!f.buf.is_empty() || f.dropped > 0)
        {
            return; // not all written after all: kept, and written as usual
        }
        self.store_key_tags(source);
        if let Some(mut f) = self.files.remove(source)
            && f.file.is_some()
        {
            self.lru.remove(&f.last_used);
            close_file(
                &mut f,
                self.config.fsync,
                &self.counters,
                &mut self.closed_unsynced,
                &mut self.open_fds,
            );
        }
        self.known.remove(source);
        self.rotated.remove(source);
        self.handled.remove(source);
        self.failing.remove(source);
    }

    /// Writes `source`'s key tags if a line changed one since they were last written (synced
    /// as its lines are: at once with `fsync: always`, with the next interval's sync with
    /// `interval`), and returns them as they are kept now.
    fn store_key_tags(&mut self, source: &str) -> BTreeMap<String, String> {
        let (dir, fsync) = (&self.config.local_dir, self.config.fsync);
        let slot = match self.files.get_mut(source) {
            Some(f) => &mut f.key,
            None => match self.known.get_mut(source) {
                Some(k) => &mut k.key,
                None => return keytags::read(dir, source),
            },
        };
        let (tags, written) = KeyTags::store(slot, dir, source, fsync == Fsync::Always);
        if written && fsync == Fsync::Interval {
            self.closed_unsynced.push(keytags::tags_path(dir, source));
        }
        tags
    }

    /// Moves the counters' `open_files` and `gathered_bytes` by what changed in this shard.
    fn report(&mut self) {
        let now = (self.open_fds as u64, self.buffered as u64);
        let (fds, bytes) = std::mem::replace(&mut self.reported, now);
        let c = &self.counters;
        c.open_files
            .fetch_add(now.0.wrapping_sub(fds), Ordering::Relaxed);
        c.gathered_bytes
            .fetch_add(now.1.wrapping_sub(bytes), Ordering::Relaxed);
    }

    fn write(&mut self, deliveries: &mut Vec<Delivery>) {
        // Consecutive lines of one source are appended as a run: one file lookup, one
        // bookkeeping update, no allocation per line.
        let mut run: Vec<Entry> = Vec::new();
        self.counters
            .read
            .fetch_add(deliveries.len() as u64, Ordering::Relaxed);
        for d in deliveries.drain(..) {
            match d {
                Delivery::Log(env) => {
                    if run
                        .last()
                        .is_some_and(|l| !l.same_meta(&env) && l.source_id() != env.source_id())
                    {
                        self.append_run(&mut run);
                    }
                    run.push(env);
                }
                Delivery::Missed(m) => {
                    self.append_run(&mut run);
                    self.missed(&m);
                }
            }
        }
        self.append_run(&mut run);
    }

    /// Appends lines of one source, rotating its file whenever it reaches the size limit.
    fn append_run(&mut self, run: &mut Vec<Entry>) {
        let Some(last) = run.last() else { return };
        let source = match self.files.get_key_value(last.source_id()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(last.source_id()),
        };
        let last_seq = last.seq();
        let max = self.config.max_file_size_bytes;
        let mut lines = run.drain(..).peekable();
        while lines.peek().is_some() {
            let file = self.open(&source);
            let started = file.buf.len();
            let mut full = false;
            // Lines of one kind share a meta, so their tags are looked at once.
            let mut previous: Option<Entry> = None;
            for env in lines.by_ref() {
                if previous.as_ref().is_none_or(|p| !p.same_meta(&env)) {
                    KeyTags::note(&mut file.key, env.tags());
                }
                let before = file.buf.len();
                write_line(&env, &mut file.buf);
                file.size += (file.buf.len() - before) as u64;
                file.buf_lines += 1;
                Counted::add(&mut file.counted, env.seq());
                file.seq = file.seq.max(env.seq());
                previous = Some(env);
                if file.size >= max {
                    full = true;
                    break;
                }
            }
            self.gathered(&source, started);
            if full {
                self.rotate(&source);
            }
        }
        self.handled.insert(source, last_seq);
    }

    fn missed(&mut self, m: &MissedNotice) {
        self.counters.lost.fetch_add(m.count, Ordering::Relaxed);
        self.unlogged_loss += m.count;
        if self
            .last_loss_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(
                source = %m.source_id,
                lost = self.unlogged_loss,
                "the persister fell behind (lines lost since the last warning, all sources)"
            );
            self.unlogged_loss = 0;
            self.last_loss_log = Some(Instant::now());
        }
        let mut env = m.to_envelope("persister");
        env.step = Some(SERVER_STEP.into());
        self.append(&m.source_id, &env);
        self.handled.insert(m.source_id.clone(), m.last_missed_seq);
        self.durability.update(&m.source_id, 0, m.last_missed_seq);
    }

    fn append(&mut self, source: &Arc<str>, env: &Envelope) {
        let file = self.open(source);
        let before = file.buf.len();
        write_line(env, &mut file.buf);
        file.size += (file.buf.len() - before) as u64;
        file.buf_lines += 1;
        Counted::add(&mut file.counted, env.seq);
        file.seq = file.seq.max(env.seq);
        let full = file.size >= self.config.max_file_size_bytes;
        self.gathered(source, before);
        if full {
            self.rotate(source);
        }
    }

    /// After lines were added to `source`'s buffer, which held `before` bytes: counts them, and
    /// has the buffer written at the next `write_out` if its file is open (a write is cheap) or
    /// it gathered enough, or else at the latest once it has waited `hold`.
    fn gathered(&mut self, source: &Arc<str>, before: usize) {
        let Some(f) = self.files.get(source) else {
            return;
        };
        let now = f.buf.len();
        self.buffered += now.saturating_sub(before);
        let newly = before == 0 && now > 0;
        // (Checked apart from `newly`: one run of a busy source can fill it at once.)
        let full = f.file.is_none() && before < GATHER_BYTES && now >= GATHER_BYTES;
        if full || (newly && (f.file.is_some() || self.hold.is_zero())) {
            self.dirty.push(source.clone());
        } else if newly {
            self.gathering.push_back((Instant::now(), source.clone()));
        }
    }

    fn open(&mut self, source: &Arc<str>) -> &mut OpenFile {
        if !self.files.contains_key(source) {
            let path = file_path(&self.config.local_dir, source);
            let (size, torn, counted, key) = match self.known.remove(source) {
                // Written by this persister, whole lines: nothing to look at.
                Some(known) => (known.size, false, known.counted, known.key),
                None => {
                    // A long id's file name cannot give it back: keep it beside.
                    names::remember_id(&self.config.local_dir, &file_stem(source), source);
                    let size = std::fs::metadata(&path).map_or(0, |m| m.len());
                    // A file left mid-line (a crash during a write): end that line, so that
                    // the next one is not glued to it. The torn line stays unreadable; the
                    // rest stay whole.
                    let torn = size > 0 && last_byte(&path).is_some_and(|b| b != b'\n');
                    (size, torn, (size == 0).then_some(Counted::EMPTY), None)
                }
            };
            self.buffered += usize::from(torn);
            self.files.insert(
                source.clone(),
                OpenFile {
                    file: None,
                    path,
                    size: size + u64::from(torn),
                    // Grown as lines come: 100,000 gathering sources must not each hold 8 KiB.
                    buf: if torn { b"\n".to_vec() } else { Vec::new() },
                    buf_lines: 0,
                    seq: 0,
                    unsynced: false,
                    last_used: 0,
                    dropped: 0,
                    dropped_seq: 0,
                    partial: false,
                    last_error: None,
                    counted,
                    key,
                },
            );
        }
        self.files.get_mut(source).expect("just inserted")
    }

    /// Writes out `source`'s buffer, first closing the least recently used file if opening this
    /// one would pass `max_open_files`.
    fn flush_source(&mut self, source: &Arc<str>) -> std::io::Result<()> {
        let needs_fd = self
            .files
            .get(source)
            .is_some_and(|f| f.file.is_none() && !f.buf.is_empty());
        if needs_fd {
            self.make_room(source);
        }
        let Some(f) = self.files.get_mut(source) else {
            return Ok(());
        };
        let had_fd = f.file.is_some();
        let result = flush(f, &self.counters, &mut self.buffered);
        if !had_fd && f.file.is_some() {
            self.open_fds += 1;
        }
        if f.file.is_some() {
            // Most recently written now.
            if f.last_used != 0 {
                self.lru.remove(&f.last_used);
            }
            self.tick += 1;
            f.last_used = self.tick;
            self.lru.insert(self.tick, source.clone());
        }
        result
    }

    /// Closes files (or waits for background work that holds some) until one more can be
    /// opened within `max_open_files`.
    fn make_room(&mut self, keep: &Arc<str>) {
        loop {
            self.reap_rotations();
            let syncing = self
                .background_sync
                .as_ref()
                .is_some_and(|h| !h.is_finished());
            if self.open_fds + usize::from(syncing) < self.config.max_open_files.max(1) {
                return;
            }
            if self.close_least_used(keep) {
                continue;
            }
            // Nothing of ours left to close: the rest are held by background work. Rare (a
            // limit of a few files), and the wait is bounded by one sync.
            if let Some((h, n)) = (!self.rotations.is_empty()).then(|| self.rotations.remove(0)) {
                if let Ok(Some(deleted)) = h.join() {
                    self.announce_deleted(&deleted);
                }
                self.open_fds -= n;
            } else if let Some(h) = self.background_sync.take() {
                let _ = h.join();
            } else {
                return;
            }
        }
    }

    /// Closes the least recently used open file other than `keep`, writing out its buffer
    /// first. Returns false when no other file is open.
    fn close_least_used(&mut self, keep: &Arc<str>) -> bool {
        let Some((tick, victim)) = self
            .lru
            .iter()
            .find(|(_, k)| *k != keep)
            .map(|(t, k)| (*t, k.clone()))
        else {
            return false;
        };
        self.lru.remove(&tick);
        let f = self.files.get_mut(&victim).expect("open files are known");
        f.last_used = 0;
        let written = flush(f, &self.counters, &mut self.buffered).is_ok();
        close_file(
            f,
            self.config.fsync,
            &self.counters,
            &mut self.closed_unsynced,
            &mut self.open_fds,
        );
        if written {
            self.durability.update(&victim, f.seq, 0);
            if f.dropped == 0 {
                // Nothing left to write: forget it but its size, so 20,000 sources cost no more
                // than 256 open ones and a number each.
                let known = Known {
                    size: f.size,
                    counted: f.counted,
                    key: f.key.take(),
                };
                self.files.remove(&victim);
                self.known.insert(victim, known);
                return true;
            }
        }
        // Lines still to write (or to announce) with the file closed: tried again later.
        self.failing.insert(victim);
        true
    }

    /// Writes out the buffers that are due (every one when `all`, or when someone waits on
    /// durability), syncs as configured, moves the durability marks, and answers completions
    /// that are now possible.
    fn write_out(&mut self, all: bool) {
        let mut touched = Vec::new();
        for source in std::mem::take(&mut self.dirty) {
            self.write_source(source, &mut touched);
        }
        let failing: Vec<Arc<str>> = self.failing.drain().collect();
        for source in failing {
            self.write_source(source, &mut touched);
        }
        let all = all || self.durability.has_waiters();
        let now = Instant::now();
        while let Some((since, _)) = self.gathering.front() {
            let due = all || *since + self.hold <= now || self.buffered > MAX_GATHERED_BYTES;
            if !due {
                break;
            }
            let (_, source) = self.gathering.pop_front().expect("looked at");
            self.write_source(source, &mut touched);
        }
        let sync_now = match self.config.fsync {
            Fsync::Always => true,
            Fsync::Interval => Instant::now() >= self.next_sync,
            Fsync::Never => false,
        };
        if sync_now {
            self.sync_all(self.config.fsync == Fsync::Always);
        }
        for source in touched {
            if let Some(f) = self.files.get(&source) {
                self.durability.update(&source, f.seq, 0);
            }
        }
        self.durability.notify_waiters();
        self.answer_completions();
        self.reap_rotations();
    }

    /// Writes out one source's buffer (and a notice of lines it gave up on); a failure keeps
    /// what is unwritten for a retry, up to a bound past which the lines are counted lost.
    fn write_source(&mut self, source: Arc<str>, touched: &mut Vec<Arc<str>>) {
        let Some(f) = self.files.get(&source) else {
            return;
        };
        if f.buf.is_empty() && f.dropped == 0 {
            return; // written meanwhile (a stale entry)
        }
        let written = self.flush_source(&source);
        let Some(f) = self.files.get_mut(&source) else {
            return;
        };
        match written {
            Ok(()) => {
                if f.dropped > 0 {
                    let mut env = Envelope::notice(
                        &*source,
                        format!(
                            "sluice could not write {} messages for this persister: {}",
                            f.dropped,
                            f.last_error.take().unwrap_or_default()
                        ),
                    );
                    env.seq = f.dropped_seq;
                    let before = f.buf.len();
                    write_line(&env, &mut f.buf);
                    self.buffered += f.buf.len() - before;
                    f.dropped = 0;
                    if flush(f, &self.counters, &mut self.buffered).is_err() {
                        self.failing.insert(source.clone());
                    }
                }
                if KeyTags::unstored(&f.key) {
                    self.store_key_tags(&source);
                }
                touched.push(source);
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                let reason = crate::short_reason(&e);
                if f.last_error.as_deref() != Some(&reason) {
                    tracing::error!(file = %f.path.display(), error = %reason, "cannot write log file");
                }
                f.last_error = Some(reason);
                if f.buf.len() > MAX_RETRY_BYTES {
                    // Give up on these lines; say so once writing works again. The rest of a
                    // line the file already holds part of stays, so that the file is whole
                    // lines when writing resumes: nothing glued to a torn line.
                    let keep = if f.partial {
                        f.buf
                            .iter()
                            .position(|&b| b == b'\n')
                            .map_or(f.buf.len(), |i| i + 1)
                    } else {
                        0
                    };
                    let lost = f.buf_lines - u64::from(keep > 0);
                    if lost > 0 {
                        self.counters.lost.fetch_add(lost, Ordering::Relaxed);
                        f.dropped += lost;
                        f.dropped_seq = f.seq;
                        // The file no longer holds what was counted.
                        f.counted = None;
                    }
                    let gone = f.buf.len() - keep;
                    f.size -= gone as u64;
                    self.buffered = self.buffered.saturating_sub(gone);
                    f.buf.truncate(keep);
                    f.buf_lines -= lost;
                    self.durability.update(&source, 0, f.seq);
                }
                self.failing.insert(source);
            }
        }
    }

    /// Syncs every file written since the last sync. With `wait` false (`fsync: interval`) the
    /// syncs run on a thread of their own: syncing a second of writes at full speed can take
    /// longer than a ring holds, and the writer must not stall behind the disk meanwhile.
    fn sync_all(&mut self, wait: bool) {
        if let Some(running) = self.background_sync.take() {
            if !wait && !running.is_finished() {
                self.background_sync = Some(running);
                // Still syncing the previous round: look again shortly. (Left due, the loop
                // that waits for it would spin until that sync ends.)
                self.next_sync =
                    Instant::now() + self.config.fsync_interval.min(Duration::from_millis(50));
                return;
            }
            let _ = running.join();
        }
        let mut files = Vec::new();
        for f in self.files.values_mut() {
            if f.unsynced
                && let Some(file) = &f.file
            {
                if wait {
                    if let Err(e) = file.sync_data() {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(file = %f.path.display(), error = %e, "cannot sync log file");
                        continue;
                    }
                } else {
                    // By path: the writer may close this file meanwhile, and a descriptor
                    // shared with the sync would stay open behind its back.
                    files.push(ToSync::Closed(f.path.clone()));
                }
                f.unsynced = false;
            }
        }
        files.extend(self.closed_unsynced.drain(..).map(ToSync::Closed));
        self.next_sync = Instant::now() + self.config.fsync_interval;
        if files.len() > SYNCFS_ABOVE {
            // One call for the file system instead of opening and syncing each file: with
            // thousands of active sources, per-file syncs cost more than the writes.
            files = vec![ToSync::FileSystem(self.config.local_dir.clone())];
        }
        if !files.is_empty() {
            if wait {
                // Shutting down or `fsync: always`: the closed files too, before returning.
                sync_files(files, &self.counters);
            } else {
                // The sync opens one file at a time: room for it within `max_open_files`.
                let none: Arc<str> = Arc::from("");
                while self.open_fds >= self.config.max_open_files.max(1)
                    && self.close_least_used(&none)
                {}
                files.extend(self.closed_unsynced.drain(..).map(ToSync::Closed));
                self.background_sync = in_background("sluice-fsync", files, None, &self.counters);
            }
        }
    }
}

/// Counts a writer in `writers_running` for as long as it lives, however it ends.
/// Closes `f`'s descriptor (counted out of `open_fds`; its place in the LRU is the caller's).
/// If it has unsynced writes: with `always` it is synced here (every write is synced before it
/// is acknowledged: this one too); with `interval` the next sync opens it by path
/// (`closed_unsynced`), off the writer. Closing never waits for the disk otherwise.
fn close_file(
    f: &mut OpenFile,
    fsync: Fsync,
    counters: &PersisterCounters,
    closed_unsynced: &mut Vec<PathBuf>,
    open_fds: &mut usize,
) {
    let Some(file) = f.file.take() else { return };
    *open_fds -= 1;
    if std::mem::take(&mut f.unsynced) {
        match fsync {
            Fsync::Always => {
                if let Err(e) = file.sync_data() {
                    counters.errors.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(file = %f.path.display(), error = %e, "cannot sync log file");
                }
            }
            Fsync::Interval => closed_unsynced.push(f.path.clone()),
            Fsync::Never => {}
        }
    }
}

struct Running(Arc<PersisterCounters>);

impl Running {
    fn count(counters: &Arc<PersisterCounters>) -> Running {
        counters.writers_running.fetch_add(1, Ordering::Relaxed);
        Running(counters.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.writers_running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The last byte of the file at `path`.
fn last_byte(path: &Path) -> Option<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = File::open(path).ok()?;
    f.seek(SeekFrom::End(-1)).ok()?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b).ok()?;
    Some(b[0])
}

/// A file to sync: one still open (its descriptor shared), or one already closed, opened again
/// by path for the sync alone; or every file of the file system that holds a directory.
enum ToSync {
    Open(Arc<File>, PathBuf),
    Closed(PathBuf),
    FileSystem(PathBuf),
}

fn sync_files(files: Vec<ToSync>, counters: &PersisterCounters) {
    for f in files {
        let (result, path) = match f {
            ToSync::Open(file, path) => (file.sync_data(), path),
            ToSync::Closed(path) => (File::open(&path).and_then(|f| f.sync_data()), path),
            ToSync::FileSystem(dir) => (
                File::open(&dir).and_then(|d| rustix::fs::syncfs(&d).map_err(Into::into)),
                dir,
            ),
        };
        match result {
            Ok(()) => {}
            // Deleted by a rotation or a completion meanwhile: nothing left to sync.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(file = %path.display(), error = %e, "cannot sync log file");
            }
        }
    }
}

/// Writes out a file's buffer, counting its lines once they are all written.
fn flush(
    f: &mut OpenFile,
    counters: &PersisterCounters,
    buffered: &mut usize,
) -> std::io::Result<()> {
    if f.buf.is_empty() {
        return Ok(());
    }
    if f.file.is_none() {
        let file = crate::private::open_append(&f.path)?;
        f.file = Some(Arc::new(file));
    }
    let mut file: &File = f.file.as_deref().expect("opened above");
    // Track what got written, so a retry after a failure (disk full) does not repeat it.
    while !f.buf.is_empty() {
        match file.write(&f.buf) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                // Lines count as written once their newline is; a short write (a filling
                // disk) leaves the file mid-line, and says so.
                let done = if n == f.buf.len() {
                    f.buf_lines
                } else {
                    // (At most the lines buffered: a lone newline ending a torn line is none.)
                    let ends = f.buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
                    ends.min(f.buf_lines)
                };
                counters.lines.fetch_add(done, Ordering::Relaxed);
                f.buf_lines -= done;
                f.partial = f.buf[n - 1] != b'\n';
                f.buf.drain(..n);
                *buffered = buffered.saturating_sub(n);
                f.unsynced = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
