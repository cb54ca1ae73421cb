//! `sluice serve`.

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

use super::ServeArgs;
use crate::config::Config;
use crate::server::{self, Listeners};

pub async fn run(args: ServeArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = Config::load(args.config.as_deref())?;
    let open_files = server::raise_open_files_limit();
    let network = !config.auth.tokens.is_empty();
    let listeners = Listeners::bind(&config.listen, &config.http, network).await?;
    let config_max_open_files = config.log_storage.max_open_files;
    let running = server::start(config, listeners).await?;
    {
        let mut out = std::io::stdout().lock();
        for line in running.bound.lines() {
            writeln!(out, "{line}")?;
        }
        writeln!(out, "ready")?;
        out.flush()?;
    }
    if network {
        tracing::info!(
            tokens = running.auth_tokens(),
            "auth tokens configured: requests and native ingest need one"
        );
        for (what, addr) in [
            ("syslog_tcp", running.bound.syslog_tcp),
            ("syslog_udp", running.bound.syslog_udp),
            ("syslog_tls", running.bound.syslog_tls),
        ] {
            if let Some(addr) = addr.filter(|a| !a.ip().is_loopback()) {
                tracing::warn!(
                    listener = what,
                    %addr,
                    "syslog carries no token: anyone who can reach this address can write any source"
                );
            }
        }
    } else {
        tracing::info!("no auth tokens configured: listening on loopback addresses only");
    }
    match open_files {
        Some(n) => {
            tracing::info!(limit = n, "open files limit");
            // The persister's files, the listeners and a margin for connections.
            let files = config_max_open_files as u64;
            if files + 64 > n {
                tracing::warn!(
                    limit = n,
                    max_open_files = files,
                    "log_storage.max_open_files leaves little room for connections under this open files limit"
                );
            }
        }
        None => tracing::info!("open files limit: unlimited"),
    }
    wait_for_signal(&running, args.config.as_deref()).await;
    tracing::info!("shutting down");
    if !running.stop().await {
        tracing::warn!("some connections were still open when the grace period ended");
    }
    Ok(ExitCode::SUCCESS)
}

/// Waits for a signal that asks the server to stop: SIGTERM, SIGINT or SIGQUIT. Signals whose
/// default action would kill the process without a flush (SIGHUP, SIGUSR1, SIGUSR2, SIGALRM,
/// SIGPIPE and the like) are caught and logged instead, so no signal but SIGKILL loses what was
/// accepted. SIGHUP reloads the config file's tokens, TLS files and `drains.bind` ([`reload`]).
async fn wait_for_signal(running: &server::Running, config: Option<&std::path::Path>) {
    use tokio::signal::unix::{SignalKind, signal};
    let stop = [
        ("SIGTERM", SignalKind::terminate()),
        ("SIGINT", SignalKind::interrupt()),
        ("SIGQUIT", SignalKind::quit()),
    ];
    let ignore = [
        ("SIGHUP", SignalKind::hangup()),
        ("SIGUSR1", SignalKind::user_defined1()),
        ("SIGUSR2", SignalKind::user_defined2()),
        ("SIGALRM", SignalKind::alarm()),
        ("SIGPIPE", SignalKind::pipe()),
        ("SIGIO", SignalKind::io()),
        ("SIGVTALRM", SignalKind::from_raw(26)),
        ("SIGPROF", SignalKind::from_raw(27)),
        ("SIGPWR", SignalKind::from_raw(30)),
        ("SIGSTKFLT", SignalKind::from_raw(16)),
    ];
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(&'static str, bool)>();
    let all = stop.iter().map(|&(n, k)| (n, k, true));
    let all = all.chain(ignore.iter().map(|&(n, k)| (n, k, false)));
    for (name, kind, stops) in all {
        match signal(kind) {
            Ok(mut sig) => {
                let tx = tx.clone();
                tokio::spawn(async move {
                    while sig.recv().await.is_some() {
                        if tx.send((name, stops)).is_err() {
                            return;
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(signal = name, error = %e, "cannot handle signal"),
        }
    }
    while let Some((name, stops)) = rx.recv().await {
        if stops {
            tracing::info!(signal = name, "stopping");
            return;
        }
        if name == "SIGHUP" {
            // A few small files: read on this worker, which serves nothing else.
            tokio::task::block_in_place(|| reload(running, config));
        } else {
            tracing::info!(signal = name, "ignoring signal");
        }
    }
}

/// SIGHUP: reads the config file again and applies its tokens, TLS files and `drains.bind`;
/// a config that does not load, or does not apply, is refused whole with the reason.
fn reload(running: &server::Running, path: Option<&std::path::Path>) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            running.metrics.config_reload(false);
            tracing::error!(error = %e, "reload refused, the running settings stay");
            return;
        }
    };
    let result = running.reload(new);
    running.metrics.config_reload(result.is_ok());
    match result {
        Ok(r) => {
            tracing::info!(
                tokens = r.tokens,
                tls_reloaded = r.tls,
                drains_added = r.drains_added,
                drains_removed = r.drains_removed,
                "reloaded"
            );
            if !r.needs_restart.is_empty() {
                tracing::warn!(
                    settings = %r.needs_restart.join(", "),
                    "these settings changed in the file and take effect only at a restart"
                );
            }
        }
        Err(e) => tracing::error!(error = %e, "reload refused, the running settings stay"),
    }
}
