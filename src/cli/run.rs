//! `sluice run`: runs a command and sends its output to Sluice, stdout lines on OUT and stderr
//! lines on ERR, as `heroku run` and Strøm's job runner do. The child is never slowed by Sluice:
//! its pipes are read into a bounded [`Spool`] that a separate task sends from, reconnecting with
//! backoff when Sluice goes away; what the spool cannot hold is dropped oldest first and
//! announced with its exact count. The child's exit becomes a `_server` line, and `sluice run`
//! exits as the child did.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitCode, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use clap::Args;
use sluice_router::envelope::now_ns;
use sluice_router::{Backoff, Channel, Envelope};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use super::ConnArgs;
use super::emit::{LineArgs, Lines};
use super::spool::{CHUNK_BYTES, Spool};
use crate::client::{ClientError, IngestAddr, IngestConnection, connect_ingest_tls};

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub lines: LineArgs,
    /// Most bytes of output held while Sluice cannot take it (unreachable, or slower than the
    /// command); beyond it the oldest lines are dropped, and the drop is announced with its
    /// exact count.
    #[arg(long, default_value_t = 16 * 1024 * 1024, value_name = "BYTES")]
    pub buffer_bytes: usize,
    /// Hold the buffer in files under this directory (beyond its first 1 MiB) instead of
    /// memory, for a large --buffer-bytes.
    #[arg(long, value_name = "DIR")]
    pub buffer_dir: Option<PathBuf>,
    /// After the command exits, how long to keep trying to deliver what is held.
    #[arg(long, default_value_t = 30, value_name = "SECS")]
    pub flush_timeout: u64,
    /// Do not also print the command's output here.
    #[arg(short, long)]
    pub quiet: bool,
    /// The command and its arguments (after `--`).
    #[arg(
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "COMMAND"
    )]
    pub command: Vec<OsString>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

/// A reader that stops reading for this long after the command exited is given up on: a
/// process the command left behind may hold its pipes open.
const PIPE_GRACE: Duration = Duration::from_secs(2);

/// The first and longest waits between tries to reach Sluice.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(2);

pub async fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    let template = args.lines.template()?;
    let least = 2 * (CHUNK_BYTES + args.lines.max_line_bytes);
    if args.buffer_bytes < least {
        anyhow::bail!(
            "--buffer-bytes must be at least {least} (two frames of output at this --max-line-bytes)"
        );
    }
    let spill = match &args.buffer_dir {
        Some(dir) => {
            let own = dir.join(format!("sluice-run-{}", std::process::id()));
            sluice_store::private::create_dir_all(&own)
                .map_err(|e| anyhow::anyhow!("cannot use --buffer-dir {}: {e}", own.display()))?;
            Some(own)
        }
        None => None,
    };
    let addr = args.conn.ingest()?;
    let sender = Sender {
        addr: addr.clone(),
        tls: args.conn.ingest_tls()?,
        token: args.conn.token.clone(),
        template: template.clone(),
    };

    let (program, rest) = args.command.split_first().expect("clap requires a command");
    let mut child = match tokio::process::Command::new(program)
        .args(rest)
        .stdin(Stdio::inherit())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "sluice: cannot run {}: {}",
                program.to_string_lossy(),
                crate::io_reason(&e)
            );
            // As a shell does: 127 not found, 126 found but not runnable.
            let code = match e.kind() {
                std::io::ErrorKind::NotFound => 127,
                _ => 126,
            };
            return Ok(ExitCode::from(code));
        }
    };

    let spool = Arc::new(Spool::new(args.buffer_bytes, spill.clone(), 2));
    let pipes = [
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn AsyncRead + Unpin + Send>),
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn AsyncRead + Unpin + Send>),
    ];
    let mut readers = Vec::new();
    for (pipe, channel) in pipes.into_iter().zip([Channel::Out, Channel::Err]) {
        let Some(pipe) = pipe else {
            spool.writer_done();
            continue;
        };
        let echo: Option<Box<dyn AsyncWrite + Unpin + Send>> = match (args.quiet, channel) {
            (true, _) => None,
            (false, Channel::Out) => Some(Box::new(tokio::io::stdout())),
            (false, Channel::Err) => Some(Box::new(tokio::io::stderr())),
        };
        let mut template = template.clone();
        template.channel = channel;
        let spool = spool.clone();
        let max = args.lines.max_line_bytes;
        readers.push(tokio::spawn(read_pipe(pipe, echo, template, max, spool)));
    }

    let (exit_tx, exit_rx) = watch::channel(None);
    let delivery = tokio::spawn(sender.deliver(spool.clone(), exit_rx));

    let status = wait_forwarding_signals(&mut child).await?;
    // What the pipes still hold; a process the command left running may keep them open.
    let all = futures_util::future::join_all(readers.iter_mut());
    if tokio::time::timeout(PIPE_GRACE, all).await.is_err() {
        for r in &readers {
            if !r.is_finished() {
                r.abort();
                spool.writer_done();
            }
        }
    }
    let _ = exit_tx.send(Some(exit_event(&template, status)));

    let flush = Duration::from_secs(args.flush_timeout);
    let outcome = match tokio::time::timeout(flush, delivery).await {
        Ok(Ok(r)) => r,
        Ok(Err(e)) => Err(anyhow::anyhow!("the sender failed: {e}")),
        Err(_) => Err(anyhow::anyhow!(
            "gave up after {} s (--flush-timeout) without reaching sluice at {addr}",
            args.flush_timeout
        )),
    };
    let totals = spool.totals();
    if totals.dropped_lines > 0 {
        eprintln!(
            "sluice run: dropped {} of {} lines ({} bytes): the buffer (--buffer-bytes {}) was full while sluice could not take them; the drop is announced in the log",
            totals.dropped_lines, totals.lines, totals.dropped_bytes, args.buffer_bytes
        );
    }
    if let Err(e) = outcome {
        eprintln!(
            "sluice run: {} lines not delivered: {e:#}",
            spool.held_lines()
        );
    }
    if let Some(dir) = spill {
        let _ = std::fs::remove_dir_all(dir);
    }
    Ok(exit_code(status))
}

/// Reads one of the child's pipes to its end: echoes it, cuts it into lines and adds them to
/// the spool. Never waits on Sluice; a failing echo (our own output closed) stops only the echo.
async fn read_pipe(
    mut pipe: Box<dyn AsyncRead + Unpin + Send>,
    mut echo: Option<Box<dyn AsyncWrite + Unpin + Send>>,
    template: Envelope,
    max: usize,
    spool: Arc<Spool>,
) {
    let mut lines = Lines::new(max);
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut add = |message| {
        let mut env = template.clone();
        env.timestamp = now_ns();
        env.message = message;
        spool.push(&env);
    };
    loop {
        buf.clear();
        match pipe.read_buf(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if let Some(out) = &mut echo
            && (out.write_all(&buf).await.is_err() || out.flush().await.is_err())
        {
            echo = None;
        }
        lines.feed(&buf, &mut add);
    }
    lines.finish(&mut add);
    spool.writer_done();
}

/// Waits for the child, passing SIGINT and SIGTERM on to it.
async fn wait_forwarding_signals(child: &mut tokio::process::Child) -> anyhow::Result<ExitStatus> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    let pid = child
        .id()
        .and_then(|id| rustix::process::Pid::from_raw(id as i32));
    let forward = |sig| {
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, sig);
        }
    };
    loop {
        tokio::select! {
            status = child.wait() => return Ok(status?),
            _ = int.recv() => forward(rustix::process::Signal::INT),
            _ = term.recv() => forward(rustix::process::Signal::TERM),
        }
    }
}

/// The event recording how the child ended.
fn exit_event(template: &Envelope, status: ExitStatus) -> serde_json::Value {
    use std::os::unix::process::ExitStatusExt;
    let mut event = serde_json::json!({
        "event": "exit",
        "source_id": template.source_id,
        "instance_id": template.instance_id,
    });
    match (status.code(), status.signal()) {
        (Some(code), _) => event["status"] = code.into(),
        (None, Some(sig)) => event["signal"] = sig.into(),
        (None, None) => event["status"] = (-1).into(),
    }
    if let Some(step) = &template.step {
        event["step"] = step.as_str().into();
    }
    event
}

/// Our own exit code: the child's, or 128 + the signal that killed it, as a shell reports it.
fn exit_code(status: ExitStatus) -> ExitCode {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => ExitCode::from(code as u8),
        (None, Some(sig)) => ExitCode::from((128 + sig) as u8),
        (None, None) => ExitCode::FAILURE,
    }
}

/// Delivers the spool to Sluice, reconnecting as long as it takes.
#[derive(Debug)]
struct Sender {
    addr: IngestAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    token: Option<String>,
    template: Envelope,
}

impl Sender {
    /// Sends until the writers are done, everything held is accepted and the exit is recorded;
    /// fails only when the server refuses (a token it does not take, say).
    async fn deliver(
        self,
        spool: Arc<Spool>,
        mut exit: watch::Receiver<Option<serde_json::Value>>,
    ) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        let mut down: Option<String> = None;
        loop {
            let connected = connect_ingest_tls(
                &self.addr,
                self.tls.clone(),
                "ack=count",
                self.token.as_deref(),
            )
            .await;
            let result = match connected {
                Ok(mut conn) => {
                    if down.take().is_some() {
                        eprintln!(
                            "sluice run: reached sluice at {} again: sending the {} lines held",
                            self.addr,
                            spool.held_lines()
                        );
                    }
                    backoff.reset();
                    self.session(&mut conn, &spool, &mut exit).await
                }
                Err(e) => Err(e),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(ClientError::Refused(reason)) => {
                    anyhow::bail!("sluice refused them: {reason}")
                }
                Err(e) => {
                    if down.is_none() {
                        eprintln!(
                            "sluice run: {e}; holding the output (up to --buffer-bytes) and retrying"
                        );
                    }
                    down = Some(e.to_string());
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    /// One connection's worth of sending: announcements of drops first, then frames in order,
    /// each waiting for its acknowledgement; at the end the exit.
    async fn session(
        &self,
        conn: &mut IngestConnection,
        spool: &Spool,
        exit: &mut watch::Receiver<Option<serde_json::Value>>,
    ) -> Result<(), ClientError> {
        loop {
            if let Some(d) = spool.dropped() {
                let event = serde_json::json!({
                    "event": "dropped",
                    "source_id": self.template.source_id,
                    "instance_id": self.template.instance_id,
                    "lines": d.lines,
                    "bytes": d.bytes,
                    "since_ns": d.since_ns,
                });
                conn.send_event(&event).await?;
                spool.announced(d);
                continue;
            }
            if let Some(chunk) = spool.take() {
                let frame = match chunk.frame() {
                    Ok(f) => f,
                    Err(e) => {
                        spool.unsent(chunk);
                        return Err(ClientError::Protocol(format!(
                            "cannot read the buffer back: {e}"
                        )));
                    }
                };
                let sent = async {
                    conn.writer.write(&frame).await?;
                    conn.replies.next().await
                }
                .await;
                match sent {
                    Ok(_) => spool.sent(chunk),
                    Err(e) => {
                        spool.unsent(chunk);
                        return Err(e);
                    }
                }
                continue;
            }
            if spool.is_drained() {
                let Some(event) = exit.borrow_and_update().clone() else {
                    // The writers are done but the child has not been reaped yet.
                    let _ = exit.changed().await;
                    continue;
                };
                conn.send_event(&event).await?;
                conn.writer.finish().await.ok();
                return Ok(());
            }
            spool.ready.notified().await;
        }
    }
}
