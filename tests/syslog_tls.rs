//! TLS both ways: drains into rsyslog's OpenSSL TLS driver (verified, refused, opted out,
//! mutual), and Sluice's own TLS syslog listener fed by another Sluice's drain.

mod common;

use std::io::Write;

use common::rsyslog::Rsyslog;
use common::tls::Certs;
use common::{Server, send_lines};
use serde_json::json;
use sluice::client::{IngestAddr, connect_ingest};
use sluice_router::Envelope;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_drains_verify_certificates_unless_told_not_to_and_do_mutual_tls() {
    let certs = Certs::generate();
    let rsyslog = Rsyslog::tls(&certs.ca, &certs.cert, &certs.key);
    let (anon, mutual) = (rsyslog.tcp_port, rsyslog.udp_port);
    let server = Server::start("");
    let ca = certs.ca.display().to_string();
    let other = certs.other_ca.display().to_string();
    let drains = [
        (
            "verified",
            json!({"url": format!("syslog-tls://localhost:{anon}"), "tls": {"ca_file": ca}}),
        ),
        (
            "refused",
            json!({"url": format!("syslog-tls://127.0.0.1:{anon}"), "tls": {"ca_file": other}}),
        ),
        (
            "opted-out",
            json!({"url": format!("syslog-tls://localhost:{anon}?insecure-skip-verify=true"), "tls": {"ca_file": other}}),
        ),
        (
            "mutual",
            json!({"url": format!("syslog-tls://127.0.0.1:{mutual}"), "tls": {"ca_file": ca, "cert_file": certs.cert, "key_file": certs.key}}),
        ),
    ];
    let mut ids = Vec::new();
    for (name, mut body) in drains {
        body["source_id"] = json!("tls-app");
        let (status, view) = server.post_json("/api/v1/drains", body).await;
        assert_eq!(status, 201, "{name}: {view}");
        ids.push((name, view["id"].as_str().unwrap().to_owned()));
    }
    // The refused drain says why in the source's stream.
    let refusal = format!(
        "failed to connect to syslog drain syslog-tls://127.0.0.1:{anon}: invalid peer certificate: UnknownIssuer"
    );
    common::until("the refusal notice", 30, async || {
        let n = server.router_notices("tls-app").await;
        if n.contains(&refusal) { Ok(()) } else { Err(n) }
    })
    .await;
    // Wait for the three good drains to be connected, then send.
    for (name, id) in &ids {
        if *name == "refused" {
            continue;
        }
        common::eventually(&format!("{name} to connect"), 30, async || {
            let view = server.get_json(&format!("/api/v1/drains/{id}")).await;
            (view["connected"] == true).then_some(())
        })
        .await;
    }
    const N: usize = 100;
    send_lines(&server, "tls-app", N).await;
    let lines = common::until("every line at rsyslog", 30, async || {
        let lines: Vec<String> = Rsyslog::lines(&rsyslog.tcp_out)
            .into_iter()
            .filter(|l| l.contains("|line "))
            .collect();
        if lines.len() >= 3 * N {
            Ok(lines)
        } else {
            Err(format!("{} of {}", lines.len(), 3 * N))
        }
    })
    .await;
    assert_eq!(
        lines.len(),
        3 * N,
        "verified, opted-out and mutual each delivered every line"
    );
    for i in 0..N {
        let suffix = format!("|tls-app|tls-app|[APP/0]|-|-|line {i}");
        assert_eq!(
            lines.iter().filter(|l| l.ends_with(&suffix)).count(),
            3,
            "line {i}"
        );
    }
    let refused = server
        .get_json(&format!("/api/v1/drains/{}", ids[1].1))
        .await;
    assert_eq!(
        (refused["sent"].as_u64(), refused["connected"].as_bool()),
        (Some(0), Some(false))
    );
    assert!(refused["errors"].as_u64().unwrap() >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_receives_syslog_over_tls_from_another_sluices_drain() {
    let certs = Certs::generate();
    let receiver = Server::start(&format!(
        "  syslog_tls: 127.0.0.1:0\ntls:\n  cert_file: {}\n  key_file: {}\n",
        certs.cert.display(),
        certs.key.display()
    ));
    let tls_addr = receiver.syslog_tls.clone().expect("syslog_tls bound");
    let port = tls_addr.rsplit_once(':').unwrap().1;

    // Plain text on the TLS port fails the handshake and costs nothing else.
    let mut plain = std::net::TcpStream::connect(&tls_addr).unwrap();
    plain.write_all(b"<14>1 - h edge - - - not tls\n").unwrap();
    drop(plain);

    let sender = Server::start("");
    let (status, view) = sender
        .post_json(
            "/api/v1/drains",
            json!({"source_id": "edge", "url": format!("syslog-tls://localhost:{port}"), "tls": {"ca_file": certs.ca}}),
        )
        .await;
    assert_eq!(status, 201, "{view}");
    let mut conn = connect_ingest(&IngestAddr::Tcp(sender.ingest.clone()))
        .await
        .unwrap();
    let mut e = Envelope::new("edge", "across the wire");
    e.origin = "RTR".into();
    e.instance_id = "4".into();
    e.tags.insert("app_name".into(), "edge".into());
    conn.send_batch(&[e]).await.unwrap();

    receiver.wait_published("edge", 1).await;
    let got = receiver.get_json("/api/v1/sources/edge/recent").await;
    let got = &got[0];
    assert_eq!(got["message"], "across the wire");
    assert_eq!(
        (got["origin"].as_str(), got["instance_id"].as_str()),
        (Some("RTR"), Some("4"))
    );
    assert_eq!(got["tags"]["app_name"], "edge");
    assert!(
        receiver.metric("sluice_syslog_malformed_total").await >= 1,
        "the plain-text handshake was counted"
    );
}

/// With `tls.client_ca_file`, `syslog_tls` takes only senders with a certificate that CA
/// signed: syslog carries no token, so this is its authentication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn syslog_tls_with_a_client_ca_takes_only_senders_it_signed() {
    let certs = Certs::generate();
    let receiver = Server::start(&format!(
        "  syslog_tls: 127.0.0.1:0\ntls:\n  cert_file: {}\n  key_file: {}\n  client_ca_file: {}\n",
        certs.cert.display(),
        certs.key.display(),
        certs.ca.display()
    ));
    let port = receiver
        .syslog_tls
        .clone()
        .expect("syslog_tls bound")
        .rsplit_once(':')
        .unwrap()
        .1
        .to_owned();
    let sender = Server::start("");
    let url = format!("syslog-tls://localhost:{port}");
    // Without a client certificate: refused by the receiver, nothing of it published.
    let (status, anonymous) = sender
        .post_json(
            "/api/v1/drains",
            json!({"source_id": "anon", "url": url, "tls": {"ca_file": certs.ca}}),
        )
        .await;
    assert_eq!(status, 201, "{anonymous}");
    // With one the receiver's CA signed: accepted.
    let (status, signed) = sender
        .post_json(
            "/api/v1/drains",
            json!({"source_id": "signed", "url": url, "tls": {"ca_file": certs.ca, "cert_file": certs.cert, "key_file": certs.key}}),
        )
        .await;
    assert_eq!(status, 201, "{signed}");
    let mut conn = connect_ingest(&IngestAddr::Tcp(sender.ingest.clone()))
        .await
        .unwrap();
    conn.send_batch(&[
        Envelope::new("anon", "no certificate"),
        Envelope::new("signed", "signed"),
    ])
    .await
    .unwrap();
    receiver.wait_published("signed", 1).await;
    receiver
        .wait_metric("sluice_syslog_malformed_total", 1)
        .await;
    let anon = common::eventually("the anonymous drain to fail", 30, async || {
        let d = sender.drain(anonymous["id"].as_str().unwrap()).await;
        (d["errors"].as_u64()? >= 1).then_some(d)
    })
    .await;
    assert_eq!(anon["sent"], 0, "{anon}");
    let unknown = receiver.get_json("/api/v1/sources/anon/recent").await;
    assert!(
        unknown["error"]
            .as_str()
            .unwrap()
            .contains("unknown source"),
        "{unknown}"
    );
}
