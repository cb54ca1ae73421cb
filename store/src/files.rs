//! Reading a source's JSONL files without reading them whole: lines backwards from the end, the
//! newest seq, the last `n` lines before a seq, the lines of a seq range, each with bounded
//! memory.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::persister::line::Line;

/// How far back from the end of a file to look for a whole line with a seq: past the longest
/// line Sluice writes, with room for a torn one after it.
const TAIL_LIMIT: usize = 4 * 1024 * 1024;
/// Bytes read at a time, backwards or forwards.
const CHUNK: usize = 64 * 1024;
/// A line longer than this is skipped when reading backwards (Sluice writes none so long).
const MAX_LINE: usize = 8 * 1024 * 1024;

/// Lines with a seq looked at from the end of a file: a notice of lines the persister gave up
/// on carries the seq of the last of them, and is written after newer lines.
const TAIL_LINES: usize = 64;

/// The highest seq among the last whole JSONL lines of `path`; 0 if none (no file, an empty
/// one, a legacy plain-text log).
pub fn last_seq_in(path: &Path) -> u64 {
    read_last_seq(path).unwrap_or(0)
}

/// [`last_seq_in`], except that a file that exists but cannot be opened or read is an error
/// (only a missing one reads as 0).
pub fn read_last_seq(path: &Path) -> std::io::Result<u64> {
    let mut seq = 0;
    let mut read = 0;
    let mut seen = 0;
    let walked = lines_backwards(path, |line| {
        read += line.len() + 1;
        if let Some(s) = serde_json::from_slice::<Line>(line)
            .ok()
            .and_then(|l| l.seq)
        {
            seq = seq.max(s);
            seen += 1;
        }
        seen < TAIL_LINES && read < TAIL_LIMIT
    });
    match walked {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(seq),
    }
}

/// Calls `f` with each whole line of `path` (without its newline), newest first, until it
/// returns false. A torn last line (no newline) is skipped. Memory: one chunk plus the line
/// being assembled.
pub fn lines_backwards(path: &Path, mut f: impl FnMut(&[u8]) -> bool) -> std::io::Result<()> {
    let mut file = File::open(path)?;
    let mut pos = file.seek(SeekFrom::End(0))?;
    // The start of the line that ends where the bytes read so far begin.
    let mut carry: Vec<u8> = Vec::new();
    let mut first = true;
    let mut skipping = false;
    let mut chunk = vec![0u8; CHUNK];
    while pos > 0 {
        let from = pos.saturating_sub(CHUNK as u64);
        let len = (pos - from) as usize;
        file.seek(SeekFrom::Start(from))?;
        file.read_exact(&mut chunk[..len])?;
        pos = from;
        let mut end = len;
        // Complete lines in this chunk, from the back.
        while let Some(nl) = chunk[..end].iter().rposition(|&b| b == b'\n') {
            let segment = &chunk[nl + 1..end];
            if first {
                // After the file's last newline: a torn line, or nothing.
                first = false;
            } else if skipping {
                skipping = false;
            } else if carry.is_empty() {
                if !f(segment) {
                    return Ok(());
                }
            } else {
                let mut line = segment.to_vec();
                line.append(&mut carry);
                if !f(&line) {
                    return Ok(());
                }
            }
            carry.clear();
            end = nl;
        }
        if first {
            continue; // still inside the torn tail
        }
        if !skipping {
            let mut start = chunk[..end].to_vec();
            start.append(&mut carry);
            carry = start;
            if carry.len() > MAX_LINE {
                carry.clear();
                skipping = true;
            }
        }
    }
    if !first && !skipping && !carry.is_empty() {
        f(&carry);
    }
    Ok(())
}

/// The last `n` lines of `files` (oldest first) with a seq below `before` that `keep` accepts,
/// oldest first. Reads backwards from the newest file and stops once it has them.
pub fn last_lines(
    files: &[PathBuf],
    before: u64,
    n: usize,
    mut keep: impl FnMut(&Line) -> bool,
) -> Vec<Line> {
    let mut out = Vec::new();
    for path in files.iter().rev() {
        if out.len() >= n {
            break;
        }
        let _ = lines_backwards(path, |raw| {
            if let Ok(line) = serde_json::from_slice::<Line>(raw)
                && line.seq.is_some_and(|s| s < before)
                && keep(&line)
            {
                out.push(line);
            }
            out.len() < n
        });
    }
    out.reverse();
    out
}

/// The lines of `files` (oldest first) with a seq in `after + 1 .. before`, in order, handed to
/// `f` in batches of at most `batch` lines, until `f` returns false. Files that end at or
/// before `after` are skipped unread. Memory: one batch and one read buffer.
pub fn lines_between(
    files: &[PathBuf],
    after: u64,
    before: u64,
    batch: usize,
    mut f: impl FnMut(Vec<Line>) -> bool,
) -> std::io::Result<()> {
    let mut out = Vec::with_capacity(batch);
    for path in files {
        if last_seq_in(path) <= after {
            continue;
        }
        let reader = std::io::BufReader::with_capacity(CHUNK, File::open(path)?);
        for raw in std::io::BufRead::split(reader, b'\n') {
            let raw = raw?;
            let Ok(line) = serde_json::from_slice::<Line>(&raw) else {
                continue; // a torn line after a crash
            };
            match line.seq {
                Some(s) if s >= before => {
                    if !out.is_empty() {
                        f(std::mem::take(&mut out));
                    }
                    return Ok(());
                }
                Some(s) if s > after => out.push(line),
                _ => {}
            }
            if out.len() >= batch && !f(std::mem::replace(&mut out, Vec::with_capacity(batch))) {
                return Ok(());
            }
        }
    }
    if !out.is_empty() {
        f(out);
    }
    Ok(())
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
        std::fs::write(&path, [line(30, 5), line(31, 5), line(20, 5)].concat()).unwrap();
        assert_eq!(
            last_seq_in(&path),
            31,
            "a notice of given-up lines comes after newer ones"
        );

        // Backwards and forwards over lines of every length around the chunk size, across
        // two files, with a torn last line.
        let pads = |seq: u64| [0usize, 10, 65_400, 65_536, 140_000][seq as usize % 5];
        let older = dir.join("a.jsonl.1");
        let text: String = (1..=20).map(|s| line(s, pads(s))).collect();
        std::fs::write(&older, text).unwrap();
        let text: String = (21..=40).map(|s| line(s, pads(s))).collect();
        std::fs::write(&path, format!("{text}{{\"torn")).unwrap();
        let mut back = Vec::new();
        lines_backwards(&path, |l| {
            back.push(serde_json::from_slice::<Line>(l).unwrap().seq.unwrap());
            true
        })
        .unwrap();
        assert_eq!(back, (21..=40).rev().collect::<Vec<_>>());
        let files = [older.clone(), path.clone()];
        let seqs = |lines: &[Line]| lines.iter().map(|l| l.seq.unwrap()).collect::<Vec<_>>();
        let last = last_lines(&files, 23, 5, |l| l.seq.unwrap() != 20);
        assert_eq!(seqs(&last), [17, 18, 19, 21, 22]);
        assert_eq!(last[4].line.len(), pads(22));
        let mut batches = Vec::new();
        lines_between(&files, 18, 33, 4, |b| {
            batches.push(seqs(&b));
            true
        })
        .unwrap();
        assert_eq!(batches.concat(), (19..33).collect::<Vec<_>>());
        assert!(batches.iter().all(|b| b.len() <= 4));
        let mut first = Vec::new();
        lines_between(&files, 0, u64::MAX, 3, |b| {
            first = seqs(&b);
            false
        })
        .unwrap();
        assert_eq!(first, [1, 2, 3], "stops when asked");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
