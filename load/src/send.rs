//! Producers: native frames or octet-counted RFC 5424 lines, built once and re-stamped with the
//! send time on every write, so the generator spends its time on the socket, not on encoding.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedReadHalf;

use sluice_router::envelope::now_ns;

/// What one producer sends, and how fast.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The sources this producer writes to, one envelope each in turn (usually one).
    pub sources: Vec<String>,
    pub message_bytes: usize,
    /// Envelopes (or syslog lines) per write.
    pub batch: usize,
    /// Envelopes per second for this connection; 0 means as fast as the socket takes them.
    pub rate: u64,
    pub duration: Duration,
    /// Stop after this many envelopes, whichever comes first.
    pub count: Option<u64>,
}

/// A buffer of `batch` messages and the offsets where the send time goes.
#[derive(Debug)]
pub struct Template {
    pub bytes: Vec<u8>,
    stamp_at: Vec<usize>,
    kind: Kind,
    pub per_write: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Native,
    Syslog,
}

impl Template {
    pub fn new(kind: Kind, plan: &Plan) -> Template {
        match kind {
            Kind::Native => native(plan),
            Kind::Syslog => syslog(plan),
        }
    }

    /// Writes the current time into every message of the buffer.
    fn stamp(&mut self) {
        match self.kind {
            Kind::Native => {
                let ts = now_ns().to_be_bytes();
                for &at in &self.stamp_at {
                    self.bytes[at..at + 8].copy_from_slice(&ts);
                }
            }
            Kind::Syslog => {
                let ts = chrono::Utc::now()
                    .format("%Y-%m-%dT%H:%M:%S%.6fZ")
                    .to_string();
                debug_assert_eq!(ts.len(), SYSLOG_TS_BYTES);
                for &at in &self.stamp_at {
                    self.bytes[at..at + SYSLOG_TS_BYTES].copy_from_slice(ts.as_bytes());
                }
            }
        }
    }
}

/// The message body: readable, fixed length, never a newline.
fn body(len: usize) -> Vec<u8> {
    const TEXT: &[u8] = b"GET /v2/catalog?page=7 HTTP/1.1 200 user_agent=curl/8.5 vcap_request_id=3f2a9c1e-loadgen response_time=0.004213 ";
    TEXT.iter().copied().cycle().take(len).collect()
}

/// One native frame: an array of `batch` envelope maps, written by hand so that the timestamp of
/// each sits at a known offset (`0xd3` + 8 bytes, an int64).
fn native(plan: &Plan) -> Template {
    fn str_(out: &mut Vec<u8>, s: &[u8]) {
        match s.len() {
            n @ 0..=31 => out.push(0xa0 | n as u8),
            n @ 32..=255 => out.extend_from_slice(&[0xd9, n as u8]),
            n => {
                out.push(0xda);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
        }
        out.extend_from_slice(s);
    }
    let message = body(plan.message_bytes);
    let n = plan.batch;
    // Enough frames for every source to get its turn: one frame for one source.
    let frames = plan.sources.len().div_ceil(n).max(1);
    let mut bytes = Vec::new();
    let mut stamp_at = Vec::with_capacity(n * frames);
    for f in 0..frames {
        let mut payload = Vec::new();
        payload.push(0xdd);
        payload.extend_from_slice(&(n as u32).to_be_bytes());
        let mut stamps = Vec::with_capacity(n);
        for i in 0..n {
            let source = &plan.sources[(f * n + i) % plan.sources.len()];
            payload.push(0x85);
            str_(&mut payload, b"timestamp");
            payload.push(0xd3);
            stamps.push(payload.len());
            payload.extend_from_slice(&[0; 8]);
            str_(&mut payload, b"source_id");
            str_(&mut payload, source.as_bytes());
            str_(&mut payload, b"instance_id");
            str_(&mut payload, b"0");
            str_(&mut payload, b"origin");
            str_(&mut payload, b"APP/PROC/WEB");
            str_(&mut payload, b"message");
            payload.push(0xc6);
            payload.extend_from_slice(&(message.len() as u32).to_be_bytes());
            payload.extend_from_slice(&message);
        }
        // Offsets in the whole buffer: after this frame's header.
        let base = bytes.len() + 4;
        stamp_at.extend(stamps.into_iter().map(|at| base + at));
        bytes.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        bytes.extend_from_slice(&payload);
    }
    Template {
        bytes,
        stamp_at,
        kind: Kind::Native,
        per_write: n * frames,
    }
}

const SYSLOG_TS_BYTES: usize = "2026-11-21T18:37:14.123456Z".len();

/// `batch` octet-counted RFC 5424 lines (RFC 6587), as a router or app would send them.
fn syslog(plan: &Plan) -> Template {
    let message = String::from_utf8(body(plan.message_bytes)).expect("ascii body");
    let placeholder = "X".repeat(SYSLOG_TS_BYTES);
    let mut bytes = Vec::new();
    let mut stamp_at = Vec::new();
    // Every source gets its turn: a whole number of batches that covers them all.
    let lines = plan.sources.len().div_ceil(plan.batch).max(1) * plan.batch;
    for i in 0..lines {
        let source = &plan.sources[i % plan.sources.len()];
        let line = format!("<14>1 {placeholder} loadgen {source} [APP/PROC/WEB/0] - - {message}");
        let prefix = format!("{} ", line.len());
        stamp_at.push(bytes.len() + prefix.len() + "<14>1 ".len());
        bytes.extend_from_slice(prefix.as_bytes());
        bytes.extend_from_slice(line.as_bytes());
    }
    Template {
        bytes,
        stamp_at,
        kind: Kind::Syslog,
        per_write: lines,
    }
}

/// Progress shared with the reporter.
#[derive(Debug, Default)]
pub struct Sent {
    pub envelopes: AtomicU64,
    pub bytes: AtomicU64,
}

/// Sends `plan` on one connection to `addr` until its duration or count is reached. Fails if
/// the server refused any of it (a native connection is answered only then): a run that lost
/// batches to a limit, such as `router.max_sources`, measures nothing.
pub async fn run(addr: String, kind: Kind, plan: Plan, sent: Arc<Sent>) -> anyhow::Result<()> {
    let stream = TcpStream::connect(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e}"))?;
    stream.set_nodelay(true)?;
    let (reader, mut stream) = stream.into_split();
    let refusals = tokio::spawn(refusals(reader));
    let mut t = Template::new(kind, &plan);
    let start = Instant::now();
    let limit = plan.count.unwrap_or(u64::MAX);
    let mut done: u64 = 0;
    // Flat out: several batches per write, so the syscall is not what is measured.
    let writes_per_stamp = if plan.rate == 0 {
        (256 * 1024 / t.bytes.len()).max(1)
    } else {
        1
    };
    let mut chunk = Vec::with_capacity(t.bytes.len() * writes_per_stamp);
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while done < limit && start.elapsed() < plan.duration {
        let due = if plan.rate == 0 {
            writes_per_stamp
        } else {
            tick.tick().await;
            let target = (start.elapsed().as_secs_f64() * plan.rate as f64) as u64;
            (target.saturating_sub(done) / t.per_write as u64) as usize
        };
        let due = due.min(((limit - done) / t.per_write as u64).max(1) as usize);
        if due == 0 {
            continue;
        }
        t.stamp();
        chunk.clear();
        for _ in 0..due {
            chunk.extend_from_slice(&t.bytes);
        }
        stream.write_all(&chunk).await?;
        let n = (due * t.per_write) as u64;
        done += n;
        sent.envelopes.fetch_add(n, Ordering::Relaxed);
        sent.bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
    }
    stream.shutdown().await?;
    // The server answers what it has read, then closes; one that does not is not waited for.
    match tokio::time::timeout(Duration::from_secs(10), refusals).await {
        Ok(Ok(Some((n, first)))) => {
            anyhow::bail!("the server refused {n} batches on {addr}, the first: {first}")
        }
        _ => Ok(()),
    }
}

/// Reads what the server answers until it closes: how many frames it refused, and why the
/// first was.
async fn refusals(mut reader: OwnedReadHalf) -> Option<(u64, String)> {
    let mut buf = bytes::BytesMut::with_capacity(4096);
    let mut refused: Option<(u64, String)> = None;
    while reader.read_buf(&mut buf).await.is_ok_and(|n| n > 0) {
        while let Ok(Some(frame)) = sluice_router::codec::decode_frame(&mut buf, 1 << 20) {
            let reply = sluice_router::codec::decode_exact::<sluice_router::codec::Reply>(&frame);
            if let Ok(sluice_router::codec::Reply { error: Some(e), .. }) = reply {
                let r = refused.get_or_insert((0, e));
                r.0 += 1;
            }
        }
    }
    refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_router::codec::{self, Payload};

    fn plan() -> Plan {
        Plan {
            sources: vec!["load-0".into()],
            message_bytes: 150,
            batch: 3,
            rate: 0,
            duration: Duration::from_secs(1),
            count: None,
        }
    }

    #[test]
    fn native_template_decodes_as_the_server_would() {
        let mut t = Template::new(Kind::Native, &plan());
        t.stamp();
        let mut buf = bytes::BytesMut::from(&t.bytes[..]);
        let frame = codec::decode_frame(&mut buf, 1 << 20).unwrap().unwrap();
        let Payload::Envelopes(envs) = codec::decode_payload(&frame).unwrap() else {
            panic!("not envelopes")
        };
        assert_eq!(envs.len(), 3);
        let age = now_ns() - envs[0].timestamp;
        assert!((0..10_000_000_000).contains(&age), "stamped now: {age}");
        assert_eq!(envs[2].message.len(), 150);
        assert_eq!(envs[1].origin, "APP/PROC/WEB");
        envs[0].validate().unwrap();
    }

    #[test]
    fn spread_templates_give_every_source_its_turn() {
        let p = Plan {
            sources: (0..7).map(|i| format!("s{i}")).collect(),
            ..plan()
        };
        let mut t = Template::new(Kind::Native, &p);
        t.stamp();
        let mut buf = bytes::BytesMut::from(&t.bytes[..]);
        let mut seen = Vec::new();
        while let Some(frame) = codec::decode_frame(&mut buf, 1 << 20).unwrap() {
            let Payload::Envelopes(envs) = codec::decode_payload(&frame).unwrap() else {
                panic!("not envelopes")
            };
            assert!(envs.iter().all(|e| now_ns() - e.timestamp < 10_000_000_000));
            seen.extend(envs.into_iter().map(|e| e.source_id));
        }
        // Three frames of three: s0..s6, then s0, s1.
        assert_eq!(t.per_write, 9);
        assert_eq!(seen.len(), 9);
        assert_eq!(seen[..7], p.sources[..]);
        let t = Template::new(Kind::Syslog, &p);
        let text = String::from_utf8(t.bytes).unwrap();
        assert_eq!(text.matches(" loadgen s6 ").count(), 1);
        assert_eq!(t.per_write, 9);
    }

    #[test]
    fn syslog_template_is_octet_counted_rfc5424() {
        let mut t = Template::new(Kind::Syslog, &plan());
        t.stamp();
        let text = String::from_utf8(t.bytes.clone()).unwrap();
        let (len, rest) = text.split_once(' ').unwrap();
        let len: usize = len.parse().unwrap();
        let line = &rest[..len];
        assert!(line.starts_with("<14>1 20"), "{line}");
        assert!(line.contains(" loadgen load-0 [APP/PROC/WEB/0] - - GET "));
        assert_eq!(text.len(), 3 * (len + 4));
    }
}
