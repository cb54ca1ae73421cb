//! The drain bindings of this server (which source drains to which URL): from the config file at start, and over HTTP
//! (`POST/GET/DELETE /api/v1/drains`). Each drain runs as its own task reading its own cursor.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use sluice_drains::syslog::drain::{DrainCounters, DrainSettings, SyslogDrain};
use sluice_drains::syslog::url::{DrainUrl, DrainUrlError, Scheme};
use sluice_drains::tls::{TlsError, TlsOptions, tls_client_config};
use sluice_router::{Filter, Router, Selector, Start, validate_source_id};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The `drains` block of the config file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DrainsConfig {
    /// Most drains one source may have; so many drains of every source may there be, too.
    pub per_source_limit: usize,
    /// Most drains bound at once, in all.
    pub max_drains: usize,
    /// Reconnect and notice timing, for every drain.
    pub delivery: DrainSettings,
    /// TLS settings for `syslog-tls://` drains that do not bring their own.
    pub tls: TlsOptions,
    /// Drains bound at start.
    pub bind: Vec<DrainRequest>,
}

impl Default for DrainsConfig {
    fn default() -> Self {
        DrainsConfig {
            per_source_limit: 5,
            max_drains: 1000,
            delivery: DrainSettings::default(),
            tls: TlsOptions::default(),
            bind: Vec::new(),
        }
    }
}

/// A drain to bind: the body of `POST /api/v1/drains`, or an entry of `drains.bind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// The source to drain; absent (or null) drains every source.
    #[serde(default)]
    pub source_id: Option<String>,
    pub url: String,
    /// TLS settings for this drain, instead of `drains.tls`.
    #[serde(default)]
    pub tls: Option<TlsOptions>,
}

/// What the API shows of a drain. The URL never shows credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DrainView {
    pub id: String,
    pub source_id: Option<String>,
    pub url: String,
    pub connected: bool,
    pub sent: u64,
    pub lost: u64,
    pub errors: u64,
}

/// Why a drain was not bound.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DrainError {
    #[error(transparent)]
    Url(#[from] DrainUrlError),
    #[error("{0}")]
    Source(String),
    #[error("source {0:?} already has {1} drains, the limit (drains.per_source_limit)")]
    Limit(String, usize),
    #[error("there are {0} drains of every source already, the limit (drains.per_source_limit)")]
    AllSourcesLimit(usize),
    #[error("{0} drains are bound already, the limit (drains.max_drains)")]
    TooMany(usize),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("this url is already bound for this source, as drain {0}")]
    Duplicate(String),
}

#[derive(Debug)]
struct Binding {
    id: String,
    source: Option<String>,
    url: DrainUrl,
    counters: Arc<DrainCounters>,
    stop: CancellationToken,
}

/// The registry of drain bindings, each running as its own task.
#[derive(Debug)]
pub struct Bindings {
    router: Router,
    config: DrainsConfig,
    /// Keyed by id; a BTreeMap so listings come out in a stable order.
    bound: Mutex<BTreeMap<String, Binding>>,
    next_id: AtomicU64,
    shutdown: CancellationToken,
    tasks: TaskTracker,
}

impl Bindings {
    pub fn new(
        router: Router,
        config: DrainsConfig,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Bindings {
        Bindings {
            router,
            config,
            bound: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            shutdown,
            tasks,
        }
    }

    /// Checks a request without binding it or reading any file (the config file's drains are
    /// checked so when it is loaded; their TLS files are read when the server binds them).
    pub fn check(req: &DrainRequest) -> Result<DrainUrl, DrainError> {
        if let Some(id) = &req.source_id {
            validate_source_id(id).map_err(|e| DrainError::Source(e.to_string()))?;
        }
        Ok(DrainUrl::parse(&req.url)?)
    }

    /// Binds a drain and starts its task. Its cursor starts live: it sends what arrives from now.
    /// A TLS drain's CA and client files are read here, once.
    pub fn add(&self, req: &DrainRequest) -> Result<DrainView, DrainError> {
        let url = Bindings::check(req)?;
        let tls = match url.scheme {
            Scheme::Tls | Scheme::Https | Scheme::HttpsBatch => {
                let opts = req.tls.as_ref().unwrap_or(&self.config.tls);
                Some(tls_client_config(opts, &url)?)
            }
            Scheme::Tcp | Scheme::Udp => None,
        };
        let mut bound = self.bound.lock();
        let same_source = bound.values().filter(|b| b.source == req.source_id);
        let mut count = 0;
        for b in same_source {
            if b.url.original() == url.original() {
                return Err(DrainError::Duplicate(b.id.clone()));
            }
            count += 1;
        }
        if count >= self.config.per_source_limit {
            return Err(match &req.source_id {
                Some(source) => DrainError::Limit(source.clone(), self.config.per_source_limit),
                None => DrainError::AllSourcesLimit(self.config.per_source_limit),
            });
        }
        if bound.len() >= self.config.max_drains {
            return Err(DrainError::TooMany(self.config.max_drains));
        }
        let selector = match &req.source_id {
            Some(id) => Selector::Source(id.clone()),
            None => Selector::All,
        };
        let cursor = self
            .router
            .subscribe(selector, Filter::default(), Start::Live)
            .map_err(|e| DrainError::Source(e.to_string()))?;
        let id = format!("d{}", self.next_id.fetch_add(1, Ordering::Relaxed));
        let counters = Arc::new(DrainCounters::default());
        let stop = self.shutdown.child_token();
        let drain = SyslogDrain {
            url: url.clone(),
            tls,
            settings: self.config.delivery.clone(),
            router: self.router.clone(),
            source: req.source_id.clone(),
            counters: counters.clone(),
        };
        tracing::info!(drain = %id, url = %url, source = ?req.source_id, "drain bound");
        self.tasks.spawn(drain.run(cursor, stop.clone()));
        let b = Binding {
            id: id.clone(),
            source: req.source_id.clone(),
            url,
            counters,
            stop,
        };
        let view = view(&b);
        bound.insert(id, b);
        Ok(view)
    }

    /// Every drain, or those of one source.
    pub fn list(&self, source: Option<&str>) -> Vec<DrainView> {
        self.bound
            .lock()
            .values()
            .filter(|b| source.is_none() || b.source.as_deref() == source)
            .map(view)
            .collect()
    }

    pub fn get(&self, id: &str) -> Option<DrainView> {
        self.bound.lock().get(id).map(view)
    }

    /// Unbinds and stops a drain; false if there was none with this id.
    pub fn remove(&self, id: &str) -> bool {
        match self.bound.lock().remove(id) {
            Some(b) => {
                b.stop.cancel();
                tracing::info!(drain = %id, url = %b.url, "drain removed");
                true
            }
            None => false,
        }
    }
}

fn view(b: &Binding) -> DrainView {
    let c = &b.counters;
    DrainView {
        id: b.id.clone(),
        source_id: b.source.clone(),
        url: b.url.to_string(),
        connected: c.connected.load(Ordering::Relaxed),
        sent: c.sent.load(Ordering::Relaxed),
        lost: c.lost.load(Ordering::Relaxed),
        errors: c.errors.load(Ordering::Relaxed),
    }
}
