//! The page at `/` in headless Chromium, as a person uses it: the sources list, a live tail with
//! ERR lines marked, filters, pause and resume without a gap, a loss notice, a job's steps and
//! server events, history from storage, a token prompt, and a flood it must not freeze under.
//! Lines are sent through the binary. Screenshots go to `SLUICE_SCREENSHOTS` when set (the
//! README's pictures come from `SLUICE_SCREENSHOTS=docs/screenshots`).

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::browser::Browser;
use common::{SLUICE, Server, until};
use serde_json::json;
use sluice::auth::hash_hex;
use sluice::client::{IngestAddr, connect_ingest, connect_ingest_as};
use sluice_router::Envelope;

/// `sluice emit` with `lines` on its standard input.
fn emit(server: &Server, source: &str, lines: &[&str], extra: &[&str]) {
    let mut child = Command::new(SLUICE)
        .args(["emit", "--source", source, "--ingest", &server.ingest])
        .args(extra)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        writeln!(stdin, "{l}").unwrap();
    }
    drop(stdin);
    assert!(child.wait().unwrap().success());
}

fn rows_are(n: usize) -> String {
    format!("document.querySelectorAll('#log .row').length === {n}")
}

const SEQS: &str = "[...document.querySelectorAll('#log .row')].map(r => Number(r.dataset.seq))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_tails_filters_pauses_and_reads_a_jobs_steps() {
    let server = Server::start("");
    emit(&server, "web", &["GET / 200", "hello world", "bye"], &[]);
    emit(&server, "web", &["boom"], &["--stderr"]);
    // The page is the binary's own, and may load nothing else.
    let index = server.client.get(server.url("/")).send().await.unwrap();
    assert_eq!(index.status(), 200);
    assert!(
        index.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .starts_with("default-src 'none'; script-src 'self'")
    );
    let mut page = Browser::start(1280, 720).await;
    page.goto(&server.url("/")).await;
    page.click("#sources tr.source[data-source='web']", false)
        .await;
    page.wait_for(&rows_are(4)).await;
    assert_eq!(
        page.texts("#log .row .msg").await,
        ["GET / 200", "hello world", "bye", "boom"]
    );
    assert_eq!(
        page.eval("document.querySelector('#log .row:last-child').className")
            .await,
        "row err",
        "ERR lines are marked"
    );
    assert_eq!(page.texts("#status").await, ["live"]);

    // Filters: text, then channel.
    page.type_into("#f-text", "WORLD").await;
    page.wait_for(&rows_are(1)).await;
    assert_eq!(page.texts("#log .row .msg").await, ["hello world"]);
    page.type_into("#f-text", "").await;
    page.type_into("#f-channel", "ERR").await;
    page.wait_for(&rows_are(1)).await;
    assert_eq!(page.texts("#log .row .msg").await, ["boom"]);
    page.type_into("#f-channel", "").await;
    page.wait_for(&rows_are(4)).await;

    // Paused, the page holds no socket: lines sent meanwhile come after resuming, by seq.
    page.click("#pause", false).await;
    page.wait_for("document.getElementById('status').textContent === 'paused'")
        .await;
    page.wait_for("[...sluice.state.tails.values()].every(t => t.ws === null)")
        .await;
    let during: Vec<String> = (1..=5).map(|i| format!("while paused {i}")).collect();
    let during: Vec<&str> = during.iter().map(String::as_str).collect();
    emit(&server, "web", &during, &[]);
    server.wait_published("web", 9).await;
    assert_eq!(page.eval("sluice.state.received").await, 4);
    assert_eq!(page.texts("#pause").await, ["Resume"]);
    page.click("#pause", false).await;
    page.wait_for(&rows_are(9)).await;
    assert_eq!(page.eval(SEQS).await, json!([1, 2, 3, 4, 5, 6, 7, 8, 9]));

    // A loss, announced by a sender, is shown as one.
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let dropped = json!({"event": "dropped", "source_id": "web", "lines": 7, "bytes": 700,
        "since_ns": sluice_router::envelope::now_ns()});
    conn.send_event(&dropped).await.unwrap();
    page.wait_for("document.querySelector('#log .row.loss')")
        .await;
    let loss = page.texts("#log .row.loss .msg").await;
    assert!(loss[0].starts_with("the sender dropped 7 lines (700 bytes)"));
    page.screenshot("tail.png").await;

    // A job in Strøm's shape: its steps, and its server events beside the lines.
    for (step, script) in [
        ("build", "echo compiling; echo 'warning: unused' >&2"),
        ("test", "echo testing; exit 1"),
    ] {
        let out = Command::new(SLUICE)
            .args(["run", "--source", "job-7", "--step", step, "--quiet"])
            .args(["--ingest", &server.ingest, "--", "sh", "-c", script])
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(if step == "test" { 1 } else { 0 }));
    }
    page.click("#sources tr.source[data-source='job-7']", false)
        .await;
    page.wait_for(&rows_are(5)).await;
    assert_eq!(
        page.eval("[...document.querySelectorAll('#steps button')].map(b => b.dataset.step)")
            .await,
        json!(["build", "test"])
    );
    assert_eq!(
        page.texts("#server-lines .msg").await,
        ["exited with status 0", "exited with status 1"]
    );
    page.click("#steps button[data-step='test']", false).await;
    page.wait_for(&rows_are(1)).await;
    assert_eq!(page.texts("#log .row .msg").await, ["testing"]);
    page.click("#steps button[data-step='test']", false).await;
    page.wait_for(&rows_are(5)).await;
    page.screenshot("job.png").await;

    // Ctrl-click adds a source: both on one page, each line with its source.
    page.click("#sources tr.source[data-source='web']", true)
        .await;
    page.wait_for(&rows_are(15)).await;
    assert_eq!(page.texts("#tailing").await, ["Tailing job-7, web"]);
    let sources: Vec<String> = page.texts("#log .row .src").await;
    assert_eq!(sources.iter().filter(|s| s.trim() == "web").count(), 10);
    assert_eq!(sources.iter().filter(|s| s.trim() == "job-7").count(), 5);

    // History: a tail starts 500 lines back; earlier ones come from storage on request.
    let many: Vec<String> = (1..=2000).map(|i| format!("line {i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    emit(&server, "long", &many, &[]);
    page.goto(&server.url("/#/sources/long")).await;
    page.wait_for(&rows_are(500)).await;
    assert_eq!(
        page.eval("Number(document.querySelector('#log .row').dataset.seq)")
            .await,
        1501
    );
    page.click("#earlier", false).await;
    page.wait_for(&rows_are(1500)).await;
    page.click("#earlier", false).await;
    page.wait_for(&rows_are(2000)).await;
    let seqs = page.eval(SEQS).await;
    assert_eq!(
        seqs,
        json!((1..=2000).collect::<Vec<u64>>()),
        "every line once, in order"
    );

    // A producer's markup is shown, never run.
    let evil = "<img src=x onerror=\"window.pwned=1\"><script>window.pwned=2</script>";
    emit(&server, "evil", &[evil], &[]);
    page.goto(&server.url("/#/sources/evil")).await;
    page.wait_for(&rows_are(1)).await;
    assert_eq!(page.texts("#log .row .msg").await, [evil]);
    assert_eq!(
        page.eval(
            "[typeof window.pwned, document.querySelectorAll('#log img, #log script').length]"
        )
        .await,
        json!(["undefined", 0])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_tokens_the_page_asks_for_one() {
    const OPS: &str = "ops-token-for-the-page";
    const READER: &str = "reader-token-for-the-page";
    let server = Server::start(&format!(
        "auth:\n  tokens:\n    - name: ops\n      sha256: \"{}\"\n      scopes: [operator, ingest]\n    - name: reader\n      sha256: \"{}\"\n      scopes: [read]\n      sources: [\"app-*\"]\n",
        hash_hex(OPS),
        hash_hex(READER)
    ));
    let mut conn = connect_ingest_as(
        &IngestAddr::Tcp(server.ingest.clone()),
        "ack=count",
        Some(OPS),
    )
    .await
    .unwrap();
    conn.send_batch(&[Envelope::new("app-1", "behind a token")])
        .await
        .unwrap();

    let mut page = Browser::start(1024, 600).await;
    page.goto(&server.url("/")).await;
    page.wait_for("document.getElementById('token-dialog').open")
        .await;
    assert!(
        page.texts("#token-reason").await[0].contains("needs a token"),
        "{:?}",
        page.texts("#token-reason").await
    );
    page.screenshot("token.png").await;
    // A reader's token cannot list sources, but opens its own by id.
    page.type_into("#token-input", READER).await;
    page.eval("document.getElementById('token-form').requestSubmit()")
        .await;
    page.wait_for("!document.getElementById('sources-note').hidden")
        .await;
    page.type_into("#open-source", "app-1").await;
    page.eval("document.getElementById('open-form').requestSubmit()")
        .await;
    page.wait_for(&rows_are(1)).await;
    assert_eq!(page.texts("#log .row .msg").await, ["behind a token"]);
    // An operator's lists them.
    page.click("#token-button", false).await;
    page.type_into("#token-input", OPS).await;
    page.eval("document.getElementById('token-form').requestSubmit()")
        .await;
    page.wait_for("document.querySelector(\"#sources tr.source[data-source='app-1']\")")
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_lines_a_second_stay_bounded_on_the_page() {
    // A ring that holds the whole flood (the default 16 MiB holds ~40,000 of these lines): on
    // a loaded 2-core CI machine the browser can be starved for seconds, and an overwritten
    // page would get a loss notice in place of lines (shown and tested elsewhere) instead of
    // catching up, which is what this test is about.
    let server = Server::start("router:\n  ring_max_bytes: 67108864\n");
    let mut page = Browser::start(1280, 720).await;
    page.goto(&server.url("/#/sources/flood")).await;
    page.wait_for("document.getElementById('status').textContent === 'live'")
        .await;
    page.eval("sluice.state.maxStall = 0").await;
    // 50,000 lines at 10,000 a second: batches of 1,000 every 100 ms.
    let mut conn = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    for b in 0..50 {
        tick.tick().await;
        let batch: Vec<Envelope> = (0..1000)
            .map(|i| Envelope::new("flood", format!("line {}", b * 1000 + i)))
            .collect();
        conn.send_batch(&batch).await.unwrap();
    }
    // Says how far the page got (and whether a loss notice came) if it never gets there.
    until("the page to receive all 50,000 lines", 30, async || {
        let counts = page
            .eval(
                "sluice.state.received === 50000 || document.getElementById('counts').textContent",
            )
            .await;
        if counts == true { Ok(()) } else { Err(counts) }
    })
    .await;
    page.wait_for(
        "document.querySelector('#log .row:last-child .msg').textContent === 'line 49999'",
    )
    .await;
    let rows = page
        .eval("document.querySelectorAll('#log .row').length")
        .await;
    assert_eq!(rows, 5000, "the page keeps at most 5,000 rows");
    let stall = page.eval("Math.round(sluice.state.maxStall)").await;
    eprintln!("longest the page's timers ran late during the flood: {stall} ms");
}
