//! `sluice logs`: follow one source, several, or all of them; or print their recent lines.
//!
//! Following survives the server going away: each source's tail reconnects with backoff and
//! resumes after the last `seq` it printed, so nothing is shown twice and nothing is skipped
//! (a range the server no longer has arrives as its loss notice).

use std::collections::{HashMap, HashSet};
use std::io::{BufWriter, ErrorKind, IsTerminal, Write};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, ValueEnum};
use sluice_router::envelope::ORIGIN_ROUTER;
use sluice_router::{Backoff, Channel, Envelope, Filter, validate_source_id};
use tokio::sync::mpsc;

use super::ConnArgs;
use crate::client::{self, ClientError, Query, Remote};
use crate::format::{cf_line, json_line};

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The sources to show (app, job or allocation ids); several are shown together, each line
    /// prefixed with its source.
    #[arg(value_name = "SOURCE", required_unless_present = "all")]
    pub sources: Vec<String>,
    /// Every source, including those that appear later (the firehose; with tokens, an
    /// operator's).
    #[arg(long, conflicts_with_all = ["sources", "recent", "from_start", "since"])]
    pub all: bool,
    /// Print the recent lines and exit (with -f, keep following after them).
    #[arg(long)]
    pub recent: bool,
    /// Follow: keep printing new lines as they arrive (the default without --recent). Also
    /// spelled --tail (and -tail), as nomad and heroku users type it.
    #[arg(short, long, visible_alias = "tail")]
    pub follow: bool,
    /// How many lines back to start: with --recent the default is 1000, otherwise 0. Also
    /// spelled --num.
    #[arg(short = 'n', long = "lines", visible_alias = "num", value_name = "N")]
    pub lines: Option<usize>,
    /// Every stored line, from the source's first (its files, then memory), then exit; with
    /// -f, keep following.
    #[arg(long, conflicts_with_all = ["recent", "lines", "since"])]
    pub from_start: bool,
    /// Only lines from this long ago (`30s`, `10m`, `2h`, `1d`, `1h30m`) or since this time
    /// (RFC 3339: `2026-11-23T10:00:00Z`); then exit, or with -f keep following.
    #[arg(long, value_name = "DURATION|TIME", conflicts_with_all = ["recent", "lines"])]
    pub since: Option<String>,
    /// Only lines sent on stdout (OUT).
    #[arg(long, conflicts_with = "stderr")]
    pub stdout: bool,
    /// Only lines sent on stderr (ERR).
    #[arg(long)]
    pub stderr: bool,
    /// Only this origin, or origins under it: RTR, APP, APP/PROC/WEB, STG, ...; repeatable
    /// (any of them).
    #[arg(long = "origin", value_name = "CODE")]
    pub origins: Vec<String>,
    /// Only this instance (index, dyno); repeatable (any of them).
    #[arg(long = "instance", value_name = "N")]
    pub instances: Vec<String>,
    /// Only this job step (or task).
    #[arg(long, value_name = "S")]
    pub step: Option<String>,
    /// One JSON object per line instead of the cf format.
    #[arg(long)]
    pub json: bool,
    /// Colour ERR lines red and Sluice's own (LGR) lines yellow: `auto` when stdout is a
    /// terminal and NO_COLOR is unset.
    #[arg(long, value_enum, default_value_t = Color::Auto, value_name = "WHEN")]
    pub color: Color,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

/// The shortest and longest waits between reconnections.
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);

/// Go-style single-dash spellings of long flags that nomad and heroku users type (`-tail`,
/// `-since=1h`), rewritten to clap's double dash before parsing.
pub fn go_style_flags(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    const LONG: [&str; 9] = [
        "tail", "follow", "num", "lines", "since", "origin", "instance", "step", "json",
    ];
    let is_logs = args.get(1).is_some_and(|a| a == "logs");
    if !is_logs {
        return args;
    }
    args.into_iter()
        .map(|a| match a.to_str() {
            Some(s)
                if s.starts_with('-')
                    && !s.starts_with("--")
                    && LONG.contains(&s[1..].split('=').next().unwrap_or_default()) =>
            {
                format!("-{s}").into()
            }
            _ => a,
        })
        .collect()
}

pub async fn run(args: LogsArgs) -> anyhow::Result<ExitCode> {
    for s in &args.sources {
        validate_source_id(s)?;
    }
    let max = crate::http::MAX_LINES_BACK;
    if let Some(n) = args.lines
        && n > max
    {
        anyhow::bail!(
            "-n {n} is over {max}, the most lines Sluice reads back at once: use --from-start or --since for more"
        );
    }
    let remote = args.conn.remote()?;
    let filter = Filter {
        origins: args.origins.clone(),
        channel: if args.stdout {
            Some(Channel::Out)
        } else if args.stderr {
            Some(Channel::Err)
        } else {
            None
        },
        step: args.step.clone(),
        instances: args.instances.clone(),
    };
    let since_ns = match &args.since {
        Some(s) => Some(parse_since(s, chrono::Utc::now())?),
        None => None,
    };
    let colour = match args.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => {
            std::io::stdout().is_terminal()
                && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::env::var("TERM").map_or(true, |t| t != "dumb")
        }
    };
    let mut out = Printer {
        out: BufWriter::new(std::io::stdout().lock()),
        json: args.json,
        colour,
        prefix: args.all || args.sources.len() > 1,
    };
    let back = args.lines.unwrap_or(if args.recent { 1000 } else { 0 });

    if args.recent && !args.follow {
        let query = Query {
            filter,
            limit: Some(back),
            ..Query::default()
        };
        let mut all = Vec::new();
        for source in &args.sources {
            all.extend(client::recent(&remote, source, &query).await?);
        }
        // Several sources: one timeline, the newest `back` lines of it.
        all.sort_by_key(|e| e.timestamp);
        let skip = all.len().saturating_sub(back);
        let _ = out.print(&all[skip..]); // an error: the reader went away (`| head`)
        return Ok(ExitCode::SUCCESS);
    }

    let (tx, mut rx) = mpsc::channel::<Vec<Envelope>>(64);
    let mut followers = tokio::task::JoinSet::new();
    if args.all {
        followers.spawn(follow_all(remote.clone(), filter, back, tx.clone()));
    } else {
        for source in &args.sources {
            let follower = Follower {
                backfill: back,
                from_start: args.from_start || since_ns.is_some(),
                since_ns,
                // Without -f, a whole-log read stops at the newest line there is now.
                stop_at_newest: (args.from_start || since_ns.is_some()) && !args.follow,
                ..Follower::new(&remote, source, &filter, &tx)
            };
            followers.spawn(follower.run());
        }
    }
    drop(tx);
    loop {
        tokio::select! {
            batch = rx.recv() => match batch {
                Some(envs) => {
                    if out.print(&envs).is_err() {
                        return Ok(ExitCode::SUCCESS);
                    }
                }
                // Every follower is done: whole-log reads without -f.
                None => break,
            },
            Some(done) = followers.join_next() => {
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(e.into()),
                    Err(e) => anyhow::bail!("a follower failed: {e}"),
                }
            }
            _ = tokio::signal::ctrl_c() => return Ok(ExitCode::SUCCESS),
        }
    }
    while let Some(done) = followers.join_next().await {
        done??;
    }
    Ok(ExitCode::SUCCESS)
}

/// One source's tail, reconnected for as long as it takes.
struct Follower {
    remote: Remote,
    source: String,
    filter: Filter,
    backfill: usize,
    /// Start at the source's first stored line.
    from_start: bool,
    /// Start after this seq (overrides `backfill` and `from_start`).
    after: Option<u64>,
    /// Leave out lines older than this (loss notices excepted).
    since_ns: Option<i64>,
    /// Stop at the newest line the source has when the follower starts.
    stop_at_newest: bool,
    /// Stop at this seq.
    stop_at: Option<u64>,
    /// No `Connected` banners (a catch-up read inside another tail).
    quiet: bool,
    tx: mpsc::Sender<Vec<Envelope>>,
}

impl Follower {
    fn new(
        remote: &Remote,
        source: &str,
        filter: &Filter,
        tx: &mpsc::Sender<Vec<Envelope>>,
    ) -> Self {
        Follower {
            remote: remote.clone(),
            source: source.to_owned(),
            filter: filter.clone(),
            backfill: 0,
            from_start: false,
            after: None,
            since_ns: None,
            stop_at_newest: false,
            stop_at: None,
            quiet: false,
            tx: tx.clone(),
        }
    }

    async fn run(self) -> Result<(), ClientError> {
        let live = self.after.is_none() && !self.from_start && self.backfill == 0;
        // Where the source stands now: a live tail that has printed nothing yet resumes here.
        let newest = if live || self.stop_at_newest {
            match client::newest_seq(&self.remote, &self.source).await {
                Ok(n) => n,
                Err(ClientError::UnknownSource(_)) => 0,
                Err(e) => return Err(e),
            }
        } else {
            0
        };
        let stop = self.stop_at.or((self.stop_at_newest).then_some(newest));
        if stop.is_some_and(|s| s <= self.after.unwrap_or(0)) {
            return Ok(());
        }
        // Stopping at a seq needs every line to see it: filter here instead of at the server.
        let local = stop.is_some() || self.since_ns.is_some();
        let server_filter = if local {
            Filter::default()
        } else {
            self.filter.clone()
        };
        let mut last_seq: Option<u64> = self.after;
        let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
        let mut connected = false;
        loop {
            let query = Query {
                filter: server_filter.clone(),
                since_seq: match (last_seq, self.from_start, self.backfill) {
                    (Some(seq), _, _) => Some(seq),
                    (None, true, _) => Some(0),
                    (None, false, 0) => Some(newest),
                    (None, false, _) => None,
                },
                backfill: (last_seq.is_none() && !self.from_start && self.backfill > 0)
                    .then_some(self.backfill),
                ..Query::default()
            };
            let mut tail = match client::tail(&self.remote, &self.source, &query).await {
                Ok(t) => t,
                // Until the first connection, a failure is the user's to see at once; after
                // it, only a refusal (a token no longer taken, say) ends the tail.
                Err(e) if connected && retryable(&e) => {
                    tracing::debug!(error = %e, "reconnecting");
                    tokio::time::sleep(backoff.next_delay()).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            // On stderr, so that stdout stays the lines alone: until one arrives, this says
            // the tail is up.
            if !self.quiet {
                let again = if connected {
                    "Reconnected"
                } else {
                    "Connected"
                };
                eprintln!("{again}, tailing logs for {}", self.source);
            }
            connected = true;
            backoff.reset();
            let why = loop {
                match next_or_end(&mut tail).await? {
                    Ok((mut envs, closed)) => {
                        let newest_here = envs.last().map(|e| e.seq);
                        if let Some(seq) = newest_here {
                            last_seq = Some(seq);
                        }
                        if local {
                            envs.retain(|e| {
                                self.filter.matches(e)
                                    && self
                                        .since_ns
                                        .is_none_or(|t| e.timestamp >= t || is_loss_notice(e))
                            });
                        }
                        if !envs.is_empty() && self.tx.send(envs).await.is_err() {
                            return Ok(());
                        }
                        if stop.is_some_and(|stop| newest_here.is_some_and(|s| s >= stop)) {
                            tail.close().await;
                            return Ok(());
                        }
                        if let Some(reason) = closed {
                            break reason;
                        }
                    }
                    Err(why) => break why,
                }
            };
            eprintln!(
                "sluice logs: the stream of {} ended ({why}); reconnecting",
                self.source
            );
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

/// The firehose, resumed after a lost connection without a gap or a duplicate: the live stream
/// is opened again first, then every source whose newest seq passed what was printed (or, for
/// a source that printed nothing, where it stood when the tail began; a source that appeared
/// meanwhile, from its first line) is caught up by seq, and live lines already caught up are
/// skipped. One case is left out: a source only in storage when the tail began that logged
/// while it was away and is only in storage again after a restart.
async fn follow_all(
    remote: Remote,
    filter: Filter,
    backfill: usize,
    tx: mpsc::Sender<Vec<Envelope>>,
) -> Result<(), ClientError> {
    let mut backoff = Backoff::new(RETRY_MIN, RETRY_MAX);
    // The newest seq printed, per source; where each source in memory stood when the tail began,
    // and every source there was then.
    let mut printed: HashMap<String, u64> = HashMap::new();
    let mut began: Option<(HashMap<String, u64>, HashSet<String>)> = None;
    let mut first = true;
    'connect: loop {
        if !first {
            tokio::time::sleep(backoff.next_delay()).await;
        }
        first = false;
        let query = Query {
            filter: filter.clone(),
            backfill: (began.is_none() && backfill > 0).then_some(backfill),
            ..Query::default()
        };
        let opened = async {
            let tail = client::firehose(&remote, &query).await?;
            // Listed after the stream is up: what is newer than this comes live.
            let now = client::sources(&remote).await?;
            Ok::<_, ClientError>((tail, now))
        };
        let (mut tail, now) = match opened.await {
            Ok(t) => t,
            Err(e) if began.is_some() && retryable(&e) => continue,
            Err(e) => return Err(e),
        };
        let id = |s: &serde_json::Value| s["source_id"].as_str().map(str::to_owned);
        match &began {
            None => {
                eprintln!("Connected, tailing logs for every source");
                let newest = now
                    .iter()
                    .filter_map(|s| Some((id(s)?, s["published"].as_u64()?)))
                    .collect();
                began = Some((newest, now.iter().filter_map(id).collect()));
            }
            Some((began_at, known)) => {
                eprintln!("Reconnected, tailing logs for every source");
                for s in &now {
                    let Some(source) = id(s) else { continue };
                    // Where to catch up from: what was printed; where it stood when the tail
                    // began; for a source only in storage then, where its ring resumed; for a
                    // source that is new, its first line.
                    let from = match (printed.get(&source), began_at.get(&source)) {
                        (Some(&p), _) | (None, Some(&p)) => p,
                        (None, None) if known.contains(&source) => {
                            match s["resumed_after"].as_u64() {
                                Some(r) => r,
                                None => continue, // only in storage then and now
                            }
                        }
                        (None, None) => 0,
                    };
                    // A source only in storage now (the server restarted) says its newest seq
                    // when asked.
                    let newest = match s["published"].as_u64() {
                        Some(n) => n,
                        None => match client::newest_seq(&remote, &source).await {
                            Ok(n) => n,
                            Err(ClientError::UnknownSource(_)) => continue,
                            Err(e) if retryable(&e) => continue 'connect,
                            Err(e) => return Err(e),
                        },
                    };
                    if newest <= from {
                        continue;
                    }
                    // Through the same check as live lines: a catch-up cut short and done again
                    // shows nothing twice.
                    let (catch_tx, mut catch_rx) = mpsc::channel(16);
                    let catch_up = Follower {
                        after: Some(from),
                        stop_at: Some(newest),
                        quiet: true,
                        ..Follower::new(&remote, &source, &filter, &catch_tx)
                    };
                    drop(catch_tx);
                    let run = catch_up.run();
                    tokio::pin!(run);
                    let mut result = None;
                    loop {
                        tokio::select! {
                            r = &mut run, if result.is_none() => result = Some(r),
                            batch = catch_rx.recv() => match batch {
                                Some(mut envs) => {
                                    keep_unseen(&mut printed, &mut envs);
                                    if !envs.is_empty() && tx.send(envs).await.is_err() {
                                        return Ok(());
                                    }
                                }
                                None => break,
                            },
                        }
                    }
                    match result {
                        Some(Err(e)) if retryable(&e) => continue 'connect,
                        Some(Err(e)) => return Err(e),
                        _ => {}
                    }
                    let seen = printed.entry(source).or_default();
                    *seen = (*seen).max(newest);
                }
            }
        }
        backoff.reset();
        let why = loop {
            match next_or_end(&mut tail).await? {
                Ok((mut envs, closed)) => {
                    keep_unseen(&mut printed, &mut envs);
                    if !envs.is_empty() && tx.send(envs).await.is_err() {
                        return Ok(());
                    }
                    if let Some(reason) = closed {
                        break reason;
                    }
                }
                Err(why) => break why,
            }
        };
        eprintln!("sluice logs: the firehose ended ({why}); reconnecting");
    }
}

/// Leaves out of `envs` what was already shown (a seq at or below the newest shown of its
/// source), and records the rest as shown.
fn keep_unseen(printed: &mut HashMap<String, u64>, envs: &mut Vec<Envelope>) {
    envs.retain(|e| {
        let seen = printed.entry(e.source_id.to_string()).or_default();
        let new = e.seq > *seen;
        *seen = (*seen).max(e.seq);
        new
    });
}

/// A tail's next batch (and the close reason that came with it); `Ok(Err(why))` when the stream
/// ended in a way worth reconnecting after; `Err` when the server refused.
async fn next_or_end(
    tail: &mut client::Tail,
) -> Result<Result<(Vec<Envelope>, Option<String>), String>, ClientError> {
    match tail.next().await {
        Ok(Some(batch)) => Ok(Ok(batch)),
        Ok(None) => Ok(Err("the server closed the stream".into())),
        Err(e) if retryable(&e) => Ok(Err(e.to_string())),
        Err(e) => Err(e),
    }
}

/// Whether a tail that failed this way is worth opening again: the network or the server going
/// away, not the server refusing.
fn retryable(e: &ClientError) -> bool {
    matches!(
        e,
        ClientError::Connect { .. } | ClientError::Lost { .. } | ClientError::Protocol(_)
    )
}

fn is_loss_notice(e: &Envelope) -> bool {
    e.origin == ORIGIN_ROUTER && e.tags.contains_key("missed")
}

/// `--since`: a duration back from `now` (`90s`, `10m`, `2h`, `1d`, `1h30m`) or an RFC 3339
/// time, as nanoseconds since the epoch.
pub fn parse_since(s: &str, now: chrono::DateTime<chrono::Utc>) -> anyhow::Result<i64> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return t
            .timestamp_nanos_opt()
            .ok_or_else(|| anyhow::anyhow!("--since {s:?} is out of range"));
    }
    let bad = || {
        anyhow::anyhow!(
            "invalid --since {s:?}: expected a duration (30s, 10m, 2h, 1d, 1h30m) or an RFC 3339 time (2026-11-23T10:00:00Z)"
        )
    };
    let mut total: i64 = 0;
    let mut digits = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let n: i64 = digits.parse().map_err(|_| bad())?;
        digits.clear();
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !digits.is_empty() || s.is_empty() {
        return Err(bad());
    }
    let back = chrono::Duration::try_seconds(total).ok_or_else(bad)?;
    (now - back).timestamp_nanos_opt().ok_or_else(bad)
}

struct Printer<W: Write> {
    out: W,
    json: bool,
    colour: bool,
    /// Several sources: each line starts with its source.
    prefix: bool,
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
            let paint = match (self.colour, self.json) {
                (true, false) if env.origin == ORIGIN_ROUTER => Some("\x1b[33m"),
                (true, false) if env.channel == Channel::Err => Some("\x1b[31m"),
                _ => None,
            };
            if self.prefix && !self.json {
                write!(self.out, "{}: ", env.source_id)?;
            }
            match paint {
                Some(code) => write!(self.out, "{code}{line}\x1b[0m")?,
                None => self.out.write_all(line.as_bytes())?,
            }
            self.out.write_all(b"\n")?;
        }
        match self.out.flush() {
            Err(e) if e.kind() == ErrorKind::BrokenPipe => Err(e),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_durations_and_times() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-11-23T10:00:00Z")
            .unwrap()
            .to_utc();
        let at = |s: &str| parse_since(s, now).unwrap();
        let ns = |secs: i64| now.timestamp_nanos_opt().unwrap() - secs * 1_000_000_000;
        assert_eq!(at("30s"), ns(30));
        assert_eq!(at("10m"), ns(600));
        assert_eq!(at("1h30m"), ns(5400));
        assert_eq!(at("2d"), ns(2 * 86_400));
        assert_eq!(at("2026-11-23T09:00:00Z"), ns(3600));
        assert_eq!(at("2026-11-23T10:00:00+01:00"), ns(3600));
        for bad in ["", "10", "m", "10x", "1.5h", "-5m", "99999999999999999999d"] {
            assert!(parse_since(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn go_style_flags_are_taken_for_logs_only() {
        let args = |a: &[&str]| {
            a.iter()
                .map(Into::into)
                .collect::<Vec<std::ffi::OsString>>()
        };
        assert_eq!(
            go_style_flags(args(&[
                "sluice",
                "logs",
                "-tail",
                "-n",
                "5",
                "-since=1h",
                "app"
            ])),
            args(&["sluice", "logs", "--tail", "-n", "5", "--since=1h", "app"])
        );
        assert_eq!(
            go_style_flags(args(&["sluice", "emit", "-tail"])),
            args(&["sluice", "emit", "-tail"])
        );
    }

    #[test]
    fn colour_marks_err_and_sluices_own_lines_and_several_sources_are_prefixed() {
        let mut out = Vec::new();
        let mut p = Printer {
            out: &mut out,
            json: false,
            colour: true,
            prefix: true,
        };
        let mut err = Envelope::new("api", "boom");
        err.channel = Channel::Err;
        let notice = Envelope::notice("web", "exited with status 1");
        p.print(&[Envelope::new("web", "ok"), err, notice]).unwrap();
        let text = String::from_utf8(out).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("web: ") && !lines[0].contains('\x1b'));
        assert!(lines[1].starts_with("api: \x1b[31m") && lines[1].ends_with("boom\x1b[0m"));
        assert!(lines[2].starts_with("web: \x1b[33m"), "{}", lines[2]);
    }
}
