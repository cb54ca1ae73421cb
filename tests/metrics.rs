//! `/metrics` read by a real parser: the `prometheus_client` package's OpenMetrics parser
//! (strict) and its classic Prometheus text parser (`tests/fixtures/parse_metrics.py`, with the
//! Python that `./test.sh` installs it into), every label value escaped, per-source series
//! bounded, and the counters by reason counting what happened.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::process::{Command, Stdio};

use common::Server;
use serde_json::{Value, json};
use sluice::client::{IngestAddr, connect_ingest};
use sluice_router::Envelope;

/// Each sample as `(name, labels, value)`, as the Python parsers read `/metrics`.
async fn scrape(server: &Server) -> Vec<(String, Value, f64)> {
    let response = reqwest::get(server.url("/metrics")).await.unwrap();
    assert_eq!(
        response.headers()["content-type"],
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    );
    let text = response.text().await.unwrap();
    let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into());
    let mut child = Command::new(&python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/parse_metrics.py"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e} (./test.sh installs it)"));
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the parsers refused /metrics ({}; ./test.sh installs prometheus-client):\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, Value, f64)> = serde_json::from_slice(&out.stdout).unwrap();
    samples
}

fn value(samples: &[(String, Value, f64)], name: &str, labels: Value) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && *l == labels)
        .map(|s| s.2)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_parser_reads_every_metric_with_labels_escaped() {
    let server = Server::start("http:\n  metrics_per_source_top: 3\n");
    // A source id with every character a label value must escape, short of a line break
    // (source ids are visible ASCII).
    let weird = r#"we"ird\src{a="b"}"#;
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    for (source, n) in [
        (weird, 40),
        ("busy", 50),
        ("mid", 30),
        ("quiet-1", 2),
        ("quiet-2", 1),
    ] {
        let batch: Vec<Envelope> = (0..n)
            .map(|i| Envelope::new(source, format!("line {i}")))
            .collect();
        assert_eq!(conn.send_batch(&batch).await.unwrap(), n as u64);
    }
    // Refused at ingest: Sluice's own origin.
    let mut reserved = Envelope::new("busy", "forged");
    reserved.origin = "LGR".into();
    assert!(conn.send_batch(&[reserved]).await.is_err());
    // Refused at syslog: no APP-NAME and no HOSTNAME.
    let mut syslog = TcpStream::connect(&server.syslog_tcp).unwrap();
    syslog.write_all(b"16 <1>1 - - - - - -").unwrap();
    server.wait_metric("sluice_syslog_refused_total", 1).await;
    // A drain whose URL shows up in labels.
    let (status, drain) = server
        .post_json(
            "/api/v1/drains",
            json!({"source_id": "busy", "url": "syslog://127.0.0.1:1"}),
        )
        .await;
    assert_eq!(status, 201, "{drain}");
    server.wait_metric("sluice_drain_errors_total", 1).await;

    let samples = scrape(&server).await;
    // Per source: the three busiest, by name, the label escaped and read back whole.
    let sources: Vec<&str> = samples
        .iter()
        .filter(|(n, _, _)| n == "sluice_source_envelopes_total")
        .map(|(_, l, _)| l["source"].as_str().unwrap())
        .collect();
    assert_eq!(sources, ["busy", "mid", weird]);
    assert_eq!(
        value(
            &samples,
            "sluice_source_envelopes_total",
            json!({"source": weird})
        ),
        Some(40.0)
    );
    assert_eq!(
        value(
            &samples,
            "sluice_source_ring_entries",
            json!({"source": "mid"})
        ),
        Some(30.0)
    );
    // Inputs refused, by reason.
    assert_eq!(
        value(
            &samples,
            "sluice_ingest_refused_envelopes_total",
            json!({"reason": "reserved"})
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "sluice_syslog_refused_total",
            json!({"reason": "no_source"})
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&samples, "sluice_ingest_envelopes_total", json!({})),
        Some(123.0)
    );
    // Each drain by id and URL, the URL escaped; not connected while it backs off.
    let id = drain["id"].as_str().unwrap();
    let url = drain["url"].as_str().unwrap();
    assert_eq!(
        value(
            &samples,
            "sluice_drain_connected",
            json!({"drain": id, "url": url})
        ),
        Some(0.0)
    );
    assert!(
        value(
            &samples,
            "sluice_drain_errors_total",
            json!({"drain": id, "url": url})
        )
        .unwrap()
            >= 1.0
    );
    // Connections open per listener: the ingest connection and the syslog one are open.
    assert_eq!(
        value(
            &samples,
            "sluice_connections_open",
            json!({"listener": "ingest"})
        ),
        Some(1.0)
    );
    assert_eq!(
        value(
            &samples,
            "sluice_connections_open",
            json!({"listener": "syslog_tcp"})
        ),
        Some(1.0)
    );
    assert!(
        value(
            &samples,
            "sluice_connections_open",
            json!({"listener": "http"})
        )
        .unwrap()
            >= 1.0
    );
    // The router, the persister and their gauges are all there.
    for name in [
        "sluice_router_published_total",
        "sluice_router_retained_bytes",
        "sluice_router_sources",
        "sluice_persister_lines_total",
        "sluice_persister_open_files",
        "sluice_persister_gathered_bytes",
        "sluice_persister_behind",
        "sluice_tails_opened_total",
    ] {
        assert!(samples.iter().any(|(n, _, _)| n == name), "{name} missing");
    }
    assert_eq!(
        value(&samples, "sluice_router_sources", json!({})),
        Some(5.0)
    );
    // One writer per two cores, at least one.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        value(&samples, "sluice_persister_writers", json!({})),
        Some((cores / 2).clamp(1, 32) as f64)
    );
}

/// The Grafana dashboard in `dist/` asks only for metrics the server exposes (the archive's
/// appear with S3 configured, and are checked against the README's table instead).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_asks_for_metrics_that_exist() {
    let dashboard: Value =
        serde_json::from_str(include_str!("../dist/grafana-dashboard.json")).unwrap();
    let server = Server::start("");
    // A drain, so that its series exist.
    let (status, _) = server
        .post_json(
            "/api/v1/drains",
            json!({"source_id": "s", "url": "syslog://127.0.0.1:1"}),
        )
        .await;
    assert_eq!(status, 201);
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    conn.send_batch(&[Envelope::new("s", "x")]).await.unwrap();
    let samples = scrape(&server).await;
    let readme = include_str!("../README.md");
    let mut asked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("sluice_") {
                let name: String = expr[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                asked += 1;
                assert!(
                    readme.contains(&format!("`{name}`")),
                    "{name} is not in the README's table"
                );
                if !name.starts_with("sluice_archive_") {
                    assert!(
                        samples.iter().any(|(n, _, _)| *n == name),
                        "the dashboard asks for {name}, which /metrics lacks"
                    );
                }
            }
        }
    }
    assert!(asked > 20, "{asked}");
}
