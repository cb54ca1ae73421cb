//! Helpers for end-to-end tests: a real `sluice serve` child on `127.0.0.1:0` ports (or, in
//! `in_process`, a server inside the test for what waits on time), and the
//! clients a user would use against it.

#![allow(dead_code)]

pub mod browser;
pub mod in_process;
pub mod proxy;
pub mod rsyslog;
pub mod s3;
pub mod tls;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const SLUICE: &str = env!("CARGO_BIN_EXE_sluice");

/// A `sluice serve` child process, killed on drop.
pub struct Server {
    pub child: Child,
    pub http: String,
    pub ingest: String,
    pub syslog_tcp: String,
    pub syslog_udp: String,
    /// Set when the config enables `listen.syslog_tls`.
    pub syslog_tls: Option<String>,
    /// `log_storage.local_dir`; a test's own config can name it as `{logs}`.
    pub logs: PathBuf,
    pub dir: PathBuf,
    /// One HTTP client for the test's requests (building one per request costs milliseconds).
    pub client: reqwest::Client,
}

/// A fresh directory under the system temp dir, unique to this test process and call. They
/// are left behind for a look after a failure; the first call in each test process removes
/// those of test processes that have exited, so runs do not pile them up in the temp dir.
pub fn temp_dir(name: &str) -> PathBuf {
    static SWEPT: std::sync::Once = std::sync::Once::new();
    SWEPT.call_once(sweep_temp_dirs);
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = std::env::temp_dir().join(format!(
        "sluice-test-{}-{}-{name}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Removes `sluice-test-PID-*` directories whose process is gone.
fn sweep_temp_dirs() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("sluice-test-"))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

impl Server {
    /// Starts `sluice serve` with `extra` YAML appended to a config that binds port 0. Logs go
    /// to a directory of this server's own (`{logs}` in `extra` names it).
    pub fn start(extra: &str) -> Server {
        Server::start_with(extra, &[])
    }

    /// [`Server::start`], run under `prefix` (a command that execs the rest, such as
    /// `prlimit --nofile=1024:1024`).
    pub fn start_with(extra: &str, prefix: &[&str]) -> Server {
        sluice::install_crypto_provider();
        let dir = temp_dir("serve");
        let config = dir.join("sluice.yaml");
        let logs = dir.join("logs");
        let extra = extra.replace("{logs}", &logs.display().to_string());
        let storage = if extra.contains("log_storage:") {
            // The server's default would be `./sluice-data` of the checkout, shared by every
            // run: a test that sets storage names its own directory.
            assert!(
                extra.contains("local_dir:"),
                "a test's log_storage block names local_dir (`{{logs}}`)"
            );
            String::new()
        } else {
            format!("log_storage:\n  local_dir: {}\n", logs.display())
        };
        std::fs::write(
            &config,
            format!(
                "listen:\n  http: 127.0.0.1:0\n  ingest: 127.0.0.1:0\n  syslog_tcp: 127.0.0.1:0\n  syslog_udp: 127.0.0.1:0\n{extra}{storage}"
            ),
        )
        .unwrap();
        let (child, bound) = spawn(&config, prefix);
        let mut server = Server {
            child,
            http: String::new(),
            ingest: String::new(),
            syslog_tcp: String::new(),
            syslog_udp: String::new(),
            syslog_tls: None,
            logs,
            dir,
            client: reqwest::Client::new(),
        };
        server.take_addresses(&bound);
        server
    }

    /// The addresses the server printed, as strings for clients and URLs.
    fn take_addresses(&mut self, bound: &sluice::server::Bound) {
        let addr = |a: Option<std::net::SocketAddr>| a.map(|a| a.to_string()).unwrap_or_default();
        self.http = addr(bound.http);
        self.ingest = addr(bound.ingest);
        self.syslog_tcp = addr(bound.syslog_tcp);
        self.syslog_udp = addr(bound.syslog_udp);
        self.syslog_tls = bound.syslog_tls.map(|a| a.to_string());
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn ws(&self, path: &str) -> String {
        format!("ws://{}{path}", self.http)
    }

    /// Resident memory of the server process, in bytes.
    pub fn rss_bytes(&self) -> u64 {
        self.memory().rss_bytes
    }

    /// The most resident memory the server has had so far.
    pub fn peak_rss_bytes(&self) -> u64 {
        self.memory().peak_rss_bytes
    }

    fn memory(&self) -> sluice::procfs::Memory {
        sluice::procfs::memory(&self.child.id().to_string()).expect("the server runs")
    }

    /// `GET path` as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        self.client
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// `GET path`; returns the status and the body as text.
    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let resp = self.client.get(self.url(path)).send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Opens a WebSocket at `path` that the server must refuse before the upgrade; returns the
    /// status and the body of its answer.
    pub async fn ws_refused(&self, path: &str) -> (u16, String) {
        match tokio_tungstenite::connect_async(self.ws(path)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (
                resp.status().as_u16(),
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).into_owned(),
            ),
            other => panic!("{path} was not refused: {:?}", other.map(|_| ())),
        }
    }

    /// `POST path` with a JSON body; returns the status and the JSON answer.
    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let resp = self
            .client
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// The value of a counter or gauge from `/metrics`: the sum of its samples, whatever their
    /// labels (`sluice_syslog_refused_total` is counted by `reason`).
    pub async fn metric(&self, name: &str) -> u64 {
        let text = self.metrics_text().await;
        metric_sum(&text, name).unwrap_or_else(|| panic!("metric {name} missing"))
    }

    /// The whole `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// Waits (bounded) until the counter `name` reaches `n`.
    pub async fn wait_metric(&self, name: &str, n: u64) {
        until(&format!("{name} to reach {n}"), 30, async || {
            let now = self.metric(name).await;
            if now >= n { Ok(()) } else { Err(now) }
        })
        .await
    }

    /// The router's own notices (`LGR` lines) among a source's recent lines: drain failures,
    /// losses.
    pub async fn router_notices(&self, source: &str) -> Vec<String> {
        let recent = self
            .get_json(&format!(
                "/api/v1/sources/{source}/recent?limit=100000&origin=LGR"
            ))
            .await;
        recent
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["message"].as_str().unwrap().to_owned())
            .collect()
    }

    /// `published` of one source from `/api/v1/sources` (0 if unknown).
    pub async fn published(&self, source: &str) -> u64 {
        let all = self.get_json("/api/v1/sources").await;
        all.as_array()
            .unwrap()
            .iter()
            .find(|s| s["source_id"] == source)
            .map_or(0, |s| s["published"].as_u64().unwrap())
    }

    /// Waits (bounded) until `source` has `n` envelopes published.
    pub async fn wait_published(&self, source: &str, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.published(source).await < n {
            assert!(
                Instant::now() < deadline,
                "{source} never reached {n} envelopes"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Sends `n` envelopes `line 0`, `line 1`, … for `source` over native ingest, acknowledged.
pub async fn send_lines(server: &Server, source: &str, n: usize) {
    let mut conn =
        sluice::client::connect_ingest(&sluice::client::IngestAddr::Tcp(server.ingest.clone()))
            .await
            .unwrap();
    let batch: Vec<sluice_router::Envelope> = (0..n)
        .map(|i| sluice_router::Envelope::new(source, format!("line {i}")))
        .collect();
    assert_eq!(conn.send_batch(&batch).await.unwrap(), n as u64);
}

/// A WebSocket client connection.
pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next `n` JSON text messages of a WebSocket (envelopes, or Strøm's lines).
/// Writes `lines` lines of a job into `path` as the persister writes them, each
/// `"{BIG_PAD} {seq}"` (320,000 lines: 64 MiB).
pub fn write_big_job(path: &std::path::Path, lines: u64) {
    use std::io::Write;
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    for seq in 1..=lines {
        writeln!(
            file,
            "{{\"ts\":\"2026-01-01T00:00:00.000Z\",\"stream\":\"stdout\",\"step\":\"build\",\"line\":\"{BIG_PAD} {seq}\",\"origin\":\"APP/0\",\"seq\":{seq}}}"
        )
        .unwrap();
    }
    file.into_inner().unwrap().sync_all().unwrap();
}

/// The padding of [`write_big_job`]'s lines.
pub const BIG_PAD: &str = "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx";

/// A streamed job log (`{"logs":"<jsonl>"}`) counted as it arrives: its bytes, its lines, and
/// its first and last bytes.
#[derive(Debug, Default)]
pub struct JobLogCount {
    pub bytes: usize,
    pub lines: u64,
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    escaped: bool,
}

impl JobLogCount {
    /// `GET /api/jobs/{job}/logs` read to its end, counted; `each` runs after every chunk with
    /// the count so far (to probe the server meanwhile).
    pub async fn read(
        server: &Server,
        job: &str,
        mut each: impl AsyncFnMut(&JobLogCount),
    ) -> JobLogCount {
        let mut resp = server
            .client
            .get(server.url(&format!("/api/jobs/{job}/logs")))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut got = JobLogCount::default();
        while let Some(chunk) = resp.chunk().await.unwrap() {
            got.feed(&chunk);
            each(&got).await;
        }
        got
    }

    pub fn feed(&mut self, chunk: &[u8]) {
        self.bytes += chunk.len();
        if self.head.len() < 64 {
            self.head.extend_from_slice(&chunk[..chunk.len().min(64)]);
        }
        // Inside the `logs` string every `\` starts a pair; `\n` pairs end lines.
        for &b in chunk {
            if self.escaped {
                self.lines += u64::from(b == b'n');
                self.escaped = false;
            } else {
                self.escaped = b == b'\\';
            }
        }
        self.tail.extend_from_slice(chunk);
        self.tail.drain(..self.tail.len().saturating_sub(400));
    }
}

pub async fn next_json(ws: &mut Ws, n: usize) -> Vec<serde_json::Value> {
    use futures_util::StreamExt;
    let mut got = Vec::new();
    while got.len() < n {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("messages keep coming")
            .unwrap()
            .unwrap();
        if let tokio_tungstenite::tungstenite::Message::Text(t) = msg {
            got.push(serde_json::from_str(&t).unwrap());
        }
    }
    got
}

/// The lines of a Strøm-style `{"logs": "<jsonl>"}` answer, each as JSON.
pub fn jsonl(logs: &serde_json::Value) -> Vec<serde_json::Value> {
    logs["logs"]
        .as_str()
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Runs `cmd` to completion and asserts that it succeeded, with its stderr as the message.
pub fn output_ok(cmd: &mut Command) -> std::process::Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Starts `sluice serve --config CONFIG` and reads its `listening` lines up to `ready`.
fn spawn(config: &Path, prefix: &[&str]) -> (Child, sluice::server::Bound) {
    let mut command = match prefix {
        [] => Command::new(SLUICE),
        [program, args @ ..] => {
            let mut c = Command::new(program);
            c.args(args).arg(SLUICE);
            c
        }
    };
    let mut child = command
        .args(["serve", "--config"])
        .arg(config)
        .env("SLUICE_LOG", "warn")
        // For the S3 tests: moto takes any credentials; no instance metadata lookups.
        .env("AWS_ACCESS_KEY_ID", "sluice-test")
        .env("AWS_SECRET_ACCESS_KEY", "sluice-test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start sluice serve");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut bound = sluice::server::Bound::default();
    for line in &mut lines {
        let line = line.unwrap();
        if line == "ready" {
            break;
        }
        bound.read_line(&line);
    }
    assert!(
        bound.http.is_some() && bound.ingest.is_some(),
        "sluice serve printed its addresses"
    );
    // Keep draining stdout so the child never blocks on it.
    std::thread::spawn(move || for _ in lines {});
    (child, bound)
}

impl Server {
    /// Kills the server with SIGKILL (as a crash would) and starts it again on the same config
    /// and directories; ports are new.
    pub fn crash_and_restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        self.respawn();
    }

    /// Stops the server as an operator would (SIGTERM, waiting for it to finish), then starts
    /// it again on the same config and directory.
    pub fn stop_and_restart(&mut self) {
        self.stop();
        self.respawn();
    }

    /// Stops the server as an operator would (SIGTERM, waiting for it to finish); start it
    /// again with [`Server::respawn`].
    pub fn stop(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let exit = self.child.wait().unwrap();
        assert!(exit.success(), "sluice exited with {exit}");
    }

    /// Starts the server again on the same config and directories; ports are new.
    pub fn respawn(&mut self) {
        let (child, bound) = spawn(&self.dir.join("sluice.yaml"), &[]);
        self.child = child;
        self.take_addresses(&bound);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Server {
    /// The server's open descriptors: all of them, and those on `.jsonl` files.
    pub fn open_fds(&self) -> (usize, usize) {
        let mut all = 0;
        let mut jsonl = 0;
        for target in sluice::procfs::open_fds(&self.child.id().to_string()).unwrap() {
            all += 1;
            if target.to_string_lossy().contains(".jsonl") {
                jsonl += 1;
            }
        }
        (all, jsonl)
    }

    /// CPU time (user + system) the server process has used so far.
    pub fn cpu_time(&self) -> Duration {
        sluice::procfs::cpu_time(&self.child.id().to_string()).expect("the server runs")
    }

    /// One drain's view from `/api/v1/drains/{id}`.
    pub async fn drain(&self, id: &str) -> serde_json::Value {
        self.get_json(&format!("/api/v1/drains/{id}")).await
    }
}

/// A tmpfs mounted for the test, unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    pub fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// The sum of the samples named `name` in a `/metrics` text (`name` alone, or `name{...}`);
/// `None` if it has none.
pub fn metric_sum(text: &str, name: &str) -> Option<u64> {
    let values: Vec<u64> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.as_bytes().first()? {
                b' ' => rest,
                b'{' => &rest[rest.rfind('}')? + 1..],
                _ => return None,
            };
            value.trim().parse().ok()
        })
        .collect();
    (!values.is_empty()).then(|| values.iter().sum())
}

/// Waits until `probe` gives a value, checking every 20 ms, for at most `secs` seconds; then
/// fails naming `what`. The one place the end-to-end tests wait for a real server's state.
pub async fn eventually<T>(what: &str, secs: u64, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    until(what, secs, async || probe().await.ok_or("not yet")).await
}

/// [`eventually`], for a probe that says where things stand when they are not there yet: the
/// last `Err` is in the failure message.
pub async fn until<T, E: std::fmt::Debug>(
    what: &str,
    secs: u64,
    mut probe: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        match probe().await {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => {
                panic!("timed out after {secs} s waiting for {what}: {e:?}")
            }
            // Polled, not notified: the server is another process (or only its files change).
            Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
}

/// `sluice serve` on loopback (native ingest and HTTP; no syslog) with `extra` in its config,
/// its stdout and stderr collected (`SLUICE_LOG=warn`), once it says it is ready: the server
/// and its ingest and HTTP addresses. For tests that read what the server logs.
pub async fn serve_watched(name: &str, extra: &str) -> (Watched, String, String) {
    sluice::install_crypto_provider();
    let dir = temp_dir(name);
    let config = dir.join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            "listen:\n  http: 127.0.0.1:0\n  ingest: 127.0.0.1:0\n  syslog_tcp: null\n  syslog_udp: null\nlog_storage:\n  local_dir: {}\n{extra}",
            dir.join("logs").display()
        ),
    )
    .unwrap();
    let serve = Watched::spawn(
        Command::new(SLUICE)
            .args(["serve", "--config"])
            .arg(&config)
            .env("SLUICE_LOG", "warn"),
    );
    let lines = eventually("the server to be ready", 30, async || {
        let out = serve.stdout();
        out.contains("ready\n").then_some(out)
    })
    .await;
    let addr = |name: &str| {
        let prefix = format!("listening {name}=");
        lines
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap()
            .to_owned()
    };
    let (ingest, http) = (addr("ingest"), addr("http"));
    (serve, ingest, http)
}

/// A child process (a client command) whose stdout and stderr are collected as they come;
/// killed on drop.
pub struct Watched {
    pub child: Child,
    stdout: std::sync::Arc<std::sync::Mutex<String>>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Watched {
    /// Starts `command` with no standard input.
    pub fn spawn(command: &mut Command) -> Watched {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let collect = |pipe: Box<dyn std::io::Read + Send>| {
            let text = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
            let into = text.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { return };
                    let mut t = into.lock().unwrap();
                    t.push_str(&line);
                    t.push('\n');
                }
            });
            text
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Watched {
            child,
            stdout,
            stderr,
        }
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits (bounded) until stdout has `n` lines, and returns them.
    pub async fn stdout_lines(&self, n: usize) -> Vec<String> {
        until("lines on stdout", 60, async || {
            let out = self.stdout();
            let lines: Vec<String> = out.lines().map(str::to_owned).collect();
            if lines.len() >= n {
                Ok(lines)
            } else {
                Err(out)
            }
        })
        .await
    }

    /// Waits (bounded) until stderr contains `text`.
    pub async fn stderr_says(&self, text: &str) {
        until(text, 60, async || {
            let err = self.stderr();
            if err.contains(text) { Ok(()) } else { Err(err) }
        })
        .await
    }

    pub async fn exit_code(&mut self) -> i32 {
        let child = &mut self.child;
        eventually("the command to exit", 60, async || {
            child.try_wait().unwrap().map(|s| s.code().unwrap())
        })
        .await
    }

    /// Sends a signal (`-TERM`, `-INT`, ...) with kill(1).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        output_ok(Command::new("kill").args([sig, &pid]));
    }
}

impl Drop for Watched {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `(seq, message)` of the last `limit` lines of `id`, as `GET .../recent` gives them (from
/// memory and storage).
pub async fn recent_lines(server: &Server, id: &str, limit: usize) -> Vec<(u64, String)> {
    let recent = server
        .get_json(&format!("/api/v1/sources/{id}/recent?limit={limit}"))
        .await;
    recent
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["seq"].as_u64().unwrap(),
                e["message"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

/// Every line of the file at `path` as JSON (none if it is missing).
pub fn file_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}
