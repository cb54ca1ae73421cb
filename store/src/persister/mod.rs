//! The persister (SPEC §6): every source's envelopes as JSONL lines in its own file, written in
//! batches from one cursor over all sources.
//!
//! - Files: `local_dir/<stem>.jsonl` (see [`names::file_stem`]), rotated at
//!   `max_file_size_bytes` to `<stem>.jsonl.1`, `.2`, … keeping `max_files` files in all.
//!   With an archive (`keep_segments` > 0), the file rotated out is not deleted but kept as a
//!   segment (`.archive/segments/<stem>/<stem>.jsonl.sNNNNNNNN`) until the source completes,
//!   so a job that rotates is archived whole. Whatever is deleted (beyond `keep_segments`, or
//!   without an archive) is counted and announced: a `_server` notice with the exact count.
//! - `fsync`: `never`, `interval` (every `fsync_interval_millis`), or `always` (after each batch).
//! - When the persister's cursor is overrun it writes a `_server` line with the exact count lost.
//! - A write that fails (disk full) keeps its bytes for the next try, up to a bound; past it the
//!   lines are counted and announced with a `_server` line once writing works again.
//! - [`Durability`] tells native ingest when a batch is on disk, for `ack=durable`.

pub mod line;
pub mod names;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sluice_router::{Cursor, Delivery, Durability, Envelope, MissedNotice, Router};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use line::{Line, SERVER_STEP, write_line};
pub use names::file_stem;

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
}

/// A handle to ask the persister things.
#[derive(Debug, Clone)]
pub struct PersisterHandle {
    pub control: mpsc::Sender<Control>,
    pub counters: Arc<PersisterCounters>,
    pub config: Arc<PersisterConfig>,
}

/// Why the persister could not complete a source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompletionError {
    /// The server is stopping (or the persister has stopped): try again after the restart.
    #[error("sluice is shutting down")]
    Stopping,
    /// The source's file could not be written out.
    #[error("cannot write {}: {reason}", path.display())]
    Write { path: PathBuf, reason: String },
    /// A file could not be moved aside for the archive.
    #[error("cannot move {} aside: {reason}", path.display())]
    Move { path: PathBuf, reason: String },
}

impl PersisterHandle {
    /// Waits until `source` is written through `upto`, then closes its file (and moves its
    /// files into `move_to`, when given).
    pub async fn complete(
        &self,
        source: &str,
        upto: u64,
        move_to: Option<PathBuf>,
    ) -> Result<Completed, CompletionError> {
        let (reply, rx) = oneshot::channel();
        self.control
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
}

/// The persister task's state.
pub struct Persister {
    config: Arc<PersisterConfig>,
    durability: Arc<Durability>,
    counters: Arc<PersisterCounters>,
    files: HashMap<Arc<str>, OpenFile>,
    /// Highest seq handled (written or lost) per source, for completions.
    handled: HashMap<Arc<str>, u64>,
    pending: Vec<Control>,
    tick: u64,
    last_sync: Instant,
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
    /// The exclusive lock on `local_dir`, held while the persister runs.
    lock: DirLock,
}

impl std::fmt::Debug for Persister {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Persister")
            .field("dir", &self.config.local_dir)
            .finish()
    }
}

/// The lock file in `local_dir`: it holds the pid of the server that has the directory, and
/// `stopped` once that server has written everything it published and stopped.
pub const LOCK_FILE: &str = ".sluice.lock";
const STOPPED: &str = "stopped";

/// The most seqs of one source that a server can have published and not yet written when it
/// dies: a full ring (the persister never lags more with `when_behind: block`, and is
/// overtaken past it with `overwrite`), a batch being written, and the lines a failing disk
/// leaves waiting for a retry (a line is at least 64 bytes).
pub fn unwritten_bound(ring_max_entries: usize) -> u64 {
    (ring_max_entries + BATCH + MAX_RETRY_BYTES / 64) as u64
}

/// The exclusive lock on a storage directory, so that two servers never write the same files
/// (their seqs would interleave). The lock goes with the process, however it ends.
#[derive(Debug)]
pub struct DirLock {
    file: File,
    stopped_cleanly: bool,
    /// Set once the persister runs: from then on only its clean end marks the directory.
    running: bool,
}

impl Drop for DirLock {
    /// A start that failed before the persister ran published nothing: the directory stays
    /// as clean as it was.
    fn drop(&mut self) {
        if !self.running && self.stopped_cleanly {
            let _ = self.mark_stopped();
        }
    }
}

impl DirLock {
    /// Creates `dir` if needed and locks it; fails, naming the holder, if another server has it.
    pub fn take(dir: &Path) -> std::io::Result<DirLock> {
        std::fs::create_dir_all(dir)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join(LOCK_FILE))?;
        let locked = file.try_lock();
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut file, &mut text);
        match locked {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let pid = text.trim();
                let who = if pid.is_empty() || pid == STOPPED {
                    "another sluice".to_owned()
                } else {
                    format!("another sluice (pid {pid})")
                };
                return Err(std::io::Error::new(
                    std::io::ErrorKind::ResourceBusy,
                    format!("{who} is using it"),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        // A new directory, or one whose last server wrote all it published before stopping.
        let stopped_cleanly = text.is_empty() || text.trim() == STOPPED;
        // Who holds it, for the next one to say; a full disk must not stop the start.
        file.set_len(0)?;
        file.seek(std::io::SeekFrom::Start(0))?;
        let _ = writeln!(file, "{}", std::process::id());
        Ok(DirLock {
            file,
            stopped_cleanly,
            running: false,
        })
    }

    /// Whether the last server on the directory stopped having written all it published (or
    /// there was none): if not, seqs it may have handed out unwritten must be skipped.
    pub fn stopped_cleanly(&self) -> bool {
        self.stopped_cleanly
    }

    /// Says the next server need skip nothing.
    fn mark_stopped(&self) -> std::io::Result<()> {
        let mut file = &self.file;
        file.set_len(0)?;
        file.seek(std::io::SeekFrom::Start(0))?;
        writeln!(file, "{STOPPED}")?;
        file.sync_all()
    }
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
        // Files a rotation was deleting when the process stopped.
        for entry in std::fs::read_dir(&config.local_dir)?.flatten() {
            if entry.file_name().to_string_lossy().ends_with(DOOMED_SUFFIX) {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let config = Arc::new(config);
        let durability = router.durability().clone();
        let counters = Arc::new(PersisterCounters::default());
        let (tx, rx) = mpsc::channel(64);
        let persister = Persister {
            config: config.clone(),
            durability: durability.clone(),
            counters: counters.clone(),
            files: HashMap::new(),
            handled: HashMap::new(),
            pending: Vec::new(),
            tick: 0,
            last_sync: Instant::now(),
            unlogged_loss: 0,
            last_loss_log: None,
            background_sync: None,
            rotations: Vec::new(),
            notices: Some(router.clone()),
            open_fds: 0,
            closed_unsynced: Vec::new(),
            lock,
        };
        let handle = PersisterHandle {
            control: tx,
            counters,
            config,
        };
        Ok((persister, handle, rx))
    }

    /// Runs until `shutdown`, then writes what its cursor still holds, syncs and returns.
    pub async fn run(
        mut self,
        mut cursor: Cursor,
        mut control: mpsc::Receiver<Control>,
        shutdown: CancellationToken,
    ) {
        self.lock.running = true;
        let mut deliveries = Vec::with_capacity(BATCH);
        loop {
            let unsynced =
                self.files.values().any(|f| f.unsynced) && self.config.fsync == Fsync::Interval;
            let sync_at = self.last_sync + self.config.fsync_interval;
            let retry = self.files.values().any(|f| !f.buf.is_empty());
            let rotating = !self.rotations.is_empty();
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                Some(c) = control.recv() => self.pending.push(c),
                () = tokio::time::sleep_until(sync_at), if unsynced => {}
                () = tokio::time::sleep(Duration::from_millis(500)), if retry => {}
                // Rotations finishing in the background: announce what they deleted.
                () = tokio::time::sleep(Duration::from_millis(50)), if rotating => {}
                _ = cursor.next_batch(&mut deliveries, BATCH) => {}
            }
            self.write(&mut deliveries);
            self.write_out();
        }
        // Shutting down: take what is already published, write it, sync it.
        while cursor.poll_into(&mut deliveries, BATCH) > 0 {
            self.write(&mut deliveries);
        }
        self.write_out();
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
        // Everything published is written: the next start need not skip seqs.
        if self
            .files
            .values()
            .all(|f| f.buf.is_empty() && f.dropped == 0)
        {
            let _ = self.lock.mark_stopped();
        }
    }

    fn write(&mut self, deliveries: &mut Vec<Delivery>) {
        // Consecutive lines of one source are appended as a run: one file lookup, one
        // bookkeeping update, no allocation per line.
        let mut run: Vec<Arc<Envelope>> = Vec::new();
        for d in deliveries.drain(..) {
            match d {
                Delivery::Log(env) => {
                    if run.last().is_some_and(|l| l.source_id != env.source_id) {
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
    fn append_run(&mut self, run: &mut Vec<Arc<Envelope>>) {
        let Some(last) = run.last() else { return };
        let source = match self.files.get_key_value(last.source_id.as_str()) {
            Some((k, _)) => k.clone(),
            None => Arc::from(last.source_id.as_str()),
        };
        let last_seq = last.seq;
        self.tick += 1;
        let tick = self.counters.rotations.load(Ordering::Relaxed);
        let max = self.config.max_file_size_bytes;
        let mut lines = run.drain(..).peekable();
        while lines.peek().is_some() {
            let file = self.open(&source);
            file.last_used = tick;
            let mut full = false;
            for env in lines.by_ref() {
                let before = file.buf.len();
                write_line(&env, &mut file.buf);
                file.size += (file.buf.len() - before) as u64;
                file.buf_lines += 1;
                file.seq = file.seq.max(env.seq);
                if file.size >= max {
                    full = true;
                    break;
                }
            }
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
        self.tick += 1;
        let tick = self.counters.rotations.load(Ordering::Relaxed);
        let file = self.open(source);
        let before = file.buf.len();
        write_line(env, &mut file.buf);
        file.size += (file.buf.len() - before) as u64;
        file.buf_lines += 1;
        file.seq = file.seq.max(env.seq);
        file.last_used = tick;
        if file.size >= self.config.max_file_size_bytes {
            self.rotate(source);
        }
    }

    fn open(&mut self, source: &Arc<str>) -> &mut OpenFile {
        if !self.files.contains_key(source) {
            let path = file_path(&self.config.local_dir, source);
            // A long id's file name cannot give it back: keep it beside.
            names::remember_id(&self.config.local_dir, &file_stem(source), source);
            let size = std::fs::metadata(&path).map_or(0, |m| m.len());
            // A file left mid-line (a crash during a write): end that line, so that the next
            // one is not glued to it. The torn line stays unreadable; the rest stay whole.
            let torn = size > 0 && last_byte(&path).is_some_and(|b| b != b'\n');
            self.files.insert(
                source.clone(),
                OpenFile {
                    file: None,
                    path,
                    size: size + u64::from(torn),
                    buf: if torn {
                        b"\n".to_vec()
                    } else {
                        Vec::with_capacity(8192)
                    },
                    buf_lines: 0,
                    seq: 0,
                    unsynced: false,
                    last_used: 0,
                    dropped: 0,
                    dropped_seq: 0,
                    partial: false,
                    last_error: None,
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
        let result = flush(f, &self.counters);
        if !had_fd && f.file.is_some() {
            self.open_fds += 1;
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

    /// Forgets rotations that have finished, and the descriptors they held; announces what
    /// they deleted.
    fn reap_rotations(&mut self) {
        let mut i = 0;
        while i < self.rotations.len() {
            if !self.rotations[i].0.is_finished() {
                i += 1;
                continue;
            }
            let (h, n) = self.rotations.remove(i);
            self.open_fds -= n;
            if let Ok(Some(deleted)) = h.join() {
                self.announce_deleted(&deleted);
            }
        }
    }

    fn announce_deleted(&self, d: &Deleted) {
        self.counters
            .deleted_lines
            .fetch_add(d.lines, Ordering::Relaxed);
        if d.lines == 0 {
            return;
        }
        let seqs = match (d.first_seq, d.last_seq) {
            (Some(a), Some(b)) => format!(" (seqs {a} to {b})"),
            _ => String::new(),
        };
        let text = format!(
            "sluice deleted {} {} of this source{seqs} from disk: {}",
            d.lines,
            if d.lines == 1 { "line" } else { "lines" },
            d.why
        );
        tracing::warn!(source = %d.source, lines = d.lines, "{}", d.why);
        if let Some(router) = &self.notices
            && let Err(e) = router.publish_notice(Envelope::notice(&*d.source, text))
        {
            tracing::warn!(error = %e, "cannot publish a deletion notice");
        }
    }

    /// Closes the least recently used open file other than `keep`, writing out its buffer
    /// first. Returns false when no other file is open.
    fn close_least_used(&mut self, keep: &Arc<str>) -> bool {
        let Some(victim) = self
            .files
            .iter()
            .filter(|(k, f)| f.file.is_some() && *k != keep)
            .min_by_key(|(_, f)| f.last_used)
            .map(|(k, _)| k.clone())
        else {
            return false;
        };
        let f = self.files.get_mut(&victim).expect("found above");
        let written = flush(f, &self.counters).is_ok();
        let file = f.file.take().expect("open");
        self.open_fds -= 1;
        if f.unsynced {
            match self.config.fsync {
                // Every write is synced before it is acknowledged: this one too, here.
                Fsync::Always => {
                    if let Err(e) = file.sync_data() {
                        self.counters.errors.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(file = %f.path.display(), error = %e, "cannot sync log file");
                    }
                }
                Fsync::Interval => self.closed_unsynced.push(f.path.clone()),
                Fsync::Never => {}
            }
            f.unsynced = false;
        }
        drop(file);
        if written {
            self.durability.update(&victim, f.seq, 0);
            if f.dropped == 0 {
                // Nothing left to write: forget it, so 20,000 sources cost no more than 256.
                self.files.remove(&victim);
            }
        }
        true
    }

    /// Writes out every buffer, syncs as configured, moves the durability marks, and answers
    /// completions that are now possible.
    fn write_out(&mut self) {
        let mut touched = Vec::new();
        let waiting: Vec<Arc<str>> = self
            .files
            .iter()
            .filter(|(_, f)| !f.buf.is_empty() || f.dropped > 0)
            .map(|(k, _)| k.clone())
            .collect();
        for source in waiting {
            let written = self.flush_source(&source);
            let Some(f) = self.files.get_mut(&source) else {
                continue;
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
                        write_line(&env, &mut f.buf);
                        f.dropped = 0;
                        let _ = flush(f, &self.counters);
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
                        // Give up on these lines; say so once writing works again. The rest
                        // of a line the file already holds part of stays, so that the file is
                        // whole lines when writing resumes: nothing glued to a torn line.
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
                        }
                        f.size -= (f.buf.len() - keep) as u64;
                        f.buf.truncate(keep);
                        f.buf_lines -= lost;
                        self.durability.update(&source, 0, f.seq);
                    }
                }
            }
        }
        let sync_now = match self.config.fsync {
            Fsync::Always => true,
            Fsync::Interval => self.last_sync.elapsed() >= self.config.fsync_interval,
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

    /// Syncs every file written since the last sync. With `wait` false (`fsync: interval`) the
    /// syncs run on a thread of their own: syncing a second of writes at full speed can take
    /// longer than a ring holds, and the writer must not stall behind the disk meanwhile.
    fn sync_all(&mut self, wait: bool) {
        if let Some(running) = self.background_sync.take() {
            if !wait && !running.is_finished() {
                self.background_sync = Some(running);
                return; // still syncing the previous round; try again at the next write_out
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
        self.last_sync = Instant::now();
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

    fn rotate(&mut self, source: &Arc<str>) {
        let dir = self.config.local_dir.clone();
        let always = self.config.fsync == Fsync::Always;
        if self.flush_source(source).is_err() {
            return; // keep writing to the current file; rotation is tried again later
        }
        let Some(f) = self.files.get_mut(source) else {
            return;
        };
        // Syncing the closed file and deleting the oldest each take tens of milliseconds at full
        // speed, longer than a ring holds: they finish on a thread of their own, unless every
        // write must be synced before it is acknowledged (`fsync: always`).
        let mut closed = f.file.take();
        if always && let Some(file) = closed.take() {
            self.open_fds -= 1;
            let _ = file.sync_data();
        }
        let keep = self.config.max_files.max(1) - 1;
        let keep_segments = self.config.keep_segments;
        let max_files = self.config.max_files;
        let mut doomed: Option<(PathBuf, String)> = None;
        let tick = self.counters.rotations.load(Ordering::Relaxed);
        let result = (|| -> std::io::Result<()> {
            // Renamed aside at once, deleted later: the name is free for the next rotation. A
            // name of its own, so that a quick next rotation cannot replace it before its lines
            // are counted.
            let doom = |path: &Path| -> std::io::Result<PathBuf> {
                let mut name = path.file_name().unwrap_or_default().to_owned();
                name.push(format!(".{tick}{DOOMED_SUFFIX}"));
                let aside = dir.join(name);
                std::fs::rename(path, &aside)?;
                Ok(aside)
            };
            // The file rotating out: kept as a segment for the archive, or deleted.
            let mut set_aside = |path: &Path| -> std::io::Result<()> {
                if keep_segments == 0 {
                    let why = format!(
                        "rotation keeps log_storage.max_files = {max_files} files per source"
                    );
                    doomed = Some((doom(path)?, why));
                    return Ok(());
                }
                let existing = segments(&dir, source);
                let next = existing.last().and_then(|p| segment_number(p)).unwrap_or(0) + 1;
                let seg_dir = segments_dir(&dir, source);
                std::fs::create_dir_all(&seg_dir)?;
                let name = format!("{}.jsonl.s{next:08}", file_stem(source));
                std::fs::rename(path, seg_dir.join(name))?;
                if existing.len() >= keep_segments {
                    let why = format!(
                        "more than log_storage.keep_segments = {keep_segments} rotated files of this source waited for its completion"
                    );
                    doomed = Some((doom(&existing[0])?, why));
                }
                Ok(())
            };
            if keep == 0 {
                return set_aside(&f.path);
            }
            let oldest = rotated_path(&dir, source, keep);
            if oldest.exists() {
                set_aside(&oldest)?;
            }
            for n in (1..keep).rev() {
                let from = rotated_path(&dir, source, n);
                if from.exists() {
                    std::fs::rename(&from, rotated_path(&dir, source, n + 1))?;
                }
            }
            std::fs::rename(&f.path, rotated_path(&dir, source, 1))
        })();
        match result {
            Ok(()) => {
                f.size = 0;
                f.unsynced = false;
                self.counters.rotations.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
                tracing::error!(file = %f.path.display(), error = %e, "cannot rotate log file");
            }
        }
        if closed.is_none() && doomed.is_none() {
            return;
        }
        // Where the closed file lives now, for the log if its sync fails.
        let closed_path = rotated_path(&dir, source, 1);
        let closed: Vec<_> = closed
            .map(|f| ToSync::Open(f, closed_path))
            .into_iter()
            .collect();
        // The closed file's descriptor stays counted until its sync is done.
        let held = closed.len();
        let doomed = doomed.map(|(path, why)| (path, source.clone(), why));
        match in_background("sluice-rotate", closed, doomed, &self.counters) {
            Some(h) => self.rotations.push((h, held)),
            None => self.open_fds -= held,
        }
        self.reap_rotations();
    }

    fn answer_completions(&mut self) {
        let mut still = Vec::new();
        for c in std::mem::take(&mut self.pending) {
            let Control::Complete {
                source,
                upto,
                move_to,
                reply,
            } = c;
            let handled = self.handled.get(source.as_str()).copied().unwrap_or(0);
            if handled < upto {
                still.push(Control::Complete {
                    source,
                    upto,
                    move_to,
                    reply,
                });
                continue;
            }
            let key: Arc<str> = Arc::from(source.as_str());
            if let Err(e) = self.flush_source(&key) {
                let path = self.files.get(&key).map(|f| f.path.clone());
                let _ = reply.send(Err(CompletionError::Write {
                    path: path.unwrap_or_default(),
                    reason: crate::short_reason(&e),
                }));
                continue;
            }
            if let Some(mut f) = self.files.remove(&key)
                && let Some(file) = f.file.take()
            {
                self.open_fds -= 1;
                let _ = file.sync_data();
            }
            let done = self.completed(&source);
            let _ = reply.send(match move_to {
                None => Ok(done),
                Some(dir) => {
                    let moved = move_completed(done, &dir, &self.config.local_dir);
                    let _ = std::fs::remove_dir(segments_dir(&self.config.local_dir, &source));
                    moved
                }
            });
        }
        self.pending = still;
    }

    fn completed(&self, source: &str) -> Completed {
        let dir = &self.config.local_dir;
        let path = Some(file_path(dir, source)).filter(|p| p.exists());
        let mut rotated: Vec<PathBuf> = (1..self.config.max_files.max(1))
            .map(|n| rotated_path(dir, source, n))
            .filter(|p| p.exists())
            .collect();
        rotated.reverse();
        // Segments are older than every rotated file.
        let mut all = segments(dir, source);
        all.append(&mut rotated);
        Completed { path, rotated: all }
    }
}

/// Moves a completion's files into `dir` (same file names), durably, and says where they are.
fn move_completed(
    done: Completed,
    dir: &Path,
    local_dir: &Path,
) -> Result<Completed, CompletionError> {
    let fail = |what: &Path, e: std::io::Error| CompletionError::Move {
        path: what.to_owned(),
        reason: crate::short_reason(&e),
    };
    std::fs::create_dir_all(dir).map_err(|e| fail(dir, e))?;
    let mut moved = |from: PathBuf| -> Result<PathBuf, CompletionError> {
        let to = dir.join(from.file_name().unwrap_or_default());
        std::fs::rename(&from, &to).map_err(|e| fail(&from, e))?;
        Ok(to)
    };
    let rotated = done
        .rotated
        .into_iter()
        .map(&mut moved)
        .collect::<Result<Vec<_>, _>>()?;
    let path = done.path.map(&mut moved).transpose()?;
    for d in [dir, local_dir] {
        if let Ok(f) = File::open(d) {
            let _ = f.sync_all();
        }
    }
    Ok(Completed { path, rotated })
}

/// Lines a rotation deleted, for the notice.
#[derive(Debug)]
struct Deleted {
    source: Arc<str>,
    lines: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    why: String,
}

/// Syncs `files`, then counts the lines of `doomed` (a file of a source, and why it goes) and
/// deletes it, on a thread of its own; a failed sync is counted and logged there. `None` if the
/// thread could not start (said in the log).
fn in_background(
    name: &str,
    files: Vec<ToSync>,
    doomed: Option<(PathBuf, Arc<str>, String)>,
    counters: &Arc<PersisterCounters>,
) -> Option<std::thread::JoinHandle<Option<Deleted>>> {
    let counters = counters.clone();
    let work = move || {
        sync_files(files, &counters);
        let (path, source, why) = doomed?;
        let (lines, first_seq) = count_lines(&path);
        let last_seq = Some(crate::files::last_seq_in(&path)).filter(|&s| s > 0);
        let _ = std::fs::remove_file(path);
        Some(Deleted {
            source,
            lines,
            first_seq,
            last_seq,
            why,
        })
    };
    std::thread::Builder::new()
        .name(name.into())
        .spawn(work)
        .inspect_err(|e| tracing::error!(error = %e, thread = name, "cannot start a thread"))
        .ok()
}

/// The lines of the file at `path`, and the seq of its first line.
fn count_lines(path: &Path) -> (u64, Option<u64>) {
    use std::io::{BufRead, Read};
    let Ok(file) = File::open(path) else {
        return (0, None);
    };
    let mut reader = std::io::BufReader::with_capacity(256 * 1024, file);
    let mut first = Vec::new();
    let _ = reader.read_until(b'\n', &mut first);
    let first_seq = serde_json::from_slice::<Line>(&first)
        .ok()
        .and_then(|l| l.seq);
    let mut lines = u64::from(first.ends_with(b"\n"));
    let mut buf = vec![0u8; 256 * 1024];
    while let Ok(n) = reader.read(&mut buf) {
        if n == 0 {
            break;
        }
        lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
    }
    (lines, first_seq)
}

/// Where a source's rotated files wait for its completion, with an archive.
pub fn segments_dir(dir: &Path, source: &str) -> PathBuf {
    dir.join(".archive")
        .join("segments")
        .join(file_stem(source))
}

/// A source's segments, oldest first.
pub fn segments(dir: &Path, source: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(segments_dir(dir, source)) else {
        return Vec::new();
    };
    let mut found: Vec<(u64, PathBuf)> = entries
        .flatten()
        .map(|e| e.path())
        .filter_map(|p| Some((segment_number(&p)?, p)))
        .collect();
    found.sort();
    found.into_iter().map(|(_, p)| p).collect()
}

fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let (_, n) = name.rsplit_once(".jsonl.s")?;
    n.parse().ok()
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
/// by path for the sync alone.
enum ToSync {
    Open(Arc<File>, PathBuf),
    Closed(PathBuf),
}

fn sync_files(files: Vec<ToSync>, counters: &PersisterCounters) {
    for f in files {
        let (result, path) = match f {
            ToSync::Open(file, path) => (file.sync_data(), path),
            ToSync::Closed(path) => (File::open(&path).and_then(|f| f.sync_data()), path),
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
fn flush(f: &mut OpenFile, counters: &PersisterCounters) -> std::io::Result<()> {
    if f.buf.is_empty() {
        return Ok(());
    }
    if f.file.is_none() {
        let file = OpenOptions::new().create(true).append(true).open(&f.path)?;
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
                f.unsynced = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}
