//! `sluice emit`: standard input, line by line, to native ingest with acknowledgements.

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::{Bytes, BytesMut};
use clap::Args;
use sluice_router::codec::{encode_batch, encode_frame_with};
use sluice_router::envelope::now_ns;
use sluice_router::{Channel, Envelope};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::ConnArgs;
use crate::client::connect_ingest_tls;

#[derive(Debug, Args)]
pub struct EmitArgs {
    #[command(flatten)]
    pub lines: LineArgs,
    /// Send the lines on ERR (stderr) instead of OUT.
    #[arg(long)]
    pub stderr: bool,
    /// What the server must confirm before emit exits 0: `count` (every line accepted into the
    /// router), `durable` (every line written to the persister's file, synced with `fsync:
    /// always`) or `none` (sent, and the connection closed cleanly).
    #[arg(long, value_enum, default_value_t = AckMode::Count, value_name = "MODE")]
    pub ack: AckMode,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// What every line sent by `emit` and `run` carries, and how long one may be.
#[derive(Debug, Args)]
pub struct LineArgs {
    /// The source the lines belong to (an app, job or allocation id).
    #[arg(short, long, value_name = "ID")]
    pub source: String,
    /// Origin code shown as [ORIGIN/INSTANCE].
    #[arg(long, default_value = "APP", value_name = "CODE")]
    pub origin: String,
    /// Instance index.
    #[arg(long, default_value = "0", value_name = "N")]
    pub instance: String,
    /// The job step (or task) the lines belong to.
    #[arg(long, value_name = "S")]
    pub step: Option<String>,
    /// A tag to attach to every line; repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Lines longer than this are split into several envelopes.
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES")]
    pub max_line_bytes: usize,
}

impl LineArgs {
    /// The envelope every line is a copy of (on OUT), checked as the server will check it.
    pub fn template(&self) -> anyhow::Result<Envelope> {
        let mut template = Envelope::new(self.source.clone(), Bytes::new());
        template.origin = self.origin.clone().into();
        template.instance_id = self.instance.clone().into();
        template.step = self.step.as_deref().map(Into::into);
        template.tags = parse_tags(&self.tags)?;
        template.validate()?;
        if self.max_line_bytes == 0 {
            anyhow::bail!("--max-line-bytes must be at least 1");
        }
        Ok(template)
    }
}

/// The acknowledgement `sluice emit` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AckMode {
    None,
    Count,
    Durable,
}

impl AckMode {
    fn control_word(self) -> &'static str {
        match self {
            AckMode::None => "ack=none",
            AckMode::Count => "ack=count",
            AckMode::Durable => "ack=durable",
        }
    }
}

/// Most lines per frame, and most message bytes per frame.
const BATCH_LINES: usize = 1000;
const BATCH_BYTES: usize = 1024 * 1024;

pub async fn run(args: EmitArgs) -> anyhow::Result<ExitCode> {
    let mut template = args.lines.template()?;
    if args.stderr {
        template.channel = Channel::Err;
    }
    let addr = args.conn.ingest()?;
    let conn = connect_ingest_tls(
        &addr,
        args.conn.ingest_tls()?,
        args.ack.control_word(),
        args.conn.token.as_deref(),
    )
    .await?;
    let (mut writer, mut replies) = (conn.writer, conn.replies);

    let (tx, mut rx) = mpsc::channel::<Bytes>(4 * BATCH_LINES);
    let max = args.lines.max_line_bytes;
    let reader =
        tokio::spawn(async move { read_lines(BufReader::new(tokio::io::stdin()), max, tx).await });

    // Replies come back while we send, in order: the lines acknowledged so far are always a
    // prefix of the input. The task ends with the first error, or when every batch is answered.
    let acknowledged = Arc::new(AtomicU64::new(0));
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<u64>();
    let acked = acknowledged.clone();
    let mode = args.ack;
    let acks = tokio::spawn(async move {
        if mode == AckMode::None {
            // Only refusals are answered: wait for the server to close after our end.
            while sent_rx.recv().await.is_some() {}
            return replies.until_closed().await.map_err(anyhow::Error::from);
        }
        while let Some(lines) = sent_rx.recv().await {
            let n = replies.next().await?;
            if n != lines {
                anyhow::bail!("the server accepted {n} of {lines} lines in a batch");
            }
            acked.fetch_add(n, Ordering::Relaxed);
        }
        Ok(())
    });

    let mut sent = 0u64;
    let mut frame = BytesMut::new();
    let mut batch: Vec<Envelope> = Vec::with_capacity(BATCH_LINES);
    let mut failure: Option<anyhow::Error> = None;
    while let Some(first) = rx.recv().await {
        // Take what is already waiting, so bulk input goes in large frames and a terminal's
        // lines go one at a time, at once.
        let mut bytes = first.len();
        batch.push(line_envelope(&template, first));
        while batch.len() < BATCH_LINES && bytes < BATCH_BYTES {
            match rx.try_recv() {
                Ok(line) => {
                    bytes += line.len();
                    batch.push(line_envelope(&template, line));
                }
                Err(_) => break,
            }
        }
        frame.clear();
        encode_frame_with(&mut frame, |b| encode_batch(&batch, b));
        let lines = batch.len() as u64;
        batch.clear();
        if let Err(e) = writer.write(&frame).await {
            failure = Some(e.into());
            break;
        }
        sent += lines;
        let _ = sent_tx.send(lines);
    }
    drop(sent_tx);
    drop(rx);
    if failure.is_none() {
        writer.finish().await.ok();
    }
    // The reply task may know better why a write failed (the server answers before closing).
    let answered = acks.await.map_err(anyhow::Error::from).and_then(|r| r);
    let failure = match (answered, failure) {
        (Err(reason), _) => Some(reason),
        (Ok(()), Some(write)) => Some(write),
        (Ok(()), None) => None,
    };
    if let Some(reason) = failure {
        let acked = acknowledged.load(Ordering::Relaxed);
        let what = match mode {
            AckMode::None => format!("{sent} lines sent, none acknowledged (--ack none)"),
            AckMode::Count => {
                format!(
                    "{acked} of {sent} lines sent were acknowledged; resend from line {}",
                    acked + 1
                )
            }
            AckMode::Durable => format!(
                "{acked} of {sent} lines sent are on disk; resend from line {}",
                acked + 1
            ),
        };
        anyhow::bail!("{reason} ({what})");
    }
    reader.await??;
    Ok(ExitCode::SUCCESS)
}

fn line_envelope(template: &Envelope, line: Bytes) -> Envelope {
    let mut env = template.clone();
    env.timestamp = now_ns();
    env.message = line;
    env
}

fn parse_tags(tags: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    tags.iter()
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
            _ => anyhow::bail!("invalid --tag {t:?}: expected KEY=VALUE"),
        })
        .collect()
}

/// Sends each line (without its line break) to `tx`, splitting lines longer than `max` bytes,
/// at a UTF-8 character boundary where there is one near the cut.
pub async fn read_lines<R: AsyncBufRead + Unpin>(
    mut input: R,
    max: usize,
    tx: mpsc::Sender<Bytes>,
) -> anyhow::Result<()> {
    let mut lines = Lines::new(max);
    let mut ready = Vec::new();
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            lines.finish(|l| ready.push(l));
        } else {
            lines.feed(buf, |l| ready.push(l));
            let n = buf.len();
            input.consume(n);
        }
        for line in ready.drain(..) {
            if tx.send(line).await.is_err() {
                return Ok(());
            }
        }
        if lines.finished {
            return Ok(());
        }
    }
}

/// Cuts a byte stream into lines without their line breaks (`\n`, or `\r\n`), splitting those
/// longer than `max` bytes; the last line is given out at the end even without a line break.
#[derive(Debug)]
pub struct Lines {
    line: BytesMut,
    max: usize,
    finished: bool,
}

impl Lines {
    pub fn new(max: usize) -> Lines {
        Lines {
            line: BytesMut::new(),
            max: max.max(1),
            finished: false,
        }
    }

    /// Takes `buf`, giving each line it completes to `out`.
    pub fn feed(&mut self, mut buf: &[u8], mut out: impl FnMut(Bytes)) {
        while !buf.is_empty() {
            let (take, ends_line) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            let content = if ends_line {
                &buf[..take - 1]
            } else {
                &buf[..take]
            };
            self.line.extend_from_slice(content);
            buf = &buf[take..];
            while self.line.len() > self.max {
                let cut = utf8_cut(&self.line, self.max);
                out(self.line.split_to(cut).freeze());
            }
            if ends_line {
                if self.line.last() == Some(&b'\r') {
                    self.line.truncate(self.line.len() - 1);
                }
                out(self.line.split().freeze());
            }
        }
    }

    /// The end of the stream: a last line without a line break is given out.
    pub fn finish(&mut self, mut out: impl FnMut(Bytes)) {
        if !self.line.is_empty() {
            out(self.line.split().freeze());
        }
        self.finished = true;
    }
}

/// Where to cut `b` to at most `max` bytes without splitting a UTF-8 character (unless there is
/// no boundary in the last 4 bytes, as in binary input).
fn utf8_cut(b: &[u8], max: usize) -> usize {
    (max.saturating_sub(3)..=max)
        .rev()
        .find(|&i| i > 0 && i < b.len() && (b[i] & 0xC0) != 0x80)
        .unwrap_or(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines(input: &[u8], max: usize) -> Vec<Vec<u8>> {
        let (tx, mut rx) = mpsc::channel(1000);
        read_lines(input, max, tx).await.unwrap();
        let mut out = Vec::new();
        while let Ok(l) = rx.try_recv() {
            out.push(l.to_vec());
        }
        out
    }

    #[tokio::test]
    async fn splits_long_lines_and_keeps_short_ones() {
        assert_eq!(
            lines(b"a\nbb\r\n\nlast", 10).await,
            [&b"a"[..], b"bb", b"", b"last"]
        );
        assert_eq!(
            lines(b"abcdefghij\n", 4).await,
            [&b"abcd"[..], b"efgh", b"ij"]
        );
        // "é" is two bytes: the cut moves back rather than split it.
        assert_eq!(
            lines("abé".as_bytes(), 3).await,
            [&b"ab"[..], "é".as_bytes()]
        );
        let total: usize = lines(&vec![b'x'; 1 << 20], 64 * 1024)
            .await
            .iter()
            .map(Vec::len)
            .sum();
        assert_eq!(total, 1 << 20, "nothing dropped");
    }
}
