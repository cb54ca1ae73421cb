//! Syslog into Sluice from real senders (util-linux `logger`, rsyslog `omfwd`), and bad input.

mod common;

use std::io::Write;
use std::net::{TcpStream, UdpSocket};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Server;
use common::rsyslog::Rsyslog;
use futures_util::StreamExt;
use sluice_router::Envelope;
use sluice_router::codec::decode_exact;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

/// A msgpack tail on `source`, collecting every envelope it receives (exact bytes).
struct Tail {
    got: Arc<Mutex<Vec<Envelope>>>,
}

impl Tail {
    async fn open(server: &Server, source: &str) -> Tail {
        let url = server.ws(&format!(
            "/api/v1/sources/{source}/stream?format=msgpack&backfill=100000"
        ));
        let (mut ws, _) = connect_async(url).await.unwrap();
        let got = Arc::new(Mutex::new(Vec::new()));
        let sink = got.clone();
        tokio::spawn(async move {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Binary(b) = msg {
                    sink.lock()
                        .unwrap()
                        .extend(decode_exact::<Vec<Envelope>>(&b).unwrap());
                }
            }
        });
        Tail { got }
    }

    async fn wait(&self, n: usize) -> Vec<Envelope> {
        common::until(&format!("{n} envelopes on the tail"), 30, async || {
            let got = self.got.lock().unwrap().clone();
            if got.len() >= n { Ok(got) } else { Err(got) }
        })
        .await
    }
}

fn port(addr: &str) -> &str {
    addr.rsplit_once(':').unwrap().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logger_lines_arrive_with_source_origin_instance_and_channel() {
    let server = Server::start("");
    let tail = Tail::open(&server, "billing").await;
    // Each logger run is its own connection, and order holds only within one: wait for each.
    for (n, (prio, text)) in [
        ("local3.err", "card declined"),
        ("local3.info", "invoice sent"),
    ]
    .into_iter()
    .enumerate()
    {
        let status = Command::new("logger")
            .args([
                "--tcp",
                "--rfc5424",
                "--octet-count",
                "-n",
                "127.0.0.1",
                "-P",
                port(&server.syslog_tcp),
            ])
            .args([
                "-t",
                "billing",
                "--id=4242",
                "--msgid",
                "M1",
                "-p",
                prio,
                text,
            ])
            .status()
            .unwrap();
        assert!(status.success());
        tail.wait(n + 1).await;
    }
    let status = Command::new("logger")
        .args([
            "--udp",
            "--rfc5424",
            "-n",
            "127.0.0.1",
            "-P",
            port(&server.syslog_udp),
        ])
        .args(["-t", "billing", "--id=7", "-p", "user.warning", "over udp"])
        .status()
        .unwrap();
    assert!(status.success());
    let got = tail.wait(3).await;
    let seen: Vec<(&str, &str, &str, &str, &[u8])> = got
        .iter()
        .map(|e| {
            (
                e.source_id.as_str(),
                e.origin.as_str(),
                e.instance_id.as_str(),
                e.channel.as_str(),
                &e.message[..],
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            ("billing", "SYSLOG", "4242", "ERR", &b"card declined"[..]),
            ("billing", "SYSLOG", "4242", "OUT", &b"invoice sent"[..]),
            ("billing", "SYSLOG", "7", "OUT", &b"over udp"[..]),
        ]
    );
    // logger's own structured data (timeQuality) is not Sluice's tags element: no tags.
    assert!(got.iter().all(|e| e.tags.is_empty()));
    assert!(got.iter().all(|e| e.timestamp > 1_700_000_000_000_000_000));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_omfwd_forwards_into_sluice_over_tcp_and_udp() {
    let server = Server::start("");
    let tail = Tail::open(&server, "cf-app").await;
    let fwd = Rsyslog::forwarder(&server.syslog_tcp, &server.syslog_udp);
    let msg = "<11>1 2016-06-14T21:10:05.360000+00:00 org.space.app cf-app [APP/PROC/WEB/1] - [tags@47450 app_name=\"web\" space_name=\"prod\"] out of memory";
    let mut s = TcpStream::connect(("127.0.0.1", fwd.tcp_port)).unwrap();
    write!(s, "{} {msg}", msg.len()).unwrap();
    drop(s);
    // Once over TCP, once over UDP.
    let got = tail.wait(2).await;
    for e in &got {
        assert_eq!(e.source_id, "cf-app");
        assert_eq!(
            (e.origin.as_str(), e.instance_id.as_str()),
            ("APP/PROC/WEB", "1")
        );
        assert_eq!(e.channel.as_str(), "ERR");
        assert_eq!(e.timestamp, 1_465_938_605_360_000_000);
        assert_eq!(e.tags.get("app_name").map(String::as_str), Some("web"));
        assert_eq!(&e.message[..], b"out of memory");
    }
    assert_eq!(server.metric("sluice_syslog_messages_total").await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_syslog_input_costs_only_its_own_connection() {
    let server = Server::start("");
    let tail = Tail::open(&server, "good").await;
    let line = |i: usize| format!("<14>1 - h good [APP/0] - - line {i}\n");
    // A well-behaved connection stays open throughout.
    let mut good = TcpStream::connect(&server.syslog_tcp).unwrap();
    good.write_all(line(0).as_bytes()).unwrap();

    // Garbage: a bad octet count closes that connection.
    let mut bad = TcpStream::connect(&server.syslog_tcp).unwrap();
    bad.write_all(b"12x45 \x00\x01\x02garbage").unwrap();
    let mut buf = [0u8; 16];
    bad.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(
        std::io::Read::read(&mut bad, &mut buf).unwrap_or(0),
        0,
        "closed by the server"
    );
    good.write_all(line(1).as_bytes()).unwrap();

    // A frame over syslog.max_frame_bytes (16 MiB) is refused before it is buffered.
    let mut huge = TcpStream::connect(&server.syslog_tcp).unwrap();
    huge.write_all(b"99999999 <14>1 - h good - - - x").unwrap();
    huge.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    assert_eq!(std::io::Read::read(&mut huge, &mut buf).unwrap_or(0), 0);

    // A 1 MiB line is split into 64 KiB envelopes, nothing dropped.
    let mut big = TcpStream::connect(&server.syslog_tcp).unwrap();
    let body = "y".repeat(1 << 20);
    big.write_all(format!("<14>1 - h big [APP/0] - - {body}\n").as_bytes())
        .unwrap();
    drop(big);

    // Invalid UTF-8 is kept exactly.
    let mut raw = b"<14>1 - h good [APP/0] - - caf\xc3\xa9 \xff\xfe end\n".to_vec();
    raw.extend_from_slice(line(2).as_bytes());
    good.write_all(&raw).unwrap();
    // Order holds within a connection, not across them: let TCP land before UDP.
    tail.wait(4).await;

    // Garbage over UDP is counted, not fatal; a good datagram still gets through.
    let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
    udp.send_to(b"<14>1 - - - - - -", &server.syslog_udp)
        .unwrap();
    udp.send_to(&[0xff; 100], &server.syslog_udp).unwrap();
    udp.send_to(line(3).as_bytes(), &server.syslog_udp).unwrap();

    let got = tail.wait(5).await;
    let messages: Vec<&[u8]> = got.iter().map(|e| &e.message[..]).collect();
    assert_eq!(
        messages,
        [
            &b"line 0"[..],
            b"line 1",
            b"caf\xc3\xa9 \xff\xfe end",
            b"line 2",
            b"line 3"
        ]
    );
    server.wait_published("big", 16).await;
    let parts = server
        .get_json("/api/v1/sources/big/recent?limit=100")
        .await;
    let sizes: Vec<usize> = parts
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap().len())
        .collect();
    assert_eq!(sizes, vec![65_536; 16]);
    assert!(server.metric("sluice_syslog_malformed_total").await >= 2);
    assert!(server.metric("sluice_syslog_refused_total").await >= 1);
}
