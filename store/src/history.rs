//! What storage already holds of a source, found without reading whole files: the seq it left
//! off at (so seqs never go back across a restart).
//!
//! A source's newest seq is in one of three places: the last line of its current file, the last
//! line of its newest rotated file (right after a rotation, or after a completion moved the
//! current file away), or its newest archive record (`.archive/{pending,done}/<stem>#<n>.json`,
//! whose files may be gone from the disk once S3 has them). Each is one `stat` or one read of a
//! file's tail, so a source costs the same whether the directory holds ten sources or 100,000,
//! and start-up reads nothing.

use std::path::{Path, PathBuf};

use std::collections::BTreeMap;

use sluice_router::History;

use crate::archive;
use crate::files::{last_seq_in, read_last_seq};
use crate::persister::{file_path, names, rotated_path};

/// The last seqs of sources in a storage directory, for [`sluice_router::Router::with_history`].
#[derive(Debug, Clone)]
pub struct StoredSeqs {
    dir: PathBuf,
    skipped: u64,
    /// When this process took the directory, by the file system's clock (the lock file's
    /// modification time): a file modified since was written by this process.
    taken: Option<std::time::SystemTime>,
}

impl StoredSeqs {
    pub fn new(local_dir: &Path) -> StoredSeqs {
        StoredSeqs {
            dir: local_dir.to_owned(),
            skipped: 0,
            taken: None,
        }
    }

    /// After a crash: each stored source skips `n` seqs past its stored ones (see
    /// [`crate::persister::DirLock::stopped_cleanly`] and [`crate::persister::unwritten_bound`]).
    /// Call after the directory's lock is taken: a source whose files this process has
    /// written since (one made again after the router forgot it) skips nothing more.
    pub fn skipping(mut self, n: u64) -> StoredSeqs {
        self.skipped = n;
        self.taken = std::fs::metadata(self.dir.join(crate::persister::LOCK_FILE))
            .and_then(|m| m.modified())
            .ok();
        self
    }

    /// Whether this process has written `source_id`'s current or newest rotated file.
    fn written_here(&self, source_id: &str) -> bool {
        let Some(taken) = self.taken else {
            return false;
        };
        [
            file_path(&self.dir, source_id),
            rotated_path(&self.dir, source_id, 1),
        ]
        .iter()
        .any(|p| {
            std::fs::metadata(p)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= taken)
        })
    }
}

impl History for StoredSeqs {
    /// Reads a few small files: on a worker of a multi-thread runtime (a publish creating the
    /// source), the worker's other tasks move to another thread meanwhile.
    fn last_seq(&self, source_id: &str) -> Result<u64, String> {
        let read = || {
            let mut newest = last_recorded_seq(&self.dir, source_id);
            for path in [
                file_path(&self.dir, source_id),
                rotated_path(&self.dir, source_id, 1),
            ] {
                let seq = read_last_seq(&path)
                    .map_err(|e| format!("{}: {}", path.display(), crate::short_reason(&e)))?;
                newest = newest.max(seq);
            }
            Ok(newest)
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) if rt.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(read)
            }
            _ => read(),
        }
    }

    fn skipped_after_crash(&self, source_id: &str) -> u64 {
        if self.skipped == 0 || self.written_here(source_id) {
            0
        } else {
            self.skipped
        }
    }
}

/// Where a source's stored lines live.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct StoredIn {
    /// Local files (current, rotated, segments, completions waiting or kept).
    pub files: bool,
    /// S3 objects of completions whose local files are gone.
    pub s3: bool,
}

/// What the names under a storage directory say of one source: whether it has files, and its
/// archive records (read only when asked, by [`StoredNames::places`]).
#[derive(Debug, Default, Clone)]
pub struct StoredNames {
    files: bool,
    records: Vec<PathBuf>,
}

impl StoredNames {
    /// Where the source's lines live: its files, and for each archive record whether the
    /// completion's files are still on disk or only in S3.
    pub fn places(&self) -> StoredIn {
        let mut places = StoredIn {
            files: self.files,
            s3: false,
        };
        for path in &self.records {
            let Ok(bytes) = std::fs::read(path) else {
                continue;
            };
            let Ok(record) = serde_json::from_slice::<archive::Record>(&bytes) else {
                continue;
            };
            let local = record.files.iter().all(|f| f.exists());
            places.files |= local;
            places.s3 |= !local;
        }
        places
    }
}

/// Every source with lines under `dir`, by id: directory listings of the files, the segments
/// and the archive records, nothing read (a source whose id was too long to name a file in
/// full is found through the id the persister kept for it).
pub fn stored_sources(dir: &Path) -> BTreeMap<String, StoredNames> {
    let mut out: BTreeMap<String, StoredNames> = BTreeMap::new();
    let names = |d: &Path| -> Vec<String> {
        std::fs::read_dir(d)
            .map(|it| {
                it.flatten()
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    for name in names(dir) {
        let stem = match name.split_once(".jsonl") {
            Some((stem, rest)) if rest.is_empty() || rest[1..].parse::<u64>().is_ok() => stem,
            _ => continue,
        };
        if let Some(id) = names::source_in(dir, stem) {
            out.entry(id).or_default().files = true;
        }
    }
    for stem in names(&dir.join(".archive").join("segments")) {
        if let Some(id) = names::source_in(dir, &stem) {
            out.entry(id).or_default().files = true;
        }
    }
    for which in ["pending", "done"] {
        let records = dir.join(".archive").join(which);
        for name in names(&records) {
            let Some(stem) = name.strip_suffix(".json") else {
                continue;
            };
            let stem = stem.split_once('#').map_or(stem, |(s, _)| s);
            if let Some(id) = names::source_in(dir, stem) {
                out.entry(id).or_default().records.push(records.join(&name));
            }
        }
    }
    out
}

/// The files of `source` not yet completed, oldest first: its segments (rotated out, waiting
/// for its completion), its rotated files (the highest number first) and its current file.
pub fn live_files(dir: &Path, source: &str, max_files: usize) -> Vec<PathBuf> {
    let mut files = crate::persister::segments(dir, source);
    files.extend(
        (1..max_files.max(1))
            .rev()
            .map(|n| rotated_path(dir, source, n))
            .filter(|p| p.exists()),
    );
    let current = file_path(dir, source);
    if current.exists() {
        files.push(current);
    }
    files
}

/// The newest seq the archive records of `source` under `local_dir` hold.
pub fn last_recorded_seq(local_dir: &Path, source: &str) -> u64 {
    let Some(r) = archive::records_of(local_dir, source).pop() else {
        return 0;
    };
    if r.last_seq > 0 {
        return r.last_seq;
    }
    r.files.iter().map(|f| last_seq_in(f)).max().unwrap_or(0)
}
