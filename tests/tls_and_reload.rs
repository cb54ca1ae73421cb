//! TLS on the HTTP listener and on native ingest, with real clients (`curl --cacert`, Python's
//! `websockets` over `wss://`, rustls for native frames), and SIGHUP reloading tokens, the
//! certificate and `drains.bind` while a tail reads and a producer sends: no line lost, no
//! connection dropped, a bad config refused whole.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::Server;
use common::tls::Certs;
use futures_util::StreamExt;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use sluice::auth::hash_hex;
use sluice::client::IngestConnection;
use sluice_router::Envelope;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// `curl --cacert CA https://localhost:PORT/PATH` (resolved to the server's loopback port):
/// the status, or `None` if the TLS handshake or verification failed.
fn curl(ca: &std::path::Path, http: &str, path: &str, token: Option<&str>) -> Option<u16> {
    let port = http.rsplit_once(':').unwrap().1;
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .arg(format!("https://localhost:{port}{path}"));
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    let out = cmd.output().expect("curl (./test.sh installs it)");
    let code: u16 = String::from_utf8_lossy(&out.stdout).parse().unwrap_or(0);
    (out.status.success() && code != 0).then_some(code)
}

/// An HTTPS client that trusts `cas`, with `localhost` at the server's loopback address.
fn https(cas: &[&std::path::Path], http: &str) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().resolve("localhost", http.parse().unwrap());
    for ca in cas {
        let pem = std::fs::read(ca).unwrap();
        builder = builder.add_root_certificate(reqwest::Certificate::from_pem(&pem).unwrap());
    }
    builder.build().unwrap()
}

/// A rustls client that trusts `ca`.
fn connector(ca: &std::path::Path) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

async fn native_tls(ca: &std::path::Path, ingest: &str, token: Option<&str>) -> IngestConnection {
    let tcp = TcpStream::connect(ingest).await.unwrap();
    let tls = connector(ca)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    IngestConnection::over(tls, ingest, "ack=count", token)
        .await
        .unwrap()
}

fn tls_config(certs: &Certs) -> String {
    format!(
        "tls:\n  cert_file: {}\n  key_file: {}\n  http: true\n  ingest: true\n",
        certs.cert.display(),
        certs.key.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_wss_and_native_ingest_over_tls_with_real_clients() {
    let certs = Certs::generate();
    let server = Server::start(&tls_config(&certs));

    // Native frames over TLS.
    let mut conn = native_tls(&certs.ca, &server.ingest, None).await;
    let batch: Vec<Envelope> = (0..3)
        .map(|i| Envelope::new("secure", format!("line {i}")))
        .collect();
    assert_eq!(conn.send_batch(&batch).await.unwrap(), 3);

    // curl over HTTPS, verifying the certificate; refused by a client that trusts another CA.
    assert_eq!(curl(&certs.ca, &server.http, "/healthz", None), Some(200));
    assert_eq!(curl(&certs.other_ca, &server.http, "/healthz", None), None);
    // Plain HTTP to the TLS port gets no answer, and costs the server nothing.
    let plain = reqwest::get(format!("http://{}/healthz", server.http)).await;
    assert!(plain.is_err() || !plain.unwrap().status().is_success());
    assert_eq!(curl(&certs.ca, &server.http, "/healthz", None), Some(200));

    // Python's websockets over wss://: backfill of the three lines.
    let python = std::env::var("SLUICE_PYTHON").unwrap_or_else(|_| "python3".into());
    let port = server.http.rsplit_once(':').unwrap().1;
    let script = format!(
        r#"
import asyncio, json, ssl, websockets
async def main():
    ctx = ssl.create_default_context(cafile={ca:?})
    async with websockets.connect("wss://localhost:{port}/api/v1/sources/secure/stream?backfill=3", ssl=ctx, server_hostname="localhost", host="127.0.0.1") as ws:
        for _ in range(3):
            print(json.loads(await ws.recv())["message"])
asyncio.run(main())
"#,
        ca = certs.ca.display().to_string(),
    );
    let out = Command::new(&python)
        .args(["-c", &script])
        .output()
        .unwrap_or_else(|e| panic!("{python}: {e} (./test.sh installs websockets)"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "line 0\nline 1\nline 2\n"
    );
}

/// A drain target: counts the octet-counted messages it receives.
async fn sink() -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(AtomicU64::new(0));
    let seen = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = vec![0; 64 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        return;
                    }
                    // Each message ends in a line feed (the payloads have none of their own).
                    let lines = buf[..n].iter().filter(|&&b| b == b'\n').count();
                    seen.fetch_add(lines as u64, Ordering::Relaxed);
                }
            });
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_tokens_certificate_and_drains_under_load_losing_nothing() {
    let (a, b) = (Certs::generate(), Certs::generate());
    let server_dir = common::temp_dir("reload-certs");
    let (cert, key) = (server_dir.join("server.pem"), server_dir.join("server.key"));
    std::fs::copy(&a.cert, &cert).unwrap();
    std::fs::copy(&a.key, &key).unwrap();
    let (sink1, got1) = sink().await;
    let (sink2, got2) = sink().await;
    let section = |token: &str, drain: &str| {
        format!(
            "auth:\n  tokens:\n    - name: ops\n      sha256: \"{}\"\n      scopes: [operator]\ndrains:\n  bind:\n    - source_id: load\n      url: \"syslog://{drain}\"\ntls:\n  cert_file: {}\n  key_file: {}\n  http: true\n  ingest: true\n",
            hash_hex(token),
            cert.display(),
            key.display()
        )
    };
    let server = Server::start(&section("old-token", &sink1));
    let config_file = server.dir.join("sluice.yaml");
    let original = std::fs::read_to_string(&config_file).unwrap();
    let rewrite = |from: &str, to: &str| {
        std::fs::write(&config_file, original.replace(from, to)).unwrap();
    };
    let hup = || {
        let ok = Command::new("kill")
            .args(["-HUP", &server.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok);
    };
    let metric = async |name: &str| -> u64 {
        let client = https(&[&a.ca, &b.ca], &server.http);
        let port = server.http.rsplit_once(':').unwrap().1;
        let mut sum = 0;
        for token in ["old-token", "new-token"] {
            let Ok(resp) = client
                .get(format!("https://localhost:{port}/metrics"))
                .bearer_auth(token)
                .send()
                .await
            else {
                continue;
            };
            if resp.status() == 200 {
                let text = resp.text().await.unwrap();
                sum = common::metric_sum(&text, name).unwrap_or(0);
            }
        }
        sum
    };

    // A tail over wss (old token), and a producer over TLS native ingest, both kept open
    // across the reloads.
    let port = server.http.rsplit_once(':').unwrap().1;
    let mut request = format!("ws://localhost:{port}/api/v1/sources/load/stream?format=json")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", "Bearer old-token".parse().unwrap());
    let tcp = TcpStream::connect(&server.http).await.unwrap();
    let tls = connector(&a.ca)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    let (mut tail, _) = tokio_tungstenite::client_async(request, tls).await.unwrap();
    let mut producer = native_tls(&a.ca, &server.ingest, Some("old-token")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicU64::new(0));
    let sending = {
        let (stop, sent) = (stop.clone(), sent.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let n = sent.load(Ordering::Relaxed);
                let batch: Vec<Envelope> = (n..n + 50)
                    .map(|i| Envelope::new("load", format!("line {i}")))
                    .collect();
                assert_eq!(producer.send_batch(&batch).await.unwrap(), 50);
                sent.fetch_add(50, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        })
    };
    common::eventually("the first drain to receive", 30, async || {
        (got1.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;

    // A bad config (a token hash that is not one) is refused whole: the old token still works.
    rewrite(&hash_hex("old-token"), "not-a-hash");
    hup();
    common::eventually("the refusal", 30, async || {
        (metric("sluice_config_reloads_total").await >= 1).then_some(())
    })
    .await;
    assert_eq!(
        curl(&a.ca, &server.http, "/metrics", Some("old-token")),
        Some(200)
    );

    // The new config: another token, another certificate, the drain moved to the second sink.
    std::fs::copy(&b.cert, &cert).unwrap();
    std::fs::copy(&b.key, &key).unwrap();
    std::fs::write(
        &config_file,
        original
            .replace(&hash_hex("old-token"), &hash_hex("new-token"))
            .replace(&sink1, &sink2),
    )
    .unwrap();
    hup();
    common::eventually("the new certificate and token", 30, async || {
        (curl(&b.ca, &server.http, "/metrics", Some("new-token")) == Some(200)).then_some(())
    })
    .await;
    assert_eq!(
        curl(&b.ca, &server.http, "/metrics", Some("old-token")),
        Some(401)
    );
    assert_eq!(
        curl(&a.ca, &server.http, "/healthz", None),
        None,
        "the old certificate is gone"
    );
    common::eventually("the second drain to receive", 30, async || {
        (got2.load(Ordering::Relaxed) > 0).then_some(())
    })
    .await;
    let drains: serde_json::Value = https(&[&b.ca], &server.http)
        .get(format!("https://localhost:{port}/api/v1/drains"))
        .bearer_auth("new-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let urls: Vec<&str> = drains
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["url"].as_str().unwrap())
        .collect();
    assert_eq!(urls, [format!("syslog://{sink2}")]);

    // Stop sending: the tail, opened before both reloads, has every line, in order, no gap.
    stop.store(true, Ordering::Relaxed);
    sending.await.unwrap();
    let total = sent.load(Ordering::Relaxed);
    assert!(total > 0);
    let mut next = 0u64;
    while next < total {
        let msg = tokio::time::timeout(std::time::Duration::from_secs(20), tail.next())
            .await
            .expect("the tail goes on")
            .unwrap()
            .unwrap();
        let Message::Text(text) = msg else { continue };
        let e: serde_json::Value = serde_json::from_str(&text).unwrap();
        if e["origin"] == "LGR" {
            continue;
        }
        assert_eq!(e["message"], format!("line {next}"), "no gap, no duplicate");
        next += 1;
    }
    assert!(metric("sluice_config_reloads_total").await >= 2);
}

/// `sluice emit` and `sluice logs` (recent and following) against a server that speaks TLS
/// on both sides: `tls://` and `https://` addresses, `--cacert`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_tls_with_cacert() {
    use std::io::{BufRead, BufReader, Write};
    use std::process::Stdio;
    let certs = Certs::generate();
    let server = Server::start(&tls_config(&certs));
    let https_url = format!("https://{}", server.http);
    let ca = certs.ca.display().to_string();
    let mut follow = Command::new(common::SLUICE)
        .args(["logs", "cli-tls", "--http", &https_url, "--cacert", &ca])
        .env("TZ", "UTC")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let client = https(&[&certs.ca], &server.http);
    let port = server.http.rsplit_once(':').unwrap().1.to_owned();
    common::eventually("the tail to open", 30, async || {
        let text = client
            .get(format!("https://localhost:{port}/metrics"))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (common::metric_sum(&text, "sluice_tails_opened_total")? >= 1).then_some(())
    })
    .await;
    let mut emit = Command::new(common::SLUICE)
        .args(["emit", "--source", "cli-tls", "--ingest"])
        .arg(format!("tls://{}", server.ingest))
        .args(["--cacert", &ca])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(emit.stdin.take().unwrap(), "over tls").unwrap();
    let out = emit.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut lines = BufReader::new(follow.stdout.take().unwrap()).lines();
    let line = tokio::task::spawn_blocking(move || lines.next().unwrap().unwrap())
        .await
        .unwrap();
    assert!(line.ends_with("OUT over tls"), "{line}");
    let _ = follow.kill();
    let _ = follow.wait();
    let out = common::output_ok(Command::new(common::SLUICE).args([
        "logs", "cli-tls", "--recent", "--http", &https_url, "--cacert", &ca,
    ]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("OUT over tls"));
    // Trusting another CA: refused, with the reason.
    let other = certs.other_ca.display().to_string();
    let out = Command::new(common::SLUICE)
        .args([
            "logs", "cli-tls", "--recent", "--http", &https_url, "--cacert", &other,
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(!out.stderr.is_empty());
}
