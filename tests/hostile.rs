//! A hostile client and an operator's faults (issue: hostile input and faults): nothing a client
//! sends or a fault does takes Sluice down, grows it without bound, or loses what it accepted.

mod common;

use std::time::Duration;

use common::{Server, send_lines};
use sluice::client::{IngestAddr, connect_ingest};
use sluice_router::Envelope;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A native frame: `u32 length | payload`.
fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = (payload.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(payload);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_unknown_fields_do_not_crash_the_server() {
    let server = Server::start("");
    // {"source_id":"deep","y":[[[[ ... 20,000 levels ... ]]]]} in 20 KB: it aborted the process
    // with a stack overflow in the MessagePack skipper.
    let mut payload = vec![0x82, 0xa9];
    payload.extend_from_slice(b"source_id");
    payload.extend_from_slice(&[0xa4]);
    payload.extend_from_slice(b"deep");
    payload.extend_from_slice(&[0xa1, b'y']);
    payload.extend(std::iter::repeat_n(0x91, 20_000));
    payload.push(0x90);
    let mut s = TcpStream::connect(&server.ingest).await.unwrap();
    s.write_all(&frame(&payload)).await.unwrap();
    // The same nesting cut short: an error for that frame, answered, and the server lives on.
    let mut cut = TcpStream::connect(&server.ingest).await.unwrap();
    cut.write_all(&frame(&payload[..payload.len() - 1]))
        .await
        .unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), cut.read_to_end(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&reply).contains("malformed MessagePack payload"),
        "{reply:?}"
    );
    server.wait_published("deep", 1).await;
    let recent = server.get_json("/api/v1/sources/deep/recent").await;
    assert_eq!(recent.as_array().unwrap().len(), 1);
    // Still serving everyone else.
    let mut good = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    assert_eq!(
        good.send_batch(&[Envelope::new("after", "fine")])
            .await
            .unwrap(),
        1
    );
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

/// Binds a drain of `source` to `url` and returns its id.
async fn bind_drain(server: &Server, source: &str, body: serde_json::Value) -> String {
    let mut body = body;
    body["source_id"] = serde_json::json!(source);
    let (status, view) = server.post_json("/api/v1/drains", body).await;
    assert_eq!(status, 201, "{view}");
    view["id"].as_str().unwrap().to_owned()
}

/// Waits (bounded) until a router notice of `source` starts with `prefix`.
async fn wait_notice(server: &Server, source: &str, prefix: &str) -> String {
    common::eventually(&format!("a notice starting {prefix:?}"), 30, async || {
        let notices = server.router_notices(source).await;
        notices.into_iter().find(|n| n.starts_with(prefix))
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_udp_drain_to_a_closed_port_backs_off_and_says_so() {
    let server = Server::start("");
    let port = {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let url = format!("syslog-udp://127.0.0.1:{port}");
    let id = bind_drain(&server, "udp-dead", serde_json::json!({ "url": url })).await;
    let cpu_before = server.cpu_time();
    let started = std::time::Instant::now();
    // Lines keep coming for two seconds; every datagram is answered by ICMP port unreachable.
    for i in 0..20 {
        send_lines(&server, "udp-dead", 5).await;
        if i == 0 {
            wait_notice(
                &server,
                "udp-dead",
                &format!("failed to deliver to syslog drain {url}: connection refused"),
            )
            .await;
        }
        // Spread over two seconds, so the drain meets refusals the whole time.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let cpu = server.cpu_time() - cpu_before;
    let wall = started.elapsed();
    let view = server.drain(&id).await;
    let errors = view["errors"].as_u64().unwrap();
    // 100 ms doubling: a handful of failures in a few seconds, not hundreds of thousands.
    assert!((1..=20).contains(&errors), "{view}");
    assert!(
        cpu < wall / 2,
        "the server used {cpu:?} of CPU in {wall:?} with a dead UDP drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_drain_refused_after_the_handshake_backs_off_counts_and_sends_nothing() {
    let certs = common::tls::Certs::generate();
    let rsyslog = common::rsyslog::Rsyslog::tls(&certs.ca, &certs.cert, &certs.key);
    let mutual = rsyslog.udp_port; // requires a client certificate
    let server = Server::start("");
    let url = format!("syslog-tls://127.0.0.1:{mutual}");
    // No client certificate: the TLS 1.3 handshake completes on our side, then rsyslog refuses.
    let id = bind_drain(
        &server,
        "tls-nocert",
        serde_json::json!({ "url": url, "tls": { "ca_file": certs.ca } }),
    )
    .await;
    send_lines(&server, "tls-nocert", 3).await;
    let notice = wait_notice(
        &server,
        "tls-nocert",
        &format!("failed to connect to syslog drain {url}: "),
    )
    .await;
    assert!(!notice.ends_with(": "), "{notice}");
    // Three refusals take at least 100 + 200 ms of backoff; reconnecting at once, they took
    // about a millisecond.
    let started = std::time::Instant::now();
    let view = common::eventually("three refusals", 30, async || {
        let view = server.drain(&id).await;
        (view["errors"].as_u64().unwrap() >= 4).then_some(view)
    })
    .await;
    assert!(started.elapsed() >= Duration::from_millis(250), "{view}");
    assert_eq!(view["sent"], 0, "{view}");
    // Nothing arrived at the receiver.
    assert!(
        common::rsyslog::Rsyslog::lines(&rsyslog.tcp_out)
            .iter()
            .all(|l| !l.contains("tls-nocert")),
    );
}

fn kill(server: &Server, signal: &str) {
    let status = std::process::Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(server.child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stray_signals_are_logged_not_fatal_and_sigterm_flushes_everything() {
    let mut server = Server::start("log_storage:\n  local_dir: {logs}\n  fsync: never\n");
    send_lines(&server, "sig", 1000).await;
    for signal in ["HUP", "USR1", "USR2", "ALRM", "PIPE"] {
        kill(&server, signal);
        // A signal that killed would also fail this request.
        let health = reqwest::get(server.url("/healthz")).await.unwrap();
        assert_eq!(health.status(), 200, "after SIG{signal}");
        assert!(
            server.child.try_wait().unwrap().is_none(),
            "SIG{signal} killed the server"
        );
    }
    send_lines(&server, "sig", 1000).await;
    kill(&server, "TERM");
    let status = tokio::task::block_in_place(|| server.child.wait().unwrap());
    assert!(status.success(), "{status:?}");
    let file = std::fs::read_to_string(server.logs.join("sig.jsonl")).unwrap();
    assert_eq!(file.lines().count(), 2000);
}

/// Reads one reply frame from `s`.
async fn read_reply(s: &mut TcpStream) -> sluice_router::codec::Reply {
    let mut len = [0u8; 4];
    s.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.unwrap();
    sluice_router::codec::decode_exact(&body).unwrap()
}

fn control(word: &str) -> Vec<u8> {
    let mut out = bytes::BytesMut::new();
    sluice_router::codec::encode_control_frame(word, &mut out);
    out.to_vec()
}

fn batch(envs: &[Envelope]) -> Vec<u8> {
    sluice_router::codec::batch_frame(envs).to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_field_of_any_kind_refuses_the_frame_and_the_connection_goes_on() {
    let server = Server::start("");
    let mut s = TcpStream::connect(&server.ingest).await.unwrap();
    s.write_all(&control("ack=count")).await.unwrap();
    let bad_channel = rmp_serde::to_vec_named(&std::collections::BTreeMap::from([
        ("source_id", "chan"),
        ("channel", "STDWHAT"),
        ("message", "x"),
    ]))
    .unwrap();
    let bad_ts = rmp_serde::to_vec_named(&std::collections::BTreeMap::from([
        ("source_id", "chan"),
        ("timestamp", "now"),
    ]))
    .unwrap();
    for (payload, reason) in [
        (
            bad_channel,
            "invalid envelope: field `channel`: unknown variant \"STDWHAT\", expected OUT or ERR",
        ),
        (
            bad_ts,
            "invalid envelope: field `timestamp`: expected an integer, found marker 0xa3",
        ),
    ] {
        s.write_all(&frame(&payload)).await.unwrap();
        let reply = read_reply(&mut s).await;
        assert_eq!((reply.accepted, reply.error.as_deref()), (0, Some(reason)));
    }
    // Same connection, a good batch.
    s.write_all(&batch(&[Envelope::new("chan", "good")]))
        .await
        .unwrap();
    assert_eq!(read_reply(&mut s).await.accepted, 1);
    let recent = server.get_json("/api/v1/sources/chan/recent").await;
    assert_eq!(recent.as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_frames_in_flight_are_each_answered_within_their_own_timeout() {
    let logs = common::temp_dir("durable-timeout").join("logs");
    let _disk = common::Tmpfs::mount(&logs, "64k");
    std::fs::write(logs.join("filler"), vec![0u8; 64 * 1024]).unwrap_or_default();
    let server = Server::start(&format!(
        "ingest:\n  durable_timeout_secs: 2\nlog_storage:\n  local_dir: {}\n  fsync: always\n",
        logs.display()
    ));
    let mut s = TcpStream::connect(&server.ingest).await.unwrap();
    s.write_all(&control("ack=durable")).await.unwrap();
    let started = std::time::Instant::now();
    let line = "x".repeat(200);
    for _ in 0..3 {
        s.write_all(&batch(&[Envelope::new("full", line.clone())]))
            .await
            .unwrap();
    }
    for i in 0..3 {
        let reply = read_reply(&mut s).await;
        assert_eq!(
            (reply.accepted, reply.error.as_deref()),
            (
                0,
                Some("timed out waiting for the persister to write the batch")
            ),
            "frame {i}"
        );
    }
    // Waited one after another, the third answer came after 6 s.
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(3500),
        "three answers took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_thousand_sources_under_a_1024_descriptor_limit_keep_the_server_serving() {
    let server = Server::start_with(
        "log_storage:\n  local_dir: {logs}\n  max_open_files: 256\n",
        &["prlimit", "--nofile=1024:1024"],
    );
    const SOURCES: usize = 20_000;
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let mut most = (0, 0);
    for chunk in (0..SOURCES).collect::<Vec<_>>().chunks(1000) {
        let envs: Vec<Envelope> = chunk
            .iter()
            .map(|i| Envelope::new(format!("src-{i}"), format!("line of {i}")))
            .collect();
        assert_eq!(conn.send_batch(&envs).await.unwrap(), 1000);
        let (all, jsonl) = server.open_fds();
        most = (most.0.max(all), most.1.max(jsonl));
    }
    // Every source reaches its file, while the server keeps to its limits.
    common::eventually("every source's file", 120, async || {
        let (all, jsonl) = server.open_fds();
        most = (most.0.max(all), most.1.max(jsonl));
        let files = std::fs::read_dir(&server.logs)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension() == Some("jsonl".as_ref()))
            .count();
        (files == SOURCES).then_some(())
    })
    .await;
    assert!(most.1 <= 256, "{} .jsonl files open at once", most.1);
    assert!(most.0 < 1000, "{} descriptors open at once", most.0);
    // Still answering, and still accepting connections.
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
    let mut fresh = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    assert_eq!(
        fresh
            .send_batch(&[Envelope::new("src-7", "again")])
            .await
            .unwrap(),
        1
    );
    let file = std::fs::read_to_string(server.logs.join("src-7.jsonl")).unwrap();
    assert!(file.contains("line of 7"));
}

/// Runs `sluice serve` on `config` expecting it to refuse to start; returns its stderr.
fn refused_start(config: &std::path::Path) -> String {
    let out = std::process::Command::new(common::SLUICE)
        .args(["serve", "--config"])
        .arg(config)
        .env("SLUICE_LOG", "warn")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_server_on_the_same_directory_refuses_with_the_first_ones_pid() {
    let first = Server::start("");
    send_lines(&first, "locked", 3).await;
    let config = first.dir.join("second.yaml");
    std::fs::write(
        &config,
        format!(
            "listen:\n  http: 127.0.0.1:0\n  ingest: 127.0.0.1:0\n  syslog_tcp: null\n  syslog_udp: null\nlog_storage:\n  local_dir: {}\n",
            first.logs.display()
        ),
    )
    .unwrap();
    let stderr = refused_start(&config);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "sluice: cannot use log_storage.local_dir {}: another sluice (pid {}) is using it",
            first.logs.display(),
            first.child.id()
        )
    );
    // The first one was not disturbed.
    send_lines(&first, "locked", 3).await;
    first.wait_published("locked", 6).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_unix_never_replaces_or_removes_what_is_not_its_own_socket() {
    let dir = common::temp_dir("unix-hostile");
    let precious = dir.join("precious.txt");
    std::fs::write(&precious, "keep me").unwrap();
    let config = dir.join("sluice.yaml");
    std::fs::write(
        &config,
        format!(
            "listen:\n  http: 127.0.0.1:0\n  ingest: 127.0.0.1:0\n  ingest_unix: {}\n  syslog_tcp: null\n  syslog_udp: null\nlog_storage:\n  local_dir: {}\n",
            precious.display(),
            dir.join("logs").display()
        ),
    )
    .unwrap();
    let stderr = refused_start(&config);
    assert_eq!(
        stderr.trim_end(),
        format!(
            "sluice: refusing to listen on ingest_unix {}: the path exists and is not a socket",
            precious.display()
        )
    );
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");

    // A socket of its own is removed at stop, unless something else has taken its name.
    let sock = dir.join("ingest.sock");
    let server = Server::start(&format!("  ingest_unix: {}\n", sock.display()));
    assert!(sock.exists());
    kill(&server, "TERM");
    let mut server = server;
    tokio::task::block_in_place(|| server.child.wait().unwrap());
    assert!(!sock.exists(), "the server's own socket is removed");

    let mut server = Server::start(&format!("  ingest_unix: {}\n", sock.display()));
    std::fs::remove_file(&sock).unwrap();
    std::fs::write(&sock, "someone else's").unwrap();
    kill(&server, "TERM");
    tokio::task::block_in_place(|| server.child.wait().unwrap());
    assert_eq!(std::fs::read_to_string(&sock).unwrap(), "someone else's");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_descriptors_the_accept_loop_backs_off_and_recovers() {
    let server = Server::start_with("", &["prlimit", "--nofile=128:128"]);
    // More connections than the server has descriptors: the rest wait in the backlog, and
    // every accept fails with EMFILE.
    let mut idle = Vec::new();
    for _ in 0..160 {
        idle.push(TcpStream::connect(&server.ingest).await.unwrap());
    }
    common::eventually("the server at its descriptor limit", 30, async || {
        (server.open_fds().0 >= 120).then_some(())
    })
    .await;
    let cpu_before = server.cpu_time();
    // The measurement window: CPU used over two seconds of refused accepts (a spinning accept
    // loop would use all of it).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cpu = server.cpu_time() - cpu_before;
    assert!(
        cpu < Duration::from_millis(500),
        "{cpu:?} of CPU in 2 s while out of descriptors"
    );
    // Descriptors come back: the server accepts and serves again.
    drop(idle);
    common::until("the server to accept again", 30, async || {
        let attempt = async {
            let mut c = connect_ingest(&IngestAddr::Tcp(server.ingest.clone())).await?;
            c.send_batch(&[Envelope::new("back", "again")]).await
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(1)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

/// Runs `sluice emit` with `args`, feeding it `input`; returns its exit code and stderr.
fn emit(server: &Server, args: &[&str], input: &[u8]) -> (Option<i32>, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(common::SLUICE)
        .arg("emit")
        .args(args)
        .args(["--ingest", &server.ingest])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    feeder.join().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn numbered(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("line {i}\n"))
        .collect::<String>()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emit_ack_durable_exits_0_only_when_every_line_is_on_disk() {
    // A disk with room for some lines only: durable acknowledgements cannot all be given.
    let logs = common::temp_dir("emit-durable").join("logs");
    let _disk = common::Tmpfs::mount(&logs, "64k");
    let server = Server::start(&format!(
        "ingest:\n  durable_timeout_secs: 2\nlog_storage:\n  local_dir: {}\n  fsync: always\n",
        logs.display()
    ));
    let (code, stderr) = tokio::task::block_in_place(|| {
        emit(
            &server,
            &["--source", "full", "--ack", "durable"],
            &numbered(20_000),
        )
    });
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("lines sent are on disk; resend from line"),
        "{stderr}"
    );
    // What it said is on disk, is.
    let on_disk: usize = stderr
        .rsplit_once('(')
        .and_then(|(_, s)| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{stderr}"));
    let file = std::fs::read_to_string(logs.join("full.jsonl")).unwrap_or_default();
    assert!(
        file.lines().count() >= on_disk,
        "{on_disk} acknowledged, file has {}",
        file.lines().count()
    );

    // With room, the same command succeeds, and every line is in the file when it returns.
    let roomy = Server::start("log_storage:\n  local_dir: {logs}\n  fsync: always\n");
    let (code, stderr) = tokio::task::block_in_place(|| {
        emit(
            &roomy,
            &["--source", "fine", "--ack", "durable"],
            &numbered(5_000),
        )
    });
    assert_eq!(code, Some(0), "{stderr}");
    let file = std::fs::read_to_string(roomy.logs.join("fine.jsonl")).unwrap();
    assert_eq!(file.lines().count(), 5_000);

    // --ack none: sent, the connection closed cleanly; a refusal still fails it.
    let (code, stderr) = tokio::task::block_in_place(|| {
        emit(
            &roomy,
            &["--source", "none", "--ack", "none"],
            &numbered(100),
        )
    });
    assert_eq!(code, Some(0), "{stderr}");
    roomy.wait_published("none", 100).await;
}

/// A client refused over and over writes a log line a second, not one per refusal (the
/// counters count every one): 5,000 batches with an invalid source id, then 200 connections
/// closed for a bad frame, against `sluice serve` with its stderr read back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_a_client_causes_are_logged_at_most_once_a_second() {
    let (serve, ingest, http) = common::serve_watched("throttled-logs", "").await;

    let mut conn = connect_ingest(&IngestAddr::Tcp(ingest.clone()))
        .await
        .unwrap();
    for _ in 0..5000 {
        let err = conn.send_batch(&[Envelope::new("not ok", "x")]).await;
        assert!(err.is_err());
    }
    for _ in 0..200 {
        let mut s = TcpStream::connect(&ingest).await.unwrap();
        // A frame that says it is 4 GiB long.
        s.write_all(&[0xff, 0xff, 0xff, 0xff, 0]).await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut sink)).await;
    }
    // Every one counted.
    let metrics = reqwest::get(format!("http://{http}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(
        common::metric_sum(&metrics, "sluice_ingest_refused_envelopes_total"),
        Some(5000)
    );
    assert_eq!(
        common::metric_sum(&metrics, "sluice_ingest_malformed_frames_total"),
        Some(200)
    );
    // Logged once a second or so per kind, the later lines saying how many were held back.
    let err = serve.stderr();
    let refused = err.matches("refused an ingest batch").count();
    let closed = err.matches("closing ingest connection").count();
    assert!(
        (1..=30).contains(&refused),
        "{refused} lines for 5,000 refusals:\n{err}"
    );
    assert!(
        (1..=30).contains(&closed),
        "{closed} lines for 200 closed connections:\n{err}"
    );
    assert!(err.contains("held_back="), "{err}");
}

/// An operator hears of `router.max_sources` before producers are turned away: once when the
/// sources held reach nine tenths of it, once when they reach it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_says_when_sources_near_and_reach_max_sources() {
    let (serve, ingest, _) =
        common::serve_watched("near-max-sources", "router:\n  max_sources: 10\n").await;
    let mut conn = connect_ingest(&IngestAddr::Tcp(ingest)).await.unwrap();
    let new_sources = async |conn: &mut sluice::client::IngestConnection,
                             ids: std::ops::Range<u32>| {
        let batch: Vec<Envelope> = ids.map(|i| Envelope::new(format!("s{i}"), "x")).collect();
        conn.send_batch(&batch).await
    };
    new_sources(&mut conn, 0..8).await.unwrap();
    new_sources(&mut conn, 8..9).await.unwrap();
    serve
        .stderr_says("9 of router.max_sources (10) sources held")
        .await;
    new_sources(&mut conn, 9..10).await.unwrap();
    serve
        .stderr_says("at router.max_sources (10): new sources are refused")
        .await;
    assert!(new_sources(&mut conn, 10..11).await.is_err());
    let err = serve.stderr();
    assert_eq!(err.matches("of router.max_sources").count(), 1, "{err}");
    assert_eq!(err.matches("at router.max_sources").count(), 1, "{err}");
}
