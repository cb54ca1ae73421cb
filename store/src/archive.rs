//! The archive (SPEC §6): a completed job's files, gzip-compressed, uploaded to S3 under
//! `{prefix}{workspace}/{task}/YYYY/MM/DD/YYYY-MM-DDTHH-MM-SS_{job_id}.jsonl.gz`.
//!
//! - Completion moves the job's files to `local_dir/.archive/files/<stem>#<n>/` (the `n`th
//!   completion of that source; later lines start a file of their own) and writes a durable
//!   record (`local_dir/.archive/pending/<stem>#<n>.json`) before it is answered; the archiver
//!   works through the records and a restart resumes them. The key is in the record, so a retry
//!   or a restart writes the same object: never a duplicate.
//! - Keys never collide: the first completion gets Strøm's key; a key already held by another
//!   record (the same job completed again in the same second, or two sources with the same
//!   `job_id` tag) gets `.2`, `.3`, ... before `.jsonl.gz`. No object is written twice.
//! - Uploads stream: the files are read in chunks through a gzip encoder; compressed output goes
//!   out in multipart parts of `part_size_bytes`, or in one PUT when it is smaller than a part.
//!   Memory stays around one part.
//! - Only when S3 confirms are the local files removed (unless `keep_local`); then the record
//!   moves to `.archive/done/<stem>#<n>.json`; reads use every done record of a job, in order.
//! - Failures retry with backoff and reach the job's own stream as `_server` lines.

use std::collections::BTreeMap;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use aws_sdk_s3::Client;
use flate2::Compression;
use flate2::write::GzEncoder;
use serde::{Deserialize, Serialize};
use sluice_router::envelope::UtcTime;
use sluice_router::{Backoff, Envelope, Router};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::objects::{ObjectError, ObjectStore, S3Objects};
use crate::persister::file_stem;

/// `log_storage.s3`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    /// Key prefix, `""` by default (`"logs/"` puts everything under `logs/`).
    #[serde(default)]
    pub prefix: String,
    /// An S3-compatible endpoint (MinIO, a test server); AWS when absent.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Multipart part size; the compressed output goes out in parts of this size.
    #[serde(default = "default_part_size")]
    pub part_size_bytes: usize,
    /// gzip level, 0 (store) to 9 (smallest). 1 by default: about five times faster than 6 for
    /// objects a few per cent larger on log text (BENCHMARKS.md).
    #[serde(default = "default_compression_level")]
    pub compression_level: u32,
    /// `/readyz` fails once uploads have failed for this long without one succeeding; 0:
    /// never.
    #[serde(default = "default_unready_after")]
    pub unready_after_failing_secs: u64,
}

fn default_unready_after() -> u64 {
    600
}

fn default_compression_level() -> u32 {
    1
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_part_size() -> usize {
    8 * 1024 * 1024
}

/// The smallest part S3 accepts (but for the last one).
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

/// Tags that place a job in the archive, with their defaults.
pub const WORKSPACE_TAG: &str = "workspace";
pub const TASK_TAG: &str = "task";
pub const JOB_ID_TAG: &str = "job_id";
pub const DEFAULT_WORKSPACE: &str = "default";
pub const DEFAULT_TASK: &str = "default";

/// A job waiting for (or done with) its upload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub source: String,
    pub status: String,
    pub key: String,
    /// Oldest first: rotated files, then the current one.
    pub files: Vec<PathBuf>,
    /// Which completion of the source this is, from 1 (0: a record from before they were
    /// numbered, stored as `<stem>.json`).
    #[serde(default)]
    pub completion: u32,
    /// The newest seq of the source when it completed (0 in records written before this was
    /// kept: their files say it while they are on disk).
    #[serde(default)]
    pub last_seq: u64,
}

impl Record {
    /// The record's file name in `pending/` and `done/`.
    fn file_name(&self) -> String {
        record_name(&self.source, self.completion)
    }
}

/// `<stem>#<n>.json`: `#` never appears in a stem (it is percent-encoded), so names cannot mix
/// one source's completions with another source's.
fn record_name(source: &str, completion: u32) -> String {
    match completion {
        0 => format!("{}.json", file_stem(source)),
        n => format!("{}#{n}.json", file_stem(source)),
    }
}

/// The archive records of `source` under `local_dir` (pending or done), oldest completion first,
/// found by name (`<stem>#<n>.json`, numbered from 1), not by listing every record.
pub fn records_of(local_dir: &Path, source: &str) -> Vec<Record> {
    let dir = local_dir.join(".archive");
    let read = |name: &str| -> Option<Record> {
        ["pending", "done"].iter().find_map(|d| {
            let bytes = std::fs::read(dir.join(d).join(name)).ok()?;
            serde_json::from_slice(&bytes).ok()
        })
    };
    // Numbered without gaps, except that a legacy record counts as the first completion.
    let mut records: Vec<Record> = read(&record_name(source, 0)).into_iter().collect();
    for n in 1.. {
        match read(&record_name(source, n)) {
            Some(r) => records.push(r),
            None if n == 1 => {}
            None => break,
        }
    }
    records
}

/// A completion's number, and where its files go before they are archived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub completion: u32,
    pub dir: PathBuf,
}

/// The object key for a job completed at `completed_ns`. Each part is encoded like a file stem,
/// so no tag can climb out of the prefix (`..`, `/`).
pub fn object_key(
    prefix: &str,
    tags: &BTreeMap<String, String>,
    source: &str,
    completed_ns: i64,
) -> String {
    let part = |tag: &str, default: &str| {
        let value = tags
            .get(tag)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .unwrap_or(default);
        file_stem(value)
    };
    let t = UtcTime::from_ns(completed_ns);
    format!(
        "{prefix}{}/{}/{:04}/{:02}/{:02}/{:04}-{:02}-{:02}T{:02}-{:02}-{:02}_{}.jsonl.gz",
        part(WORKSPACE_TAG, DEFAULT_WORKSPACE),
        part(TASK_TAG, DEFAULT_TASK),
        t.year,
        t.month,
        t.day,
        t.year,
        t.month,
        t.day,
        t.hour,
        t.minute,
        t.second,
        part(JOB_ID_TAG, source),
    )
}

/// An S3 client for `config`: the standard AWS credential chain (or `credentials`, when given),
/// rustls with ring, path-style addressing for custom endpoints.
pub async fn s3_client(
    config: &S3Config,
    credentials: Option<aws_sdk_s3::config::Credentials>,
) -> Client {
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
            aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .http_client(http)
        .region(aws_config::Region::new(config.region.clone()));
    if let Some(endpoint) = &config.endpoint {
        loader = loader.endpoint_url(endpoint);
    }
    if let Some(credentials) = credentials {
        loader = loader.credentials_provider(credentials);
    }
    let shared = loader.load().await;
    let s3 = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(config.endpoint.is_some())
        .build();
    Client::from_conf(s3)
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct ArchiveCounters {
    /// When uploads started failing (ns since the epoch), 0 while the last one succeeded.
    pub failing_since_ns: std::sync::atomic::AtomicI64,
    pub uploaded: AtomicU64,
    pub bytes: AtomicU64,
    pub failures: AtomicU64,
    /// Records waiting to be uploaded.
    pub backlog: AtomicU64,
}

/// The archiver: shared by completion (which adds records) and reads (which fetch objects).
#[derive(Debug, Clone)]
pub struct Archive {
    objects: Arc<dyn ObjectStore>,
    config: Arc<S3Config>,
    dir: PathBuf,
    keep_local: bool,
    wake: Arc<Notify>,
    /// Every key a record holds (pending or done), so that no two objects share one.
    keys: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
    pub counters: Arc<ArchiveCounters>,
}

impl Archive {
    /// Builds the S3 client (standard AWS credential chain, rustls with ring) and the record
    /// directories under `local_dir/.archive`.
    pub async fn new(
        config: S3Config,
        local_dir: &Path,
        keep_local: bool,
    ) -> std::io::Result<Archive> {
        let client = s3_client(&config, None).await;
        Archive::new_with_client(config, local_dir, keep_local, client)
    }

    /// [`Archive::new`] with a client built elsewhere (benchmarks, tests).
    pub fn new_with_client(
        config: S3Config,
        local_dir: &Path,
        keep_local: bool,
        client: Client,
    ) -> std::io::Result<Archive> {
        let objects = Arc::new(S3Objects {
            client,
            bucket: config.bucket.clone(),
        });
        Archive::with_objects(config, local_dir, keep_local, objects)
    }

    /// An archive over any [`ObjectStore`] (memory, in unit tests).
    pub fn with_objects(
        config: S3Config,
        local_dir: &Path,
        keep_local: bool,
        objects: Arc<dyn ObjectStore>,
    ) -> std::io::Result<Archive> {
        let dir = local_dir.join(".archive");
        crate::private::create_dir_all(&dir.join("pending"))?;
        crate::private::create_dir_all(&dir.join("done"))?;
        crate::private::create_dir_all(&dir.join("files"))?;
        let archive = Archive {
            objects,
            config: Arc::new(config),
            dir,
            keep_local,
            wake: Arc::new(Notify::new()),
            keys: Arc::default(),
            counters: Arc::new(ArchiveCounters::default()),
        };
        let held: std::collections::HashSet<String> = ["pending", "done"]
            .iter()
            .flat_map(|d| archive.records_in(d))
            .map(|r| r.key)
            .collect();
        *archive.keys.lock().expect("not poisoned") = held;
        Ok(archive)
    }

    pub fn bucket(&self) -> &str {
        &self.config.bucket
    }

    pub fn prefix(&self) -> &str {
        &self.config.prefix
    }

    /// Chooses the next completion of `source`: its number, and the folder its files move to.
    pub fn prepare(&self, source: &str) -> Prepared {
        // Found by name, not by reading every job's records.
        let local_dir = self.dir.parent().unwrap_or(&self.dir);
        let completion = records_of(local_dir, source)
            .iter()
            .map(|r| r.completion.max(1))
            .max()
            .unwrap_or(0)
            + 1;
        let dir = self
            .dir
            .join("files")
            .join(format!("{}#{completion}", file_stem(source)));
        Prepared { completion, dir }
    }

    /// Holds a key no other record holds for `source` completed at `completed_ns`: Strøm's key
    /// from `tags`, or that key with `.2`, `.3`, ... before `.jsonl.gz`.
    pub fn hold_key(
        &self,
        source: &str,
        tags: &BTreeMap<String, String>,
        completed_ns: i64,
    ) -> String {
        let base = object_key(&self.config.prefix, tags, source, completed_ns);
        let stem = base.strip_suffix(".jsonl.gz").unwrap_or(&base).to_owned();
        let mut keys = self.keys.lock().expect("not poisoned");
        let key = std::iter::once(base.clone())
            .chain((2u32..).map(|n| format!("{stem}.{n}.jsonl.gz")))
            .find(|k| !keys.contains(k))
            .expect("an unused key");
        keys.insert(key.clone());
        key
    }

    /// Records a job for upload, durably (written, synced, renamed into place), and wakes the
    /// archiver.
    pub fn enqueue(&self, record: &Record) -> std::io::Result<()> {
        let name = record.file_name();
        let tmp = self.dir.join("pending").join(format!("{name}.tmp"));
        let path = self.dir.join("pending").join(name);
        let mut f = crate::private::create(&tmp)?;
        f.write_all(&serde_json::to_vec(record).map_err(std::io::Error::other)?)?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)?;
        if let Ok(d) = std::fs::File::open(self.dir.join("pending")) {
            let _ = d.sync_all();
        }
        self.keys
            .lock()
            .expect("not poisoned")
            .insert(record.key.clone());
        self.wake.notify_one();
        Ok(())
    }

    /// The records in `pending` or `done`.
    fn records_in(&self, which: &str) -> Vec<Record> {
        let Ok(entries) = std::fs::read_dir(self.dir.join(which)) else {
            return Vec::new();
        };
        entries
            .filter_map(|e| e.ok())
            .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
            .filter_map(|e| serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok())
            .collect()
    }

    /// Reads an object's lines (gunzipped, without their newline) into `each` with `state`, off
    /// the async runtime, as its bytes arrive: memory holds a chunk and a line, however large
    /// the object. Stops early when `each` returns false; gives `state` back.
    pub async fn for_each_line<S: Send + 'static>(
        &self,
        key: &str,
        state: S,
        mut each: impl FnMut(&mut S, &[u8]) -> bool + Send + 'static,
    ) -> Result<S, ArchiveError> {
        let object = || format!("s3://{}/{key}", self.config.bucket);
        let download = |error| ArchiveError::Download {
            object: object(),
            error,
        };
        let mut body = self.objects.get(key).await.map_err(download)?;
        let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(4);
        let pump = async move {
            while let Some(chunk) = body.next_chunk().await? {
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Ok::<(), ObjectError>(())
        };
        let read = tokio::task::spawn_blocking(move || {
            let gz = flate2::read::GzDecoder::new(Chunks {
                rx,
                chunk: bytes::Bytes::new(),
            });
            let mut lines = std::io::BufReader::with_capacity(64 * 1024, gz);
            let mut state = state;
            let mut line = Vec::new();
            loop {
                line.clear();
                if lines.read_until(b'\n', &mut line)? == 0 {
                    break;
                }
                if line.last() == Some(&b'\n') {
                    line.pop();
                }
                if !each(&mut state, &line) {
                    break;
                }
            }
            Ok::<S, std::io::Error>(state)
        });
        let (pumped, read) = tokio::join!(pump, read);
        // A failed download ends the gzip stream early: say why it ended, not how.
        pumped.map_err(download)?;
        let gunzip =
            |reason: String| ArchiveError::Gzip(format!("cannot gunzip {}: {reason}", object()));
        read.map_err(|e| gunzip(e.to_string()))?
            .map_err(|e| gunzip(crate::short_reason(&e)))
    }

    /// Works through pending records until `shutdown`; each failure waits with backoff.
    pub async fn run(self, router: Router, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(500), Duration::from_secs(30));
        loop {
            let pending = self.pending();
            self.counters
                .backlog
                .store(pending.len() as u64, Ordering::Relaxed);
            let mut failed = false;
            for record in pending {
                if shutdown.is_cancelled() {
                    return;
                }
                let upload = self.upload(&record);
                let result = tokio::select! {
                    () = shutdown.cancelled() => return,
                    r = upload => r,
                };
                match result {
                    Ok(bytes) => {
                        self.counters.uploaded.fetch_add(1, Ordering::Relaxed);
                        self.counters.bytes.fetch_add(bytes, Ordering::Relaxed);
                        tracing::info!(job = %record.source, key = %record.key, bytes, "job archived");
                        if let Err(e) = self.finish(&record) {
                            tracing::error!(job = %record.source, error = %e, "cannot clean up after archiving");
                        }
                        backoff.reset();
                        self.counters.failing_since_ns.store(0, Ordering::Relaxed);
                    }
                    Err(reason) => {
                        failed = true;
                        self.counters.failures.fetch_add(1, Ordering::Relaxed);
                        let _ = self.counters.failing_since_ns.compare_exchange(
                            0,
                            sluice_router::envelope::now_ns().max(1),
                            Ordering::Relaxed,
                            Ordering::Relaxed,
                        );
                        let text = format!(
                            "failed to archive job logs to s3://{}/{}: {reason}",
                            self.config.bucket, record.key
                        );
                        tracing::warn!("{text}");
                        let _ = router.publish_notice(Envelope::notice(&*record.source, text));
                    }
                }
            }
            self.counters
                .backlog
                .store(self.pending().len() as u64, Ordering::Relaxed);
            // Nothing pending waits for a wake (a new completion), or an hour.
            let wait = if failed {
                backoff.next_delay()
            } else {
                Duration::from_secs(3600)
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn pending(&self) -> Vec<Record> {
        let mut records = self.records_in("pending");
        records.sort_by(|a, b| a.key.cmp(&b.key));
        records
    }

    /// After S3 confirmed: drop the local files (unless kept), then move the record to `done`.
    fn finish(&self, record: &Record) -> std::io::Result<()> {
        if !self.keep_local {
            for f in &record.files {
                match std::fs::remove_file(f) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
        }
        if !self.keep_local
            && let Some(dir) = record.files.first().and_then(|f| f.parent())
            && dir.starts_with(self.dir.join("files"))
        {
            let _ = std::fs::remove_dir(dir);
        }
        let name = record.file_name();
        std::fs::rename(
            self.dir.join("pending").join(&name),
            self.dir.join("done").join(&name),
        )
    }

    /// Gzips the record's files into the object, streaming. Returns the compressed size.
    async fn upload(&self, record: &Record) -> Result<u64, ArchiveError> {
        let mut multipart: Option<Upload> = None;
        let result = self.upload_parts(record, &mut multipart).await;
        if result.is_err()
            && let Some((upload_id, _)) = multipart
        {
            // Do not leave half an upload behind (it costs storage until it is aborted).
            let _ = self.objects.abort_upload(&record.key, &upload_id).await;
        }
        result
    }

    async fn upload_parts(
        &self,
        record: &Record,
        multipart: &mut Option<Upload>,
    ) -> Result<u64, ArchiveError> {
        let part_size = self.config.part_size_bytes.max(MIN_PART_BYTES);
        let level = Compression::new(self.config.compression_level.min(9));
        // Compression runs on a blocking thread, a part ahead of the upload: while one part is
        // on its way to S3 the next is being compressed. At most three parts exist at once (one
        // uploading, one queued, one filling), so memory stays bounded by the part size.
        let (tx, mut rx) = tokio::sync::mpsc::channel(1);
        let files = record.files.clone();
        let compressor =
            tokio::task::spawn_blocking(move || compress_parts(&files, part_size, level, &tx));
        let mut total = 0u64;
        let mut rest = None;
        while let Some(part) = rx.recv().await {
            match part? {
                Part::Full(body) => {
                    total += body.len() as u64;
                    self.put_part(&record.key, multipart, body).await?;
                }
                Part::Last(body) => {
                    rest = Some(body);
                    break;
                }
            }
        }
        drop(rx);
        let _ = compressor.await;
        let rest =
            rest.ok_or_else(|| ArchiveError::Gzip("the compressor stopped before the end".into()))?;
        total += rest.len() as u64;
        if multipart.is_none() {
            self.objects.put(&record.key, rest).await?;
            return Ok(total);
        }
        // The last part may be smaller than the minimum.
        self.put_part(&record.key, multipart, rest).await?;
        let (upload_id, parts) = multipart.clone().expect("started above");
        self.objects
            .finish_upload(&record.key, &upload_id, parts)
            .await?;
        *multipart = None;
        Ok(total)
    }

    /// Uploads one part, starting the multipart upload on the first.
    async fn put_part(
        &self,
        key: &str,
        multipart: &mut Option<Upload>,
        body: Vec<u8>,
    ) -> Result<(), ArchiveError> {
        if multipart.is_none() {
            let id = self.objects.start_upload(key).await?;
            *multipart = Some((id, Vec::new()));
        }
        let (upload_id, parts) = multipart.as_mut().expect("created above");
        let number = parts.len() as i32 + 1;
        let tag = self.objects.put_part(key, upload_id, number, body).await?;
        parts.push((number, tag));
        Ok(())
    }
}

/// Why an archive upload or read failed; each shows as one short line for a job's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArchiveError {
    /// The object store refused or could not be reached.
    #[error(transparent)]
    Object(#[from] ObjectError),
    /// An object could not be downloaded.
    #[error("cannot read {object}: {error}")]
    Download { object: String, error: ObjectError },
    /// A local file of the job could not be read.
    #[error("cannot read {}: {reason}", path.display())]
    File { path: PathBuf, reason: String },
    /// Compressing or decompressing failed (a damaged object, a worker that died).
    #[error("{0}")]
    Gzip(String),
}

/// A multipart upload in progress: its id and the parts uploaded (number, ETag).
type Upload = (String, Vec<(i32, Option<String>)>);

/// A compressed part of an object, the last one marked (it may be smaller than a part).
enum Part {
    Full(Vec<u8>),
    Last(Vec<u8>),
}

/// Gzips `files` into parts of about `part_size` bytes, handing each to `tx` as it fills; stops
/// early if the uploader hangs up. Errors are sent on, as the last message.
fn compress_parts(
    files: &[PathBuf],
    part_size: usize,
    level: Compression,
    tx: &tokio::sync::mpsc::Sender<Result<Part, ArchiveError>>,
) {
    let new_part = || Vec::with_capacity(part_size + 64 * 1024);
    let read = |path: &PathBuf, e: std::io::Error| ArchiveError::File {
        path: path.clone(),
        reason: crate::short_reason(&e),
    };
    let gzip = |e: std::io::Error| ArchiveError::Gzip(crate::short_reason(&e));
    let result = (|| -> Result<Option<Vec<u8>>, ArchiveError> {
        let mut encoder = GzEncoder::new(new_part(), level);
        let mut chunk = vec![0u8; 256 * 1024];
        for path in files {
            let mut file = match std::fs::File::open(path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(read(path, e)),
            };
            loop {
                let n = file.read(&mut chunk).map_err(|e| read(path, e))?;
                if n == 0 {
                    break;
                }
                encoder.write_all(&chunk[..n]).map_err(gzip)?;
                if encoder.get_ref().len() >= part_size {
                    let part = std::mem::replace(encoder.get_mut(), new_part());
                    if tx.blocking_send(Ok(Part::Full(part))).is_err() {
                        return Ok(None); // the upload failed; it reports why
                    }
                }
            }
        }
        let mut rest = std::mem::take(encoder.get_mut());
        rest.extend_from_slice(&encoder.finish().map_err(gzip)?);
        Ok(Some(rest))
    })();
    let last = match result {
        Ok(None) => return,
        Ok(Some(rest)) => Ok(Part::Last(rest)),
        Err(e) => Err(e),
    };
    let _ = tx.blocking_send(last);
}

/// A blocking reader over the chunks of an object a task downloads.
struct Chunks {
    rx: tokio::sync::mpsc::Receiver<bytes::Bytes>,
    chunk: bytes::Bytes,
}

impl Read for Chunks {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(next) => self.chunk = next,
                None => return Ok(0),
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::objects::{MemoryObjects, Pending};

    #[test]
    fn keys_follow_the_dated_layout_and_stay_under_the_prefix() {
        let ns = 1_739_357_805_123_000_000; // 2025-02-12T10:56:45Z
        let mut tags = BTreeMap::new();
        assert_eq!(
            object_key("logs/", &tags, "job-1", ns),
            "logs/default/default/2025/02/12/2025-02-12T10-56-45_job-1.jsonl.gz"
        );
        tags.insert("workspace".into(), "acme".into());
        tags.insert("task".into(), "deploy".into());
        tags.insert("job_id".into(), "42".into());
        assert_eq!(
            object_key("", &tags, "job-1", ns),
            "acme/deploy/2025/02/12/2025-02-12T10-56-45_42.jsonl.gz"
        );
        tags.insert("workspace".into(), "../../etc".into());
        tags.insert("job_id".into(), "a/../../b".into());
        let key = object_key("logs/", &tags, "x", ns);
        assert!(key.starts_with("logs/"), "{key}");
        assert!(
            !key.split('/').any(|seg| seg == ".." || seg == "."),
            "{key}"
        );
        assert_eq!(key.matches('/').count(), 6, "{key}");
    }

    fn temp(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("sluice-archive-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn config(part_size_bytes: usize) -> S3Config {
        S3Config {
            bucket: "b".into(),
            region: "us-east-1".into(),
            prefix: String::new(),
            endpoint: None,
            part_size_bytes,
            compression_level: 1,
            unready_after_failing_secs: 600,
        }
    }

    /// Lines that gzip cannot shrink much.
    fn noise(lines: usize, seed: u64) -> String {
        let mut x = seed | 1;
        (0..lines)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!(
                    "{i} {x:016x}{:016x}{:016x}\n",
                    x.rotate_left(21),
                    x.rotate_left(42)
                )
            })
            .collect()
    }

    fn gunzip(bytes: &[u8]) -> String {
        let mut out = String::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_string(&mut out)
            .unwrap();
        out
    }

    /// Writes `texts` as the files of a completion of `source` and records it.
    fn recorded(archive: &Archive, dir: &Path, source: &str, texts: &[String]) -> Record {
        let prepared = archive.prepare(source);
        let key = archive.hold_key(source, &BTreeMap::new(), 1_739_357_805_000_000_000);
        std::fs::create_dir_all(&prepared.dir).unwrap();
        let files: Vec<PathBuf> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let path = prepared.dir.join(format!("part{i}.jsonl"));
                std::fs::write(&path, t).unwrap();
                path
            })
            .collect();
        let record = Record {
            source: source.into(),
            status: "completed".into(),
            key,
            files,
            completion: prepared.completion,
            last_seq: 0,
        };
        archive.enqueue(&record).unwrap();
        assert!(
            dir.join(".archive/pending")
                .join(record.file_name())
                .exists()
        );
        record
    }

    /// The retry loop on the paused clock: ten minutes of a refusing store pass in milliseconds.
    #[tokio::test(start_paused = true)]
    async fn a_refused_upload_is_retried_with_backoff_and_each_failure_is_said_once() {
        let dir = temp("retry");
        let objects = Arc::new(MemoryObjects::default());
        let archive =
            Archive::with_objects(config(MIN_PART_BYTES), &dir, false, objects.clone()).unwrap();
        let job = recorded(&archive, &dir, "job", &[noise(10, 7)]);
        objects.fail_with(Some(ObjectError::refused(
            "SlowDown: please reduce your request rate",
        )));
        let router = Router::new(sluice_router::RouterConfig::default());
        let mut notices = router
            .subscribe(
                sluice_router::Selector::Source("job".into()),
                sluice_router::Filter::default(),
                sluice_router::Start::Live,
            )
            .unwrap();
        let stop = CancellationToken::new();
        let running = tokio::spawn(archive.clone().run(router.clone(), stop.clone()));
        tokio::time::sleep(Duration::from_secs(600)).await;
        let mut batch = Vec::new();
        notices.poll_into(&mut batch, 4096);
        let failures = batch.len();
        let expected = format!(
            "failed to archive job logs to s3://b/{}: SlowDown: please reduce your request rate",
            job.key
        );
        assert!(
            batch
                .iter()
                .all(|d| matches!(d, sluice_router::Delivery::Log(e)
                if sluice_router::Fields::message(e) == expected.as_bytes())),
            "{batch:?}"
        );
        // Delays double from 0.5 s to the 30 s cap, each drawn from [d/2, d]: at the cap one try
        // every 15-30 s, so 20 to 40 in ten minutes, and up to 7 more on the way up.
        assert!((20..=47).contains(&failures), "{failures} tries");
        // The store comes back: the next try uploads, and the record is done.
        objects.fail_with(None);
        // The next try comes within the 30 s cap: wait for the object itself, on the paused
        // clock (its steps are virtual; a compression on the blocking pool holds the clock).
        let came_back = tokio::time::Instant::now();
        while objects.object(&job.key).is_none() {
            assert!(
                came_back.elapsed() <= Duration::from_secs(31),
                "not uploaded within the backoff cap after the store came back"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(archive.pending().is_empty());
        stop.cancel();
        running.await.unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn small_jobs_go_in_one_put_and_big_ones_in_parts_each_exactly_the_files() {
        let dir = temp("upload");
        let objects = Arc::new(MemoryObjects::default());
        let archive =
            Archive::with_objects(config(MIN_PART_BYTES), &dir, false, objects.clone()).unwrap();
        let small = recorded(&archive, &dir, "small", &[noise(10, 1), noise(5, 2)]);
        let size = archive.upload(&small).await.unwrap();
        archive.finish(&small).unwrap();
        let object = objects.object(&small.key).unwrap();
        assert_eq!(size, object.len() as u64);
        assert_eq!(gunzip(&object), noise(10, 1) + &noise(5, 2));
        assert!(
            small.files.iter().all(|f| !f.exists()),
            "local files removed"
        );
        assert!(dir.join(".archive/done").join(small.file_name()).exists());

        // About 8 MiB of noise: a part of at least 5 MiB, then the rest in a smaller one.
        let big = recorded(
            &archive,
            &dir,
            "big",
            &[noise(100_000, 3), noise(60_000, 4)],
        );
        archive.upload(&big).await.unwrap();
        assert_eq!(
            gunzip(&objects.object(&big.key).unwrap()),
            noise(100_000, 3) + &noise(60_000, 4)
        );
        assert_eq!(objects.uploads(), (0, 0), "no upload left open");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_failed_upload_is_aborted_and_kept_for_the_retry_and_fetch_reads_it_back() {
        let dir = temp("fail");
        let objects = Arc::new(MemoryObjects::default());
        let archive =
            Archive::with_objects(config(MIN_PART_BYTES), &dir, true, objects.clone()).unwrap();
        let job = recorded(&archive, &dir, "job", &[noise(200_000, 5)]);
        objects.fail_with(Some(ObjectError::refused(
            "SlowDown: please reduce your request rate",
        )));
        let e = archive.upload(&job).await.unwrap_err();
        assert_eq!(e.to_string(), "SlowDown: please reduce your request rate");
        assert!(
            matches!(&e, ArchiveError::Object(ObjectError::Refused { code, .. }) if code == "SlowDown"),
            "{e:?}"
        );
        assert_eq!(archive.pending().len(), 1, "the record waits for the retry");
        objects.fail_with(None);
        // A failure part-way: the multipart upload started is aborted, not left behind.
        let archive_parts =
            Archive::with_objects(config(MIN_PART_BYTES), &dir, true, objects.clone()).unwrap();
        let failing = FailAfter {
            inner: objects.clone(),
            parts_ok: std::sync::atomic::AtomicU32::new(1),
        };
        let partial =
            Archive::with_objects(config(MIN_PART_BYTES), &dir, true, Arc::new(failing)).unwrap();
        assert!(partial.upload(&job).await.is_err());
        assert_eq!(objects.uploads(), (0, 1), "aborted");
        archive_parts.upload(&job).await.unwrap();
        archive_parts.finish(&job).unwrap();
        assert!(
            job.files.iter().all(|f| f.exists()),
            "keep_local keeps them"
        );
        let text = archive_parts
            .for_each_line(&job.key, String::new(), |text, line| {
                text.push_str(std::str::from_utf8(line).unwrap());
                text.push('\n');
                true
            })
            .await
            .unwrap();
        assert_eq!(text, noise(200_000, 5));
        assert_eq!(objects.keys(), std::slice::from_ref(&job.key));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// A store whose part uploads fail after the first `parts_ok`.
    #[derive(Debug)]
    struct FailAfter {
        inner: Arc<MemoryObjects>,
        parts_ok: std::sync::atomic::AtomicU32,
    }

    impl ObjectStore for FailAfter {
        fn put<'a>(&'a self, key: &'a str, body: Vec<u8>) -> Pending<'a, ()> {
            self.inner.put(key, body)
        }
        fn start_upload<'a>(&'a self, key: &'a str) -> Pending<'a, String> {
            self.inner.start_upload(key)
        }
        fn put_part<'a>(
            &'a self,
            key: &'a str,
            upload: &'a str,
            number: i32,
            body: Vec<u8>,
        ) -> Pending<'a, Option<String>> {
            let left = self.parts_ok.load(Ordering::Relaxed);
            if left == 0 {
                return Box::pin(async { Err(ObjectError::Failed("connection reset".into())) });
            }
            self.parts_ok.store(left - 1, Ordering::Relaxed);
            self.inner.put_part(key, upload, number, body)
        }
        fn finish_upload<'a>(
            &'a self,
            key: &'a str,
            upload: &'a str,
            parts: Vec<(i32, Option<String>)>,
        ) -> Pending<'a, ()> {
            self.inner.finish_upload(key, upload, parts)
        }
        fn abort_upload<'a>(&'a self, key: &'a str, upload: &'a str) -> Pending<'a, ()> {
            self.inner.abort_upload(key, upload)
        }
        fn get<'a>(&'a self, key: &'a str) -> Pending<'a, Box<dyn crate::objects::Body>> {
            self.inner.get(key)
        }
    }
}
