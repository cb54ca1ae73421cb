//! End to end through the real binary: `sluice serve`, `sluice emit`, a WebSocket client, and
//! `sluice logs`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{SLUICE, Server, Watched, output_ok};
use futures_util::StreamExt;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

const LINES: usize = 10_000;

/// Runs `sluice emit` on `lines`, written from a thread with short pauses. With `halfway`, the
/// thread stops after half the lines until it is told to go on, so a reader can join mid-stream.
fn emit(
    server: &Server,
    source: &str,
    lines: Vec<String>,
    halfway: Option<std::sync::mpsc::Receiver<()>>,
) -> std::thread::JoinHandle<()> {
    let mut child = Command::new(SLUICE)
        .args(["emit", "--source", source, "--ingest", &server.ingest])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    std::thread::spawn(move || {
        for (i, line) in lines.iter().enumerate() {
            if i == lines.len() / 2
                && let Some(go_on) = &halfway
            {
                stdin.flush().unwrap();
                go_on.recv().unwrap();
            }
            writeln!(stdin, "{line}").unwrap();
            if i % 500 == 499 {
                stdin.flush().unwrap();
                // Paced like a program's output, in bursts: a pipe at full speed is not what
                // this test is about (the load generator measures that).
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        drop(stdin);
        let status = child.wait().unwrap();
        assert!(status.success(), "sluice emit exited with {status}");
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tail_joining_halfway_with_full_backfill_gets_every_line_once_in_order() {
    let server = Server::start("");
    let lines: Vec<String> = (0..LINES).map(|i| format!("line {i}")).collect();
    let (go_on, halfway) = std::sync::mpsc::channel();
    let writer = emit(&server, "web-app", lines, Some(halfway));
    server.wait_published("web-app", (LINES / 2) as u64).await;
    let (mut ws, _) = connect_async(server.ws("/api/v1/sources/web-app/stream?backfill=100000"))
        .await
        .unwrap();
    let published_at_join = server.published("web-app").await;
    go_on.send(()).unwrap();
    let mut next = 0usize;
    while next < LINES {
        let msg = tokio::time::timeout(Duration::from_secs(30), ws.next())
            .await
            .expect("the tail stalled")
            .unwrap()
            .unwrap();
        let Message::Text(text) = msg else { continue };
        let env: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(env["seq"], next as u64 + 1, "no gap, no duplicate");
        assert_eq!(env["message"], format!("line {next}"));
        assert_eq!(env["source_id"], "web-app");
        assert_eq!(env["origin"], "APP");
        assert_eq!(env["channel"], "OUT");
        next += 1;
    }
    writer.join().unwrap();
    assert!(
        published_at_join < LINES as u64,
        "the tail joined while emit was still sending ({published_at_join} published)"
    );
    // Nothing more arrives: exactly once.
    let extra = tokio::time::timeout(Duration::from_millis(300), ws.next()).await;
    assert!(
        extra.is_err() || matches!(extra, Ok(Some(Ok(Message::Ping(_))))),
        "{extra:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_recent_prints_the_last_hundred_in_the_cf_format() {
    let server = Server::start("");
    let lines: Vec<String> = (0..LINES).map(|i| format!("line {i} ✓")).collect();
    emit(&server, "web-app", lines, None).join().unwrap();
    server.wait_published("web-app", LINES as u64).await;

    // Arizona keeps -0700 all year, so the expected text does not depend on the date.
    let out = output_ok(
        Command::new(SLUICE)
            .args([
                "logs",
                "web-app",
                "--recent",
                "-n",
                "100",
                "--http",
                &server.http,
            ])
            .env("TZ", "America/Phoenix"),
    );

    let recent = server
        .get_json("/api/v1/sources/web-app/recent?limit=100")
        .await;
    let recent = recent.as_array().unwrap();
    assert_eq!(recent.len(), 100);
    let mut expected = String::new();
    for (k, env) in recent.iter().enumerate() {
        let ns = env["timestamp"].as_i64().unwrap();
        let local =
            chrono::DateTime::from_timestamp(ns.div_euclid(1_000_000_000) - 7 * 3600, 0).unwrap();
        let hundredths = ns.rem_euclid(1_000_000_000) / 10_000_000;
        let i = LINES - 100 + k;
        expected.push_str(&format!(
            "{}.{hundredths:02}-0700 [APP/0]      OUT line {i} ✓\n",
            local.format("%Y-%m-%dT%H:%M:%S")
        ));
    }
    assert_eq!(String::from_utf8(out.stdout).unwrap(), expected);

    // The same lines as text/plain from the server, and as JSON lines from the CLI.
    let json = Command::new(SLUICE)
        .args([
            "logs",
            "web-app",
            "--recent",
            "-n",
            "2",
            "--json",
            "--http",
            &server.http,
        ])
        .output()
        .unwrap();
    let json = String::from_utf8(json.stdout).unwrap();
    let last: serde_json::Value = serde_json::from_str(json.lines().last().unwrap()).unwrap();
    assert_eq!(last["message"], format!("line {} ✓", LINES - 1));
    assert_eq!(last["seq"], LINES as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follows_with_filters_and_reports_a_stopped_server() {
    let mut server = Server::start("");
    let follow = Watched::spawn(
        Command::new(SLUICE)
            .args([
                "logs",
                "svc",
                "--tail",
                "--num",
                "0",
                "--stderr",
                "--origin",
                "RTR",
                "--http",
                &server.http,
            ])
            .env("TZ", "UTC"),
    );
    // The banner says the tail is up before any line comes.
    follow
        .stderr_says("Connected, tailing logs for svc\n")
        .await;
    for (origin, stderr, text) in [
        ("RTR", true, "wanted"),
        ("RTR", false, "stdout"),
        ("APP", true, "app"),
    ] {
        let mut args = vec![
            "emit",
            "--source",
            "svc",
            "--origin",
            origin,
            "--ingest",
            &server.ingest,
        ];
        if stderr {
            args.push("--stderr");
        }
        let mut child = Command::new(SLUICE)
            .args(&args)
            .stdin(Stdio::piped())
            .spawn()
            .unwrap();
        writeln!(child.stdin.take().unwrap(), "{text}").unwrap();
        assert!(child.wait().unwrap().success());
    }
    let stdout = follow.stdout_lines(1).await;
    // Stopping the server: the tail says why and keeps trying to reconnect.
    sigterm(server.child.id());
    let _ = server.child.wait();
    follow
        .stderr_says(
            "sluice logs: the stream of svc ended (sluice is shutting down); reconnecting\n",
        )
        .await;
    assert_eq!(follow.stdout().lines().count(), 1, "{stdout:?}");
    assert!(
        stdout[0].ends_with(" [RTR/0]      ERR wanted"),
        "{stdout:?}"
    );
}

/// SIGTERM through the `kill` command, as an operator would send it.
fn sigterm(pid: u32) {
    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tails_are_pinged_and_bad_parameters_are_refused_before_the_upgrade() {
    let server = Server::start("http:\n  ping_interval_secs: 1\n");
    let (mut ws, _) = connect_async(server.ws("/api/v1/sources/quiet/stream"))
        .await
        .unwrap();
    let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(matches!(msg, Message::Ping(_)), "{msg:?}");

    for (query, error) in [
        (
            "channel=both",
            "invalid channel \"both\": use OUT or ERR (or stdout, stderr)",
        ),
        (
            "backfill=-1",
            "invalid backfill \"-1\": expected a non-negative whole number",
        ),
        (
            "backfill=1&since_seq=2",
            "use backfill or since_seq, not both",
        ),
        ("format=xml", "invalid format \"xml\": use json or msgpack"),
    ] {
        let url = server.ws(&format!("/api/v1/sources/quiet/stream?{query}"));
        let Err(tokio_tungstenite::tungstenite::Error::Http(resp)) = connect_async(url).await
        else {
            panic!("{query} was accepted");
        };
        assert_eq!(resp.status(), 400);
        let body: serde_json::Value =
            serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
        assert_eq!(body["error"], error, "{query}");
    }
    // Plain HTTP on a WebSocket endpoint says what it is.
    let resp = reqwest::get(server.url("/api/v1/sources/quiet/stream"))
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(
        body["error"],
        "missing header `connection: upgrade`: this endpoint is a WebSocket"
    );
    let unknown = reqwest::get(server.url("/api/v1/nothing")).await.unwrap();
    assert_eq!(unknown.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_sources_lists_every_source_with_its_newest_seq() {
    let server = Server::start("");
    for (source, n) in [("web", 3), ("api", 1), ("cf/doppler", 2)] {
        common::send_lines(&server, source, n).await;
    }
    let out = output_ok(Command::new(SLUICE).args(["sources", "--http", &server.http]));
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        rows[0],
        ["SOURCE", "NEWEST", "SEQ", "IN", "MEMORY", "LINES", "IN"]
    );
    // Sorted by id: id, newest seq, lines in memory; `files` joins `memory` once the persister
    // has written them.
    let ids: Vec<[&str; 3]> = rows[1..].iter().map(|r| [r[0], r[1], r[2]]).collect();
    assert_eq!(
        ids,
        [
            ["api", "1", "1"],
            ["cf/doppler", "2", "2"],
            ["web", "3", "3"]
        ]
    );
    assert!(
        rows[1..].iter().all(|r| r[3].starts_with("memory")),
        "{text}"
    );
    let out = Command::new(SLUICE)
        .args(["sources", "--json", "--http", &server.http])
        .output()
        .unwrap();
    let json: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(json.len(), 3);
    assert_eq!(json[2]["source_id"], "web");
    assert_eq!(json[2]["published"], 3);
}

#[tokio::test]
async fn sluice_drains_adds_lists_and_removes_by_id_or_url() {
    let server = Server::start("");
    // Somewhere for the drains to connect to.
    let target = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("syslog://{}", target.local_addr().unwrap());
    let drains = |args: &[&str]| {
        Command::new(SLUICE)
            .arg("drains")
            .args(args)
            .args(["--http", &server.http])
            .output()
            .unwrap()
    };
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();

    let added = drains(&["add", &url, "--source", "web"]);
    assert!(added.status.success(), "{}", text(&added.stderr));
    let id = text(&added.stdout).trim().to_owned();
    assert_eq!(
        text(&added.stderr),
        format!("Bound drain {id}: {url} for web\n")
    );
    let again = drains(&["add", &url, "--source", "web"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        text(&again.stderr).contains(&format!("already bound for this source, as drain {id}")),
        "{}",
        text(&again.stderr)
    );
    let every = drains(&["add", &url]);
    assert!(every.status.success(), "{}", text(&every.stderr));
    let every_id = text(&every.stdout).trim().to_owned();
    let bad = drains(&["add", "ftp://example.com", "--source", "web"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(text(&bad.stderr).starts_with("sluice: the server refused the request: "));

    let table = text(&drains(&["list"]).stdout);
    let rows: Vec<&str> = table.lines().collect();
    assert_eq!(rows.len(), 3, "{table}");
    assert!(rows[0].starts_with("ID") && rows[0].contains("CONNECTED"));
    assert!(table.contains("(every source)") && table.contains(&id));
    let one = text(&drains(&["list", "--source", "web", "--json"]).stdout);
    let one: serde_json::Value = serde_json::from_str(one.trim()).unwrap();
    assert_eq!(one["url"], url);

    // By url: bound for two sources, so it needs --source.
    let ambiguous = drains(&["rm", &url]);
    assert_eq!(ambiguous.status.code(), Some(1));
    assert!(text(&ambiguous.stderr).contains("say which with --source"));
    let removed = drains(&["rm", &url, "--source", "web"]);
    assert!(removed.status.success(), "{}", text(&removed.stderr));
    assert_eq!(text(&removed.stderr), format!("Removed drain {id}\n"));
    assert!(drains(&["rm", &every_id]).status.success());
    assert_eq!(text(&drains(&["list"]).stdout).lines().count(), 1);
    let gone = drains(&["rm", &every_id]);
    assert_eq!(gone.status.code(), Some(1));
}
