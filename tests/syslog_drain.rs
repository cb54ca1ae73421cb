//! Syslog drains into a real rsyslog: every field as rsyslog parsed it, for every line, in
//! order; an outage and its recovery; hostile drain requests.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;
use common::rsyslog::{Rsyslog, free_tcp_port};
use futures_util::StreamExt;
use serde_json::json;
use sluice::client::{IngestAddr, connect_ingest};
use sluice_router::{Channel, Envelope};
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const BASE_NS: i64 = 1_700_000_000_123_456_789;

/// Envelope `i` of a varied stream: origins, instances, channels, tags, awkward messages.
fn envelope(source: &str, i: usize) -> Envelope {
    let mut e = Envelope::new(source, format!("line {i} with \"quotes\" and ] brackets"));
    e.timestamp = BASE_NS + i as i64 * 1_001_000;
    e.origin = ["APP/PROC/WEB", "RTR", "STG", "API"][i % 4].into();
    e.instance_id = (i % 3).to_string().into();
    if i.is_multiple_of(5) {
        e.channel = Channel::Err;
    }
    if i.is_multiple_of(2) {
        e.tags
            .insert("organization_name".into(), "acme corp".into());
        e.tags.insert("space_name".into(), "prod".into());
        e.tags.insert("app_name".into(), "web_app".into());
    }
    if i.is_multiple_of(7) {
        e.tags.insert("note".into(), format!("a\\b\"c]{i}"));
    }
    if i.is_multiple_of(100) {
        e.message = format!("nul\0byte {i}\n").into();
    }
    e
}

/// What rsyslog's template should show for envelope `i`, built independently of the formatter.
fn expected(source: &str, i: usize) -> String {
    let e = envelope(source, i);
    let pri = if e.channel == Channel::Err { 11 } else { 14 };
    // Go's `.999999`: microseconds, trailing zeros dropped (and the dot at a whole second).
    let ts = chrono::DateTime::from_timestamp_nanos(e.timestamp)
        .format("%Y-%m-%dT%H:%M:%S%.6f")
        .to_string();
    let ts = format!("{}+00:00", ts.trim_end_matches('0').trim_end_matches('.'));
    let host = if i.is_multiple_of(2) {
        // `acme corp`: white space becomes `-`.
        "acme-corp.prod.webapp".to_owned()
    } else {
        source.to_owned()
    };
    let mut sd = String::new();
    if !e.tags.is_empty() {
        sd.push_str("[tags@47450");
        for (k, v) in &e.tags {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace(']', "\\]");
            sd.push_str(&format!(" {k}=\"{v}\""));
        }
        sd.push(']');
    } else {
        sd.push('-');
    }
    let msg = if i.is_multiple_of(100) {
        format!("nulbyte {i}")
    } else {
        format!("line {i} with \"quotes\" and ] brackets")
    };
    format!(
        "{pri}|{ts}|{host}|{source}|[{}/{}]|-|{sd}|{msg}",
        e.origin, e.instance_id
    )
}

async fn send(server: &Server, envs: Vec<Envelope>) {
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    for chunk in envs.chunks(500) {
        assert_eq!(conn.send_batch(chunk).await.unwrap(), chunk.len() as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_parses_every_field_of_ten_thousand_lines_in_order() {
    let rsyslog = Rsyslog::start();
    let server = Server::start("");
    let (status, drain) = server
        .post_json(
            "/api/v1/drains",
            json!({"source_id": "cf-app", "url": format!("syslog://127.0.0.1:{}", rsyslog.tcp_port)}),
        )
        .await;
    assert_eq!(status, 201, "{drain}");
    const N: usize = 10_000;
    send(&server, (0..N).map(|i| envelope("cf-app", i)).collect()).await;
    let lines = Rsyslog::wait_lines(&rsyslog.tcp_out, N).await;
    assert_eq!(lines.len(), N);
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line, &expected("cf-app", i), "line {i}");
    }
    let view = server
        .get_json(&format!("/api/v1/drains/{}", drain["id"].as_str().unwrap()))
        .await;
    assert_eq!(
        (view["sent"].as_u64(), view["lost"].as_u64()),
        (Some(N as u64), Some(0))
    );
    assert_eq!(view["connected"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_parses_udp_drains_and_metadata_can_be_left_out() {
    let rsyslog = Rsyslog::start();
    let server = Server::start("");
    let url = format!(
        "syslog-udp://127.0.0.1:{}?disable-metadata=true",
        rsyslog.udp_port
    );
    let (status, _) = server
        .post_json(
            "/api/v1/drains",
            json!({"source_id": "udp-app", "url": url}),
        )
        .await;
    assert_eq!(status, 201);
    // Datagrams can be dropped by a full socket buffer: send at a pace rsyslog keeps up with.
    const N: usize = 1_000;
    for chunk in (0..N).collect::<Vec<_>>().chunks(100) {
        send(
            &server,
            chunk.iter().map(|&i| envelope("udp-app", i)).collect(),
        )
        .await;
        Rsyslog::wait_lines(&rsyslog.udp_out, chunk[chunk.len() - 1] + 1).await;
    }
    let lines = Rsyslog::lines(&rsyslog.udp_out);
    assert_eq!(lines.len(), N);
    for (i, line) in lines.iter().enumerate() {
        // Same fields, with `-` for the structured data.
        let want = expected("udp-app", i);
        let mut parts: Vec<&str> = want.splitn(8, '|').collect();
        parts[6] = "-";
        assert_eq!(line, &parts.join("|"), "line {i}");
    }
}

/// Everything a tail on `source` receives, collected by a task that reads continuously.
struct Collector {
    seen: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl Collector {
    async fn start(server: &Server, source: &str) -> Collector {
        let (mut tail, _) = connect_async(server.ws(&format!("/api/v1/sources/{source}/stream")))
            .await
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = tail.next().await {
                if let Message::Text(t) = msg {
                    sink.lock().unwrap().push(serde_json::from_str(&t).unwrap());
                }
            }
        });
        Collector { seen }
    }

    fn logs(&self) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|v| v["origin"] != "LGR")
            .count()
    }

    fn notices(&self) -> Vec<String> {
        let seen = self.seen.lock().unwrap();
        seen.iter()
            .filter(|v| v["origin"] == "LGR")
            .map(|v| v["message"].as_str().unwrap().to_owned())
            .collect()
    }

    async fn wait(&self, what: &str, done: impl Fn(&Collector) -> bool) {
        common::eventually(what, 60, async || done(self).then_some(())).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_drain_is_announced_once_counted_exactly_and_resumes_when_its_target_returns() {
    let healthy = Rsyslog::start();
    let dead_port = free_tcp_port();
    let server = Server::start(
        "router:\n  ring_max_entries: 1000\ndrains:\n  delivery:\n    reconnect_min_millis: 20\n    reconnect_max_millis: 1000\n    failure_notice_interval_secs: 3600\n",
    );
    let tail = Collector::start(&server, "svc").await;
    let dead_url = format!("syslog://127.0.0.1:{dead_port}");
    let (_, dead) = server
        .post_json(
            "/api/v1/drains",
            json!({"source_id": "svc", "url": dead_url}),
        )
        .await;
    let (_, good) = server
        .post_json(
            "/api/v1/drains",
            json!({"source_id": "svc", "url": format!("syslog://127.0.0.1:{}", healthy.tcp_port)}),
        )
        .await;

    // The dead drain fails to connect and says so in the source's stream, once.
    tail.wait("the failure notice", |t| !t.notices().is_empty())
        .await;
    // Load the ring (1000) well past what the dead drain could hold, paced so the tail keeps up.
    const N: usize = 5_000;
    for start in (0..N).step_by(250) {
        send(
            &server,
            (start..start + 250).map(|i| envelope("svc", i)).collect(),
        )
        .await;
        tail.wait("the tail", |t| t.logs() >= start + 250).await;
    }
    // A few more refused reconnects (20 ms doubling), so that the revival below lands while
    // the drain is backing off, not on its first retry.
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The target comes back; delivery resumes without restarting anything.
    let revived = Rsyslog::start_on(dead_port);
    send(&server, (N..N + 100).map(|i| envelope("svc", i)).collect()).await;
    let dead_id = dead["id"].as_str().unwrap().to_owned();
    let view = common::until("the revived drain to catch up", 60, async || {
        let v = server.get_json(&format!("/api/v1/drains/{dead_id}")).await;
        // Everything published after the drain was bound is either sent or reported lost
        // (the stream also carries the router's own notices).
        let published_now = server.published("svc").await;
        let (sent, lost) = (v["sent"].as_u64().unwrap(), v["lost"].as_u64().unwrap());
        if sent + lost == published_now && sent > 0 {
            Ok(v)
        } else {
            Err(format!("{v} of {published_now}"))
        }
    })
    .await;
    let lost = view["lost"].as_u64().unwrap();
    assert!(lost > 0, "the ring (1000) overran while the drain was down");
    assert_eq!(view["connected"], true);

    tail.wait("the loss notice", |t| {
        t.notices().iter().any(|m| m.contains("messages lost"))
    })
    .await;
    let notices = tail.notices();
    let failures: Vec<&String> = notices
        .iter()
        .filter(|m| m.starts_with("failed to connect"))
        .collect();
    assert_eq!(
        failures,
        [&format!(
            "failed to connect to syslog drain {dead_url}: connection refused"
        )],
        "one notice per window, not one per message"
    );
    let announced: u64 = notices
        .iter()
        .filter_map(|m| {
            m.strip_suffix(&format!(
                " messages lost for source svc in syslog drain {dead_url}"
            ))
        })
        .map(|n| n.parse::<u64>().unwrap())
        .sum();
    assert_eq!(
        announced, lost,
        "the notices add up to the exact loss: {notices:?}"
    );

    // The revived rsyslog got exactly what the drain says it sent, the newest lines included.
    let sent = view["sent"].as_u64().unwrap() as usize;
    let lines = Rsyslog::wait_lines(&revived.tcp_out, sent).await;
    assert_eq!(lines.len(), sent);
    assert!(lines.iter().any(|l| l == &expected("svc", N + 99)));

    // Meanwhile the healthy drain and the tail lost nothing.
    let good_view = server
        .get_json(&format!("/api/v1/drains/{}", good["id"].as_str().unwrap()))
        .await;
    assert_eq!(good_view["lost"], 0);
    let good_lines = common::until("the healthy drain's lines", 60, async || {
        let lines = Rsyslog::lines(&healthy.tcp_out);
        let logs = lines.iter().filter(|l| !l.contains("|[LGR/0]|")).count();
        if logs >= N + 100 {
            Ok(lines)
        } else {
            Err(logs)
        }
    })
    .await;
    let logs: Vec<&String> = good_lines
        .iter()
        .filter(|l| !l.contains("|[LGR/0]|"))
        .collect();
    assert_eq!(logs.len(), N + 100);
    for (i, line) in logs.iter().enumerate() {
        assert_eq!(*line, &expected("svc", i));
    }
    tail.wait("the tail", |t| t.logs() >= N + 100).await;
    assert!(
        !notices.iter().any(|m| m.starts_with("sluice dropped")),
        "the tail lost lines"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_drain_requests_get_a_reason_and_credentials_never_leak() {
    let server = Server::start("drains:\n  per_source_limit: 2\n  max_drains: 5\n");
    let cases = [
        (
            json!({"source_id": "a", "url": "ftp://x:1"}),
            422,
            "unsupported drain url scheme \"ftp\"",
        ),
        (
            json!({"source_id": "a", "url": "syslog://"}),
            422,
            "invalid drain url: no host",
        ),
        (
            json!({"source_id": "a", "url": "syslog://h:0"}),
            422,
            "invalid drain url: port 0",
        ),
        (
            json!({"source_id": "a", "url": "syslog://h:70000"}),
            422,
            "invalid drain url: invalid port number",
        ),
        (
            json!({"source_id": "a", "url": format!("syslog://{}.x:1", "a".repeat(5000))}),
            422,
            "longer than 2048",
        ),
        (
            json!({"source_id": "a b", "url": "syslog://h:1"}),
            422,
            "invalid source_id \"a b\"",
        ),
        (
            json!({"source_id": "a", "url": "syslog-tls://h:1", "tls": {"ca_file": "/nonexistent.pem"}}),
            422,
            "cannot read CA file /nonexistent.pem",
        ),
        (
            json!({"url": 5}),
            400,
            "invalid drain request: invalid type: integer `5`",
        ),
        (
            json!({"source_id": "a", "url": "syslog://h:1", "colour": "red"}),
            400,
            "invalid drain request: unknown field `colour`",
        ),
    ];
    for (body, status, reason) in cases {
        let (got, answer) = server.post_json("/api/v1/drains", body.clone()).await;
        assert_eq!(got, status, "{body}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(reason),
            "{body}: {answer}"
        );
    }
    // The limit per source.
    let secret = "syslog://admin:hunter2@127.0.0.1:1";
    assert_eq!(
        server
            .post_json("/api/v1/drains", json!({"source_id": "a", "url": secret}))
            .await
            .0,
        201
    );
    assert_eq!(
        server
            .post_json("/api/v1/drains", json!({"source_id": "a", "url": secret}))
            .await
            .0,
        409,
        "the same url twice"
    );
    assert_eq!(
        server
            .post_json(
                "/api/v1/drains",
                json!({"source_id": "a", "url": "syslog://127.0.0.1:2"})
            )
            .await
            .0,
        201
    );
    // Past a limit: 422 with the reason.
    let refused = async |source: Option<&str>, port: u16| {
        let body = json!({"source_id": source, "url": format!("syslog://127.0.0.1:{port}")});
        let (status, answer) = server.post_json("/api/v1/drains", body).await;
        assert_eq!(status, 422, "{answer}");
        answer["error"].as_str().unwrap().to_owned()
    };
    assert_eq!(
        refused(Some("a"), 3).await,
        "source \"a\" already has 2 drains, the limit (drains.per_source_limit)"
    );
    // Drains of every source have the same limit, and all drains together theirs.
    for (source, port) in [(None, 4), (None, 5), (Some("b"), 7)] {
        let body = json!({"source_id": source, "url": format!("syslog://127.0.0.1:{port}")});
        assert_eq!(server.post_json("/api/v1/drains", body).await.0, 201);
    }
    assert_eq!(
        refused(None, 6).await,
        "there are 2 drains of every source already, the limit (drains.per_source_limit)"
    );
    assert_eq!(
        refused(Some("c"), 8).await,
        "5 drains are bound already, the limit (drains.max_drains)"
    );

    // Credentials appear nowhere: listing, metrics, notices in the source's stream.
    common::until("both drains' notices", 30, async || {
        let n = server.router_notices("a").await;
        if n.len() >= 2 { Ok(()) } else { Err(n) }
    })
    .await;
    let everything = format!(
        "{} {} {}",
        server.get_json("/api/v1/drains").await,
        reqwest::get(server.url("/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap(),
        server.get_json("/api/v1/sources/a/recent").await,
    );
    assert!(everything.contains("syslog://127.0.0.1:1"));
    assert!(
        !everything.contains("hunter2") && !everything.contains("admin"),
        "{everything}"
    );

    // Removing a drain frees its place.
    let list = server.get_json("/api/v1/drains?source_id=a").await;
    let id = list[0]["id"].as_str().unwrap();
    let resp = reqwest::Client::new()
        .delete(server.url(&format!("/api/v1/drains/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
    let resp = reqwest::Client::new()
        .delete(server.url(&format!("/api/v1/drains/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(
        server
            .post_json(
                "/api/v1/drains",
                json!({"source_id": "a", "url": "syslog://127.0.0.1:3"})
            )
            .await
            .0,
        201
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_bound_in_the_config_file_can_take_every_source() {
    let rsyslog = Rsyslog::start();
    let server = Server::start(&format!(
        "drains:\n  bind:\n    - url: syslog://127.0.0.1:{}\n",
        rsyslog.tcp_port
    ));
    let drains = server.get_json("/api/v1/drains").await;
    assert_eq!(drains[0]["source_id"], serde_json::Value::Null);
    send(
        &server,
        vec![
            envelope("alpha", 1),
            envelope("beta", 2),
            envelope("alpha", 3),
        ],
    )
    .await;
    let mut lines = Rsyslog::wait_lines(&rsyslog.tcp_out, 3).await;
    lines.sort();
    let mut want = vec![
        expected("alpha", 1),
        expected("beta", 2),
        expected("alpha", 3),
    ];
    want.sort();
    assert_eq!(lines, want);
}
