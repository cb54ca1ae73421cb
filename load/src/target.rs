//! The server under test: a `sluice serve` this tool starts on loopback port 0, or any running
//! server (Sluice, rsyslog, Vector) given by its addresses and process id.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Where to send, where to read, and whom to measure.
#[derive(Debug)]
pub struct Target {
    pub http: Option<String>,
    pub ingest: Option<String>,
    pub syslog: Option<String>,
    pub pid: Option<u32>,
    child: Option<Child>,
    dir: Option<PathBuf>,
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(dir) = &self.dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

impl Target {
    /// How the server this tool started ended, once it has (it should run until this tool
    /// stops it); `None` while it runs, or for a server attached to.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn attach(
        http: Option<String>,
        ingest: Option<String>,
        syslog: Option<String>,
        pid: Option<u32>,
    ) -> Target {
        Target {
            http,
            ingest,
            syslog,
            pid,
            child: None,
            dir: None,
        }
    }

    /// Starts `binary serve` with every listener on `127.0.0.1:0`, logs in a fresh temporary
    /// directory, and `extra` YAML appended to the config.
    pub fn spawn(binary: &Path, extra: &str) -> anyhow::Result<Target> {
        let dir = std::env::temp_dir().join(format!("sluice-load-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let logs = dir.join("logs");
        // `{logs}` in `extra` names this run's own directory, which is removed with it.
        let extra = extra.replace("{logs}", &logs.display().to_string());
        let storage = if extra.contains("log_storage:") {
            String::new()
        } else {
            format!("log_storage:\n  local_dir: {}\n", logs.display())
        };
        let config = dir.join("sluice.yaml");
        std::fs::write(
            &config,
            format!(
                "listen:\n  http: 127.0.0.1:0\n  ingest: 127.0.0.1:0\n  syslog_tcp: 127.0.0.1:0\n  syslog_udp: null\n{extra}\n{storage}"
            ),
        )?;
        let mut child = Command::new(binary)
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env(
                "SLUICE_LOG",
                std::env::var("SLUICE_LOG").unwrap_or("warn".into()),
            )
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot start {}: {e}", binary.display()))?;
        let mut target = Target {
            http: None,
            ingest: None,
            syslog: None,
            pid: Some(child.id()),
            child: None,
            dir: Some(dir),
        };
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        target.child = Some(child);
        let mut bound = sluice::server::Bound::default();
        for line in &mut lines {
            let line = line?;
            if line == "ready" {
                break;
            }
            bound.read_line(&line);
        }
        target.http = bound.http.map(|a| a.to_string());
        target.ingest = bound.ingest.map(|a| a.to_string());
        target.syslog = bound.syslog_tcp.map(|a| a.to_string());
        anyhow::ensure!(
            target.http.is_some(),
            "{} serve exited before it was ready",
            binary.display()
        );
        std::thread::spawn(move || for _ in lines {});
        Ok(target)
    }

    /// Peak and current resident memory of the server, in bytes.
    pub fn memory(&self) -> Option<(u64, u64)> {
        let m = sluice::procfs::memory(&self.pid?.to_string())?;
        Some((m.peak_rss_bytes, m.rss_bytes))
    }

    /// CPU seconds the server has used (user + system).
    pub fn cpu_seconds(&self) -> Option<f64> {
        cpu_seconds_of(&self.pid?.to_string())
    }

    /// A counter from the server's `/metrics` (0 when there is no HTTP address or no such line).
    pub async fn metric(&self, client: &reqwest::Client, name: &str) -> u64 {
        let Some(http) = &self.http else { return 0 };
        let Ok(resp) = client.get(format!("http://{http}/metrics")).send().await else {
            return 0;
        };
        let text = resp.text().await.unwrap_or_default();
        // Counters with labels (per drain) are summed.
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with(' ') || r.starts_with('{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum()
    }
}

/// CPU seconds (user + system) of `/proc/{pid}` (`self` for this process).
pub fn cpu_seconds_of(pid: &str) -> Option<f64> {
    sluice::procfs::cpu_time(pid).map(|t| t.as_secs_f64())
}
