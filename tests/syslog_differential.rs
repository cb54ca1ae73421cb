//! Syslog ingress against rsyslog, message by message: a corpus drawn from the test suites of
//! rsyslog, syslog-ng, influxdata/go-syslog, syslog_loose, Vector and Cloud Foundry (the
//! source is named beside each message) is sent to a real rsyslog and to `sluice serve`, and
//! the fields Sluice stored are compared with the fields rsyslog parsed, read through Sluice's
//! documented mapping (README, "Syslog in"):
//!
//! - `source_id` is APP-NAME (rsyslog's `%app-name%`, the TAG's name for RFC 3164), else
//!   HOSTNAME;
//! - an RFC 5424 PROCID `[TYPE/INSTANCE]` is `origin`/`instance_id`, `[TYPE]` has instance `0`;
//!   any other PROCID is origin `SYSLOG` with the PROCID as instance; none is `SYSLOG`/`0`;
//! - severity 0-3 is `ERR`, else `OUT`;
//! - the timestamp is rsyslog's (to the microsecond, rsyslog's precision), or the time of
//!   receipt when the message has none;
//! - the message is rsyslog's `%msg%` less trailing line breaks and, for RFC 3164, less the one
//!   space that separates it from the TAG (rsyslog keeps it; RFC 5424 calls it a separator);
//!   rsyslog runs with `parser.escapeControlCharactersOnReceive="off"`, since by default it
//!   writes a tab as `#011`, where Sluice keeps the message's bytes.
//!
//! Where Sluice deliberately differs, the case says how and why ([`Differs`]); the README lists
//! the same differences.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use chrono::Datelike;
use common::Server;
use common::rsyslog::Rsyslog;
use futures_util::StreamExt;
use serde_json::Value;
use tokio_tungstenite::connect_async;
use tokio_tungstenite::tungstenite::Message;

/// How Sluice's result differs from rsyslog's, on purpose.
#[derive(Debug, Clone, Copy)]
enum Differs {
    /// Sluice refuses the message (and counts it): it has neither APP-NAME nor HOSTNAME, and
    /// rsyslog fills in the name of the host it came from, which says nothing about its sender
    /// behind a relay.
    Refused,
    /// Sluice's values of the fields that differ (`None`: as rsyslog).
    As {
        source_id: Option<&'static str>,
        instance_id: Option<&'static str>,
        message: Option<&'static str>,
    },
}

struct Case {
    from: &'static str,
    raw: &'static [u8],
    differs: Option<(Differs, &'static str)>,
}

/// A TAG with a `/`: Sluice keeps the whole name, as syslog-ng does.
const fn slash_in_tag(from: &'static str, raw: &'static [u8]) -> Case {
    Case {
        from,
        raw,
        differs: Some((
            Differs::As {
                source_id: Some("ctld/snmpd"),
                instance_id: None,
                message: None,
            },
            "the whole TAG name, as syslog-ng's test expects it: rsyslog cuts a program name at `/` unless parser.permitSlashInProgramname is on",
        )),
    }
}

const fn same(from: &'static str, raw: &'static [u8]) -> Case {
    Case {
        from,
        raw,
        differs: None,
    }
}

fn corpus() -> Vec<Case> {
    vec![
        // rsyslog tests/testsuites/*.parse1
        same("rsyslog rfc3164.parse1", b"<34>Oct 11 22:14:15 mymachine su: 'su root' failed for lonvick on /dev/pts/8"),
        same("rsyslog reallife.parse1", b"<29>Oct 16 20:47:24 example-p exam-pl[12345]: connect host= /192.0.2.1"),
        same("rsyslog reallife.parse1", b"<175>Oct 16 23:47:31 #001 MSWinEventLog 0#011Security#01119023582#011Fri Oct 16 16:30:44 2009#011592#011Security"),
        same("rsyslog date2.parse1", b"<38>Mar 7 19:06:53 example tag: testmessage (only date actually tested)"),
        same("rsyslog upcase-date.parse1", b"<38>MAR 07 19:06:53 example tag: testmessage"),
        same("rsyslog weird.parse1", b"<14>Aug 30 23:00:05 X4711 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        same("rsyslog weird.parse1", b"<14>Aug 30 23:00:05 X4711 "),
        same("rsyslog weird.parse1", b"<14>Aug 30 23:00:05 X4711"),
        Case {
            from: "rsyslog weird.parse1",
            raw: b"<14>Aug 30 23:00:05 ",
            differs: Some((Differs::Refused, "no TAG and no HOSTNAME")),
        },
        same("rsyslog weird.parse1", b"<14>2010-08-30T23:00:05Z X4711 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"),
        same("rsyslog weird.parse1", b"<14>2010-08-30T23:00:05Z X4711"),
        same("rsyslog rfc5424-1.parse1", b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - 'su root' failed for lonvick on /dev/pts/8"),
        same("rsyslog rfc5424-2.parse1", b"<165>1 2003-08-24T05:14:15.000003-07:00 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts."),
        same("rsyslog rfc5424-4.parse1", b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"] An application event log entry..."),
        // syslog-ng lib/tests/test_msgparse.c
        Case {
            from: "syslog-ng test_msgparse.c test_timestamp",
            raw: b"<15> openvpn[2499]: PTHREAD support initialized",
            differs: Some((
                Differs::As {
                    source_id: Some("openvpn"),
                    instance_id: Some("2499"),
                    message: Some("PTHREAD support initialized"),
                },
                "as syslog-ng's test expects it: rsyslog reads no TAG after a space that no timestamp follows, and names the line after the host it came from",
            )),
        },
        same("syslog-ng test_msgparse.c test_timestamp", b"<15>Jan  1 01:00:00 bzorp openvpn[2499]: PTHREAD support initialized"),
        same("syslog-ng test_msgparse.c test_timestamp", b"<13>Jan  1 14:40:51 alma korte: message"),
        same("syslog-ng test_msgparse.c test_timestamp", b"<7>2006-11-10T10:43:21.156+02:00 bzorp openvpn[2499]: PTHREAD support initialized"),
        same("syslog-ng test_msgparse.c test_timestamp", b"<7>1 - bzorp openvpn 2499 - - PTHREAD support initialized"),
        same("syslog-ng test_msgparse.c test_hostname", b"<7>2006-10-29T02:00:00.156+01:00 %bzorp openvpn[2499]: PTHREAD support initialized"),
        same("syslog-ng test_msgparse.c test_timestamp_others", b"<7> Aug 29 02:00:00.156 ctld snmpd[2499]: PTHREAD support initialized"),
        same("syslog-ng test_msgparse.c test_timestamp_others", b"<7> Aug 29 02:00:00.156789 ctld snmpd[2499]: PTHREAD support initialized"),
        same("syslog-ng test_msgparse.c test_timestamp_others", b"<7> Aug 29 02:00:00 ctld snmpd[2499]: PTHREAD support initialized"),
        slash_in_tag("syslog-ng test_msgparse.c test_timestamp_others", b"<7>Aug 29 02:00:00 bzorp ctld/snmpd[2499]: PTHREAD support initialized"),
        same("syslog-ng test_msgparse.c test_timestamp_others", b"<190>NOV 22 00:00:33 192.168.33.8-1 CMDLOGGER[165319912]: cmd_logger_api.c(83) 13518 %% CLI:192.168.32.100:root:User  logged in"),
        same("syslog-ng test_msgparse.c test_expected_sd_pairs_0", b"<38>Sep 22 10:11:56 Message forwarded from cdaix66: sshd[679960]: Accepted publickey for nagios from 1.9.1.1 port 42096 ssh2"),
        same("syslog-ng test_msgparse.c test_expected_sd_pairs_1", b"<7>1 2006-10-29T01:59:59.156123Z mymachine.example.com evntslog - ID47 [exampleSDID@0 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"][examplePriority@0 class=\"high\"] An application event log entry..."),
        same("syslog-ng test_msgparse.c test_expected_sd_pairs_1", b"<34>1 1987-01-01T12:00:27.000087+00:20 192.0.2.1 myproc 8710 - - %% It's time to make the do-nuts."),
        slash_in_tag("syslog-ng test_msgparse.c test_expected_sd_pairs_2", b"<7>Aug 29 02:00:00 bzorp ctld/snmpd[2499]:"),
        same("syslog-ng test_msgparse.c test_expected_sd_pairs_3", b"<134>1 2009-10-16T11:51:56+02:00 exchange.macartney.esbjerg MSExchange_ADAccess 20208 - [origin ip=\"exchange.macartney.esbjerg\"][meta sequenceId=\"191732\" sysUpTime=\"68807696\"] ApplicationMSExchangeADAccess: message"),
        same("syslog-ng test_msgparse.c test_expected_sd_pairs_long", b"<132>1 2006-10-29T01:59:59.156+01:00 mymachine evntslog - - [a i=\"\\]\\\"\\\\\"] An application event log entry..."),
        same("syslog-ng test_msgparse.c test_parse_longer_than_32_sd_id", b"<5>1 2006-10-29T01:59:59.156+01:00 mymachine evntslog - - [timeQuality isSynced=\"0\"][1234567890123456789012345678901234 i=\"long_33\"] An application event log entry..."),
        // influxdata/go-syslog rfc5424 machine tests
        same("go-syslog rfc5424/machine_test.go", b"<29>1 2016-02-21T04:32:57+00:00 web1 someservice - - [origin x-service=\"someservice\"][meta sequenceId=\"14125553\"] 127.0.0.1 - - 1456029177 \"GET /v1/ok HTTP/1.1\" 200 145 \"-\" \"hacheck 0.9.0\" 24306 127.0.0.1:40124 575"),
        same("go-syslog rfc5424/machine_test.go", b"<165>1 2003-10-11T22:14:15.003Z mymachine.example.com evntslog - ID47 [exampleSDID@32473 iut=\"3\" eventSource=\"Application\" eventID=\"1011\"][examplePriority@32473 class=\"high\"]"),
        same("go-syslog rfc5424/machine_test.go", b"<1>1 2003-10-11T22:14:15.003Z host app procid msgid - msg with  two  spaces"),
        Case {
            from: "go-syslog rfc5424/machine_test.go (all NILVALUE)",
            raw: b"<1>1 - - - - - -",
            differs: Some((Differs::Refused, "neither APP-NAME nor HOSTNAME")),
        },
        // syslog_loose tests
        same("syslog_loose tests", b"<13>Feb  5 17:32:18 10.0.0.99 myapp[123]: Use the BFG!"),
        same("syslog_loose tests", b"<46>Jan  5 15:33:03 plertrood-ThinkPad-X220 rsyslogd:  [origin software=\"rsyslogd\" swVersion=\"8.32.0\" x-pid=\"20506\"] start"),
        same("syslog_loose tests", b"<190>Dec 28 16:49:07 plertrood-thinkpad-x220 nginx: 127.0.0.1 - - [28/Dec/2019:16:49:07 +0000] \"GET / HTTP/1.1\" 304 0 \"-\" \"Mozilla/5.0\""),
        same("syslog_loose tests", b"<27>xapi: [error|xenserver.test|15|xapi][xapi] Connection to master died"),
        // Vector's syslog source tests
        same("vector src/sources/syslog.rs", b"<13>1 2019-02-13T19:48:34+00:00 74794bfb6795 root 8449 - [meta sequenceId=\"1\"] i am foobar"),
        same("vector src/sources/syslog.rs", b"<13>Feb 13 20:07:26 74794bfb6795 root[8539]: i am foobar"),
        same("vector src/sources/syslog.rs", b"<34>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - \tat com.example.Main.run(Main.java:5)  "),
        // Cloud Foundry: what Loggregator's agent writes, and log-cache's syslog server tests
        same("loggregator-agent rfc5424_test.go", b"<14>1 1970-01-01T00:00:00.012345+00:00 test-hostname test-app-id [MY-TASK/2] - [tags@47450 source_type=\"MY TASK\"] just a test\n"),
        same("loggregator-agent rfc5424_test.go", b"<11>1 1970-01-01T00:00:00.012345+00:00 some-org.some-space.some-app test-app-id [MY-TASK/2] - [tags@47450 app_name=\"some-app\" organization_name=\"some-org\" source_type=\"MY TASK\" space_name=\"some-space\"] just a test\n"),
        same("loggregator-agent rfc5424_test.go (metric, no source type)", b"<14>1 1970-01-01T00:00:00.012345+00:00 test-hostname test-app-id [1] - [counter@47450 name=\"some-counter\" total=\"99\" delta=\"1\"] \n"),
        same("log-cache syslog server_test.go", b"<14>1 1970-01-01T00:00:00.012345+00:00 test-hostname test-app-id [APP/2] - [tags@47450 source_type=\"APP\"]     just a test"),
        same("log-cache syslog server_test.go", b"<14>1 2016-06-14T21:10:05.36+00:00 org.space.app app-guid [APP/PROC/WEB/0] - [tags@47450 app_name=\"app\"] message"),
        same("Loggregator with a lowercase source type", b"<14>1 2016-06-14T21:10:05+00:00 h app-guid [web/3] - - lowercase"),
        // Cisco without a timestamp
        same("issue #15 (Cisco)", b"<14>123456789: HOSTNAME: %LINK-3-UPDOWN: Interface GigabitEthernet0/1, changed state to up"),
    ]
}

/// What rsyslog parsed, read through Sluice's mapping.
#[derive(Debug, PartialEq)]
struct Fields {
    source_id: String,
    origin: String,
    instance_id: String,
    channel: String,
    /// Microseconds, or `None` for "the time of receipt".
    micros: Option<i64>,
    message: String,
}

fn rfc3339_micros(s: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .timestamp_micros()
}

fn from_rsyslog(p: &Value, now_micros: i64) -> Fields {
    let s = |k: &str| p[k].as_str().unwrap().to_owned();
    let (app, host, procid) = (s("app"), s("host"), s("procid"));
    let source_id = if app.is_empty() || app == "-" {
        host
    } else {
        app
    };
    let rfc5424 = p["version"] == 1;
    let (origin, instance_id) = match procid.as_str() {
        "" | "-" => ("SYSLOG".to_owned(), "0".to_owned()),
        p if rfc5424 && p.starts_with('[') && p.ends_with(']') => {
            let inner = &p[1..p.len() - 1];
            match inner.rsplit_once('/') {
                Some((o, i)) => (o.to_owned(), i.to_owned()),
                None => (inner.to_owned(), "0".to_owned()),
            }
        }
        p => ("SYSLOG".to_owned(), p.to_owned()),
    };
    let severity = p["pri"].as_u64().unwrap() & 7;
    let mut micros = (s("reported") != s("generated")).then(|| rfc3339_micros(&s("reported")));
    // A BSD timestamp has no year. rsyslog takes the current one (the one before only for a
    // December line in January); Sluice takes the year before whenever the current one would
    // put the line more than a day ahead of now (`Dec 28` read in November is last December's).
    const DAY_US: i64 = 86_400_000_000;
    if let Some(t) = micros.filter(|&t| !rfc5424 && t > now_micros + DAY_US) {
        let t = chrono::DateTime::from_timestamp_micros(t).unwrap();
        micros = Some(t.with_year(t.year() - 1).unwrap().timestamp_micros());
    }
    let mut message = s("msg");
    if !rfc5424 && message.starts_with(' ') {
        message.remove(0);
    }
    let message = message.trim_end_matches(['\r', '\n']).to_owned();
    Fields {
        source_id,
        origin,
        instance_id,
        channel: if severity <= 3 { "ERR" } else { "OUT" }.to_owned(),
        micros,
        message,
    }
}

fn from_sluice(e: &Value, received_micros: i64) -> Fields {
    let s = |k: &str| e[k].as_str().unwrap().to_owned();
    let micros = e["timestamp"].as_i64().unwrap() / 1000;
    Fields {
        source_id: s("source_id"),
        origin: s("origin"),
        instance_id: s("instance_id"),
        channel: s("channel"),
        // Stamped on receipt: within a minute of when the test sent it.
        micros: ((micros - received_micros).abs() > 60_000_000).then_some(micros),
        message: s("message"),
    }
}

fn octet_counted(raw: &[u8]) -> Vec<u8> {
    let mut frame = format!("{} ", raw.len()).into_bytes();
    frame.extend_from_slice(raw);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsyslog_and_sluice_read_the_peers_corpus_alike() {
    let corpus = corpus();
    let rsyslog = Rsyslog::parser();
    let server = Server::start("");

    // rsyslog: the whole corpus on one connection, one JSON line per message, in order.
    let mut to_rsyslog = TcpStream::connect(("127.0.0.1", rsyslog.tcp_port)).unwrap();
    for case in &corpus {
        to_rsyslog.write_all(&octet_counted(case.raw)).unwrap();
    }
    drop(to_rsyslog);
    let parsed: Vec<Value> = Rsyslog::wait_lines(&rsyslog.tcp_out, corpus.len())
        .await
        .iter()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();

    // Sluice: one message at a time, each waited for on the firehose (or counted as refused),
    // so each result is known to belong to its message.
    let (mut firehose, _) = connect_async(server.ws("/api/v1/firehose")).await.unwrap();
    server.wait_metric("sluice_tails_opened_total", 1).await;
    let mut to_sluice = TcpStream::connect(&server.syslog_tcp).unwrap();
    let mut refused = 0;
    let mut failures = Vec::new();
    for (case, rs) in corpus.iter().zip(&parsed) {
        let sent_at = chrono::Utc::now().timestamp_micros();
        to_sluice.write_all(&octet_counted(case.raw)).unwrap();
        let outcome = async {
            tokio::select! {
                frame = firehose.next() => {
                    let Some(Ok(Message::Text(text))) = frame else { panic!("firehose ended: {frame:?}") };
                    Some(serde_json::from_str::<Value>(&text).unwrap())
                }
                () = server.wait_metric("sluice_syslog_refused_total", refused + 1) => None,
            }
        };
        let got = tokio::time::timeout(Duration::from_secs(20), outcome)
            .await
            .unwrap_or_else(|_| panic!("{}: no envelope and no refusal", case.from));
        let raw = String::from_utf8_lossy(case.raw);
        let want = from_rsyslog(rs, sent_at);
        match (got, case.differs) {
            (None, Some((Differs::Refused, _))) => refused += 1,
            (None, _) => {
                refused += 1;
                failures.push(format!("{}: {raw:?} refused; rsyslog: {want:?}", case.from));
            }
            (Some(e), differs) => {
                let mut have = from_sluice(&e, sent_at);
                let mut want = want;
                if let Some((
                    Differs::As {
                        source_id,
                        instance_id,
                        message,
                    },
                    _,
                )) = differs
                {
                    for (slot, value) in [
                        (&mut want.source_id, source_id),
                        (&mut want.instance_id, instance_id),
                        (&mut want.message, message),
                    ] {
                        if let Some(value) = value {
                            *slot = value.to_owned();
                        }
                    }
                }
                if matches!(differs, Some((Differs::Refused, _))) {
                    failures.push(format!("{}: {raw:?} accepted, expected refused", case.from));
                } else if have != want {
                    have.micros = have.micros.filter(|_| want.micros.is_some());
                    if have != want {
                        failures.push(format!(
                            "{}: {raw:?}\n  rsyslog {want:?}\n  sluice  {have:?}",
                            case.from
                        ));
                    }
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} differ:\n{}",
        failures.len(),
        corpus.len(),
        failures.join("\n")
    );
}
