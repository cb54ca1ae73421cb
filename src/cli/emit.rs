//! `sluice emit`: standard input, line by line, to native ingest with acknowledgements.

use std::collections::BTreeMap;
use std::process::ExitCode;

use bytes::{Bytes, BytesMut};
use clap::Args;
use sluice_router::codec::{encode_batch, encode_frame_with};
use sluice_router::envelope::now_ns;
use sluice_router::{Channel, Envelope};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;

use super::ConnArgs;
use crate::client::connect_ingest;

#[derive(Debug, Args)]
pub struct EmitArgs {
    /// The source the lines belong to (an app, job or allocation id).
    #[arg(short, long, value_name = "ID")]
    pub source: String,
    /// Origin code shown as [ORIGIN/INSTANCE].
    #[arg(long, default_value = "APP", value_name = "CODE")]
    pub origin: String,
    /// Instance index.
    #[arg(long, default_value = "0", value_name = "N")]
    pub instance: String,
    /// Send the lines on ERR (stderr) instead of OUT.
    #[arg(long)]
    pub stderr: bool,
    /// The job step (or task) the lines belong to.
    #[arg(long, value_name = "S")]
    pub step: Option<String>,
    /// A tag to attach to every line; repeatable.
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
    /// Lines longer than this are split into several envelopes.
    #[arg(long, default_value_t = 64 * 1024, value_name = "BYTES")]
    pub max_line_bytes: usize,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// Most lines per frame, and most message bytes per frame.
const BATCH_LINES: usize = 1000;
const BATCH_BYTES: usize = 1024 * 1024;

pub async fn run(args: EmitArgs) -> anyhow::Result<ExitCode> {
    let mut template = Envelope::new(args.source.clone(), Bytes::new());
    template.origin = args.origin.clone();
    template.instance_id = args.instance.clone();
    template.channel = if args.stderr {
        Channel::Err
    } else {
        Channel::Out
    };
    template.step = args.step.clone();
    template.tags = parse_tags(&args.tags)?;
    template.validate()?;
    if args.max_line_bytes == 0 {
        anyhow::bail!("--max-line-bytes must be at least 1");
    }
    let addr = args.conn.ingest()?;
    let conn = connect_ingest(&addr).await?;
    let (mut writer, mut replies) = (conn.writer, conn.replies);

    let (tx, mut rx) = mpsc::channel::<Bytes>(4 * BATCH_LINES);
    let max = args.max_line_bytes;
    let reader =
        tokio::spawn(async move { read_lines(BufReader::new(tokio::io::stdin()), max, tx).await });

    // Replies come back while we send; the task returns the total accepted, or the first error.
    let (sent_tx, mut sent_rx) = mpsc::unbounded_channel::<u64>();
    let acks = tokio::spawn(async move {
        let mut accepted = 0u64;
        while let Some(lines) = sent_rx.recv().await {
            let n = replies.next().await?;
            if n != lines {
                anyhow::bail!("the server accepted {n} of {lines} lines in a batch");
            }
            accepted += n;
        }
        Ok::<u64, anyhow::Error>(accepted)
    });

    let mut sent = 0u64;
    let mut frame = BytesMut::new();
    let mut batch: Vec<Envelope> = Vec::with_capacity(BATCH_LINES);
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
            // The reply task may know why (the server answers before closing).
            return Err(match acks.await {
                Ok(Err(reason)) => reason,
                _ => e.into(),
            });
        }
        sent += lines;
        let _ = sent_tx.send(lines);
    }
    drop(sent_tx);
    reader.await??;
    let accepted = acks.await??;
    writer.finish().await.ok();
    debug_assert_eq!(accepted, sent);
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
    let mut line = BytesMut::new();
    loop {
        let buf = input.fill_buf().await?;
        if buf.is_empty() {
            if !line.is_empty() {
                let _ = tx.send(line.split().freeze()).await;
            }
            return Ok(());
        }
        let (take, ends_line) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        let content = if ends_line {
            &buf[..take - 1]
        } else {
            &buf[..take]
        };
        line.extend_from_slice(content);
        input.consume(take);
        while line.len() > max {
            let cut = utf8_cut(&line, max);
            if tx.send(line.split_to(cut).freeze()).await.is_err() {
                return Ok(());
            }
        }
        if ends_line {
            if line.last() == Some(&b'\r') {
                line.truncate(line.len() - 1);
            }
            if tx.send(line.split().freeze()).await.is_err() {
                return Ok(());
            }
        }
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
