//! `sluice drains list|add|rm`: the drains API, as `heroku drains` and `cf` drain services do it.

use std::io::Write;
use std::process::ExitCode;

use clap::{Args, Subcommand};
use reqwest::Method;
use serde_json::{Value, json};
use sluice_router::validate_source_id;

use super::ConnArgs;
use crate::client::{self, encode_component};

#[derive(Debug, Args)]
pub struct DrainsArgs {
    #[command(subcommand)]
    pub command: DrainsCommand,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Subcommand)]
pub enum DrainsCommand {
    /// List drains with their counters: every drain, or one source's.
    List {
        /// Only this source's drains.
        #[arg(short, long, value_name = "ID")]
        source: Option<String>,
        /// One JSON object per drain instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Bind a drain: `syslog://HOST:PORT`, `syslog-tls://HOST:PORT`, `syslog-udp://HOST:PORT`
    /// or `https://...`; prints its id.
    Add {
        /// Where to send the lines.
        url: String,
        /// The source whose lines go there; without it, every source's (an operator's).
        #[arg(short, long, value_name = "ID")]
        source: Option<String>,
    },
    /// Unbind a drain, by its id or its url.
    #[command(alias = "remove")]
    Rm {
        /// The drain's id, or its url.
        drain: String,
        /// With a url bound for several sources: the source's.
        #[arg(short, long, value_name = "ID")]
        source: Option<String>,
    },
}

pub async fn run(args: DrainsArgs) -> anyhow::Result<ExitCode> {
    let remote = args.conn.remote()?;
    let mut out = std::io::stdout().lock();
    match args.command {
        DrainsCommand::List { source, json } => {
            let drains = list(&remote, source.as_deref()).await?;
            if json {
                for d in &drains {
                    writeln!(out, "{d}")?;
                }
                return Ok(ExitCode::SUCCESS);
            }
            writeln!(
                out,
                "{:<18} {:<24} {:<40} {:>9} {:>10} {:>8} {:>7}",
                "ID", "SOURCE", "URL", "CONNECTED", "SENT", "LOST", "ERRORS"
            )?;
            for d in &drains {
                let num = |k: &str| d[k].as_u64().unwrap_or_default();
                writeln!(
                    out,
                    "{:<18} {:<24} {:<40} {:>9} {:>10} {:>8} {:>7}",
                    d["id"].as_str().unwrap_or("?"),
                    d["source_id"].as_str().unwrap_or("(every source)"),
                    d["url"].as_str().unwrap_or("?"),
                    if d["connected"] == true { "yes" } else { "no" },
                    num("sent"),
                    num("lost"),
                    num("errors"),
                )?;
            }
        }
        DrainsCommand::Add { url, source } => {
            if let Some(s) = &source {
                validate_source_id(s)?;
            }
            let mut body = json!({ "url": url });
            if let Some(s) = &source {
                body["source_id"] = s.as_str().into();
            }
            let drain = client::api(&remote, Method::POST, "/api/v1/drains", Some(&body)).await?;
            let id = drain["id"].as_str().unwrap_or("?");
            writeln!(out, "{id}")?;
            eprintln!(
                "Bound drain {id}: {} for {}",
                drain["url"].as_str().unwrap_or(&url),
                source.as_deref().unwrap_or("every source")
            );
        }
        DrainsCommand::Rm { drain, source } => {
            let id = resolve(&remote, &drain, source.as_deref()).await?;
            client::api(
                &remote,
                Method::DELETE,
                &format!("/api/v1/drains/{}", encode_component(&id)),
                None,
            )
            .await?;
            eprintln!("Removed drain {id}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(remote: &client::Remote, source: Option<&str>) -> anyhow::Result<Vec<Value>> {
    let path = match source {
        Some(s) => {
            validate_source_id(s)?;
            format!("/api/v1/drains?source_id={}", encode_component(s))
        }
        None => "/api/v1/drains".to_owned(),
    };
    let drains = client::api(remote, Method::GET, &path, None).await?;
    Ok(drains.as_array().cloned().unwrap_or_default())
}

/// A drain's id from what the user typed: an id, or a url bound once (for `source`, if given).
async fn resolve(
    remote: &client::Remote,
    drain: &str,
    source: Option<&str>,
) -> anyhow::Result<String> {
    if !drain.contains("://") {
        return Ok(drain.to_owned());
    }
    let drains = list(remote, source).await?;
    let bound: Vec<&Value> = drains.iter().filter(|d| d["url"] == drain).collect();
    match bound[..] {
        [] => anyhow::bail!("no drain is bound to {drain}"),
        [one] => Ok(one["id"].as_str().unwrap_or_default().to_owned()),
        _ => {
            let sources: Vec<&str> = bound
                .iter()
                .map(|d| d["source_id"].as_str().unwrap_or("(every source)"))
                .collect();
            anyhow::bail!(
                "{drain} is bound for several sources ({}): say which with --source, or give the drain's id",
                sources.join(", ")
            )
        }
    }
}
