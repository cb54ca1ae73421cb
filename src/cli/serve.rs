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
    let listeners = Listeners::bind(&config.listen, &config.http).await?;
    let running = server::start(config, listeners).await?;
    {
        let mut out = std::io::stdout().lock();
        for line in running.bound.lines() {
            writeln!(out, "{line}")?;
        }
        writeln!(out, "ready")?;
        out.flush()?;
    }
    tracing::info!("no auth tokens configured: listening on loopback addresses only");
    wait_for_signal().await;
    tracing::info!("shutting down");
    if !running.stop().await {
        tracing::warn!("some connections were still open when the grace period ended");
    }
    Ok(ExitCode::SUCCESS)
}

/// SIGINT or SIGTERM.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
