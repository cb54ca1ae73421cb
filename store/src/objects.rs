//! Where archived objects go, behind a small trait: S3 (the real `aws-sdk-s3` client) in
//! production and integration tests, memory in unit tests.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;

/// A boxed future, so that the trait can be used as `dyn ObjectStore`.
pub type Pending<'a, T> = Pin<Box<dyn Future<Output = Result<T, ObjectError>> + Send + 'a>>;

/// Why an object operation failed; each shows as one short line for a job's log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// The store answered and refused: `line` starts with its `code` (`NoSuchBucket: …`,
    /// `SlowDown: …`, `AccessDenied: …`).
    #[error("{line}")]
    Refused { code: String, line: String },
    /// The store could not be reached, or did not answer in time.
    #[error("{0}")]
    Unreachable(String),
    /// The request, or its answer, broke off or could not be read.
    #[error("{0}")]
    Failed(String),
}

impl ObjectError {
    /// A refusal, from the store's `Code: message` line.
    pub fn refused(line: impl Into<String>) -> ObjectError {
        let line = line.into();
        let code = line.split(':').next().unwrap_or_default().trim().to_owned();
        ObjectError::Refused { code, line }
    }

    /// Whether the object (or its bucket) does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, ObjectError::Refused { code, .. }
            if code == "NoSuchKey" || code == "NoSuchBucket" || code == "NotFound")
    }
}

/// The object operations the archive needs. Errors are one short line for a job's log.
pub trait ObjectStore: Send + Sync + std::fmt::Debug {
    /// Stores `body` under `key` in one request.
    fn put<'a>(&'a self, key: &'a str, body: Vec<u8>) -> Pending<'a, ()>;
    /// Starts a multipart upload of `key`; returns its id.
    fn start_upload<'a>(&'a self, key: &'a str) -> Pending<'a, String>;
    /// Uploads part `number` (from 1); returns its ETag, if the store gives one.
    fn put_part<'a>(
        &'a self,
        key: &'a str,
        upload: &'a str,
        number: i32,
        body: Vec<u8>,
    ) -> Pending<'a, Option<String>>;
    /// Joins the parts, in order, into the object.
    fn finish_upload<'a>(
        &'a self,
        key: &'a str,
        upload: &'a str,
        parts: Vec<(i32, Option<String>)>,
    ) -> Pending<'a, ()>;
    /// Drops an upload that will not be finished.
    fn abort_upload<'a>(&'a self, key: &'a str, upload: &'a str) -> Pending<'a, ()>;
    /// The object's bytes, chunk by chunk as they arrive.
    fn get<'a>(&'a self, key: &'a str) -> Pending<'a, Box<dyn Body>>;
}

/// An object's bytes as they arrive: a read holds one chunk at a time, however large the object.
pub trait Body: Send {
    /// The next chunk; `None` after the last.
    fn next_chunk(&mut self) -> Pending<'_, Option<Bytes>>;
}

/// An object already in memory, as one chunk.
struct Whole(Option<Bytes>);

impl Body for Whole {
    fn next_chunk(&mut self) -> Pending<'_, Option<Bytes>> {
        Box::pin(async move { Ok(self.0.take()) })
    }
}

/// An S3 response body.
struct S3Body(ByteStream);

impl Body for S3Body {
    fn next_chunk(&mut self) -> Pending<'_, Option<Bytes>> {
        Box::pin(async move {
            self.0
                .next()
                .await
                .transpose()
                .map_err(|e| ObjectError::Failed(crate::short_reason(&e)))
        })
    }
}

/// A bucket of an S3-compatible store.
#[derive(Debug, Clone)]
pub struct S3Objects {
    pub client: Client,
    pub bucket: String,
}

impl ObjectStore for S3Objects {
    fn put<'a>(&'a self, key: &'a str, body: Vec<u8>) -> Pending<'a, ()> {
        Box::pin(async move {
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(key)
                .content_type("application/gzip")
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| describe(&e))?;
            Ok(())
        })
    }

    fn start_upload<'a>(&'a self, key: &'a str) -> Pending<'a, String> {
        Box::pin(async move {
            let created = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .content_type("application/gzip")
                .send()
                .await
                .map_err(|e| describe(&e))?;
            Ok(created
                .upload_id()
                .ok_or_else(|| ObjectError::Failed("S3 gave no upload id".into()))?
                .to_owned())
        })
    }

    fn put_part<'a>(
        &'a self,
        key: &'a str,
        upload: &'a str,
        number: i32,
        body: Vec<u8>,
    ) -> Pending<'a, Option<String>> {
        Box::pin(async move {
            let out = self
                .client
                .upload_part()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload)
                .part_number(number)
                .body(ByteStream::from(body))
                .send()
                .await
                .map_err(|e| describe(&e))?;
            Ok(out.e_tag().map(str::to_owned))
        })
    }

    fn finish_upload<'a>(
        &'a self,
        key: &'a str,
        upload: &'a str,
        parts: Vec<(i32, Option<String>)>,
    ) -> Pending<'a, ()> {
        Box::pin(async move {
            let parts = parts
                .into_iter()
                .map(|(n, tag)| {
                    CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(tag)
                        .build()
                })
                .collect();
            self.client
                .complete_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload)
                .multipart_upload(
                    CompletedMultipartUpload::builder()
                        .set_parts(Some(parts))
                        .build(),
                )
                .send()
                .await
                .map_err(|e| describe(&e))?;
            Ok(())
        })
    }

    fn abort_upload<'a>(&'a self, key: &'a str, upload: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            self.client
                .abort_multipart_upload()
                .bucket(&self.bucket)
                .key(key)
                .upload_id(upload)
                .send()
                .await
                .map_err(|e| describe(&e))?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> Pending<'a, Box<dyn Body>> {
        Box::pin(async move {
            let out = self
                .client
                .get_object()
                .bucket(&self.bucket)
                .key(key)
                .send()
                .await
                .map_err(|e| describe(&e))?;
            Ok(Box::new(S3Body(out.body)) as Box<dyn Body>)
        })
    }
}

/// Objects in memory, for unit tests: uploads that fail on demand, and what was aborted.
#[derive(Debug, Default)]
pub struct MemoryObjects {
    state: Mutex<MemoryState>,
}

type Parts = Vec<(i32, Vec<u8>)>;

#[derive(Debug, Default)]
struct MemoryState {
    objects: HashMap<String, Vec<u8>>,
    /// Upload id → (key, parts as (number, bytes)).
    uploads: HashMap<String, (String, Parts)>,
    next_upload: u64,
    /// Every request fails with this while it is set.
    failing: Option<ObjectError>,
    aborted: u64,
}

impl MemoryObjects {
    /// Makes every request fail with `error` (`None`: work again).
    pub fn fail_with(&self, error: Option<ObjectError>) {
        self.lock().failing = error;
    }

    /// The stored object at `key`.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().objects.get(key).cloned()
    }

    /// Every key stored.
    pub fn keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self.lock().objects.keys().cloned().collect();
        keys.sort();
        keys
    }

    /// Multipart uploads not finished nor aborted, and how many were aborted.
    pub fn uploads(&self) -> (usize, u64) {
        let s = self.lock();
        (s.uploads.len(), s.aborted)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MemoryState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check(&self) -> Result<(), ObjectError> {
        match &self.lock().failing {
            Some(error) => Err(error.clone()),
            None => Ok(()),
        }
    }
}

impl ObjectStore for MemoryObjects {
    fn put<'a>(&'a self, key: &'a str, body: Vec<u8>) -> Pending<'a, ()> {
        Box::pin(async move {
            self.check()?;
            self.lock().objects.insert(key.to_owned(), body);
            Ok(())
        })
    }

    fn start_upload<'a>(&'a self, key: &'a str) -> Pending<'a, String> {
        Box::pin(async move {
            self.check()?;
            let mut s = self.lock();
            s.next_upload += 1;
            let id = format!("upload-{}", s.next_upload);
            s.uploads.insert(id.clone(), (key.to_owned(), Vec::new()));
            Ok(id)
        })
    }

    fn put_part<'a>(
        &'a self,
        key: &'a str,
        upload: &'a str,
        number: i32,
        body: Vec<u8>,
    ) -> Pending<'a, Option<String>> {
        Box::pin(async move {
            self.check()?;
            let mut s = self.lock();
            let (for_key, parts) = s.uploads.get_mut(upload).ok_or_else(no_such_upload)?;
            if for_key != key {
                return Err(no_such_upload());
            }
            parts.push((number, body));
            Ok(Some(format!("etag-{number}")))
        })
    }

    fn finish_upload<'a>(
        &'a self,
        key: &'a str,
        upload: &'a str,
        parts: Vec<(i32, Option<String>)>,
    ) -> Pending<'a, ()> {
        Box::pin(async move {
            self.check()?;
            let mut s = self.lock();
            let (_, mut stored) = s.uploads.remove(upload).ok_or_else(no_such_upload)?;
            stored.sort_by_key(|(n, _)| *n);
            let numbers: Vec<i32> = stored.iter().map(|(n, _)| *n).collect();
            let asked: Vec<i32> = parts.iter().map(|(n, _)| *n).collect();
            if numbers != asked {
                return Err(ObjectError::refused(format!(
                    "InvalidPart: have {numbers:?}, asked {asked:?}"
                )));
            }
            let body = stored.into_iter().flat_map(|(_, b)| b).collect();
            s.objects.insert(key.to_owned(), body);
            Ok(())
        })
    }

    fn abort_upload<'a>(&'a self, _key: &'a str, upload: &'a str) -> Pending<'a, ()> {
        Box::pin(async move {
            let mut s = self.lock();
            if s.uploads.remove(upload).is_some() {
                s.aborted += 1;
            }
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> Pending<'a, Box<dyn Body>> {
        Box::pin(async move {
            self.check()?;
            let bytes = self.lock().objects.get(key).cloned().ok_or_else(|| {
                ObjectError::refused("NoSuchKey: The specified key does not exist.")
            })?;
            Ok(Box::new(Whole(Some(bytes.into()))) as Box<dyn Body>)
        })
    }
}

fn no_such_upload() -> ObjectError {
    ObjectError::refused("NoSuchUpload: The specified upload does not exist.")
}

/// An SDK error on one line: the service's `Code: message` when S3 answered, else the chain of
/// causes (connection refused, timeouts).
fn describe<E, R>(e: &aws_sdk_s3::error::SdkError<E, R>) -> ObjectError
where
    E: aws_sdk_s3::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    use aws_sdk_s3::error::SdkError;
    if let Some(service) = e.as_service_error()
        && let Some(code) = service.code()
    {
        let line = match service.message() {
            Some(message) => format!("{code}: {message}"),
            None => code.to_owned(),
        };
        return ObjectError::Refused {
            code: code.to_owned(),
            line,
        };
    }
    // One short line for the job's log: what went wrong, and the innermost cause. The SDK's
    // own rendering is the whole chain with Debug dumps of each layer (600 characters).
    let what = match e {
        SdkError::ConstructionFailure(_) => "cannot build the request",
        SdkError::TimeoutError(_) => "timed out",
        SdkError::DispatchFailure(_) => "cannot reach the S3 endpoint",
        SdkError::ResponseError(_) => "unreadable response from S3",
        SdkError::ServiceError(_) => "S3 refused the request",
        _ => "request failed",
    };
    let mut inner: &dyn std::error::Error = e;
    while let Some(next) = inner.source() {
        inner = next;
    }
    let cause = crate::short_reason(&inner);
    let mut line = if std::ptr::addr_eq(inner, e as &dyn std::error::Error) || cause.is_empty() {
        what.to_owned()
    } else {
        format!("{what}: {cause}")
    };
    if line.len() > 200 {
        let mut end = 200;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    match e {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => ObjectError::Unreachable(line),
        _ => ObjectError::Failed(line),
    }
}
