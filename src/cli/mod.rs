//! The `sluice` command line: `serve`, `emit`, `logs`, `run`, `sources`, `drains`, `token`.
//!
//! Client commands find the server the way `serve` was configured: `--config FILE` (or
//! `SLUICE_CONFIG`), or `--http ADDR` / `--ingest ADDR`, else the embedded defaults. Errors are
//! one line on stderr, `sluice: ...`, and exit code 1.

mod drains;
mod emit;
mod logs;
mod run;
mod serve;
mod spool;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use std::sync::Arc;

use crate::client::{IngestAddr, Remote, check_addr, tls_client};
use crate::config::Config;

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "A pub/sub log router: tagged envelopes in; live tails, drains and archives out",
    long_about = None,
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the router: native ingest, the HTTP API and WebSocket tails.
    ///
    /// Every setting has an embedded default, so it runs with no file: HTTP on 127.0.0.1:8080,
    /// native ingest on 127.0.0.1:8081. The bound addresses are printed to stdout, one
    /// `listening NAME=ADDRESS` line each, then `ready`.
    Serve(ServeArgs),
    /// Send standard input to sluice, one envelope per line.
    ///
    /// Lines longer than --max-line-bytes are split, not dropped. Exits once the server has
    /// acknowledged every line.
    Emit(emit::EmitArgs),
    /// Show a source's logs: follow them live (the default), or print the recent ones.
    ///
    /// Lines are printed in the `cf logs` format, in local time:
    /// `2016-06-14T14:10:05.36-0700 [APP/PROC/WEB/0] OUT message`.
    Logs(logs::LogsArgs),
    /// Run a command and send its output to sluice: stdout lines on OUT, stderr lines on ERR.
    ///
    /// `sluice run --source ID -- COMMAND ARGS...` exits as the command did, and records how it
    /// ended as a `_server` line (`exited with status N`, `killed by signal S`). SIGINT and
    /// SIGTERM are passed on to the command. Sluice never slows the command: while sluice is
    /// unreachable (or slower than the command) the output is held, up to --buffer-bytes, and
    /// sent when it can be; past that the oldest lines are dropped and the drop is announced
    /// in the log with its exact count.
    Run(run::RunArgs),
    /// List the sources the server knows, in memory or only in storage, sorted by id: their
    /// newest seq, the lines their ring holds, and where their lines live.
    Sources(SourcesArgs),
    /// Syslog drains: `list`, `add URL [--source ID]`, `rm ID|URL`.
    Drains(drains::DrainsArgs),
    /// Make an auth token: prints a new random token, and the `auth.tokens` entry (its
    /// SHA-256) to put in the server's config file. With --hash, reads a token from standard
    /// input and prints only its SHA-256.
    Token(TokenArgs),
}

#[derive(Debug, Args)]
pub struct SourcesArgs {
    /// One JSON object per source instead of the table.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Args)]
pub struct TokenArgs {
    /// The token's name in the config entry.
    #[arg(long, default_value = "my-token")]
    pub name: String,
    /// The scopes in the config entry: ingest, read, operator.
    #[arg(long, value_delimiter = ',', default_value = "read")]
    pub scopes: Vec<String>,
    /// Read a token from standard input and print its SHA-256 only.
    #[arg(long)]
    pub hash: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Configuration file (YAML); without it, the embedded defaults.
    #[arg(short, long, env = "SLUICE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// How client commands find the server.
#[derive(Debug, Clone, Args)]
pub struct ConnArgs {
    /// The configuration file the server uses: its listen addresses are used.
    #[arg(short, long, env = "SLUICE_CONFIG", value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
    /// The server's HTTP address (overrides the config file); `https://HOST:PORT` for a server
    /// with `tls.http`.
    #[arg(long, value_name = "[https://]HOST:PORT", global = true)]
    pub http: Option<String>,
    /// The server's native ingest address, or a Unix socket path (overrides the config file);
    /// `tls://HOST:PORT` for a server with `tls.ingest`.
    #[arg(long, value_name = "[tls://]HOST:PORT|PATH", global = true)]
    pub ingest: Option<String>,
    /// A PEM CA file to trust for a server that speaks TLS (the system's CAs without it).
    #[arg(long, env = "SLUICE_CACERT", value_name = "FILE", global = true)]
    pub cacert: Option<PathBuf>,
    /// A bearer token, for a server with auth tokens configured.
    #[arg(
        long,
        env = "SLUICE_TOKEN",
        hide_env_values = true,
        value_name = "TOKEN",
        global = true
    )]
    pub token: Option<String>,
}

impl ConnArgs {
    fn config(&self) -> anyhow::Result<Config> {
        Ok(Config::load(self.config.as_deref())?)
    }

    /// The server's HTTP side: its address, TLS when it speaks it, and the token.
    pub fn remote(&self) -> anyhow::Result<Remote> {
        let (http, tls) = match &self.http {
            Some(a) => match a.strip_prefix("https://") {
                Some(rest) => (rest.trim_end_matches('/').to_owned(), true),
                None => (
                    a.strip_prefix("http://")
                        .unwrap_or(a)
                        .trim_end_matches('/')
                        .to_owned(),
                    false,
                ),
            },
            None => (self.http()?, self.config()?.tls.http),
        };
        check_addr("--http", &http).map_err(anyhow::Error::msg)?;
        Ok(Remote {
            http,
            token: self.token.clone(),
            tls: match tls {
                true => Some(tls_client(self.cacert.as_deref())?),
                false => None,
            },
        })
    }

    /// The TLS client for native ingest, when the server speaks TLS there (`--ingest
    /// tls://...`, or `tls.ingest` in the config file).
    pub fn ingest_tls(&self) -> anyhow::Result<Option<Arc<rustls::ClientConfig>>> {
        let tls = match &self.ingest {
            Some(a) => a.starts_with("tls://"),
            None => self.config()?.tls.ingest,
        };
        Ok(match tls {
            true => Some(tls_client(self.cacert.as_deref())?),
            false => None,
        })
    }

    /// The HTTP address from the config file (or `--http` as given).
    fn http(&self) -> anyhow::Result<String> {
        if let Some(a) = &self.http {
            return Ok(a.clone());
        }
        let config = self.config()?;
        match config.listen.http {
            Some(a) if a.port() != 0 => Ok(a.to_string()),
            Some(_) => anyhow::bail!(
                "the config file sets listen.http to port 0, so its address is only known at start: pass --http"
            ),
            None => anyhow::bail!("the config file disables listen.http: pass --http"),
        }
    }

    /// The native ingest address to use.
    pub fn ingest(&self) -> anyhow::Result<IngestAddr> {
        if let Some(a) = &self.ingest {
            let addr = IngestAddr::parse(a.strip_prefix("tls://").unwrap_or(a));
            if let IngestAddr::Tcp(t) = &addr {
                check_addr("--ingest", t).map_err(anyhow::Error::msg)?;
            }
            return Ok(addr);
        }
        let config = self.config()?;
        if let Some(path) = config.listen.ingest_unix {
            return Ok(IngestAddr::Unix(path));
        }
        match config.listen.ingest {
            Some(a) if a.port() != 0 => Ok(IngestAddr::Tcp(a.to_string())),
            Some(_) => anyhow::bail!(
                "the config file sets listen.ingest to port 0, so its address is only known at start: pass --ingest"
            ),
            None => anyhow::bail!("the config file disables listen.ingest: pass --ingest"),
        }
    }
}

/// `sluice sources`.
async fn sources(args: SourcesArgs) -> anyhow::Result<ExitCode> {
    use std::io::Write;
    let list = crate::client::sources(&args.conn.remote()?).await?;
    let mut out = std::io::stdout().lock();
    if args.json {
        for s in &list {
            writeln!(out, "{s}")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    writeln!(
        out,
        "{:<40} {:>12} {:>10}  LINES IN",
        "SOURCE", "NEWEST SEQ", "IN MEMORY"
    )?;
    for s in &list {
        let num = |k: &str| s[k].as_u64().map_or("-".to_owned(), |n| n.to_string());
        let tiers: Vec<&str> = s["lines_in"]
            .as_array()
            .map(|a| a.iter().filter_map(|t| t.as_str()).collect())
            .unwrap_or_default();
        writeln!(
            out,
            "{:<40} {:>12} {:>10}  {}",
            s["source_id"].as_str().unwrap_or("?"),
            num("published"),
            num("retained"),
            tiers.join(",")
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `sluice token`.
fn token(args: TokenArgs) -> anyhow::Result<ExitCode> {
    use std::io::Read;
    if args.hash {
        let mut token = String::new();
        std::io::stdin().read_to_string(&mut token)?;
        println!(
            "{}",
            crate::auth::hash_hex(token.trim_end_matches(['\n', '\r']))
        );
        return Ok(ExitCode::SUCCESS);
    }
    for s in &args.scopes {
        if !matches!(s.as_str(), "ingest" | "read" | "operator") {
            anyhow::bail!("unknown scope {s:?}: use ingest, read or operator");
        }
    }
    let token = crate::auth::new_token()?;
    println!("token: {token}");
    println!("# in the server's config file (the token itself is not stored there):");
    println!("auth:");
    println!("  tokens:");
    println!("    - name: {}", args.name);
    println!("      sha256: \"{}\"", crate::auth::hash_hex(&token));
    println!("      scopes: [{}]", args.scopes.join(", "));
    Ok(ExitCode::SUCCESS)
}

/// Runs the command line; the binary's `main` is only this.
pub fn main() -> ExitCode {
    let cli = Cli::parse_from(logs::go_style_flags(std::env::args_os().collect()));
    crate::install_crypto_provider();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sluice: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve::run(args).await,
            Command::Emit(args) => emit::run(args).await,
            Command::Logs(args) => logs::run(args).await,
            Command::Run(args) => run::run(args).await,
            Command::Token(args) => token(args),
            Command::Sources(args) => sources(args).await,
            Command::Drains(args) => drains::run(args).await,
        }
    });
    // Tails may still be blocked on stdin or sockets; do not wait for them.
    runtime.shutdown_background();
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("sluice: {e:#}");
            ExitCode::FAILURE
        }
    }
}
