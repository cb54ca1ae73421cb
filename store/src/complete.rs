//! Completing a job: its file written through its newest line, synced and closed; with S3, its
//! files moved aside for this completion and recorded for upload under a key of its own.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use sluice_router::Router;
use sluice_router::envelope::now_ns;

use crate::archive::{Archive, Record};
use crate::persister::{CompletionError, PersisterHandle, file_path, legacy_path, rotated_path};

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Completed,
    Failed,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Completed => "completed",
            JobStatus::Failed => "failed",
        }
    }
}

/// What a completion did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The job's file, synced and closed (absent if nothing was written since the last
    /// completion).
    pub file: Option<PathBuf>,
    /// Its rotated files and segments, oldest first.
    pub rotated: Vec<PathBuf>,
    /// Where the archive will be, with S3: (bucket, key). The upload runs in the background.
    /// Absent when nothing was logged since the last completion (no empty objects).
    pub archive: Option<(String, String)>,
}

/// Why a job could not be completed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompleteError {
    /// Nothing was ever received for it: nothing to close or archive.
    #[error("unknown job {0:?}: no logs have been received for it")]
    Unknown(String),
    /// The persister could not finish it: it is stopping, or the job's files could not be
    /// written or moved.
    #[error(transparent)]
    Persister(#[from] CompletionError),
    /// The archive's record could not be written.
    #[error("cannot record the archive upload: {0}")]
    Record(String),
}

/// Completes `id`: waits until the persister has written every line published so far, closes
/// the file and, with an archive, moves the files aside and records them for upload. The key
/// takes workspace, task and job_id each from the newest line that had it (the persister keeps
/// them beside the files, so a restart or a forgotten source changes nothing).
pub async fn complete(
    router: &Router,
    persister: &PersisterHandle,
    archive: Option<&Archive>,
    id: &str,
    status: JobStatus,
) -> Result<Completion, CompleteError> {
    let stats = router.source_stats(id);
    let completed_ns = now_ns();
    // What storage has of the job, and where its archive goes: a few stats and reads of small
    // files, off the async runtime.
    let (known, prepared) = {
        let (dir, source) = (persister.config.local_dir.clone(), id.to_owned());
        let archive = archive.cloned();
        let in_memory = stats.is_some();
        blocking(move || {
            let known = in_memory
                || file_path(&dir, &source).exists()
                || rotated_path(&dir, &source, 1).exists()
                || !crate::persister::segments(&dir, &source).is_empty()
                || legacy_path(&dir, &source).exists();
            let prepared = archive.filter(|_| known).map(|a| a.prepare(&source));
            (known, prepared)
        })
        .await?
    };
    if !known {
        // No empty objects, no records for typos.
        return Err(CompleteError::Unknown(id.to_owned()));
    }
    let last_seq = stats.as_ref().map_or(0, |s| s.published);
    // Seqs stored before this start are on disk already; the persister waits only for newer.
    let upto = stats
        .as_ref()
        .filter(|s| s.published > s.resumed_after)
        .map_or(0, |s| s.published);
    let done = persister
        .complete(id, upto, prepared.as_ref().map(|p| p.dir.clone()))
        .await?;
    tracing::info!(job = %id, status = status.as_str(), "job completed");
    let mut files = done.rotated.clone();
    files.extend(done.path.clone());
    let mut target = None;
    if let (Some(archive), Some(prepared)) = (archive, prepared)
        && !files.is_empty()
    {
        let key = archive.hold_key(id, &done.tags, completed_ns);
        let record = Record {
            source: id.to_owned(),
            status: status.as_str().into(),
            key: key.clone(),
            files,
            completion: prepared.completion,
            last_seq,
        };
        let queue = archive.clone();
        blocking(move || queue.enqueue(&record))
            .await?
            .map_err(|e| CompleteError::Record(crate::short_reason(&e)))?;
        target = Some((archive.bucket().to_owned(), key));
    }
    Ok(Completion {
        file: done.path,
        rotated: done.rotated,
        archive: target,
    })
}

/// Runs `work` on the blocking pool (it touches files and syncs them).
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, CompleteError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|_| CompleteError::Persister(CompletionError::Stopping))
}
