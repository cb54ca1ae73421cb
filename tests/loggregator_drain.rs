//! Loggregator's own expectations for log envelopes written to a syslog drain, ported case by
//! case and checked over a real TCP drain: the exact bytes (octet count included) that a plain
//! TCP listener receives from `sluice serve`.
//!
//! Sources, quoted beside each case:
//! - cloudfoundry/loggregator-agent-release `src/pkg/egress/syslog/tcp_test.go` ("TCPWriter")
//! - cloudfoundry/loggregator-agent-release `src/pkg/egress/syslog/rfc5424_test.go` ("RFC5424")
//!
//! Their helper `buildLogEnvelope(sourceType, instance, payload, type)` makes an envelope with
//! source id `test-app-id`, timestamp 12345678 ns and the single tag `source_type`; Sluice's
//! envelope carries the source type as `origin`, so each case sets both (the tag is what the Go
//! test's structured data shows).
//!
//! Adapted, because Sluice cannot express it:
//! - the HOSTNAME. Loggregator writes the drain binding's hostname (`test-hostname` in the
//!   tests) when the envelope has no `organization_name`/`space_name`/`app_name` tag; a Sluice
//!   drain has no such per-binding name and writes the source id (`test-app-id`). Those cases
//!   expect `test-app-id` in its place, and an octet count two smaller than the Go test's.
//!
//! Not ported, because Sluice has no such envelope:
//! - a log type other than OUT/ERR (`<-1>`): a Sluice channel is OUT or ERR;
//! - gauge, counter, timer and event envelopes: Sluice routes log lines only;
//! - the validation cases (hostname over 255, app name over 48, PROCID over 128 refused):
//!   Sluice has no binding hostname, cuts APP-NAME to RFC 5424's 48 bytes rather than dropping
//!   the line, and cuts PROCID to 128 bytes as Loggregator's current `generateProcessID` does
//!   (unit-tested in `drains/src/syslog/format.rs`).

mod common;

use common::Server;
use serde_json::json;
use sluice::client::{IngestAddr, connect_ingest};
use sluice_router::{Channel, Envelope};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::net::TcpListener;

/// `buildLogEnvelope` of the Go tests.
fn build_log_envelope(source_type: &str, instance: &str, payload: &str, err: bool) -> Envelope {
    let mut e = Envelope::new("test-app-id", payload.to_owned());
    e.origin = source_type.into();
    e.instance_id = instance.into();
    e.timestamp = 12_345_678;
    e.channel = if err { Channel::Err } else { Channel::Out };
    e.tags.insert("source_type".into(), source_type.into());
    e
}

/// One ported case: where it comes from, the envelope, and the bytes Loggregator writes.
struct Case {
    from: &'static str,
    envelope: Envelope,
    /// The Go test's expected message (without the octet count), `test-hostname` and all.
    loggregator: String,
    /// The octet count the Go test expects, where it states one (tcp_test.go).
    go_count: Option<usize>,
}

fn cases() -> Vec<Case> {
    let ts = "1970-01-01T00:00:00.012345+00:00";
    let mut cases = Vec::new();
    // tcp_test.go: "envelopes are written out with proper priority" (stdout, stderr).
    for (err, pri) in [(false, 14), (true, 11)] {
        cases.push(Case {
            from: "tcp_test.go: proper priority",
            envelope: build_log_envelope("APP", "2", "just a test", err),
            loggregator: format!(
                "<{pri}>1 {ts} test-hostname test-app-id [APP/2] - [tags@47450 source_type=\"APP\"] just a test\n"
            ),
            go_count: Some(118),
        });
    }
    // tcp_test.go: "envelopes are written out with proper process id".
    for (source_type, instance, procid, count) in [
        ("app/foo/bar", "26", "APP/FOO/BAR/26", 135),
        ("other", "1", "OTHER/1", 122),
    ] {
        cases.push(Case {
            from: "tcp_test.go: proper process id",
            envelope: build_log_envelope(source_type, instance, "just a test", false),
            loggregator: format!(
                "<14>1 {ts} test-hostname test-app-id [{procid}] - [tags@47450 source_type=\"{source_type}\"] just a test\n"
            ),
            go_count: Some(count),
        });
    }
    // tcp_test.go: "strips null termination char from message".
    cases.push(Case {
        from: "tcp_test.go: strips null termination char",
        envelope: build_log_envelope("OTHER", "1", "no null `\x00` please", false),
        loggregator: format!(
            "<14>1 {ts} test-hostname test-app-id [OTHER/1] - [tags@47450 source_type=\"OTHER\"] no null `` please\n"
        ),
        go_count: Some(128),
    });
    // tcp_test.go: "replaces spaces with dashes in the process ID".
    cases.push(Case {
        from: "tcp_test.go: replaces spaces with dashes",
        envelope: build_log_envelope("MY TASK", "2", "just a test", false),
        loggregator: format!(
            "<14>1 {ts} test-hostname test-app-id [MY-TASK/2] - [tags@47450 source_type=\"MY TASK\"] just a test\n"
        ),
        go_count: Some(126),
    });
    // rfc5424_test.go: "converts a log envelope" and "uses the correct priority for STDERR".
    for (err, pri) in [(false, 14), (true, 11)] {
        cases.push(Case {
            from: "rfc5424_test.go: converts a log envelope / STDERR priority",
            envelope: build_log_envelope("MY TASK", "2", "just a test", err),
            loggregator: format!(
                "<{pri}>1 {ts} test-hostname test-app-id [MY-TASK/2] - [tags@47450 source_type=\"MY TASK\"] just a test\n"
            ),
            go_count: None,
        });
    }
    // rfc5424_test.go: "converts tags to the RFC5424 format" (the log envelope).
    let mut e = build_log_envelope("MY TASK", "2", "just a test", true);
    e.tags.insert("log-tag".into(), "oyster".into());
    cases.push(Case {
        from: "rfc5424_test.go: converts tags",
        envelope: e,
        loggregator: format!(
            "<11>1 {ts} test-hostname test-app-id [MY-TASK/2] - [tags@47450 log-tag=\"oyster\" source_type=\"MY TASK\"] just a test\n"
        ),
        go_count: None,
    });
    // rfc5424_test.go: "builds hostname from org, space, and app name tags".
    let mut e = build_log_envelope("MY TASK", "2", "just a test", true);
    for (k, v) in [
        ("organization_name", "some-org"),
        ("space_name", "some-space"),
        ("app_name", "some-app"),
    ] {
        e.tags.insert(k.into(), v.into());
    }
    cases.push(Case {
        from: "rfc5424_test.go: builds hostname from org, space, and app name tags",
        envelope: e,
        loggregator: format!(
            "<11>1 {ts} some-org.some-space.some-app test-app-id [MY-TASK/2] - [tags@47450 app_name=\"some-app\" organization_name=\"some-org\" source_type=\"MY TASK\" space_name=\"some-space\"] just a test\n"
        ),
        go_count: None,
    });
    // rfc5424_test.go: "... and sanitizes the hostname".
    let mut e = build_log_envelope("MY TASK", "2", "just a test", true);
    for (k, v) in [
        ("organization_name", "some_org"),
        ("space_name", "some space"),
        ("app_name", "some_app--"),
    ] {
        e.tags.insert(k.into(), v.into());
    }
    cases.push(Case {
        from: "rfc5424_test.go: sanitizes the hostname",
        envelope: e,
        loggregator: format!(
            "<11>1 {ts} someorg.some-space.someapp test-app-id [MY-TASK/2] - [tags@47450 app_name=\"some_app--\" organization_name=\"some_org\" source_type=\"MY TASK\" space_name=\"some space\"] just a test\n"
        ),
        go_count: None,
    });
    // rfc5424_test.go: "truncates hostname from tags if longer than 255 characters".
    let mut e = build_log_envelope("MY TASK", "2", "just a test", true);
    let (a, b, c) = ("a".repeat(100), "b".repeat(100), "c".repeat(100));
    e.tags.insert("organization_name".into(), a.clone());
    e.tags.insert("space_name".into(), b.clone());
    e.tags.insert("app_name".into(), c.clone());
    cases.push(Case {
        from: "rfc5424_test.go: truncates hostname from tags",
        envelope: e,
        loggregator: format!(
            "<11>1 {ts} {}.{}.{} test-app-id [MY-TASK/2] - [tags@47450 app_name=\"{c}\" organization_name=\"{a}\" source_type=\"MY TASK\" space_name=\"{b}\"] just a test\n",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63)
        ),
        go_count: None,
    });
    cases
}

/// The one adaptation: no org/space/app tags → the source id where Loggregator writes the
/// binding's hostname.
fn as_sluice_writes_it(loggregator: &str) -> String {
    loggregator.replacen(" test-hostname ", " test-app-id ", 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loggregators_log_envelope_cases_byte_for_byte_over_a_tcp_drain() {
    let receiver = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let server = Server::start("");
    let (status, drain) = server
        .post_json(
            "/api/v1/drains",
            json!({"source_id": "test-app-id", "url": format!("syslog://{}", receiver.local_addr().unwrap())}),
        )
        .await;
    assert_eq!(status, 201, "{drain}");
    let (conn, _) = receiver.accept().await.unwrap();
    let mut conn = BufReader::new(conn);

    let cases = cases();
    let mut ingest = connect_ingest(&IngestAddr::Tcp(server.ingest.clone()))
        .await
        .unwrap();
    let envelopes: Vec<Envelope> = cases.iter().map(|c| c.envelope.clone()).collect();
    assert_eq!(
        ingest.send_batch(&envelopes).await.unwrap(),
        cases.len() as u64
    );

    for case in &cases {
        // RFC 6587 octet counting: `LEN SP MSG`.
        let mut len = Vec::new();
        conn.read_until(b' ', &mut len).await.unwrap();
        let declared: usize = std::str::from_utf8(&len[..len.len() - 1])
            .unwrap()
            .parse()
            .unwrap();
        let mut msg = vec![0; declared];
        conn.read_exact(&mut msg).await.unwrap();
        let msg = String::from_utf8(msg).unwrap();

        let expected = as_sluice_writes_it(&case.loggregator);
        assert_eq!(msg, expected, "{}", case.from);
        assert_eq!(declared, expected.len(), "{}", case.from);
        if let Some(go) = case.go_count {
            let adapted = case.loggregator.len() - expected.len();
            assert_eq!(
                go,
                case.loggregator.len(),
                "{}: the Go test's count",
                case.from
            );
            assert_eq!(declared, go - adapted, "{}", case.from);
        }
    }
}
