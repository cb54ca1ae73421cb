//! Binding the listeners and running every server task with one stop signal.
//!
//! [`Listeners::bind`] binds; [`start`] takes the bound listeners (tests bind `127.0.0.1:0`) and
//! returns a [`Running`] server; [`Running::stop`] cancels every task and waits for them, up to
//! the configured grace period.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sluice_drains::tls::TlsError;
use sluice_router::{Filter, Router, Selector, Shard, Start};
use sluice_store::archive::Archive;
use sluice_store::history::StoredSeqs;
use sluice_store::persister::{self, DirLock, Persister, PersisterConfig, PersisterHandle};
use tokio::net::{TcpListener, UdpSocket, UnixListener};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Guard, Tokens};
use crate::bindings::{Bindings, DrainError, DrainRequest};
use crate::config::{Config, Http, Listen, WhenBehind};
use crate::http::{self, AppState};
use crate::ingest::native::NativeIngest;
use crate::ingest::syslog::SyslogIngest;
use crate::metrics::Metrics;
use crate::net::{Budget, ConnectionLimit};
use crate::tls::ServerTls;

/// Listeners bound before the server starts.
///
/// One set of listeners at three stages, each its own type because each holds something else:
/// [`crate::config::Listen`] says where to bind (addresses from the config file),
/// `Listeners` holds the bound sockets (bound early, so that a bad address fails before
/// anything starts), and [`Bound`] the addresses they got (port 0 resolved), which `sluice
/// serve` prints and tests read back with [`Bound::read_line`].
#[derive(Debug, Default)]
pub struct Listeners {
    pub http: Option<TcpListener>,
    pub ingest: Option<TcpListener>,
    pub ingest_unix: Option<(UnixListener, PathBuf, UnixSocketId)>,
    pub syslog_tcp: Option<TcpListener>,
    pub syslog_udp: Option<UdpSocket>,
    pub syslog_tls: Option<TcpListener>,
}

/// A listener that could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("cannot listen on {what} {addr}: {reason}")]
    Io {
        what: &'static str,
        addr: String,
        reason: String,
    },
    #[error(
        "refusing to listen on {what} {addr}: no auth tokens are configured, so sluice binds loopback addresses only (127.0.0.0/8, ::1)"
    )]
    NotLoopback {
        what: &'static str,
        addr: SocketAddr,
    },
    #[error("cannot listen on ingest_unix {0}: another sluice is listening there")]
    UnixInUse(String),
    #[error("refusing to listen on ingest_unix {0}: the path exists and is not a socket")]
    UnixNotSocket(String),
    #[error("cannot listen on syslog_tls: {0}")]
    Tls(#[from] TlsError),
    #[error(
        "TLS listeners (listen.syslog_tls, tls.http, tls.ingest) need tls.cert_file and tls.key_file"
    )]
    TlsFiles,
}

impl Listeners {
    /// Binds every listener `listen` enables. Without auth tokens (`network` false) only
    /// loopback addresses are allowed, so nothing is exposed by accident.
    pub async fn bind(listen: &Listen, http: &Http, network: bool) -> Result<Listeners, BindError> {
        async fn tcp(
            what: &'static str,
            addr: Option<SocketAddr>,
            unsent_limit: Option<u32>,
            network: bool,
        ) -> Result<Option<TcpListener>, BindError> {
            let Some(addr) = addr else { return Ok(None) };
            if !addr.ip().is_loopback() && !network {
                return Err(BindError::NotLoopback { what, addr });
            }
            // Options set on the listener are inherited by every accepted socket (Linux):
            // TCP_NODELAY so tail frames and acknowledgements leave at once instead of waiting
            // behind Nagle; for HTTP, a bound on unsent bytes for tails that stop reading.
            let listener = || -> std::io::Result<TcpListener> {
                let socket = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.set_reuseaddr(true)?;
                socket.set_nodelay(true)?;
                if let Some(bytes) = unsent_limit {
                    socket2::SockRef::from(&socket).set_tcp_notsent_lowat(bytes)?;
                }
                socket.bind(addr)?;
                socket.listen(1024)
            };
            listener().map(Some).map_err(|e| BindError::Io {
                what,
                addr: addr.to_string(),
                reason: crate::io_reason(&e),
            })
        }
        let http_listener = tcp(
            "http",
            listen.http,
            Some(http.socket_unsent_limit_bytes),
            network,
        )
        .await?;
        let ingest = tcp("ingest", listen.ingest, None, network).await?;
        let ingest_unix = match &listen.ingest_unix {
            None => None,
            Some(path) => {
                let (listener, id) = bind_unix(path).await?;
                Some((listener, path.clone(), id))
            }
        };
        let syslog_tcp = tcp("syslog_tcp", listen.syslog_tcp, None, network).await?;
        let syslog_tls = tcp("syslog_tls", listen.syslog_tls, None, network).await?;
        let syslog_udp = match listen.syslog_udp {
            None => None,
            Some(addr) if !addr.ip().is_loopback() && !network => {
                return Err(BindError::NotLoopback {
                    what: "syslog_udp",
                    addr,
                });
            }
            Some(addr) => Some(UdpSocket::bind(addr).await.map_err(|e| BindError::Io {
                what: "syslog_udp",
                addr: addr.to_string(),
                reason: crate::io_reason(&e),
            })?),
        };
        Ok(Listeners {
            http: http_listener,
            ingest,
            ingest_unix,
            syslog_tcp,
            syslog_udp,
            syslog_tls,
        })
    }
}

async fn bind_unix(path: &PathBuf) -> Result<(UnixListener, UnixSocketId), BindError> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let shown = path.display().to_string();
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // Only a socket may be replaced: never a file or a link someone put there.
        if !meta.file_type().is_socket() {
            return Err(BindError::UnixNotSocket(shown));
        }
        // A socket file left by a server that died: reuse it, unless someone still answers.
        if tokio::net::UnixStream::connect(path).await.is_ok() {
            return Err(BindError::UnixInUse(shown));
        }
        let _ = std::fs::remove_file(path);
    }
    let io = |e: std::io::Error| BindError::Io {
        what: "ingest_unix",
        addr: shown.clone(),
        reason: crate::io_reason(&e),
    };
    let listener = UnixListener::bind(path).map_err(io)?;
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    Ok((listener, (meta.dev(), meta.ino())))
}

/// The device and inode of the socket file Sluice made, so that stopping removes that file
/// and nothing else that may have taken its name since.
type UnixSocketId = (u64, u64);

/// Removes the socket at `path` if it is still the one Sluice made.
fn remove_own_socket(path: &Path, id: UnixSocketId) {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    if let Ok(meta) = std::fs::symlink_metadata(path)
        && meta.file_type().is_socket()
        && (meta.dev(), meta.ino()) == id
    {
        let _ = std::fs::remove_file(path);
    }
}

/// The addresses a running server listens on.
#[derive(Debug, Clone, Default)]
pub struct Bound {
    pub http: Option<SocketAddr>,
    pub ingest: Option<SocketAddr>,
    pub ingest_unix: Option<PathBuf>,
    pub syslog_tcp: Option<SocketAddr>,
    pub syslog_udp: Option<SocketAddr>,
    pub syslog_tls: Option<SocketAddr>,
}

impl Bound {
    /// One `listening NAME=ADDRESS` line per listener, as `sluice serve` prints them.
    pub fn lines(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(a) = self.http {
            out.push(format!("listening http={a}"));
        }
        if let Some(a) = self.ingest {
            out.push(format!("listening ingest={a}"));
        }
        if let Some(p) = &self.ingest_unix {
            out.push(format!("listening ingest_unix={}", p.display()));
        }
        for (name, addr) in [
            ("syslog_tcp", self.syslog_tcp),
            ("syslog_udp", self.syslog_udp),
            ("syslog_tls", self.syslog_tls),
        ] {
            if let Some(a) = addr {
                out.push(format!("listening {name}={a}"));
            }
        }
        out
    }

    /// Takes in one line `sluice serve` printed: a `listening NAME=ADDRESS` line (see
    /// [`Bound::lines`]) sets that address. Returns whether it was one.
    pub fn read_line(&mut self, line: &str) -> bool {
        let Some((name, addr)) = line
            .strip_prefix("listening ")
            .and_then(|l| l.split_once('='))
        else {
            return false;
        };
        let socket = addr.parse().ok();
        let slot = match name {
            "http" => &mut self.http,
            "ingest" => &mut self.ingest,
            "syslog_tcp" => &mut self.syslog_tcp,
            "syslog_udp" => &mut self.syslog_udp,
            "syslog_tls" => &mut self.syslog_tls,
            "ingest_unix" => {
                self.ingest_unix = Some(PathBuf::from(addr));
                return true;
            }
            _ => return false,
        };
        *slot = socket;
        socket.is_some()
    }
}

/// Raises the soft limit on open files to the hard limit, as servers that hold many sockets
/// and files do, and returns the limit now in force (`None`: unlimited or unknown).
pub fn raise_open_files_limit() -> Option<u64> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let want = limit.maximum;
    if limit.current != want {
        let raised = Rlimit {
            current: want,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return want,
            Err(e) => tracing::warn!(error = %e, "cannot raise the open files limit"),
        }
    }
    limit.current
}

/// What [`Running::reload`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Tokens in effect now.
    pub tokens: usize,
    /// Whether the TLS certificate and key were read again.
    pub tls: bool,
    pub drains_added: usize,
    pub drains_removed: usize,
    /// Settings that differ from the running ones and take effect only at a restart.
    pub needs_restart: Vec<&'static str>,
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("drains.bind[{index}]: {error}")]
    Drain { index: usize, error: DrainError },
    #[error(transparent)]
    Bind(#[from] BindError),
    #[error("cannot use log_storage.local_dir {dir}: {reason}")]
    Storage { dir: String, reason: String },
    #[error("{0}")]
    Auth(String),
}

/// The persister's threads, stopped last: once nothing publishes any more, they write the rest.
#[derive(Debug)]
struct PersisterThread {
    stop: CancellationToken,
    done: Vec<tokio::sync::oneshot::Receiver<()>>,
}

/// Starts the persister's writers, each on a thread of its own with its own shard of the
/// sources: file writes and fsyncs block, and must not hold up the tasks that serve
/// connections.
fn start_persister(
    config: &Config,
    router: &Router,
    lock: DirLock,
) -> Result<(PersisterHandle, PersisterThread), StartError> {
    let ls = &config.log_storage;
    let writers = ls.writer_threads();
    let (shards, handle) = Persister::sharded(
        PersisterConfig {
            local_dir: ls.local_dir.clone(),
            fsync: ls.fsync,
            fsync_interval: Duration::from_millis(ls.fsync_interval_millis),
            max_file_size_bytes: ls.max_file_size_bytes,
            max_files: ls.max_files,
            max_open_files: ls.max_open_files,
            // Rotated-out files wait for the archive only where there is one.
            keep_segments: if ls.s3.is_some() { ls.keep_segments } else { 0 },
        },
        router,
        lock,
        writers,
    )
    .map_err(|e| StartError::Storage {
        dir: ls.local_dir.display().to_string(),
        reason: crate::io_reason(&e),
    })?;
    let stop = CancellationToken::new();
    let mut done = Vec::with_capacity(writers);
    for (index, (persister, control)) in shards.into_iter().enumerate() {
        let shard = Shard { index, of: writers };
        // With `when_behind: block`, ingest waits for the persister rather than evict what it
        // has not written.
        let cursor = match ls.when_behind {
            WhenBehind::Block => router.subscribe_held(shard, Filter::default(), Start::Live),
            WhenBehind::Overwrite => router
                .subscribe(Selector::Shard(shard), Filter::default(), Start::Live)
                .expect("a shard needs no id"),
        };
        let run_stop = stop.clone();
        let (done_tx, rx) = tokio::sync::oneshot::channel::<()>();
        done.push(rx);
        std::thread::Builder::new()
            .name(format!("sluice-persist-{index}"))
            .spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_time()
                    .build();
                match rt {
                    Ok(rt) => rt.block_on(persister.run(cursor, control, run_stop)),
                    Err(e) => tracing::error!(error = %e, "cannot start the persister"),
                }
                let _ = done_tx.send(());
            })
            .map_err(|e| StartError::Storage {
                dir: ls.local_dir.display().to_string(),
                reason: e.to_string(),
            })?;
    }
    Ok((handle, PersisterThread { stop, done }))
}

/// A server that is running; dropping it does not stop it, [`Running::stop`] does.
#[derive(Debug)]
pub struct Running {
    pub bound: Bound,
    pub router: Router,
    pub metrics: Arc<Metrics>,
    pub auth: Arc<Guard>,
    pub drains: Arc<Bindings>,
    pub persister: PersisterHandle,
    /// The config in effect (its reloadable parts replaced by [`Running::reload`]).
    config: parking_lot::Mutex<Arc<Config>>,
    /// The certificate TLS listeners present, if any listens (HTTP and native ingest).
    tls: Option<Arc<ServerTls>>,
    /// The same for `syslog_tls`, which may require client certificates.
    syslog_tls: Option<Arc<ServerTls>>,
    /// Drains bound from `drains.bind`, with their ids: a reload binds what it adds and unbinds
    /// what it drops, and leaves the rest (and drains bound through the API) alone.
    config_drains: parking_lot::Mutex<Vec<(DrainRequest, String)>>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    grace: Duration,
    persister_thread: PersisterThread,
    /// The socket file to remove at stop, if it is still ours.
    unix_path: Option<(PathBuf, UnixSocketId)>,
}

/// Forgets the sources idle for `router.forget_idle_secs` (looking every quarter of it, at
/// most a minute apart), and says in the log, once each, when the sources held come near
/// `router.max_sources` and when they reach it: past it new sources are refused until some are
/// forgotten, and an operator should hear of that before the first producer is turned away
/// (the gauges show it too). Said again after the count fell below three quarters, at most
/// every ten minutes.
async fn watch_sources(router: Router, shutdown: CancellationToken) {
    let max = router.config().max_sources;
    let near = max - max / 10;
    let idle = router.config().forget_idle_secs;
    let until = if idle > 0 {
        format!("until sources idle for router.forget_idle_secs ({idle}) are forgotten")
    } else {
        "until a restart (router.forget_idle_secs is 0)".to_owned()
    };
    let every = Duration::from_secs((idle / 4).clamp(1, 60));
    let mut looked = tokio::time::Instant::now();
    let mut said = (false, false);
    // Said again only once the count fell below three quarters, and not within ten minutes
    // of the last time: a count that swings around the limit as idle sources are forgotten
    // does not fill the log.
    let low = max - max / 4;
    const REMIND: Duration = Duration::from_secs(600);
    let mut warned: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if idle > 0 && looked.elapsed() >= every {
            looked = tokio::time::Instant::now();
            // A look at every source, each under its lock: off the runtime's threads.
            let r = router.clone();
            let forgotten =
                tokio::task::spawn_blocking(move || r.forget_idle(Duration::from_secs(idle)))
                    .await
                    .unwrap_or(0);
            if forgotten > 0 {
                tracing::debug!(
                    forgotten,
                    held = router.source_count(),
                    "idle sources forgotten"
                );
            }
        }
        let held = router.source_count();
        if held < low && warned.is_none_or(|t| t.elapsed() >= REMIND) {
            said = (false, false);
        } else if held >= max && !said.1 {
            tracing::warn!(
                held,
                "at router.max_sources ({max}): new sources are refused {until}; those held go on"
            );
            said = (true, true);
            warned = Some(tokio::time::Instant::now());
        } else if held >= near && !said.0 {
            tracing::warn!(
                held,
                "{held} of router.max_sources ({max}) sources held: past it new sources are \
                 refused {until}"
            );
            said.0 = true;
            warned = Some(tokio::time::Instant::now());
        }
    }
}

/// Starts every listener's task, the persister, the archiver and the configured drains, and
/// returns once they run.
pub async fn start(config: Config, listeners: Listeners) -> Result<Running, StartError> {
    let config = Arc::new(config);
    // Each source continues the seqs storage already has of it; after a crash, past what the
    // crashed process may have published without writing.
    let dir = &config.log_storage.local_dir;
    let lock = DirLock::take(dir).map_err(|e| StartError::Storage {
        dir: dir.display().to_string(),
        reason: crate::io_reason(&e),
    })?;
    let mut stored = StoredSeqs::new(dir);
    if !lock.stopped_cleanly() {
        let skipped = persister::unwritten_bound(config.router.ring_max_entries);
        tracing::warn!(
            dir = %dir.display(),
            skipped,
            "the last sluice on this directory did not stop cleanly: each stored source skips \
             this many seqs, and says so in a _server line"
        );
        stored = stored.skipping(skipped);
    }
    let router = Router::with_history(config.router.clone(), Some(Arc::new(stored)));
    let metrics = Arc::new(Metrics::new(config.http.metrics_per_source_top));
    let auth = Arc::new(Guard::new(
        Tokens::new(&config.auth.tokens).map_err(StartError::Auth)?,
    ));
    let shutdown = CancellationToken::new();
    let tasks = TaskTracker::new();
    let mut bound = Bound::default();
    let drains = Arc::new(Bindings::new(
        router.clone(),
        config.drains.clone(),
        shutdown.clone(),
        tasks.clone(),
    ));
    let mut config_drains = Vec::with_capacity(config.drains.bind.len());
    for (index, req) in config.drains.bind.iter().enumerate() {
        let view = drains
            .add(req)
            .map_err(|error| StartError::Drain { index, error })?;
        config_drains.push((req.clone(), view.id));
    }

    let (persister, persister_thread) = start_persister(&config, &router, lock)?;
    tasks.spawn(watch_sources(router.clone(), shutdown.clone()));
    let archive = match &config.log_storage.s3 {
        None => None,
        Some(s3) => {
            let archive = Archive::new(
                s3.clone(),
                &config.log_storage.local_dir,
                config.log_storage.keep_local,
            )
            .await
            .map_err(|e| StartError::Storage {
                dir: config.log_storage.local_dir.display().to_string(),
                reason: crate::io_reason(&e),
            })?;
            // Pending uploads from before a restart are picked up at once.
            tasks.spawn(archive.clone().run(router.clone(), shutdown.clone()));
            Some(archive)
        }
    };
    // One certificate for every TLS listener, loaded before any starts.
    let wants_tls = listeners.syslog_tls.is_some()
        || (config.tls.http && listeners.http.is_some())
        || (config.tls.ingest && listeners.ingest.is_some());
    // HTTP and native ingest authenticate with tokens; syslog TLS, which carries none, with
    // client certificates when `tls.client_ca_file` is set: two configs of the same pair.
    let (server_tls, syslog_tls) = match (&config.tls.cert_file, &config.tls.key_file) {
        _ if !wants_tls => (None, None),
        (Some(cert), Some(key)) => (
            Some(ServerTls::load(cert, key, None).map_err(BindError::Tls)?),
            match listeners.syslog_tls {
                Some(_) => Some(
                    ServerTls::load(cert, key, config.tls.client_ca_file.as_deref())
                        .map_err(BindError::Tls)?,
                ),
                None => None,
            },
        ),
        _ => return Err(BindError::TlsFiles.into()),
    };
    let seconds = |s: u64| (s > 0).then(|| Duration::from_secs(s));
    let ic = &config.ingest;
    let frames = Budget::new(ic.buffer_budget_bytes);
    let bodies = frames.clone();
    let ingest = NativeIngest {
        router: router.clone(),
        metrics: metrics.clone(),
        auth: auth.clone(),
        max_frame_bytes: ic.max_frame_bytes,
        max_batch_envelopes: ic.max_batch_envelopes,
        durability: router.durability().clone(),
        durable_timeout: Duration::from_secs(ic.durable_timeout_secs),
        idle_timeout: seconds(ic.idle_timeout_secs),
        frame_timeout: Duration::from_secs(ic.frame_timeout_secs),
        frames: frames.clone(),
        decoding: Budget::new(ic.buffer_budget_bytes),
    };
    let ingest_limit = |listener: &'static str| {
        let limit = ConnectionLimit::new("ingest", ic.max_connections);
        metrics.track_listener(listener, &limit);
        limit
    };
    if let Some(listener) = listeners.ingest {
        bound.ingest = listener.local_addr().ok();
        tasks.spawn(ingest.clone().serve_tcp(
            listener,
            server_tls.clone().filter(|_| config.tls.ingest),
            ingest_limit("ingest"),
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    let mut unix_path = None;
    if let Some((listener, path, id)) = listeners.ingest_unix {
        bound.ingest_unix = Some(path.clone());
        unix_path = Some((path, id));
        tasks.spawn(ingest.serve_unix(
            listener,
            ingest_limit("ingest_unix"),
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    let syslog = SyslogIngest {
        router: router.clone(),
        metrics: metrics.clone(),
        max_message_bytes: config.syslog.max_message_bytes,
        max_frame_bytes: config.syslog.max_frame_bytes,
        idle_timeout: seconds(config.syslog.idle_timeout_secs),
        frame_timeout: Duration::from_secs(config.syslog.frame_timeout_secs),
        frames,
    };
    let syslog_limit = |listener: &'static str| {
        let limit = ConnectionLimit::new("syslog", config.syslog.max_connections);
        metrics.track_listener(listener, &limit);
        limit
    };
    if let Some(listener) = listeners.syslog_tcp {
        bound.syslog_tcp = listener.local_addr().ok();
        tasks.spawn(syslog.clone().serve_tcp(
            listener,
            None,
            syslog_limit("syslog_tcp"),
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    if let Some(listener) = listeners.syslog_tls {
        bound.syslog_tls = listener.local_addr().ok();
        tasks.spawn(syslog.clone().serve_tcp(
            listener,
            syslog_tls.clone(),
            syslog_limit("syslog_tls"),
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    if let Some(socket) = listeners.syslog_udp {
        bound.syslog_udp = socket.local_addr().ok();
        tasks.spawn(syslog.serve_udp(socket, shutdown.clone()));
    }
    if let Some(listener) = listeners.http {
        bound.http = listener.local_addr().ok();
        let state = AppState {
            router: router.clone(),
            metrics: metrics.clone(),
            auth: auth.clone(),
            bodies: bodies.clone(),
            config: config.clone(),
            drains: drains.clone(),
            persister: persister.clone(),
            archive: archive.clone(),
            shutdown: shutdown.clone(),
            tasks: tasks.clone(),
            reads: Arc::new(tokio::sync::Semaphore::new(config.http.read_budget_lines)),
        };
        tasks.spawn(http::serve::serve(
            state,
            listener,
            server_tls.clone().filter(|_| config.tls.http),
            shutdown.clone(),
            tasks.clone(),
        ));
    }
    Ok(Running {
        bound,
        router,
        metrics,
        auth,
        drains,
        persister,
        config: parking_lot::Mutex::new(config.clone()),
        tls: server_tls,
        syslog_tls,
        config_drains: parking_lot::Mutex::new(config_drains),
        shutdown,
        tasks,
        grace: Duration::from_secs(config.http.shutdown_grace_secs),
        persister_thread,
        unix_path,
    })
}

impl Running {
    /// How many auth tokens the server checks requests against.
    pub fn auth_tokens(&self) -> usize {
        self.auth.token_count()
    }

    /// Applies what can change while running from `new` (SIGHUP): the auth tokens, the TLS
    /// certificate and key, and the drains of `drains.bind`. Everything is checked first (tokens,
    /// files, every new drain); if anything is wrong nothing changes and the reason comes back.
    /// Tails, ingest connections and the rings are not touched. Other settings differing from
    /// the running ones are named in [`Reloaded::needs_restart`].
    pub fn reload(&self, new: Config) -> Result<Reloaded, String> {
        let tokens = Tokens::new(&new.auth.tokens)?;
        let read = |tls: &Option<Arc<ServerTls>>, client_ca: Option<&std::path::Path>| match (
            tls,
            &new.tls.cert_file,
            &new.tls.key_file,
        ) {
            (None, _, _) => Ok(None),
            (Some(_), Some(cert), Some(key)) => ServerTls::read(cert, key, client_ca)
                .map(Some)
                .map_err(|e| e.to_string()),
            (Some(_), _, _) => Err(BindError::TlsFiles.to_string()),
        };
        let tls = read(&self.tls, None)?;
        let syslog_tls = read(&self.syslog_tls, new.tls.client_ca_file.as_deref())?;
        let mut config_drains = self.config_drains.lock();
        let kept = |req: &DrainRequest| new.drains.bind.contains(req);
        let mut added = Vec::new();
        for (index, req) in new.drains.bind.iter().enumerate() {
            if config_drains.iter().any(|(old, _)| old == req) {
                continue;
            }
            match self.drains.add(req) {
                Ok(view) => added.push((req.clone(), view.id)),
                Err(e) => {
                    for (_, id) in &added {
                        self.drains.remove(id);
                    }
                    return Err(format!("drains.bind[{index}]: {e}"));
                }
            }
        }
        // Checked: apply.
        self.auth.replace(tokens);
        if let (Some(server), Some(fresh)) = (&self.tls, tls) {
            server.replace(fresh);
        }
        if let (Some(server), Some(fresh)) = (&self.syslog_tls, syslog_tls) {
            server.replace(fresh);
        }
        let before = config_drains.len();
        config_drains.retain(|(req, id)| {
            let keep = kept(req);
            if !keep {
                self.drains.remove(id);
            }
            keep
        });
        let removed = before - config_drains.len();
        let drains_added = added.len();
        config_drains.extend(added);
        let mut config = self.config.lock();
        let old = &**config;
        let mut needs_restart = Vec::new();
        for (name, differs) in [
            ("listen", old.listen != new.listen),
            ("router", old.router != new.router),
            ("ingest", old.ingest != new.ingest),
            ("http", old.http != new.http),
            ("syslog", old.syslog != new.syslog),
            ("log_storage", old.log_storage != new.log_storage),
            (
                "tls.http, tls.ingest",
                (old.tls.http, old.tls.ingest) != (new.tls.http, new.tls.ingest),
            ),
            (
                "drains (but drains.bind)",
                (
                    old.drains.per_source_limit,
                    &old.drains.delivery,
                    &old.drains.tls,
                ) != (
                    new.drains.per_source_limit,
                    &new.drains.delivery,
                    &new.drains.tls,
                ),
            ),
        ] {
            if differs {
                needs_restart.push(name);
            }
        }
        *config = Arc::new(new);
        Ok(Reloaded {
            tokens: self.auth.token_count(),
            tls: self.tls.is_some() || self.syslog_tls.is_some(),
            drains_added,
            drains_removed: removed,
            needs_restart,
        })
    }

    /// Stops accepting, closes tails and connections, and waits for every task (up to the grace
    /// period). Returns false if some task was still running when the grace period ended.
    pub async fn stop(self) -> bool {
        let deadline = tokio::time::Instant::now() + self.grace;
        self.shutdown.cancel();
        self.tasks.close();
        let finished = tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_ok();
        // Nothing publishes now (but notices): the persister writes the rest, syncs, and marks
        // the directory stopped cleanly. It gets a second at least, however long the rest took.
        self.persister_thread.stop.cancel();
        let deadline = deadline.max(tokio::time::Instant::now() + Duration::from_secs(1));
        let written = tokio::time::timeout_at(
            deadline,
            futures_util::future::join_all(self.persister_thread.done),
        )
        .await
        .is_ok();
        let finished = finished && written;
        if let Some((path, id)) = &self.unix_path {
            remove_own_socket(path, *id);
        }
        finished
    }
}
