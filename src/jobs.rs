//! Jobs, as Strøm sees them: a source whose lines carry steps, that ends with a status, and
//! whose log is read back as JSONL wherever it now lives.
//!
//! Reads go through every tier in seq order, each line once: S3 objects and local files of
//! earlier completions, the source's segments, rotated and current files (or the legacy
//! `<stem>.log` when there is no JSONL), and the lines still only in the ring.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use sluice_drains::archive::{self, Archive};
use sluice_drains::persister::{Line, PersisterHandle, legacy_path};
use sluice_router::{Filter, Router};

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Completed,
    Failed,
}

/// A job's whole log as Strøm's `{"logs": "<jsonl>"}`, streamed in chunks of about 64 KiB:
/// a legacy `<stem>.log` (when there is no JSONL), then each completion (its local files, or its
/// S3 object once they are gone), then the source's segments, rotated and current files, then
/// what only the ring holds yet. Tiers are read in seq order and a line is written once, by the
/// first tier that has it; memory stays at a few chunks however long the log (an S3 object is
/// fetched whole). `None` when nothing is known of the source.
pub fn log_body(
    router: &Router,
    stored: Stored,
    source: &str,
    step: Option<&str>,
) -> Option<tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>> {
    let tiers = stored.tiers(source);
    let legacy = legacy_path(&stored.dir, source);
    let in_ring = router.source_stats(source).is_some_and(|s| s.published > 0);
    if tiers.is_empty() && !in_ring && !legacy.exists() {
        return None;
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
                        for line in stored.object_lines(&key).await? {
                            w.line(line);
                            if w.buf.len() >= CHUNK {
                                w.flush().await?;
                            }
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
    Some(rx)
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

/// Storage as readers need it: the directory, how many files a source keeps, and the archive.
#[derive(Debug, Clone)]
pub struct Stored {
    pub dir: PathBuf,
    pub max_files: usize,
    pub archive: Option<Archive>,
}

impl Stored {
    /// Every tier of `source`, oldest first: each completion (its files while they are on
    /// disk, else its object), then the files not yet completed.
    pub fn tiers(&self, source: &str) -> Vec<Tier> {
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
        let live = sluice_drains::history::live_files(&self.dir, source, self.max_files);
        if !live.is_empty() {
            tiers.push(Tier::Files(live));
        }
        tiers
    }

    /// An archived object's lines.
    async fn object_lines(&self, key: &str) -> std::io::Result<Vec<Line>> {
        let Some(archive) = &self.archive else {
            return Ok(Vec::new());
        };
        let text = archive
            .fetch(key)
            .await
            .map_err(|e| std::io::Error::other(format!("cannot read s3 object {key}: {e}")))?;
        Ok(text
            .split(|&b| b == b'\n')
            .filter_map(|raw| serde_json::from_slice::<Line>(raw).ok())
            .collect())
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
        let mut newest_first: Vec<Vec<Line>> = Vec::new();
        let mut have = 0;
        for tier in self.tiers(source).into_iter().rev() {
            if have >= n {
                break;
            }
            let want = n - have;
            let lines = match tier {
                Tier::Files(files) => {
                    let keep = keep.clone();
                    tokio::task::spawn_blocking(move || {
                        sluice_drains::history::last_lines(&files, before, want, keep)
                    })
                    .await
                    .map_err(std::io::Error::other)?
                }
                Tier::Object { key, .. } => {
                    let mut lines: Vec<Line> = self
                        .object_lines(&key)
                        .await?
                        .into_iter()
                        .filter(|l| l.seq.is_some_and(|s| s < before) && keep(l))
                        .collect();
                    lines.drain(..lines.len().saturating_sub(want));
                    lines
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
        for tier in self.tiers(source) {
            match tier {
                Tier::Files(files) => {
                    let tx = tx.clone();
                    let open = tokio::task::spawn_blocking(move || {
                        let mut open = true;
                        sluice_drains::history::lines_between(&files, after, before, batch, |b| {
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
                    let lines: Vec<Line> = self
                        .object_lines(&key)
                        .await?
                        .into_iter()
                        .filter(|l| l.seq.is_some_and(|s| s > after && s < before))
                        .collect();
                    for chunk in lines.chunks(batch.max(1)) {
                        if tx.send(chunk.to_vec()).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// The lines of `source` on disk with a seq in `from..=to`, in order.
pub fn disk_lines_between(
    persister: &PersisterHandle,
    source: &str,
    from: u64,
    to: u64,
) -> Vec<Line> {
    let dir = &persister.config.local_dir;
    let files = sluice_drains::history::local_files(dir, source, persister.config.max_files);
    let mut out = Vec::new();
    let _ = sluice_drains::history::lines_between(
        &files,
        from.saturating_sub(1),
        to.saturating_add(1),
        4096,
        |mut lines| {
            out.append(&mut lines);
            true
        },
    );
    out
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
