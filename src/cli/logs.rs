//! `sluice logs`: follow a source, or print its recent lines.

use std::io::{BufWriter, ErrorKind, Write};
use std::process::ExitCode;

use clap::Args;
use sluice_router::{Channel, Envelope, Filter, validate_source_id};

use super::ConnArgs;
use crate::client::{self, Query};
use crate::format::{cf_line, json_line};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The source to show (an app, job or allocation id).
    pub source: String,
    /// Print the recent lines and exit (with -f, keep following after them).
    #[arg(long)]
    pub recent: bool,
    /// Follow: keep printing new lines as they arrive (the default without --recent). Also
    /// spelled --tail, as nomad and heroku users type it.
    #[arg(short, long, visible_alias = "tail")]
    pub follow: bool,
    /// How many lines back to start: with --recent the default is 1000, otherwise 0. Also
    /// spelled --num.
    #[arg(short = 'n', long = "lines", visible_alias = "num", value_name = "N")]
    pub lines: Option<usize>,
    /// Every stored line, from the source's first (memory, then its files), then exit; with -f,
    /// keep following.
    #[arg(long, conflicts_with_all = ["recent", "lines"])]
    pub all: bool,
    /// Only lines sent on stdout (OUT).
    #[arg(long, conflicts_with = "stderr")]
    pub stdout: bool,
    /// Only lines sent on stderr (ERR).
    #[arg(long)]
    pub stderr: bool,
    /// Only this origin, or origins under it: RTR, APP, APP/PROC/WEB, STG, ...
    #[arg(long, value_name = "CODE")]
    pub origin: Option<String>,
    /// Only this job step (or task).
    #[arg(long, value_name = "S")]
    pub step: Option<String>,
    /// One JSON object per line instead of the cf format.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub async fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    validate_source_id(&args.source)?;
    let remote = args.conn.remote()?;
    let channel = if args.stdout {
        Some(Channel::Out)
    } else if args.stderr {
        Some(Channel::Err)
    } else {
        None
    };
    let filter = Filter {
        origin: args.origin.clone(),
        channel,
        step: args.step.clone(),
    };
    let back = args.lines.unwrap_or(if args.recent { 1000 } else { 0 });
    let mut out = Printer {
        out: BufWriter::new(std::io::stdout().lock()),
        json: args.json,
    };
    if args.recent && !args.follow {
        let query = Query {
            filter,
            limit: Some(back),
            ..Query::default()
        };
        let envs = client::recent(&remote, &args.source, &query).await?;
        if out.print(&envs).is_err() {
            return Ok(ExitCode::SUCCESS); // the reader went away (`| head`)
        }
        return Ok(ExitCode::SUCCESS);
    }
    // With --all and no -f: up to the newest line there is now.
    let until = match (args.all, args.follow) {
        (true, false) => match client::newest_seq(&remote, &args.source).await? {
            0 => return Ok(ExitCode::SUCCESS),
            n => Some(n),
        },
        _ => None,
    };
    // Stopping at a seq needs every line to see it: filter here instead of at the server.
    let local_filter = until.map(|_| filter.clone());
    let query = Query {
        filter: if until.is_some() {
            Filter::default()
        } else {
            filter
        },
        backfill: (!args.all).then_some(back),
        since_seq: args.all.then_some(0),
        ..Query::default()
    };
    let mut tail = client::tail(&remote, &args.source, &query).await?;
    // On stderr, so that stdout stays the lines alone: until one arrives, this says the tail
    // is up.
    eprintln!("Connected, tailing logs for {}", args.source);
    loop {
        tokio::select! {
            next = tail.next() => match next? {
                Some((mut envs, closed)) => {
                    let last = envs.last().map(|e| e.seq);
                    if let Some(f) = &local_filter {
                        envs.retain(|e| f.matches(e));
                    }
                    if out.print(&envs).is_err() {
                        return Ok(ExitCode::SUCCESS);
                    }
                    if until.is_some_and(|u| last.is_some_and(|seq| seq >= u)) {
                        tail.close().await;
                        return Ok(ExitCode::SUCCESS);
                    }
                    if let Some(reason) = closed {
                        anyhow::bail!("the server ended the stream: {reason}");
                    }
                }
                None => anyhow::bail!("the server ended the stream"),
            },
            _ = tokio::signal::ctrl_c() => {
                tail.close().await;
                return Ok(ExitCode::SUCCESS);
            }
        }
    }
}

struct Printer<W: Write> {
    out: W,
    json: bool,
}

impl<W: Write> Printer<W> {
    /// Prints and flushes; an error means stdout is gone.
    fn print(&mut self, envs: &[Envelope]) -> std::io::Result<()> {
        for env in envs {
            let line = if self.json {
                json_line(env)
            } else {
                cf_line(env, &chrono::Local)
            };
            self.out.write_all(line.as_bytes())?;
            self.out.write_all(b"\n")?;
        }
        match self.out.flush() {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => Err(e),
            other => other,
        }
    }
}
