//! Jobs, as Strøm sees them: a source whose lines carry steps, that ends with a status, and
//! whose log is read back as JSONL wherever it now lives.
//!
//! Reads go through every tier in seq order, each line once: S3 objects and local files of
//! earlier completions, the source's segments, rotated and current files (or the legacy
//! `<stem>.log` when there is no JSONL), and the lines still only in the ring.

use std::collections::{BTreeMap, VecDeque};
use std::path::{Path, PathBuf};

use crate::archive::{self, Archive};
use crate::persister::{Line, legacy_path};
use bytes::{Bytes, BytesMut};
use sluice_router::router::SourceStats;
use std::sync::Arc;
use std::time::Duration;

use sluice_router::{
    Cursor, Delivery, Durability, Entry, EnvelopeError, Fields, Filter, History, MissedNotice,
    Router, Selector, Start,
};

/// A job's whole log as Strøm's `{"logs": "<jsonl>"}`, streamed in chunks of about 64 KiB:
/// a legacy `<stem>.log` (when there is no JSONL), then each completion (its local files, or its
/// S3 object once they are gone), then the source's segments, rotated and current files, then
/// what only the ring holds yet. Tiers are read in seq order and a line is written once, by the
/// first tier that has it; memory stays at a few chunks however long the log, S3 objects included. `None` when nothing is known of the source.
pub async fn log_body(
    router: &Router,
    stored: Stored,
    source: &str,
    step: Option<&str>,
) -> std::io::Result<Option<tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>>> {
    let tiers = stored.tiers(source).await?;
    let legacy = legacy_path(&stored.dir, source);
    let in_ring = router.source_stats(source).is_some_and(|s| s.published > 0);
    if tiers.is_empty() && !in_ring && !tokio::fs::try_exists(&legacy).await.unwrap_or(false) {
        return Ok(None);
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let mut w = JsonlWriter {
        buf: BytesMut::with_capacity(CHUNK + 4096),
        tx,
        floor: 0,
        newest: 0,
        step: step.map(str::to_owned),
    };
    let router = router.clone();
    let source = source.to_owned();
    tokio::spawn(async move {
        w.buf.extend_from_slice(b"{\"logs\":\"");
        let result: Result<(), std::io::Error> = async {
            if tiers.is_empty() {
                w = blocking(w, move |w| w.legacy(&legacy)).await?;
            }
            for tier in tiers {
                w.next_tier();
                match tier {
                    Tier::Files(files) => w = blocking(w, move |w| w.files(&files)).await?,
                    Tier::Object { key, .. } => {
                        w = stored
                            .object_lines(&key, w, |w, line| {
                                w.line(line);
                                w.buf.len() < CHUNK || w.flush_blocking().is_ok()
                            })
                            .await?;
                        if w.tx.is_closed() {
                            return Err(gone());
                        }
                    }
                }
            }
            w.next_tier();
            let ring = router
                .recent(&source, usize::MAX, &Filter::default())
                .unwrap_or_default();
            for env in ring {
                w.line(Line::from_envelope(&env));
                if w.buf.len() >= CHUNK {
                    w.flush().await?;
                }
            }
            w.buf.extend_from_slice(b"\"}");
            w.flush().await
        }
        .await;
        if let Err(e) = result {
            // The status went out with the first chunk: the client sees the body cut short.
            tracing::warn!(job = %source, error = %e, "job log read failed");
        }
    });
    Ok(Some(rx))
}

/// Bytes of the answer gathered before they are sent.
const CHUNK: usize = 64 * 1024;

/// Writes lines into the `logs` string of the answer.
struct JsonlWriter {
    buf: BytesMut,
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    /// The newest seq earlier tiers wrote: a line at or below it was written already. (Within
    /// a tier lines are written as they come: a file may hold a notice after newer lines.)
    floor: u64,
    /// The newest seq written so far.
    newest: u64,
    step: Option<String>,
}

/// The client went away.
fn gone() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away")
}

/// Runs `work` on the writer off the async runtime (it reads files), and hands it back.
async fn blocking(
    mut w: JsonlWriter,
    work: impl FnOnce(&mut JsonlWriter) -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<JsonlWriter> {
    tokio::task::spawn_blocking(move || work(&mut w).map(|()| w))
        .await
        .map_err(std::io::Error::other)?
}

impl JsonlWriter {
    fn line(&mut self, line: Line) {
        if let Some(seq) = line.seq {
            if seq <= self.floor {
                return;
            }
            self.newest = self.newest.max(seq);
        }
        if self.step.is_some() && line.step != self.step {
            return;
        }
        // The line's JSON, then its newline, as the inside of a JSON string.
        let quoted = serde_json::to_string(&line.to_json()).unwrap_or_default();
        self.buf
            .extend_from_slice(&quoted.as_bytes()[1..quoted.len() - 1]);
        self.buf.extend_from_slice(b"\\n");
    }

    /// A JSONL line as read; unreadable ones (a torn last line) are skipped.
    fn raw_line(&mut self, raw: &[u8]) -> std::io::Result<()> {
        if let Ok(line) = serde_json::from_slice::<Line>(raw) {
            self.line(line);
        }
        if self.buf.len() >= CHUNK {
            self.flush_blocking()?;
        }
        Ok(())
    }

    fn files(&mut self, files: &[PathBuf]) -> std::io::Result<()> {
        for path in files {
            let file = match std::fs::File::open(path) {
                Ok(f) => f,
                // Archived and removed meanwhile: its lines are in S3 now.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let reader = std::io::BufReader::with_capacity(CHUNK, file);
            for raw in std::io::BufRead::split(reader, b'\n') {
                self.raw_line(&raw?)?;
            }
        }
        Ok(())
    }

    /// A pre-JSONL log: one plain line per line, without seqs.
    fn legacy(&mut self, path: &Path) -> std::io::Result<()> {
        let Ok(file) = std::fs::File::open(path) else {
            return Ok(());
        };
        let reader = std::io::BufReader::with_capacity(CHUNK, file);
        for raw in std::io::BufRead::split(reader, b'\n') {
            let raw = raw?;
            self.line(Line {
                ts: String::new(),
                stream: "stdout".into(),
                step: None,
                line: String::from_utf8_lossy(&raw).into_owned(),
                origin: None,
                seq: None,
            });
            if self.buf.len() >= CHUNK {
                self.flush_blocking()?;
            }
        }
        Ok(())
    }

    /// Done with one tier: the next writes only what is newer.
    fn next_tier(&mut self) {
        self.floor = self.newest;
    }

    fn flush_blocking(&mut self) -> std::io::Result<()> {
        let chunk = self.buf.split().freeze();
        self.tx.blocking_send(Ok(chunk)).map_err(|_| gone())
    }

    async fn flush(&mut self) -> std::io::Result<()> {
        let chunk = self.buf.split().freeze();
        self.tx.send(Ok(chunk)).await.map_err(|_| gone())
    }
}

/// Where some of a source's stored lines are. Tiers come oldest first, and seqs rise from one
/// to the next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Tier {
    /// Local files, oldest first.
    Files(Vec<PathBuf>),
    /// The S3 object of a completion whose local files are gone, and the newest seq it holds
    /// (0 when its record is older than that field).
    Object { key: String, last_seq: u64 },
}

/// A source in the list of every source: the router's stats when it has them, and where its
/// lines live (`memory`, `files`, `s3`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Listed {
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub stats: Option<SourceStats>,
    /// Set (with null counts) for a source known only from storage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    pub lines_in: Vec<&'static str>,
}

/// One page of the list of sources, and where the next begins (none after the last page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub sources: Vec<Listed>,
    /// Pass as `after` for the next page.
    pub next_after: Option<String>,
}

/// Storage as readers need it: the directory, how many files a source keeps, and the archive.
#[derive(Debug, Clone)]
pub struct Stored {
    pub dir: PathBuf,
    pub max_files: usize,
    pub archive: Option<Archive>,
}

impl Stored {
    /// Every tier of `source`, oldest first: each completion (its files while they are on
    /// disk, else its object), then the files not yet completed. Lists directories and reads
    /// archive records off the async runtime.
    pub async fn tiers(&self, source: &str) -> std::io::Result<Vec<Tier>> {
        let (stored, source) = (self.clone(), source.to_owned());
        tokio::task::spawn_blocking(move || stored.tiers_blocking(&source))
            .await
            .map_err(std::io::Error::other)
    }

    /// [`Stored::tiers`], on the calling thread.
    pub fn tiers_blocking(&self, source: &str) -> Vec<Tier> {
        let mut tiers: Vec<Tier> = archive::records_of(&self.dir, source)
            .into_iter()
            .filter_map(|r| {
                if r.files.iter().all(|f| f.exists()) {
                    Some(Tier::Files(r.files))
                } else {
                    // Uploaded and removed: only S3 has it (nothing to read without S3).
                    self.archive.as_ref().map(|_| Tier::Object {
                        key: r.key,
                        last_seq: r.last_seq,
                    })
                }
            })
            .collect();
        let live = crate::history::live_files(&self.dir, source, self.max_files);
        if !live.is_empty() {
            tiers.push(Tier::Files(live));
        }
        tiers
    }

    /// The last `limit` lines of `id` that match `filter`, oldest first: the ring's, and before
    /// them what storage holds (files, then S3). `None` if neither knows the source.
    pub async fn recent(
        &self,
        router: &Router,
        id: &str,
        limit: usize,
        filter: Filter,
    ) -> std::io::Result<Option<Vec<Entry>>> {
        let stats = router.source_stats(id);
        if let Some(s) = &stats
            && let Some(oldest) = s.oldest_seq
            && oldest > s.resumed_after + 1
        {
            // Lines this process published that the ring let go: briefly, for the persister to
            // have them in the file (it may be gathering them for a closed file; waiting has
            // them written at once).
            let _ = router
                .durability()
                .wait(id, oldest - 1, oldest - 1, PERSISTER_WAIT)
                .await;
        }
        let in_ring = router.recent(id, limit, &filter);
        let ring_first = router
            .source_stats(id)
            .map_or(u64::MAX, |s| s.oldest_seq.unwrap_or(s.published + 1));
        let known = in_ring.is_some();
        let mut envs = in_ring.unwrap_or_default();
        let mut stored = false;
        if envs.len() < limit && ring_first > 1 {
            let tiers = self.tiers(id).await?;
            stored = !tiers.is_empty();
            let source = id.to_owned();
            let keep = move |l: &Line| filter.matches(&l.to_envelope(&source));
            let older = self
                .last_lines_in(tiers, ring_first, limit - envs.len(), keep)
                .await?;
            let mut older: Vec<Entry> = older
                .iter()
                .map(|l| Entry::from_envelope(&l.to_envelope(id)))
                .collect();
            older.append(&mut envs);
            envs = older;
        }
        Ok((known || stored).then_some(envs))
    }

    /// One source's stats: the router's, or for a source this process has not seen, what
    /// storage holds of it (`published`: its newest stored seq, read off the async runtime).
    /// `None` if neither has it.
    pub async fn source_stats(&self, router: &Router, id: &str) -> Option<SourceStats> {
        if let Some(stats) = router.source_stats(id) {
            return Some(stats);
        }
        let seqs = crate::history::StoredSeqs::new(&self.dir);
        let source = id.to_owned();
        let stored = tokio::task::spawn_blocking(move || seqs.last_seq(&source).unwrap_or(0))
            .await
            .unwrap_or(0);
        (stored > 0).then(|| SourceStats {
            source_id: id.to_owned(),
            retained: 0,
            retained_bytes: 0,
            oldest_seq: None,
            newest_seq: None,
            published: stored,
            resumed_after: stored,
        })
    }

    /// Up to `limit` sources with ids after `after`, sorted by id, in memory or only in storage,
    /// each with where its lines live. Sources known only from storage have no counts here
    /// (their stats have them). Lists directories, and reads the archive records of the page's
    /// sources: call it off the async runtime.
    pub fn list_sources(&self, router: &Router, after: Option<&str>, limit: usize) -> Page {
        let stored = crate::history::stored_sources(&self.dir);
        let mut ids: std::collections::BTreeSet<Arc<str>> =
            router.source_ids().into_iter().collect();
        ids.extend(stored.keys().map(|k| Arc::from(k.as_str())));
        let from = match after {
            Some(a) => std::ops::Bound::Excluded(Arc::from(a)),
            None => std::ops::Bound::Unbounded,
        };
        let mut page: Vec<Arc<str>> = ids
            .range((from, std::ops::Bound::Unbounded))
            .take(limit.saturating_add(1))
            .cloned()
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        let sources = page
            .iter()
            .map(|id| {
                let stats = router.source_stats(id);
                let places = stored.get(&**id).map(|n| n.places()).unwrap_or_default();
                let memory = stats.as_ref().is_some_and(|s| s.retained > 0);
                let lines_in = [
                    (memory, "memory"),
                    (places.files, "files"),
                    (places.s3, "s3"),
                ]
                .into_iter()
                .filter_map(|(here, name)| here.then_some(name))
                .collect();
                Listed {
                    source_id: stats.is_none().then(|| id.to_string()),
                    stats,
                    lines_in,
                }
            })
            .collect();
        Page {
            sources,
            next_after: more.then(|| page.last().map(|id| id.to_string())).flatten(),
        }
    }

    /// Reads an archived object's lines into `each` with `state` as they download, off the
    /// async runtime; stops early when `each` returns false. (An unreadable line, which only a
    /// damaged object has, is skipped.)
    async fn object_lines<S: Send + 'static>(
        &self,
        key: &str,
        state: S,
        mut each: impl FnMut(&mut S, Line) -> bool + Send + 'static,
    ) -> std::io::Result<S> {
        let Some(archive) = &self.archive else {
            return Ok(state);
        };
        archive
            .for_each_line(key, state, move |state, raw| {
                serde_json::from_slice::<Line>(raw).map_or(true, |line| each(state, line))
            })
            .await
            .map_err(std::io::Error::other)
    }

    /// The last `n` stored lines of `source` with a seq below `before` that `keep` accepts,
    /// oldest first: from its newest files backwards, then from the objects of completions
    /// whose files are gone. Files are read off the async runtime.
    pub async fn last_lines(
        &self,
        source: &str,
        before: u64,
        n: usize,
        keep: impl Fn(&Line) -> bool + Clone + Send + 'static,
    ) -> std::io::Result<Vec<Line>> {
        self.last_lines_in(self.tiers(source).await?, before, n, keep)
            .await
    }

    /// [`Stored::last_lines`] over tiers already listed.
    async fn last_lines_in(
        &self,
        tiers: Vec<Tier>,
        before: u64,
        n: usize,
        keep: impl Fn(&Line) -> bool + Clone + Send + 'static,
    ) -> std::io::Result<Vec<Line>> {
        let mut newest_first: Vec<Vec<Line>> = Vec::new();
        let mut have = 0;
        for tier in tiers.into_iter().rev() {
            if have >= n {
                break;
            }
            let want = n - have;
            let lines = match tier {
                Tier::Files(files) => {
                    let keep = keep.clone();
                    tokio::task::spawn_blocking(move || {
                        crate::files::last_lines(&files, before, want, keep)
                    })
                    .await
                    .map_err(std::io::Error::other)?
                }
                Tier::Object { key, .. } => {
                    let keep = keep.clone();
                    let kept = self
                        .object_lines(&key, VecDeque::new(), move |kept, l| {
                            if l.seq.is_some_and(|s| s < before) && keep(&l) {
                                kept.push_back(l);
                                if kept.len() > want {
                                    kept.pop_front();
                                }
                            }
                            true
                        })
                        .await?;
                    Vec::from(kept)
                }
            };
            have += lines.len();
            newest_first.push(lines);
        }
        Ok(newest_first.into_iter().rev().flatten().collect())
    }

    /// Sends the stored lines of `source` with a seq in `after + 1 .. before` into `tx`, oldest
    /// first, in batches of at most `batch`; objects that end at or before `after` are not
    /// fetched. Stops when `tx` closes.
    pub async fn lines_between(
        &self,
        source: &str,
        after: u64,
        before: u64,
        batch: usize,
        tx: tokio::sync::mpsc::Sender<Vec<Line>>,
    ) -> std::io::Result<()> {
        for tier in self.tiers(source).await? {
            match tier {
                Tier::Files(files) => {
                    let tx = tx.clone();
                    let open = tokio::task::spawn_blocking(move || {
                        let mut open = true;
                        crate::files::lines_between(&files, after, before, batch, |b| {
                            open = tx.blocking_send(b).is_ok();
                            open
                        })
                        .map(|()| open)
                    })
                    .await
                    .map_err(std::io::Error::other)??;
                    if !open {
                        return Ok(());
                    }
                }
                Tier::Object { key, last_seq } => {
                    if last_seq != 0 && last_seq <= after {
                        continue;
                    }
                    let batch = batch.max(1);
                    let sender = tx.clone();
                    let (rest, open) = self
                        .object_lines(&key, (Vec::new(), true), move |(lines, open), l| {
                            if l.seq.is_some_and(|s| s > after && s < before) {
                                lines.push(l);
                                if lines.len() >= batch {
                                    *open = sender.blocking_send(std::mem::take(lines)).is_ok();
                                }
                            }
                            *open
                        })
                        .await?;
                    if !open || (!rest.is_empty() && tx.send(rest).await.is_err()) {
                        return Ok(());
                    }
                }
            }
        }
        Ok(())
    }
}

/// What a reader of one source gets from storage before its cursor takes over: batches of the
/// lines older than the ring, with exact loss notices where seqs are missing.
pub type Prelude = tokio::sync::mpsc::Receiver<Vec<Delivery>>;

/// Lines per batch read from storage.
const PRELUDE_BATCH: usize = 512;
/// How long a reader waits for the persister to write what the ring already let go, before
/// the seqs it lacks count as missed.
const PERSISTER_WAIT: Duration = Duration::from_secs(2);

impl Stored {
    /// The last `n` stored lines of `id` below seq `before` that match `filter`, as
    /// deliveries, oldest first: a backfill's lines the ring no longer holds.
    pub fn backfill(&self, id: &str, before: u64, n: usize, filter: Filter) -> Prelude {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (stored, id) = (self.clone(), id.to_owned());
        tokio::spawn(async move {
            let keep = {
                let (filter, id) = (filter.clone(), id.clone());
                move |l: &Line| filter.matches(&l.to_envelope(&id))
            };
            let lines = match stored.last_lines(&id, before, n, keep).await {
                Ok(lines) => lines,
                Err(e) => {
                    tracing::warn!(source = %id, error = %e, "cannot read a backfill from storage");
                    return;
                }
            };
            for chunk in lines.chunks(PRELUDE_BATCH) {
                let batch = chunk
                    .iter()
                    .map(|l| Delivery::Log(Entry::from_envelope(&l.to_envelope(&id))))
                    .collect();
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
        });
        rx
    }

    /// The stored lines of `id` with a seq in `after + 1 .. before` that match `filter`, as
    /// deliveries in batches, with a loss notice for each run of seqs storage lacks. Waits
    /// first (briefly) for the persister to have written seqs from `wait_from` on.
    pub fn range(
        &self,
        id: &str,
        after: u64,
        before: u64,
        filter: Filter,
        durability: Arc<Durability>,
        wait_from: u64,
    ) -> Prelude {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let (stored, id) = (self.clone(), id.to_owned());
        tokio::spawn(async move {
            if wait_from < before {
                let _ = durability
                    .wait(&id, wait_from, before - 1, PERSISTER_WAIT)
                    .await;
            }
            stored.send_range(&id, after, before, &filter, &tx).await;
        });
        rx
    }

    async fn send_range(
        &self,
        id: &str,
        after: u64,
        before: u64,
        filter: &Filter,
        tx: &tokio::sync::mpsc::Sender<Vec<Delivery>>,
    ) {
        let (lines_tx, lines_rx) = tokio::sync::mpsc::channel(2);
        let reading = self.lines_between(id, after, before, PRELUDE_BATCH, lines_tx);
        let source: Arc<str> = id.into();
        let gap = |expected: u64, to: u64, last_ts: i64, out: &mut Vec<Delivery>| {
            if to > expected {
                out.push(Delivery::Missed(MissedNotice {
                    source_id: source.clone(),
                    count: to - expected,
                    since_ns: last_ts,
                    last_missed_seq: to - 1,
                }));
            }
        };
        let forwarding = async {
            // Owned here: dropped when forwarding stops, which stops the reading too.
            let mut lines_rx = lines_rx;
            let mut expected = after + 1;
            let mut last_ts = 0i64;
            while let Some(lines) = lines_rx.recv().await {
                let mut out = Vec::with_capacity(lines.len());
                for line in lines {
                    let env = line.to_envelope(id);
                    gap(expected, env.seq, last_ts, &mut out);
                    expected = expected.max(env.seq + 1);
                    last_ts = env.timestamp;
                    if filter.matches(&env) {
                        out.push(Delivery::Log(Entry::from_envelope(&env)));
                    }
                }
                if !out.is_empty() && tx.send(out).await.is_err() {
                    return None;
                }
            }
            Some((expected, last_ts))
        };
        let (read, forwarded) = tokio::join!(reading, forwarding);
        if let Err(e) = read {
            tracing::warn!(source = %id, error = %e, "cannot read a range from storage");
        }
        if let Some((expected, last_ts)) = forwarded {
            let mut out = Vec::new();
            gap(expected, before, last_ts, &mut out);
            if !out.is_empty() {
                let _ = tx.send(out).await;
            }
        }
    }
}

/// Opens a cursor over several sources (or all: the firehose) at `start`. With a backfill, each
/// source whose ring holds fewer than the lines asked gets them from storage first, one source
/// after another, before the cursor goes on (what only storage knows of, with no line since this
/// start, is not among "all").
pub fn open_many(
    router: &Router,
    stored: &Stored,
    selector: Selector,
    filter: Filter,
    start: Start,
) -> Result<(Cursor, Option<Prelude>), EnvelopeError> {
    let cursor = router.subscribe(selector, filter.clone(), start)?;
    let Start::Back(n) = start else {
        return Ok((cursor, None));
    };
    let short: Vec<(Arc<str>, u64, usize)> = cursor
        .positions()
        .into_iter()
        .filter(|(_, from)| *from > 1)
        .filter_map(|(id, from)| {
            let in_ring = router
                .recent(&id, n, &filter)
                .map_or(0, |r| r.iter().filter(|e| e.seq() >= from).count());
            (in_ring < n).then_some((id, from, n - in_ring))
        })
        .collect();
    if short.is_empty() {
        return Ok((cursor, None));
    }
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let stored = stored.clone();
    tokio::spawn(async move {
        for (id, from, want) in short {
            let mut one = stored.backfill(&id, from, want, filter.clone());
            while let Some(batch) = one.recv().await {
                if tx.send(batch).await.is_err() {
                    return;
                }
            }
        }
    });
    Ok((cursor, Some(rx)))
}

/// Opens a cursor on one source at `start`; when `start` reaches back past the ring's oldest
/// line, the cursor starts at that line and the [`Prelude`] reads what comes before it from
/// storage (a backfill's missing lines; a resume's whole range, streamed), so the reader gets
/// every line once, in order, across restarts.
pub fn open_source(
    router: &Router,
    stored: &Stored,
    id: &str,
    filter: Filter,
    start: Start,
) -> Result<(Cursor, Option<Prelude>), EnvelopeError> {
    let selector = || Selector::Source(id.to_owned());
    let stats = router.touch(id)?;
    let first_in_ring = stats.oldest_seq.unwrap_or(stats.published + 1);
    let id = id.to_owned();
    match start {
        Start::Back(n) => {
            let cursor = router.subscribe(selector(), filter.clone(), start)?;
            let from = cursor.positions().first().map_or(1, |p| p.1);
            let in_ring = router
                .recent(&id, n, &filter)
                .map_or(0, |r| r.iter().filter(|e| e.seq() >= from).count());
            if in_ring >= n || from <= 1 {
                return Ok((cursor, None));
            }
            let rx = stored.backfill(&id, from, n - in_ring, filter);
            Ok((cursor, Some(rx)))
        }
        Start::AfterSeq(after) if after.saturating_add(1) < first_in_ring => {
            let cursor = router.subscribe(
                selector(),
                filter.clone(),
                Start::AfterSeq(first_in_ring - 1),
            )?;
            // Lines the ring let go may still be on their way to the file: wait for them
            // from the first seq this process wrote.
            let wait_from = (after + 1).max(stats.resumed_after + 1);
            let durability = router.durability().clone();
            let rx = stored.range(&id, after, first_in_ring, filter, durability, wait_from);
            Ok((cursor, Some(rx)))
        }
        start => Ok((router.subscribe(selector(), filter, start)?, None)),
    }
}

pub fn parse_jsonl(text: &str, by_seq: &mut BTreeMap<u64, Line>, unsequenced: &mut Vec<Line>) {
    for raw in text.lines().filter(|l| !l.trim().is_empty()) {
        match serde_json::from_str::<Line>(raw) {
            Ok(line) => match line.seq {
                Some(seq) => {
                    by_seq.entry(seq).or_insert(line);
                }
                None => unsequenced.push(line),
            },
            // A torn last line after a crash: skip it, keep the rest.
            Err(e) => tracing::debug!(error = %e, "skipping an unreadable log line"),
        }
    }
}
