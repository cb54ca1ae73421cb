//! What storage already holds of a source, found without reading whole files: the seq it left
//! off at (so seqs never go back across a restart).
//!
//! A source's newest seq is in one of three places: the last line of its current file, the last
//! line of its newest rotated file (right after a rotation, or after a completion moved the
//! current file away), or its newest archive record (`.archive/{pending,done}/<stem>#<n>.json`,
//! whose files may be gone from the disk once S3 has them). Each is one `stat` or one read of a
//! file's tail, so a source costs the same whether the directory holds ten sources or 100,000,
//! and start-up reads nothing.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use sluice_router::History;

use crate::archive;
use crate::persister::{Line, file_path, rotated_path};

/// The last seqs of sources in a storage directory, for [`sluice_router::Router::with_history`].
#[derive(Debug, Clone)]
pub struct StoredSeqs {
    dir: PathBuf,
}

impl StoredSeqs {
    pub fn new(local_dir: &Path) -> StoredSeqs {
        StoredSeqs {
            dir: local_dir.to_owned(),
        }
    }
}

impl History for StoredSeqs {
    fn last_seq(&self, source_id: &str) -> u64 {
        let current = last_seq_in(&file_path(&self.dir, source_id));
        let rotated = last_seq_in(&rotated_path(&self.dir, source_id, 1));
        let archived = archive::last_recorded_seq(&self.dir, source_id);
        current.max(rotated).max(archived)
    }
}

/// How far back from the end of a file to look for a whole line with a seq: past the longest
/// line Sluice writes, with room for a torn one after it.
const TAIL_LIMIT: u64 = 4 * 1024 * 1024;
const CHUNK: u64 = 64 * 1024;

/// The seq of the last whole JSONL line of `path` that has one; 0 if none (no file, an empty
/// one, a legacy plain-text log).
pub fn last_seq_in(path: &Path) -> u64 {
    let Ok(mut f) = File::open(path) else {
        return 0;
    };
    let Ok(len) = f.seek(SeekFrom::End(0)) else {
        return 0;
    };
    // Read backwards a chunk at a time; `tail` holds the bytes from `start` to the end.
    let mut tail: Vec<u8> = Vec::new();
    let mut start = len;
    while start > 0 && len - start < TAIL_LIMIT {
        let from = start.saturating_sub(CHUNK);
        let mut chunk = vec![0u8; (start - from) as usize];
        if f.seek(SeekFrom::Start(from)).is_err() || f.read_exact(&mut chunk).is_err() {
            return 0;
        }
        chunk.extend_from_slice(&tail);
        tail = chunk;
        start = from;
        // Lines wholly inside `tail`: after its first newline (unless it starts the file), each
        // ending in a newline (a last line without one is torn).
        let whole = match start {
            0 => &tail[..],
            _ => match tail.iter().position(|&b| b == b'\n') {
                Some(i) => &tail[i + 1..],
                None => continue,
            },
        };
        let whole = match whole.iter().rposition(|&b| b == b'\n') {
            Some(i) => &whole[..i],
            None => continue,
        };
        if let Some(seq) = whole
            .split(|&b| b == b'\n')
            .rev()
            .find_map(|l| serde_json::from_slice::<Line>(l).ok()?.seq)
        {
            return seq;
        }
    }
    0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_whole_line_with_a_seq_counts_and_torn_or_foreign_lines_do_not() {
        let dir = std::env::temp_dir().join(format!("sluice-history-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.jsonl");
        let line = |seq: u64, pad: usize| {
            format!(
                "{{\"ts\":\"2026-01-01T00:00:00.000Z\",\"stream\":\"stdout\",\"line\":\"{}\",\"origin\":\"APP/0\",\"seq\":{seq}}}\n",
                "x".repeat(pad)
            )
        };
        assert_eq!(last_seq_in(&path), 0, "no file");
        std::fs::write(&path, "").unwrap();
        assert_eq!(last_seq_in(&path), 0, "empty");
        std::fs::write(&path, "plain text\nlegacy\n").unwrap();
        assert_eq!(last_seq_in(&path), 0, "no seqs");
        // Lines longer than a chunk, and a torn last line.
        let text = [line(7, 10), line(8, 100_000), line(9, 70_000)].concat();
        std::fs::write(&path, format!("{text}{{\"ts\":\"2026-01-0")).unwrap();
        assert_eq!(last_seq_in(&path), 9);
        std::fs::write(&path, [line(1, 3), "not json\n".into()].concat()).unwrap();
        assert_eq!(last_seq_in(&path), 1, "an unreadable last line is skipped");
        std::fs::write(&path, line(12, 5)).unwrap();
        assert_eq!(last_seq_in(&path), 12, "one line, the whole file");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
