//! Jobs, as Strøm sees them: a source whose lines carry steps, that ends with a status, and
//! whose log is read back as JSONL wherever it now lives.
//!
//! Reads merge, by `seq` and without duplicates: the source's local files (rotated ones oldest
//! first, then the current one), or the legacy `<stem>.log` when there is no JSONL, and the
//! lines still in the ring (which the persister may not have written yet).

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use sluice_drains::archive::Archive;
use sluice_drains::persister::{Line, PersisterHandle, legacy_path};
use sluice_router::{Filter, Router};

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobStatus {
    Completed,
    Failed,
}

/// Every line of `source` (of one `step`, if given), oldest first; `None` if nothing is known
/// of it at all.
pub fn read_lines(
    router: &Router,
    persister: &PersisterHandle,
    source: &str,
    step: Option<&str>,
) -> Option<Vec<Line>> {
    let (mut by_seq, unsequenced, mut found) = read_disk(persister, source);
    if let Some(recent) = router.recent(source, usize::MAX, &Filter::default()) {
        found |= !recent.is_empty() || router.source_stats(source).is_some_and(|s| s.published > 0);
        for env in recent {
            by_seq
                .entry(env.seq)
                .or_insert_with(|| Line::from_envelope(&env));
        }
    }
    if !found {
        return None;
    }
    let lines = unsequenced.into_iter().chain(by_seq.into_values());
    Some(match step {
        Some(step) => lines.filter(|l| l.step.as_deref() == Some(step)).collect(),
        None => lines.collect(),
    })
}

/// The lines of `source` on disk with a seq in `from..=to`, in order.
pub fn disk_lines_between(
    persister: &PersisterHandle,
    source: &str,
    from: u64,
    to: u64,
) -> Vec<Line> {
    read_disk(persister, source)
        .0
        .range(from..=to)
        .map(|(_, l)| l.clone())
        .collect()
}

/// The local files: sequenced lines by seq, unsequenced ones in order, and whether any file was
/// there.
fn read_disk(persister: &PersisterHandle, source: &str) -> (BTreeMap<u64, Line>, Vec<Line>, bool) {
    let dir = &persister.config.local_dir;
    let files = sluice_drains::history::local_files(dir, source, persister.config.max_files);
    let mut by_seq: BTreeMap<u64, Line> = BTreeMap::new();
    let mut unsequenced: Vec<Line> = Vec::new();
    let mut found = false;
    for path in &files {
        found |= read_jsonl(path, &mut by_seq, &mut unsequenced);
    }
    if !found {
        found = read_legacy(&legacy_path(dir, source), &mut unsequenced);
    }
    (by_seq, unsequenced, found)
}

/// [`read_lines`], and then what the archive holds of the job: the files of completions not
/// yet uploaded (or kept), and every object uploaded, merged by seq: reads keep working after
/// the local files are gone, and see every completion of the job, never another job's lines.
pub async fn read_lines_archived(
    router: &Router,
    persister: &PersisterHandle,
    archive: Option<&Archive>,
    source: &str,
    step: Option<&str>,
) -> Result<Option<Vec<Line>>, String> {
    let local = read_lines(router, persister, source, None);
    let Some(archive) = archive else {
        return Ok(local.map(|lines| filter_step(lines, step)));
    };
    let files = archive.local_files(source);
    let keys = archive.archived_keys(source);
    if files.is_empty() && keys.is_empty() {
        return Ok(local.map(|lines| filter_step(lines, step)));
    }
    let mut by_seq: BTreeMap<u64, Line> = BTreeMap::new();
    let mut unsequenced = Vec::new();
    for line in local.unwrap_or_default() {
        match line.seq {
            Some(seq) => {
                by_seq.entry(seq).or_insert(line);
            }
            None => unsequenced.push(line),
        }
    }
    for file in &files {
        read_jsonl(file, &mut by_seq, &mut unsequenced);
    }
    for key in &keys {
        let text = archive.fetch(key).await?;
        parse_jsonl(
            &String::from_utf8_lossy(&text),
            &mut by_seq,
            &mut unsequenced,
        );
    }
    let lines = unsequenced
        .into_iter()
        .chain(by_seq.into_values())
        .collect();
    Ok(Some(filter_step(lines, step)))
}

fn filter_step(lines: Vec<Line>, step: Option<&str>) -> Vec<Line> {
    match step {
        Some(step) => lines
            .into_iter()
            .filter(|l| l.step.as_deref() == Some(step))
            .collect(),
        None => lines,
    }
}

/// Lines as one JSONL text, as Strøm's `{"logs": ...}` carries it.
pub fn to_jsonl(lines: &[Line]) -> String {
    let mut out = String::new();
    for l in lines {
        out.push_str(&l.to_json());
        out.push('\n');
    }
    out
}

fn read_jsonl(path: &Path, by_seq: &mut BTreeMap<u64, Line>, unsequenced: &mut Vec<Line>) -> bool {
    let Ok(text) = std::fs::read_to_string(path) else {
        return false;
    };
    parse_jsonl(&text, by_seq, unsequenced);
    true
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

/// A pre-JSONL log: one plain line per line.
fn read_legacy(path: &Path, out: &mut Vec<Line>) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    for raw in String::from_utf8_lossy(&bytes).lines() {
        out.push(Line {
            ts: String::new(),
            stream: "stdout".into(),
            step: None,
            line: raw.to_owned(),
            origin: None,
            seq: None,
        });
    }
    true
}
