//! The tags an archive key is made of (`workspace`, `task`, `job_id`), kept beside a source's
//! files: `local_dir/.tags/<stem>.json`. The lines themselves keep no tags, so without this a
//! job completed after a restart, or after the router forgot it, would be archived under the
//! default key.
//!
//! Each key tag keeps the newest value a line of the source gave it: a line without the tag
//! (Sluice's own notices, a line from another producer) leaves it as it was. The writer looks
//! at a line's tags only when its meta differs from the line before it (a ring shares one meta
//! between lines of one kind), so untagged traffic pays one pointer comparison per line, and
//! the file is written only when a value changed, with the source's buffer.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::archive::{JOB_ID_TAG, TASK_TAG, WORKSPACE_TAG};

use super::names::file_stem;

/// The tags an archive key takes, in the order the file lists them.
pub const KEY_TAGS: [&str; 3] = [WORKSPACE_TAG, TASK_TAG, JOB_ID_TAG];

/// Where the key tags of every source are kept.
pub const TAGS_DIR: &str = ".tags";

/// Longest value taken for the key: a longer one (a producer's mistake or worse) is passed over,
/// so no line can make the writer keep and rewrite megabytes beside the files.
pub const MAX_VALUE_BYTES: usize = 4096;

/// Longest file read back: three values of [`MAX_VALUE_BYTES`], JSON-escaped.
const MAX_FILE_BYTES: u64 = 128 * 1024;

/// What a writer saw of one source's key tags since it opened the source.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct KeyTags {
    /// Per [`KEY_TAGS`], the newest value a line gave (none: no line of this process had it).
    values: [Option<Box<str>>; 3],
    /// A value changed since the file was last written.
    unstored: bool,
    /// Writing the file failed (said once; tried again with the next change or write).
    failed: bool,
}

impl KeyTags {
    /// Takes on the key tags among `tags`; whether one changed.
    pub(super) fn note(slot: &mut Option<Box<KeyTags>>, tags: &BTreeMap<String, String>) -> bool {
        if tags.is_empty() {
            return false;
        }
        let mut changed = false;
        for (i, name) in KEY_TAGS.iter().enumerate() {
            let Some(value) = tags
                .get(*name)
                .filter(|v| !v.is_empty() && v.len() <= MAX_VALUE_BYTES)
            else {
                continue;
            };
            let key = slot.get_or_insert_with(Box::default);
            if key.values[i].as_deref() != Some(value.as_str()) {
                key.values[i] = Some(value.as_str().into());
                key.unstored = true;
                changed = true;
            }
        }
        changed
    }

    pub(super) fn unstored(slot: &Option<Box<KeyTags>>) -> bool {
        slot.as_ref().is_some_and(|k| k.unstored)
    }

    /// Writes what changed into `source`'s file under `dir` (what the file held of tags this
    /// process saw none of stays), and returns the tags it holds now, and whether it was
    /// written. A failure is logged once and leaves the values to write with the next try.
    pub(super) fn store(
        slot: &mut Option<Box<KeyTags>>,
        dir: &Path,
        source: &str,
        sync: bool,
    ) -> (BTreeMap<String, String>, bool) {
        let mut tags = read(dir, source);
        let Some(key) = slot.as_mut() else {
            return (tags, false);
        };
        let before = tags.clone();
        for (name, value) in KEY_TAGS.iter().zip(&key.values) {
            if let Some(v) = value {
                tags.insert((*name).to_owned(), v.to_string());
            }
        }
        if !key.unstored || tags == before {
            key.unstored = false;
            return (tags, false);
        }
        let written = write(dir, source, &tags, sync);
        match &written {
            Ok(()) => {
                key.unstored = false;
                key.failed = false;
            }
            Err(e) => {
                if !key.failed {
                    tracing::warn!(
                        source,
                        error = %crate::short_reason(&e),
                        "cannot keep the archive key's tags of a source (its archive may take the default key)"
                    );
                }
                key.failed = true;
            }
        }
        (tags, written.is_ok())
    }
}

/// The file that keeps `source`'s key tags.
pub fn tags_path(dir: &Path, source: &str) -> PathBuf {
    dir.join(TAGS_DIR)
        .join(format!("{}.json", file_stem(source)))
}

/// The key tags kept for `source` (none when there is no file, or it is not one of ours).
pub fn read(dir: &Path, source: &str) -> BTreeMap<String, String> {
    let path = tags_path(dir, source);
    let Ok(meta) = std::fs::metadata(&path) else {
        return BTreeMap::new();
    };
    if meta.len() > MAX_FILE_BYTES {
        return BTreeMap::new();
    }
    let Ok(bytes) = std::fs::read(&path) else {
        return BTreeMap::new();
    };
    let mut tags: BTreeMap<String, String> = serde_json::from_slice(&bytes).unwrap_or_default();
    tags.retain(|k, v| {
        KEY_TAGS.contains(&k.as_str()) && !v.is_empty() && v.len() <= MAX_VALUE_BYTES
    });
    tags
}

/// Replaces `source`'s file by one holding `tags`: written beside it and renamed over it, so a
/// reader sees the old or the new, whole.
fn write(
    dir: &Path,
    source: &str,
    tags: &BTreeMap<String, String>,
    sync: bool,
) -> std::io::Result<()> {
    let path = tags_path(dir, source);
    let parent = dir.join(TAGS_DIR);
    crate::private::create_dir_all(&parent)?;
    let tmp = path.with_extension("json.tmp");
    let mut f = crate::private::create(&tmp)?;
    f.write_all(&serde_json::to_vec(tags).map_err(std::io::Error::other)?)?;
    if sync {
        f.sync_data()?;
    }
    drop(f);
    std::fs::rename(&tmp, &path)?;
    if sync && let Ok(d) = std::fs::File::open(&parent) {
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn each_key_tag_keeps_its_newest_value_across_writers_and_files() {
        let dir = std::env::temp_dir().join(format!("sluice-keytags-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut slot = None;
        assert!(!KeyTags::note(&mut slot, &BTreeMap::new()));
        assert!(!KeyTags::note(&mut slot, &tags(&[("team", "x")])));
        assert!(slot.is_none(), "no key tag, nothing kept");
        assert!(KeyTags::note(
            &mut slot,
            &tags(&[("workspace", "acme"), ("job_id", "7"), ("team", "x")])
        ));
        assert!(!KeyTags::note(&mut slot, &tags(&[("job_id", "7")])));
        assert!(!KeyTags::note(&mut slot, &tags(&[("job_id", "")])));
        let huge = "x".repeat(MAX_VALUE_BYTES + 1);
        assert!(!KeyTags::note(&mut slot, &tags(&[("job_id", &huge)])));
        let (stored, written) = KeyTags::store(&mut slot, &dir, "a/b", false);
        assert!(written);
        assert!(
            !KeyTags::store(&mut slot, &dir, "a/b", false).1,
            "nothing new"
        );
        assert_eq!(stored, tags(&[("workspace", "acme"), ("job_id", "7")]));
        assert!(!KeyTags::unstored(&slot));
        assert_eq!(read(&dir, "a/b"), stored);

        // Another process (or the source made again) sees only a new task: the rest stays.
        let mut again = None;
        assert!(KeyTags::note(&mut again, &tags(&[("task", "nightly")])));
        assert_eq!(
            KeyTags::store(&mut again, &dir, "a/b", true).0,
            tags(&[("workspace", "acme"), ("task", "nightly"), ("job_id", "7")])
        );
        assert!(KeyTags::note(&mut again, &tags(&[("job_id", "8")])));
        KeyTags::store(&mut again, &dir, "a/b", false);
        assert_eq!(read(&dir, "a/b")["job_id"], "8");

        // A file that is not ours reads as no tags.
        std::fs::write(tags_path(&dir, "junk"), b"[1,2").unwrap();
        assert!(read(&dir, "junk").is_empty());
        std::fs::write(tags_path(&dir, "other"), br#"{"job_id":"1","x":"y"}"#).unwrap();
        assert_eq!(read(&dir, "other"), tags(&[("job_id", "1")]));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
