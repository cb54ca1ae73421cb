//! What `sluice run` holds between its child and the server: lines encoded into frames of up to
//! [`CHUNK_LINES`] lines or [`CHUNK_BYTES`] bytes, oldest first. Adding never waits, so the
//! child is never slowed by Sluice: when the frames held pass the limit, the oldest are dropped
//! whole, counted exactly, and the count is handed to the sender to announce in their place.
//! With a directory, frames beyond the first few are kept in files there instead of memory.

use std::collections::VecDeque;
use std::path::PathBuf;

use bytes::{BufMut, Bytes, BytesMut};
use parking_lot::Mutex;
use sluice_router::Envelope;
use sluice_router::codec::{self, encode_envelope};
use tokio::sync::Notify;

/// Most lines in one frame.
pub const CHUNK_LINES: u64 = 1000;
/// A frame is closed once its envelopes pass this many bytes.
pub const CHUNK_BYTES: usize = 256 * 1024;
/// Closed frames kept in memory before the rest go to files, with a directory.
const MEMORY_CHUNKS: usize = 4;

/// One frame of lines, ready to send.
#[derive(Debug)]
pub struct Chunk {
    data: ChunkData,
    /// The frame's length on the wire: what it counts against the limit.
    pub size: usize,
    pub lines: u64,
    /// The lines' message bytes.
    pub bytes: u64,
    /// The first line's timestamp.
    pub since_ns: i64,
}

#[derive(Debug)]
enum ChunkData {
    Memory(Bytes),
    File(PathBuf),
}

impl Chunk {
    /// The frame's bytes, read back from its file if it was spilled.
    pub fn frame(&self) -> std::io::Result<Bytes> {
        match &self.data {
            ChunkData::Memory(b) => Ok(b.clone()),
            ChunkData::File(p) => std::fs::read(p).map(Bytes::from),
        }
    }

    fn discard(self) {
        if let ChunkData::File(p) = self.data {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Lines dropped and not yet announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Dropped {
    pub lines: u64,
    pub bytes: u64,
    pub since_ns: i64,
}

/// Totals for the summary at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Totals {
    pub lines: u64,
    pub dropped_lines: u64,
    pub dropped_bytes: u64,
    /// Lines that went through a file.
    pub spilled_lines: u64,
}

#[derive(Debug)]
struct State {
    /// Envelopes of the frame being filled (without the array header).
    open: BytesMut,
    open_lines: u64,
    open_bytes: u64,
    open_since: i64,
    closed: VecDeque<Chunk>,
    /// Wire bytes held: open, closed, and the chunk the sender has out.
    held: usize,
    dropped: Option<Dropped>,
    totals: Totals,
    next_file: u64,
    /// Writers still adding.
    writers: usize,
}

/// The buffer between the child's pipes and the sender.
#[derive(Debug)]
pub struct Spool {
    state: Mutex<State>,
    /// Woken when there is something to send, or the last writer is done.
    pub ready: Notify,
    max_bytes: usize,
    dir: Option<PathBuf>,
}

impl Spool {
    /// A spool holding at most `max_bytes` of frames, spilling to `dir` when given (which must
    /// exist and be this spool's alone). `writers` is how many will call [`Spool::writer_done`].
    pub fn new(max_bytes: usize, dir: Option<PathBuf>, writers: usize) -> Spool {
        Spool {
            state: Mutex::new(State {
                open: BytesMut::new(),
                open_lines: 0,
                open_bytes: 0,
                open_since: 0,
                closed: VecDeque::new(),
                held: 0,
                dropped: None,
                totals: Totals::default(),
                next_file: 0,
                writers,
            }),
            ready: Notify::new(),
            max_bytes,
            dir,
        }
    }

    /// Adds one line. Never waits: over the limit, the oldest closed frames are dropped.
    pub fn push(&self, env: &Envelope) {
        let mut s = self.state.lock();
        let before = s.open.len();
        if s.open_lines == 0 {
            s.open_since = env.timestamp;
        }
        encode_envelope(env, &mut s.open);
        s.held += s.open.len() - before;
        s.open_lines += 1;
        s.open_bytes += env.message.len() as u64;
        s.totals.lines += 1;
        if s.open_lines >= CHUNK_LINES || s.open.len() >= CHUNK_BYTES {
            self.close_open(&mut s);
        }
        self.trim(&mut s);
        drop(s);
        self.ready.notify_one();
    }

    /// One writer has reached the end of its stream.
    pub fn writer_done(&self) {
        self.state.lock().writers -= 1;
        self.ready.notify_one();
    }

    /// Whether every writer is done and nothing is left to send (or announce).
    pub fn is_drained(&self) -> bool {
        let s = self.state.lock();
        s.writers == 0 && s.held == 0 && s.dropped.is_none()
    }

    /// Lines dropped since the last announcement, to announce before the next frame.
    pub fn dropped(&self) -> Option<Dropped> {
        self.state.lock().dropped
    }

    /// The announcement of `d` reached the server.
    pub fn announced(&self, d: Dropped) {
        let mut s = self.state.lock();
        if let Some(now) = &mut s.dropped {
            now.lines -= d.lines;
            now.bytes -= d.bytes;
            if now.lines == 0 {
                s.dropped = None;
            }
        }
    }

    /// The oldest frame to send, if there is one (closing the one being filled if need be).
    /// The caller gives it back with [`Spool::sent`] or [`Spool::unsent`].
    pub fn take(&self) -> Option<Chunk> {
        let mut s = self.state.lock();
        if s.closed.is_empty() && s.open_lines > 0 {
            self.close_open(&mut s);
        }
        s.closed.pop_front()
    }

    /// `chunk` was accepted by the server.
    pub fn sent(&self, chunk: Chunk) {
        self.state.lock().held -= chunk.size;
        chunk.discard();
    }

    /// `chunk` could not be sent: it goes first again (or, if the limit was passed while it
    /// was out, it is the oldest and is dropped).
    pub fn unsent(&self, chunk: Chunk) {
        let mut s = self.state.lock();
        s.closed.push_front(chunk);
        self.trim(&mut s);
    }

    /// Drops the oldest closed frames until what is held fits the limit, counting them.
    fn trim(&self, s: &mut State) {
        while s.held > self.max_bytes {
            let Some(oldest) = s.closed.pop_front() else {
                break;
            };
            s.held -= oldest.size;
            s.totals.dropped_lines += oldest.lines;
            s.totals.dropped_bytes += oldest.bytes;
            let d = s.dropped.get_or_insert(Dropped {
                since_ns: oldest.since_ns,
                ..Dropped::default()
            });
            d.lines += oldest.lines;
            d.bytes += oldest.bytes;
            oldest.discard();
        }
    }

    /// Lines held now (not yet accepted by the server).
    pub fn held_lines(&self) -> u64 {
        let s = self.state.lock();
        s.open_lines + s.closed.iter().map(|c| c.lines).sum::<u64>()
    }

    pub fn totals(&self) -> Totals {
        self.state.lock().totals
    }

    fn close_open(&self, s: &mut State) {
        let lines = s.open_lines;
        let mut frame = BytesMut::with_capacity(s.open.len() + 9);
        codec::encode_frame_with(&mut frame, |b| {
            // A MessagePack array header for `lines` envelopes.
            if lines < 16 {
                b.put_u8(0x90 | lines as u8);
            } else {
                b.put_u8(0xdc);
                b.put_u16(lines as u16);
            }
            b.extend_from_slice(&s.open);
        });
        let size = frame.len();
        // Header bytes count too.
        s.held = s.held - s.open.len() + size;
        s.open.clear();
        let data = match &self.dir {
            Some(dir) if s.closed.len() >= MEMORY_CHUNKS => {
                let path = dir.join(format!("{:08}.frame", s.next_file));
                s.next_file += 1;
                match sluice_store::private::write(&path, &frame) {
                    Ok(()) => {
                        s.totals.spilled_lines += lines;
                        ChunkData::File(path)
                    }
                    // A full or failing disk: keep it in memory (still within the limit).
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot spill to the buffer directory");
                        ChunkData::Memory(frame.freeze())
                    }
                }
            }
            _ => ChunkData::Memory(frame.freeze()),
        };
        s.closed.push_back(Chunk {
            data,
            size,
            lines,
            bytes: std::mem::take(&mut s.open_bytes),
            since_ns: s.open_since,
        });
        s.open_lines = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_router::codec::{Payload, decode_frame, decode_payload};

    fn line(i: u64) -> Envelope {
        let mut e = Envelope::new("job", format!("line {i:04}"));
        e.timestamp = 1_000 + i as i64;
        e
    }

    fn decode(chunk: &Chunk) -> Vec<Envelope> {
        let mut buf = BytesMut::from(&chunk.frame().unwrap()[..]);
        let payload = decode_frame(&mut buf, usize::MAX).unwrap().unwrap();
        match decode_payload(&payload).unwrap() {
            Payload::Envelopes(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn frames_hold_every_line_in_order() {
        let spool = Spool::new(1 << 30, None, 1);
        for i in 0..2500 {
            spool.push(&line(i));
        }
        let mut got = Vec::new();
        while let Some(c) = spool.take() {
            let envs = decode(&c);
            assert_eq!(envs.len() as u64, c.lines);
            got.extend(envs);
            spool.sent(c);
        }
        assert_eq!(got.len(), 2500);
        assert!(
            got.iter()
                .enumerate()
                .all(|(i, e)| e.message == line(i as u64).message)
        );
        spool.writer_done();
        assert!(spool.is_drained());
    }

    #[test]
    fn over_the_limit_the_oldest_frames_go_and_are_counted_exactly() {
        // Room for about three frames of 1000 lines.
        let frame = {
            let s = Spool::new(1 << 30, None, 1);
            for i in 0..1000 {
                s.push(&line(i));
            }
            s.take().unwrap().size
        };
        let spool = Spool::new(3 * frame + frame / 2, None, 1);
        for i in 0..10_000 {
            spool.push(&line(i));
        }
        let d = spool.dropped().unwrap();
        assert_eq!(d.lines, 7000);
        assert_eq!(d.bytes, 7000 * 9);
        assert_eq!(d.since_ns, 1_000);
        let first = spool.take().unwrap();
        assert_eq!(decode(&first)[0].message, line(7000).message);
        // Out, then back: still first, and still counted.
        spool.unsent(first);
        assert_eq!(spool.held_lines(), 3000);
        spool.announced(d);
        assert_eq!(spool.dropped(), None);
        assert_eq!(spool.totals().dropped_lines, 7000);
    }

    #[test]
    fn with_a_directory_frames_past_the_first_few_wait_in_files() {
        let dir = std::env::temp_dir().join(format!("sluice-spool-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let spool = Spool::new(1 << 30, Some(dir.clone()), 1);
        for i in 0..10_000 {
            spool.push(&line(i));
        }
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 6);
        assert_eq!(spool.totals().spilled_lines, 6000);
        let mut n = 0;
        while let Some(c) = spool.take() {
            for e in decode(&c) {
                assert_eq!(e.message, line(n).message);
                n += 1;
            }
            spool.sent(c);
        }
        assert_eq!(n, 10_000);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
