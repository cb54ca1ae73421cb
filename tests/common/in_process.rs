//! A Sluice server inside the test's own process, on [`sluice::server::start`] with a typed
//! [`Config`]: no binary to spawn and no stdout to parse, its router at hand, and, on a
//! current-thread runtime, tokio's paused clock for everything that waits on time (backoff,
//! notice intervals), so that minutes of it pass in milliseconds.

use std::net::SocketAddr;
use std::path::PathBuf;

use sluice::config::Config;
use sluice::server::{self, Listeners, Running};
use sluice_router::Router;

pub struct TestServer {
    running: Option<Running>,
    pub router: Router,
    pub http: SocketAddr,
    pub ingest: SocketAddr,
    pub dir: PathBuf,
}

impl TestServer {
    /// The defaults, with every listener on `127.0.0.1:0` (syslog off) and storage in a fresh
    /// temporary directory.
    pub fn config(name: &str) -> Config {
        let dir = super::temp_dir(name);
        let any = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
        let mut config = Config::default();
        config.listen.http = any;
        config.listen.ingest = any;
        config.listen.syslog_tcp = None;
        config.listen.syslog_udp = None;
        config.log_storage.local_dir = dir.join("logs");
        config
    }

    pub async fn start(config: Config) -> TestServer {
        let dir = config
            .log_storage
            .local_dir
            .parent()
            .expect("a directory of its own")
            .to_owned();
        let network = !config.auth.tokens.is_empty();
        let listeners = Listeners::bind(&config.listen, &config.http, network)
            .await
            .expect("loopback port 0 binds");
        let running = server::start(config, listeners)
            .await
            .expect("the server starts");
        TestServer {
            router: running.router.clone(),
            http: running.bound.http.expect("http listens"),
            ingest: running.bound.ingest.expect("ingest listens"),
            dir,
            running: Some(running),
        }
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    /// Stops it as `sluice serve` does on SIGTERM; true if every task ended in time.
    pub async fn stop(mut self) -> bool {
        self.running.take().expect("running").stop().await
    }
}
