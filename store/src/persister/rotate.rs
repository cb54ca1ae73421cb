//! Rotation: a full file is renamed, kept as a segment for the archive or deleted, off the
//! writer's thread; what is deleted is counted and announced.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;

use sluice_router::Envelope;

use super::{
    Counted, DOOMED_SUFFIX, Fsync, Line, Persister, PersisterCounters, ToSync, file_stem,
    rotated_path, sync_files,
};

impl Persister {
    pub(super) fn rotate(&mut self, source: &Arc<str>) {
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
        if f.last_used != 0 {
            self.lru.remove(&f.last_used);
            f.last_used = 0;
        }
        if always && let Some(file) = closed.take() {
            self.open_fds -= 1;
            let _ = file.sync_data();
        }
        let keep = self.config.max_files.max(1) - 1;
        let keep_segments = self.config.keep_segments;
        let max_files = self.config.max_files;
        // What was counted of the file rotating out (`.keep`, or this one when no rotated file
        // is kept), so that deleting it needs no read of it.
        let current = f.counted;
        let history = self.rotated.entry(source.clone()).or_default();
        let outgoing = if keep == 0 {
            current
        } else {
            history.get(keep - 1).copied().flatten()
        };
        let mut doomed: Option<(PathBuf, String, Option<Counted>)> = None;
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
                    doomed = Some((doom(path)?, why, outgoing));
                    return Ok(());
                }
                let existing = segments(&dir, source);
                let next = existing.last().and_then(|p| segment_number(p)).unwrap_or(0) + 1;
                let seg_dir = segments_dir(&dir, source);
                crate::private::create_dir_all(&seg_dir)?;
                let name = format!("{}.jsonl.s{next:08}", file_stem(source));
                std::fs::rename(path, seg_dir.join(name))?;
                if existing.len() >= keep_segments {
                    let why = format!(
                        "more than log_storage.keep_segments = {keep_segments} rotated files of this source waited for its completion"
                    );
                    doomed = Some((doom(&existing[0])?, why, None));
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
                f.counted = Some(Counted::EMPTY);
                history.push_front(current);
                history.truncate(keep);
                self.counters.rotations.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                // Which file holds what is no longer known: counted again when deleted.
                f.counted = None;
                self.rotated.remove(source);
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
        let doomed = doomed.map(|(path, why, counted)| (path, source.clone(), why, counted));
        match in_background("sluice-rotate", closed, doomed, &self.counters) {
            Some(h) => self.rotations.push((h, held)),
            None => self.open_fds -= held,
        }
        self.reap_rotations();
    }

    /// Forgets rotations that have finished, and the descriptors they held; announces what
    /// they deleted.
    pub(super) fn reap_rotations(&mut self) {
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

    pub(super) fn announce_deleted(&self, d: &Deleted) {
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
}

/// Lines a rotation deleted, for the notice.
#[derive(Debug)]
pub(super) struct Deleted {
    source: Arc<str>,
    lines: u64,
    first_seq: Option<u64>,
    last_seq: Option<u64>,
    why: String,
}

/// Syncs `files`, then counts the lines of `doomed` (a file of a source, why it goes, and its
/// lines when the persister counted them as it wrote) and deletes it, on a thread of its own; a failed sync is counted and logged there. `None` if the
/// thread could not start (said in the log).
pub(super) fn in_background(
    name: &str,
    files: Vec<ToSync>,
    doomed: Option<(PathBuf, Arc<str>, String, Option<Counted>)>,
    counters: &Arc<PersisterCounters>,
) -> Option<std::thread::JoinHandle<Option<Deleted>>> {
    let counters = counters.clone();
    let work = move || {
        sync_files(files, &counters);
        let (path, source, why, counted) = doomed?;
        // Read back only when not counted (a file from before this start): reading a 64 MiB
        // file per rotation was ~4% of the server at full speed (BENCHMARKS.md).
        let (lines, first_seq) = match counted {
            Some(c) => (c.lines, c.first_seq),
            None => count_lines(&path),
        };
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
pub(super) fn count_lines(path: &Path) -> (u64, Option<u64>) {
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
        // SIMD search: a byte-by-byte count of a 64 MiB file was ~10% of the server's CPU when
        // every rotation deleted the oldest file (BENCHMARKS.md).
        lines += memchr::memchr_iter(b'\n', &buf[..n]).count() as u64;
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

pub(super) fn segment_number(path: &Path) -> Option<u64> {
    let name = path.file_name()?.to_str()?;
    let (_, n) = name.rsplit_once(".jsonl.s")?;
    n.parse().ok()
}
