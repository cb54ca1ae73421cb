//! `sluice.yaml`: plain serde data with every default embedded, so `sluice serve` runs with no
//! file at all. Unknown keys are refused, and a bad file is reported with its line and column.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sluice_router::RouterConfig;

use crate::bindings::{Bindings, DrainsConfig};
use sluice_router::codec::DEFAULT_MAX_FRAME_BYTES;
use sluice_store::archive::S3Config;
use sluice_store::persister::Fsync;

/// The whole configuration file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: Listen,
    pub auth: Auth,
    pub router: RouterConfig,
    pub ingest: Ingest,
    pub http: Http,
    pub drains: DrainsConfig,
    pub syslog: Syslog,
    pub tls: Tls,
    pub log_storage: LogStorage,
}

/// `auth`: bearer tokens (see [`crate::auth`]). None: every request is allowed, and the
/// listeners bind loopback addresses only.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    pub tokens: Vec<crate::auth::TokenConfig>,
}

/// Where each listener binds. `null` disables a listener; port 0 picks a free port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Listen {
    /// API, WebSocket tails, web page, `/metrics`.
    pub http: Option<SocketAddr>,
    /// Native envelope stream over TCP.
    pub ingest: Option<SocketAddr>,
    /// Native envelope stream over a Unix socket.
    pub ingest_unix: Option<PathBuf>,
    /// Syslog over TCP, RFC 6587 framing (octet counting or line feeds, frame by frame).
    pub syslog_tcp: Option<SocketAddr>,
    /// Syslog over UDP, one message per datagram.
    pub syslog_udp: Option<SocketAddr>,
    /// Syslog over TLS, with `tls.cert_file` and `tls.key_file`.
    pub syslog_tls: Option<SocketAddr>,
}

impl Default for Listen {
    fn default() -> Self {
        Listen {
            http: Some(SocketAddr::from(([127, 0, 0, 1], 8080))),
            ingest: Some(SocketAddr::from(([127, 0, 0, 1], 8081))),
            ingest_unix: None,
            syslog_tcp: Some(SocketAddr::from(([127, 0, 0, 1], 5514))),
            syslog_udp: Some(SocketAddr::from(([127, 0, 0, 1], 5514))),
            syslog_tls: None,
        }
    }
}

/// Native ingest limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Ingest {
    /// Largest frame accepted; a larger declared length closes the connection.
    pub max_frame_bytes: usize,
    /// How long an `ack=durable` frame waits for the persister before it is answered with a
    /// timeout; counted for each frame from its arrival.
    pub durable_timeout_secs: u64,
    /// Most envelopes in one batch frame; a larger batch is refused (the connection goes on).
    pub max_batch_envelopes: usize,
    /// Open native connections per listener (TCP and Unix each); more are answered and closed.
    pub max_connections: usize,
    /// A connection with nothing in flight is closed after this long; 0: never.
    pub idle_timeout_secs: u64,
    /// A frame must be complete this long after its first bytes arrived.
    pub frame_timeout_secs: u64,
    /// Bytes all native and syslog stream connections together may hold for frames larger
    /// than their 64 KiB base buffer (and, as much again, for batches being decoded). A
    /// connection that would pass it waits, unread.
    pub buffer_budget_bytes: usize,
}

impl Default for Ingest {
    fn default() -> Self {
        Ingest {
            max_frame_bytes: DEFAULT_MAX_FRAME_BYTES,
            durable_timeout_secs: 30,
            max_batch_envelopes: 65_536,
            max_connections: 1024,
            idle_timeout_secs: 3600,
            frame_timeout_secs: 30,
            buffer_budget_bytes: 256 * 1024 * 1024,
        }
    }
}

/// Where logs are kept on disk (SPEC §6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogStorage {
    /// One JSONL file per source in here.
    pub local_dir: PathBuf,
    /// `never`, `interval` or `always`.
    pub fsync: Fsync,
    /// With `fsync: interval`, how often.
    pub fsync_interval_millis: u64,
    /// A source's file is rotated when it reaches this size.
    pub max_file_size_bytes: u64,
    /// Files kept per source: the current one and `max_files - 1` rotated ones.
    pub max_files: usize,
    /// Files kept open at once; the least recently written are closed first.
    pub max_open_files: usize,
    /// Writer threads: each writes its own share of the sources (a source is written by one).
    /// 0: one per two cores, at most 32.
    pub writers: usize,
    /// Keep a job's local files after S3 has its archive.
    pub keep_local: bool,
    /// With S3: rotated files kept per source until it completes (and is archived whole);
    /// past this the oldest is deleted, with a notice.
    pub keep_segments: usize,
    /// When the persister is a whole ring behind: `block` makes ingest wait (nothing lost on
    /// disk), `overwrite` lets its oldest unwritten lines go (announced in the file).
    pub when_behind: WhenBehind,
    /// S3 archival of completed jobs; absent, jobs stay local.
    pub s3: Option<S3Config>,
}

impl LogStorage {
    /// How many writer threads the persister runs: `writers`, or one per two cores; never more
    /// than `max_open_files` (each needs a file of its own).
    pub fn writer_threads(&self) -> usize {
        let n = if self.writers > 0 {
            self.writers
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get() / 2)
        };
        n.clamp(1, sluice_router::MAX_SHARDS)
            .min(self.max_open_files.max(1))
    }
}

impl Default for LogStorage {
    fn default() -> Self {
        LogStorage {
            local_dir: "./sluice-data/logs".into(),
            fsync: Fsync::Interval,
            fsync_interval_millis: 1000,
            max_file_size_bytes: 100 * 1024 * 1024,
            max_files: 10,
            max_open_files: 256,
            writers: 0,
            keep_local: false,
            when_behind: WhenBehind::Block,
            keep_segments: 100,
            s3: None,
        }
    }
}

/// What ingest does when the persister is a whole ring behind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenBehind {
    /// Senders wait: native and syslog TCP connections stop being read, HTTP requests wait,
    /// syslog UDP datagrams that cannot wait are dropped, counted and announced.
    #[default]
    Block,
    /// The persister is overwritten like any slow reader, and writes the exact count it lost.
    Overwrite,
}

/// Syslog ingress limits.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Syslog {
    /// Messages longer than this are split into several envelopes, not dropped.
    pub max_message_bytes: usize,
    /// A TCP frame or line longer than this closes the connection.
    pub max_frame_bytes: usize,
    /// Open connections per stream listener (TCP and TLS each); more are closed at once.
    pub max_connections: usize,
    /// A connection with nothing half-received is closed after this long; 0: never.
    pub idle_timeout_secs: u64,
    /// A frame or line must be complete this long after its first bytes arrived.
    pub frame_timeout_secs: u64,
}

impl Default for Syslog {
    fn default() -> Self {
        Syslog {
            max_message_bytes: 64 * 1024,
            max_frame_bytes: 16 * 1024 * 1024,
            max_connections: 1024,
            idle_timeout_secs: 3600,
            frame_timeout_secs: 30,
        }
    }
}

/// The server's certificate, for `listen.syslog_tls`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    /// PEM certificate chain.
    pub cert_file: Option<PathBuf>,
    /// PEM private key.
    pub key_file: Option<PathBuf>,
    /// Serve the HTTP listener (API, tails, `/metrics`) over TLS with these files.
    pub http: bool,
    /// Serve native ingest (TCP) over TLS with these files.
    pub ingest: bool,
    /// PEM CAs whose client certificates `syslog_tls` requires (mutual TLS): syslog carries no
    /// token, so this is how a syslog sender proves who it is. None: any client.
    pub client_ca_file: Option<PathBuf>,
}

/// HTTP and WebSocket settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http {
    /// Seconds between WebSocket pings to each tail.
    pub ping_interval_secs: u64,
    /// `recent` returns this many lines when no `limit` is given (`cf logs --recent` shows 1,000).
    pub recent_default_limit: usize,
    /// Seconds the server waits for tails and connections to finish on shutdown.
    pub shutdown_grace_secs: u64,
    /// Most bytes each HTTP connection may queue in the kernel unsent (`TCP_NOTSENT_LOWAT`).
    /// Bounds what a tail that stops reading costs the kernel: with Linux's autotuning each
    /// could hold megabytes, and ten thousand would exhaust the machine's TCP memory and slow
    /// every other socket. Unlike a small `SO_SNDBUF` it does not throttle a tail that reads.
    pub socket_unsent_limit_bytes: u32,
    /// Open HTTP connections, WebSocket tails included; more are answered 503 and closed.
    pub max_connections: usize,
    /// A request's headers must arrive within this long (a slow client holds nothing longer).
    pub header_read_timeout_secs: u64,
    /// A response whose client takes none of it for this long is cut off (nginx's
    /// `send_timeout`), and so is a tail's backfill from storage: what they hold (their share
    /// of `read_budget_lines`) goes back. A tail past its backfill is never cut off for
    /// reading slowly: it is overwritten and told what it missed.
    pub send_timeout_secs: u64,
    /// `/metrics` gives series of their own (`sluice_source_*{source="..."}`) to this many
    /// sources, the busiest by envelopes: bounded however many sources there are. 0: none.
    pub metrics_per_source_top: usize,
    /// Lines all reads may be gathering at once: a `recent` answer (its `limit`) and a tail's
    /// backfill from storage are each built in memory before they are sent. A read that would
    /// go past it is answered 503.
    pub read_budget_lines: usize,
}

impl Default for Http {
    fn default() -> Self {
        Http {
            ping_interval_secs: 30,
            recent_default_limit: 1000,
            shutdown_grace_secs: 10,
            socket_unsent_limit_bytes: 64 * 1024,
            max_connections: 16_384,
            header_read_timeout_secs: 10,
            send_timeout_secs: 60,
            metrics_per_source_top: crate::metrics::DEFAULT_PER_SOURCE_TOP,
            read_budget_lines: 500_000,
        }
    }
}

/// A configuration file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {reason}")]
    Read { path: PathBuf, reason: String },
    #[error("invalid config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// A config file larger than this is refused unread.
const MAX_CONFIG_BYTES: usize = 1024 * 1024;
/// Deepest nesting of YAML flow collections (`[...]`, `{...}`) a config may have.
const MAX_FLOW_DEPTH: usize = 32;

/// The deepest nesting of YAML flow collections (`[...]`, `{...}`), read as YAML reads them:
/// a bracket opens one where a value starts (line start, after `: `, `- ` or `? `) or inside
/// another flow collection; elsewhere it is text of a plain scalar (`dir: a{b`). Quoted strings
/// (a quote that starts a scalar; `\"` escaped in double quotes), comments (`#` after white
/// space) and block scalars (`|`, `>`: the lines indented under them) are skipped. The
/// config_loader fuzz target checks that any config that loads also loads again once written
/// out, which a plain count of brackets failed.
fn flow_depth(text: &str) -> usize {
    let (mut depth, mut deepest) = (0usize, 0usize);
    let mut quote: Option<char> = None;
    let mut escaped = false;
    // The indentation of the line that opened a block scalar, while in one.
    let mut block: Option<usize> = None;
    for line in text.lines() {
        let indent = line.len() - line.trim_start_matches(' ').len();
        if let Some(parent) = block {
            if line.trim().is_empty() || indent > parent {
                continue;
            }
            block = None;
        }
        let mut value_start = depth == 0 && quote.is_none();
        let mut prev = ' ';
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            let next_is_space = chars.peek().is_none_or(|n| n.is_whitespace());
            if let Some(q) = quote {
                if escaped {
                    escaped = false;
                } else if q == '"' && c == '\\' {
                    escaped = true;
                } else if c == q {
                    quote = None;
                }
            } else if c == '#' && prev.is_whitespace() {
                break; // a comment, to the end of the line
            } else if depth > 0 {
                match c {
                    '"' | '\'' if prev.is_whitespace() || ",[{:".contains(prev) => {
                        quote = Some(c);
                    }
                    '[' | '{' => {
                        depth += 1;
                        deepest = deepest.max(depth);
                    }
                    ']' | '}' => depth -= 1,
                    _ => {}
                }
            } else if c.is_whitespace() {
            } else if value_start {
                match c {
                    '[' | '{' => {
                        depth = 1;
                        deepest = deepest.max(1);
                        value_start = false;
                    }
                    '"' | '\'' => {
                        quote = Some(c);
                        value_start = false;
                    }
                    '|' | '>' => {
                        block = Some(indent);
                        break;
                    }
                    // A sequence entry or a complex key: the value starts after it.
                    '-' | '?' if next_is_space => {}
                    _ => value_start = false,
                }
            } else if c == ':' && next_is_space {
                value_start = true;
            }
            prev = c;
        }
    }
    deepest
}

impl Config {
    /// Reads `path`, or returns the embedded defaults when `path` is `None`.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let Some(path) = path else {
            return Ok(Config::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.to_owned(),
            reason: crate::io_reason(&e),
        })?;
        Config::parse(&text, path)
    }

    /// Parses YAML text; `path` is only used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        // The YAML parser takes quadratic time on deep flow nesting (100,000 levels: minutes):
        // nothing in a config nests that deep, so refuse it before parsing.
        if text.len() > MAX_CONFIG_BYTES {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: format!(
                    "the file is {} bytes, more than a config needs (at most {MAX_CONFIG_BYTES})",
                    text.len()
                ),
            });
        }
        if flow_depth(text) > MAX_FLOW_DEPTH {
            return Err(ConfigError::Parse {
                path: path.to_owned(),
                message: format!("[ ] and {{ }} nested more than {MAX_FLOW_DEPTH} deep"),
            });
        }
        // An empty file (or one holding only comments) means "all defaults".
        let config: Config = if text.lines().all(|l| {
            let l = l.trim();
            l.is_empty() || l.starts_with('#')
        }) {
            Config::default()
        } else {
            serde_norway::from_str(text).map_err(|e| ConfigError::Parse {
                path: path.to_owned(),
                message: e.to_string(),
            })?
        };
        config.validate().map_err(|message| ConfigError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        crate::auth::Tokens::new(&self.auth.tokens)?;
        if self.ingest.max_frame_bytes < 64 || self.ingest.max_frame_bytes > u32::MAX as usize {
            return Err(format!(
                "ingest.max_frame_bytes must be between 64 and {}, not {}",
                u32::MAX,
                self.ingest.max_frame_bytes
            ));
        }
        let i = &self.ingest;
        for (name, value) in [
            ("ingest.durable_timeout_secs", i.durable_timeout_secs),
            ("ingest.frame_timeout_secs", i.frame_timeout_secs),
            ("ingest.max_batch_envelopes", i.max_batch_envelopes as u64),
            ("ingest.max_connections", i.max_connections as u64),
            ("syslog.frame_timeout_secs", self.syslog.frame_timeout_secs),
            ("syslog.max_connections", self.syslog.max_connections as u64),
            ("http.max_connections", self.http.max_connections as u64),
            (
                "http.header_read_timeout_secs",
                self.http.header_read_timeout_secs,
            ),
            ("http.send_timeout_secs", self.http.send_timeout_secs),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        let largest = i.max_frame_bytes.max(self.syslog.max_frame_bytes);
        if i.buffer_budget_bytes < largest + 64 * 1024 {
            return Err(format!(
                "ingest.buffer_budget_bytes ({}) must hold the largest frame (ingest.max_frame_bytes or syslog.max_frame_bytes, {largest}) and 64 KiB more",
                i.buffer_budget_bytes
            ));
        }
        let decoded = i
            .max_batch_envelopes
            .saturating_mul(crate::ingest::native::DECODED_ENVELOPE_BYTES);
        if i.buffer_budget_bytes < decoded.saturating_add(i.max_frame_bytes) {
            return Err(format!(
                "ingest.buffer_budget_bytes ({}) must hold a decoded batch of ingest.max_batch_envelopes ({} envelopes at {} bytes each, plus the frame)",
                i.buffer_budget_bytes,
                i.max_batch_envelopes,
                crate::ingest::native::DECODED_ENVELOPE_BYTES
            ));
        }
        let r = &self.router;
        if r.ring_max_entries == 0
            || r.ring_max_bytes == 0
            || r.memory_budget_bytes == 0
            || r.max_sources == 0
        {
            return Err("router.ring_max_entries, router.ring_max_bytes, router.memory_budget_bytes and router.max_sources must be above 0".into());
        }
        if self.http.ping_interval_secs == 0 {
            return Err("http.ping_interval_secs must be at least 1".into());
        }
        if !(1..=u32::MAX as usize).contains(&self.http.read_budget_lines) {
            return Err(format!("http.read_budget_lines must be 1 to {}", u32::MAX));
        }
        let tls_files = self.tls.cert_file.is_some() && self.tls.key_file.is_some();
        for (name, wanted) in [
            ("listen.syslog_tls", self.listen.syslog_tls.is_some()),
            ("tls.http", self.tls.http && self.listen.http.is_some()),
            (
                "tls.ingest",
                self.tls.ingest && self.listen.ingest.is_some(),
            ),
        ] {
            if wanted && !tls_files {
                return Err(format!("{name} needs tls.cert_file and tls.key_file"));
            }
        }
        if self.syslog.max_message_bytes == 0
            || self.syslog.max_frame_bytes < self.syslog.max_message_bytes
        {
            return Err(
                "syslog.max_message_bytes must be above 0 and at most syslog.max_frame_bytes"
                    .into(),
            );
        }
        let d = &self.drains.delivery;
        for (name, value) in [
            ("drains.delivery.batch_messages", d.batch_messages as u64),
            (
                "drains.delivery.reconnect_min_millis",
                d.reconnect_min_millis,
            ),
            (
                "drains.delivery.reconnect_max_millis",
                d.reconnect_max_millis,
            ),
            (
                "drains.delivery.connect_timeout_secs",
                d.connect_timeout_secs,
            ),
            (
                "drains.per_source_limit",
                self.drains.per_source_limit as u64,
            ),
            ("drains.max_drains", self.drains.max_drains as u64),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if d.reconnect_min_millis > d.reconnect_max_millis {
            return Err(format!(
                "drains.delivery.reconnect_min_millis ({}) must not exceed drains.delivery.reconnect_max_millis ({})",
                d.reconnect_min_millis, d.reconnect_max_millis
            ));
        }
        let ls = &self.log_storage;
        if let Some(s3) = &ls.s3 {
            if s3.bucket.is_empty() {
                return Err("log_storage.s3.bucket must be set".into());
            }
            if let Some(endpoint) = &s3.endpoint {
                let ok = url::Url::parse(endpoint).is_ok_and(|u| {
                    matches!(u.scheme(), "http" | "https")
                        && u.host_str().is_some_and(|h| !h.is_empty())
                });
                if !ok {
                    return Err(format!(
                        "log_storage.s3.endpoint {endpoint:?} is not an http:// or https:// URL with a host, such as http://127.0.0.1:9000"
                    ));
                }
            }
            if s3.compression_level > 9 {
                return Err(format!(
                    "log_storage.s3.compression_level must be 0 to 9, not {}",
                    s3.compression_level
                ));
            }
            if s3.part_size_bytes < sluice_store::archive::MIN_PART_BYTES {
                return Err(format!(
                    "log_storage.s3.part_size_bytes must be at least {} (S3's smallest part)",
                    sluice_store::archive::MIN_PART_BYTES
                ));
            }
        }
        if ls.writers > sluice_router::MAX_SHARDS {
            return Err(format!(
                "log_storage.writers must be 0 (one per two cores) to {}, not {}",
                sluice_router::MAX_SHARDS,
                ls.writers
            ));
        }
        if ls.max_files == 0
            || ls.max_open_files == 0
            || ls.max_file_size_bytes < 1024
            || ls.fsync_interval_millis == 0
        {
            return Err("log_storage: max_files, max_open_files and fsync_interval_millis must be at least 1, max_file_size_bytes at least 1024".into());
        }
        for (i, req) in self.drains.bind.iter().enumerate() {
            Bindings::check(req).map_err(|e| format!("drains.bind[{i}]: {e}"))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_readme_shows_the_defaults_as_they_are() {
        let readme = include_str!("../README.md");
        let section = &readme[readme.find("## Configuration").expect("the section")..];
        let start = section.find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
        let block = &section[start..start + section[start..].find("```").expect("its end")];
        let mut shown = Config::parse(block, Path::new("README.md")).unwrap();
        // Every value is the default, but for one drain shown as an example (the default binds
        // none).
        assert_eq!(shown.drains.bind.len(), 1);
        shown.drains.bind.clear();
        assert_eq!(shown, Config::default());
    }

    #[test]
    fn defaults_are_loopback_and_documented_ports() {
        let c = Config::default();
        assert_eq!(c.listen.http.unwrap().to_string(), "127.0.0.1:8080");
        assert_eq!(c.listen.ingest.unwrap().to_string(), "127.0.0.1:8081");
        assert_eq!(c.router.ring_max_entries, 65_536);
        assert_eq!(
            Config::parse("# nothing\n", Path::new("x.yaml")).unwrap(),
            c
        );
    }

    #[test]
    fn partial_files_keep_the_other_defaults() {
        let c = Config::parse(
            "listen:\n  http: 127.0.0.1:0\n  ingest: null\nrouter:\n  ring_max_entries: 10\n",
            Path::new("x.yaml"),
        )
        .unwrap();
        assert_eq!(c.listen.http.unwrap().port(), 0);
        assert_eq!(c.listen.ingest, None);
        assert_eq!(c.router.ring_max_entries, 10);
        assert_eq!(c.router.ring_max_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn unknown_keys_are_reported_with_their_place() {
        let err = Config::parse("listen:\n  htpp: 127.0.0.1:0\n", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("invalid config file s.yaml: listen: unknown field `htpp`"),
            "{err}"
        );
        assert!(err.contains("line 2 column 3"), "{err}");
        let err = Config::parse("listen:\n  http: nowhere\n", Path::new("s.yaml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
    }

    fn refused(yaml: &str) -> String {
        Config::parse(yaml, Path::new("x.yaml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn values_that_cannot_work_are_refused_with_the_key() {
        for (yaml, key) in [
            (
                "drains:\n  delivery:\n    batch_messages: 0\n",
                "drains.delivery.batch_messages must be at least 1",
            ),
            (
                "drains:\n  delivery:\n    connect_timeout_secs: 0\n",
                "drains.delivery.connect_timeout_secs must be at least 1",
            ),
            (
                "drains:\n  delivery:\n    reconnect_min_millis: 60000\n    reconnect_max_millis: 1000\n",
                "drains.delivery.reconnect_min_millis (60000) must not exceed",
            ),
            (
                "log_storage:\n  s3:\n    bucket: b\n    endpoint: not a url\n",
                "log_storage.s3.endpoint \"not a url\" is not an http:// or https:// URL",
            ),
            (
                "log_storage:\n  s3:\n    bucket: b\n    endpoint: ftp://x\n",
                "is not an http:// or https:// URL",
            ),
            (
                "log_storage:\n  s3:\n    bucket: b\n    compression_level: 12\n",
                "compression_level must be 0 to 9",
            ),
            (
                "ingest:\n  max_connections: 0\n",
                "ingest.max_connections must be at least 1",
            ),
            (
                "tls:\n  http: true\n",
                "tls.http needs tls.cert_file and tls.key_file",
            ),
            (
                "tls:\n  ingest: true\n  cert_file: c.pem\n",
                "tls.ingest needs tls.cert_file and tls.key_file",
            ),
            (
                "auth:\n  tokens:\n    - name: a\n      sha256: abc\n      scopes: [read]\n",
                "sha256 must be 64 hex digits",
            ),
            (
                "auth:\n  tokens:\n    - name: a\n      sha256: abc\n      scopes: [admin]\n",
                "unknown variant `admin`",
            ),
            (
                "ingest:\n  buffer_budget_bytes: 1000\n",
                "ingest.buffer_budget_bytes (1000) must hold the largest frame",
            ),
            (
                "http:\n  header_read_timeout_secs: 0\n",
                "http.header_read_timeout_secs must be at least 1",
            ),
            (
                "http:\n  send_timeout_secs: 0\n",
                "http.send_timeout_secs must be at least 1",
            ),
            (
                "log_storage:\n  writers: 33\n",
                "log_storage.writers must be 0 (one per two cores) to 32, not 33",
            ),
        ] {
            let err = refused(yaml);
            assert!(err.contains(key), "{yaml}: {err}");
        }
        let ok = "log_storage:\n  s3:\n    bucket: b\n    endpoint: http://127.0.0.1:9000\n";
        assert!(Config::parse(ok, Path::new("x.yaml")).is_ok());
    }

    #[test]
    fn deeply_nested_yaml_is_an_error_not_a_crash() {
        let deep = format!("listen: {}{}\n", "[".repeat(100_000), "]".repeat(100_000));
        let err = refused(&deep);
        assert!(err.starts_with("invalid config file x.yaml"), "{err}");
        let deep_maps = format!("listen: {}1{}\n", "{a: ".repeat(50_000), "}".repeat(50_000));
        assert!(refused(&deep_maps).starts_with("invalid config file x.yaml"));
        // An apostrophe inside plain text opens no string that would hide nesting.
        let hidden = format!(
            "listen: [it's, {}{}]\n",
            "[".repeat(50_000),
            "]".repeat(50_000)
        );
        assert!(refused(&hidden).contains("nested more than 32 deep"));
        // Brackets inside a plain scalar are text, not nesting: an error of another kind.
        let text = format!("listen: it's {}\n", "[".repeat(50_000));
        assert!(!refused(&text).contains("nested"));
    }
}
