//! Consumers: WebSocket tails that read (and time every envelope), tails that never read, a
//! syslog sink for drains, and a line counter for files written by a server under test.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use sluice_router::envelope::now_ns;
use sluice_router::msgpack::Reader;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

/// What a reading tail has seen so far; read by the reporter while the run goes on.
#[derive(Debug, Default)]
pub struct TailProgress {
    /// Log envelopes received (loss notices not included).
    pub received: AtomicU64,
    /// Bytes of WebSocket payload received.
    pub bytes: AtomicU64,
    /// Envelopes the server said it dropped for this tail (the `missed` tag of its notices).
    pub announced: AtomicU64,
    /// Envelopes missing between consecutive seqs: what was really lost.
    pub gaps: AtomicU64,
    /// Envelopes whose seq was not above the previous one's: delivered twice, or out of order.
    pub out_of_order: AtomicU64,
    /// Seqs of the source neither received (a line, or one of the server's own notices) nor
    /// inside a loss notice's count: what was lost without being announced. Must stay 0.
    pub unannounced: AtomicU64,
    /// Wall clock of the last log envelope received, ns since the epoch.
    pub last_ns: AtomicU64,
}

/// Latency histogram in microseconds, 1 µs to 100 s, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000, 3).expect("valid histogram bounds")
}

/// Reads a tail until `stop`, timing each envelope from its `timestamp` (the send time) to now.
pub async fn tail(
    url: String,
    progress: Arc<TailProgress>,
    stop: CancellationToken,
) -> anyhow::Result<Histogram<u64>> {
    let (mut ws, _) = tokio_tungstenite::connect_async(&url)
        .await
        .map_err(|e| anyhow::anyhow!("cannot open tail {url}: {e}"))?;
    let mut hist = histogram();
    let mut last_seq: Option<u64> = None;
    let mut last_any: Option<u64> = None;
    loop {
        let msg = tokio::select! {
            () = stop.cancelled() => break,
            msg = ws.next() => msg,
        };
        let Some(msg) = msg else { break };
        let now = now_ns();
        let mut seen = Seen {
            hist: &mut hist,
            last_seq: &mut last_seq,
            last_any: &mut last_any,
            now,
            progress: &progress,
        };
        match msg? {
            Message::Binary(b) => {
                progress.bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                walk_batch(&b, &mut seen)?;
            }
            Message::Text(t) => {
                progress.bytes.fetch_add(t.len() as u64, Ordering::Relaxed);
                let v: serde_json::Value = serde_json::from_str(t.as_str())?;
                let fields = Fields {
                    timestamp: v["timestamp"].as_i64().unwrap_or(0),
                    seq: v["seq"].as_u64().unwrap_or(0),
                    notice: v["origin"] == "LGR",
                    missed: v["tags"]["missed"]
                        .as_str()
                        .and_then(|m| m.parse().ok())
                        .unwrap_or(0),
                };
                seen.envelope(fields);
            }
            Message::Close(_) => break,
            _ => {}
        }
    }
    Ok(hist)
}

struct Fields {
    timestamp: i64,
    seq: u64,
    notice: bool,
    missed: u64,
}

struct Seen<'a> {
    hist: &'a mut Histogram<u64>,
    last_seq: &'a mut Option<u64>,
    /// The newest seq accounted for, by any envelope (lines, notices, loss ranges).
    last_any: &'a mut Option<u64>,
    now: i64,
    progress: &'a TailProgress,
}

impl Seen<'_> {
    fn envelope(&mut self, f: Fields) {
        let loss = f.notice && f.missed > 0;
        if let Some(prev) = *self.last_any {
            // A loss notice carries the last seq it covers; anything else is one seq.
            let missing = if loss {
                f.seq.saturating_sub(prev).saturating_sub(f.missed)
            } else {
                f.seq.saturating_sub(prev + 1)
            };
            self.progress
                .unannounced
                .fetch_add(missing, Ordering::Relaxed);
        }
        *self.last_any = Some(self.last_any.map_or(f.seq, |p| p.max(f.seq)));
        if f.notice {
            self.progress
                .announced
                .fetch_add(f.missed, Ordering::Relaxed);
            return;
        }
        if let Some(prev) = *self.last_seq {
            if f.seq > prev + 1 {
                self.progress
                    .gaps
                    .fetch_add(f.seq - prev - 1, Ordering::Relaxed);
            } else if f.seq <= prev {
                self.progress.out_of_order.fetch_add(1, Ordering::Relaxed);
            }
        }
        *self.last_seq = Some(f.seq);
        let micros = ((self.now - f.timestamp) / 1000).max(1) as u64;
        self.hist.saturating_record(micros);
        self.progress.received.fetch_add(1, Ordering::Relaxed);
        self.progress
            .last_ns
            .store(self.now as u64, Ordering::Relaxed);
    }
}

/// Reads a MessagePack array of envelope maps, taking only `timestamp`, `seq`, `origin` and the
/// `missed` tag, and skipping the rest without building anything.
fn walk_batch(b: &[u8], seen: &mut Seen<'_>) -> anyhow::Result<()> {
    let mut r = Reader::new(b);
    let n = r.array_len()?;
    for _ in 0..n {
        let mut f = Fields {
            timestamp: 0,
            seq: 0,
            notice: false,
            missed: 0,
        };
        let fields = r.map_len()?;
        for _ in 0..fields {
            match r.raw("field name")? {
                b"timestamp" => f.timestamp = r.int("timestamp")? as i64,
                b"seq" => f.seq = r.int("seq")? as u64,
                b"origin" => f.notice = r.raw("origin")? == b"LGR",
                b"tags" => {
                    for _ in 0..r.map_len()? {
                        if r.raw("tag")? == b"missed" {
                            f.missed = std::str::from_utf8(r.raw("missed")?)?.parse()?;
                        } else {
                            r.skip()?;
                        }
                    }
                }
                _ => r.skip()?,
            }
        }
        seen.envelope(f);
    }
    anyhow::ensure!(r.position() == b.len(), "trailing bytes after the batch");
    Ok(())
}

/// Opens `n` tails that never read: the server must keep up with ingest regardless, and hold no
/// more than each tail's cursor (plus what the kernel buffers) for them.
///
/// Their receive buffers are set to `rcvbuf` bytes. On loopback a client's receive buffer is
/// this machine's memory, and 10,000 of Linux's default 128 KiB would put the whole machine's
/// TCP stack under memory pressure; a real client's buffer is on its own machine.
pub async fn stalled_tails(
    url: &str,
    n: usize,
    rcvbuf: u32,
) -> anyhow::Result<Vec<impl Send + 'static + use<>>> {
    let addr: std::net::SocketAddr = url
        .strip_prefix("ws://")
        .and_then(|r| r.split('/').next())
        .and_then(|a| a.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("stalled tails need a ws://IP:PORT url, not {url}"))?;
    let connect = |url: String| async move {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(rcvbuf)?;
        let stream = socket.connect(addr).await?;
        let (ws, _) = tokio_tungstenite::client_async(url, stream).await?;
        anyhow::Ok(ws)
    };
    let mut held = Vec::with_capacity(n);
    let mut pending =
        futures_util::stream::iter((0..n).map(|_| connect(url.to_owned()))).buffer_unordered(128);
    while let Some(conn) = pending.next().await {
        let ws = conn.map_err(|e| anyhow::anyhow!("cannot open stalled tail {url}: {e}"))?;
        held.push(ws);
    }
    Ok(held)
}

/// Counts octet-counted syslog messages (RFC 6587) received from drains.
#[derive(Debug, Default)]
pub struct SinkProgress {
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
}

/// A syslog TCP receiver on a loopback port of its own; returns its address.
pub async fn sink(progress: Arc<SinkProgress>) -> anyhow::Result<String> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?.to_string();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            tokio::spawn(count_frames(conn, progress.clone()));
        }
    });
    Ok(addr)
}

async fn count_frames(mut conn: TcpStream, progress: Arc<SinkProgress>) {
    let mut buf = vec![0u8; 256 * 1024];
    // Bytes of the current message still to skip, or the length being read.
    let mut skipping: usize = 0;
    let mut len: usize = 0;
    while let Ok(n) = conn.read(&mut buf).await {
        if n == 0 {
            return;
        }
        progress.bytes.fetch_add(n as u64, Ordering::Relaxed);
        let mut i = 0;
        let mut messages = 0;
        while i < n {
            if skipping > 0 {
                let k = skipping.min(n - i);
                skipping -= k;
                i += k;
                continue;
            }
            match buf[i] {
                d @ b'0'..=b'9' => len = len * 10 + usize::from(d - b'0'),
                b' ' => {
                    skipping = len;
                    len = 0;
                    messages += 1;
                }
                _ => return,
            }
            i += 1;
        }
        progress.messages.fetch_add(messages, Ordering::Relaxed);
    }
}

/// Counts lines written to the files under a path (a file or a directory, recursively), reading
/// only what was appended since the last call. Files are known by inode, so a file renamed by
/// rotation is not counted twice.
#[derive(Debug)]
pub struct LineCounter {
    root: PathBuf,
    seen: HashMap<(u64, u64), u64>,
    lines: u64,
}

impl LineCounter {
    pub fn new(root: &Path) -> LineCounter {
        LineCounter {
            root: root.to_owned(),
            seen: HashMap::new(),
            lines: 0,
        }
    }

    pub fn poll(&mut self) -> std::io::Result<u64> {
        let mut files = Vec::new();
        collect(&self.root, &mut files)?;
        for path in files {
            use std::io::{Read, Seek, SeekFrom};
            use std::os::unix::fs::MetadataExt;
            let Ok(mut f) = std::fs::File::open(&path) else {
                continue;
            };
            let meta = f.metadata()?;
            let offset = self.seen.entry((meta.dev(), meta.ino())).or_insert(0);
            f.seek(SeekFrom::Start(*offset))?;
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                *offset += n as u64;
                self.lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            }
        }
        Ok(self.lines)
    }

    /// Lines counted at the last [`poll`](Self::poll).
    pub fn lines(&self) -> u64 {
        self.lines
    }
}

fn collect(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if meta.is_file() {
        out.push(path.to_owned());
    } else if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let entry = entry?;
            // The persister's own bookkeeping (archive records) is not log output.
            if entry.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            collect(&entry.path(), out)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;
    use sluice_router::{Envelope, MissedNotice};

    #[test]
    fn the_walker_reads_what_the_server_encodes() {
        let mut a = Envelope::new("load-0", "x".repeat(150));
        a.timestamp = 1_000;
        a.seq = 7;
        a.tags.insert("k".into(), "v".into());
        let mut b = a.clone();
        b.seq = 10;
        let notice = MissedNotice {
            source_id: "load-0".into(),
            count: 2,
            since_ns: 5,
            last_missed_seq: 9,
        }
        .to_envelope("tail");
        let mut out = BytesMut::new();
        sluice_router::codec::encode_batch(&[a, notice, b], &mut out);
        let progress = TailProgress::default();
        let mut hist = histogram();
        let mut last = None;
        let mut last_any = None;
        let mut seen = Seen {
            hist: &mut hist,
            last_seq: &mut last,
            last_any: &mut last_any,
            now: 2_000_000,
            progress: &progress,
        };
        walk_batch(&out, &mut seen).unwrap();
        assert_eq!(progress.received.load(Ordering::Relaxed), 2);
        assert_eq!(progress.announced.load(Ordering::Relaxed), 2);
        assert_eq!(progress.gaps.load(Ordering::Relaxed), 2);
        assert_eq!(progress.unannounced.load(Ordering::Relaxed), 0);
        // A seq that went missing with no notice is caught.
        let mut c = Envelope::new("load-0", "x");
        c.seq = 12;
        let mut out = BytesMut::new();
        sluice_router::codec::encode_batch(&[c], &mut out);
        walk_batch(&out, &mut seen).unwrap();
        assert_eq!(progress.unannounced.load(Ordering::Relaxed), 1);
        assert_eq!(hist.len(), 3);
        assert_eq!(last, Some(12));
    }

    #[test]
    fn line_counter_follows_appends_and_rotation_renames() {
        let dir = std::env::temp_dir().join(format!("sluice-load-lines-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("a.jsonl");
        std::fs::write(&file, "1\n2\n").unwrap();
        std::fs::write(dir.join(".archive"), "not\nlog\nlines\n").unwrap();
        let mut counter = LineCounter::new(&dir);
        assert_eq!(counter.poll().unwrap(), 2);
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&file)
            .unwrap();
        f.write_all(b"3\n").unwrap();
        std::fs::rename(&file, dir.join("a.jsonl.1")).unwrap();
        std::fs::write(&file, "4\n").unwrap();
        assert_eq!(
            counter.poll().unwrap(),
            4,
            "the rotated file is the same file"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
