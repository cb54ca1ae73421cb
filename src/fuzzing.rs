//! The properties Sluice's fuzz targets check, one function per target, each taking arbitrary
//! bytes. `fuzz/` runs them under libFuzzer (`cargo +nightly fuzz run TARGET`); the test suite
//! runs them over the kept corpus and fresh random inputs (`tests/fuzz_corpus.rs`), so CI needs
//! no nightly toolchain. Each asserts more than "no panic": round trips, limits kept, and errors
//! returned rather than raised. See RELIABILITY.md for the runs and their counts.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use bytes::BytesMut;
use sluice_drains::syslog::format::{FormatOptions, format_rfc5424};
use sluice_drains::syslog::url::DrainUrl;
use sluice_router::codec::{self, Payload};
use sluice_router::{Channel, Envelope, msgpack};
use sluice_store::persister::write_line;

use crate::config::Config;
use crate::ingest::syslog::parse::{next_frame, parse_message, parse_message_general};

/// One target's property.
pub type Check = fn(&[u8]);

/// Every target, by the name of its folder under `fuzz/corpus/` and `fuzz/fuzz_targets/`.
pub const TARGETS: &[(&str, Check)] = &[
    ("native_frames", native_frames),
    ("syslog_stream", syslog_stream),
    ("syslog_datagram", syslog_datagram),
    ("rfc5424_format", rfc5424_format),
    ("jsonl_reader", jsonl_reader),
    ("config_loader", config_loader),
    ("drain_url", drain_url),
    ("http_query", http_query),
    ("http_ingest", http_ingest),
];

/// The native stream: frames split off a byte stream, payloads decoded. A decoded batch is
/// exactly what encoding it again and decoding that gives back, and holds as many envelopes as
/// its header said; a frame is never longer than the limit; bad input is an error; decoding
/// with messages sliced out of the frame gives what decoding with copies does.
pub fn native_frames(data: &[u8]) {
    const MAX: usize = 64 * 1024;
    let mut buf = BytesMut::from(data);
    while let Ok(Some(frame)) = codec::decode_frame(&mut buf, MAX) {
        assert!(!frame.is_empty() && frame.len() <= MAX);
        let count = codec::envelope_count(&frame);
        let decoded = codec::decode_payload(&frame);
        // What ingest uses (messages sliced out of the frame) reads the same.
        assert_eq!(codec::decode_payload_shared(&frame), decoded);
        match decoded {
            Ok(Payload::Envelopes(envs)) => {
                assert_eq!(envs.len(), count, "envelope_count agrees with the decoder");
                let mut again = BytesMut::new();
                codec::encode_batch(&envs, &mut again);
                let decoded = msgpack::read_batch(&again).expect("what Sluice writes it reads");
                assert_eq!(decoded, envs);
                for env in &envs {
                    let _ = env.validate();
                }
            }
            Ok(Payload::Control(word)) => assert!(word.len() < MAX),
            Err(e) => assert!(!e.to_string().is_empty()),
        }
    }
    let _ = codec::check_eof(&buf);
}

/// Syslog over TCP: the frames found do not depend on how the stream was cut into reads, and
/// every message becomes valid envelopes no longer than the limit (or a counted refusal).
pub fn syslog_stream(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    const MAX_FRAME: usize = 4096;
    let max_message = 16 + usize::from(cut);
    let whole = frames(stream, stream.len().max(1), MAX_FRAME);
    let pieces = frames(stream, usize::from(cut % 7) + 1, MAX_FRAME);
    assert_eq!(whole, pieces, "framing depends on read boundaries");
    for frame in whole.0 {
        assert!(frame.len() <= MAX_FRAME);
        check_message(&frame, max_message);
    }
}

/// The frames `next_frame` finds when `stream` arrives `chunk` bytes at a time, and whether the
/// stream ended in a framing error.
fn frames(stream: &[u8], chunk: usize, max: usize) -> (Vec<Vec<u8>>, bool) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in stream.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match next_frame(&mut buf, max) {
                Ok(Some(f)) => out.push(f.to_vec()),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
        }
    }
    (out, false)
}

/// Syslog over UDP: one datagram, one message. (Every message checked, here and in
/// `syslog_stream`, is also read without the fast RFC 5424 reader: both must agree.)
pub fn syslog_datagram(data: &[u8]) {
    check_message(data, 1024);
}

fn check_message(raw: &[u8], max_message: usize) {
    let mut out = Vec::new();
    let parsed = parse_message(raw, max_message, &mut out);
    // The fast RFC 5424 reader reads what syslog_loose reads.
    let mut general = Vec::new();
    let general = (
        parse_message_general(raw, max_message, &mut general),
        general,
    );
    assert_eq!((parsed.clone(), out.clone()), general);
    match parsed {
        Ok(()) => {
            for env in &out {
                env.validate()
                    .unwrap_or_else(|e| panic!("syslog made an invalid envelope: {e}"));
                assert!(env.message.len() <= max_message);
            }
        }
        Err(e) => assert!(out.is_empty() && !e.to_string().is_empty()),
    }
}

/// An envelope built from arbitrary bytes, with fields a producer could send.
fn envelope(data: &[u8]) -> Envelope {
    let mut parts = data.split(|&b| b == 0xff);
    let mut field = |keep: fn(u8) -> bool, default: &str, max: usize| {
        let s: String = parts
            .next()
            .unwrap_or_default()
            .iter()
            .copied()
            .filter(|&b| keep(b))
            .take(max)
            .map(char::from)
            .collect();
        if s.is_empty() { default.to_owned() } else { s }
    };
    let visible = |b: u8| (0x21..=0x7e).contains(&b);
    // Origins are free text (Loggregator's `MY TASK`); the drain writes them canonical.
    let text = |b: u8| b.is_ascii_graphic() || b == b' ';
    let mut env = Envelope::new(field(visible, "app", 256), Vec::new());
    env.origin = field(text, "APP", 64).into();
    env.instance_id = field(visible, "0", 64).into();
    let tag = field(|b| b.is_ascii_graphic() || b == b' ', "", 40);
    if !tag.is_empty() {
        env.tags.insert("k".into(), tag);
    }
    env.channel = if data.len().is_multiple_of(2) {
        Channel::Out
    } else {
        Channel::Err
    };
    env.timestamp = i64::from(data.first().copied().unwrap_or(0)) * 1_000_000_007;
    env.seq = data.len() as u64;
    env.message = parts.next().unwrap_or_default().to_vec().into();
    env
}

/// The drain's RFC 5424 formatter: what it writes, `syslog_loose` reads back with the same
/// app name, severity and PROCID, and a plain message unchanged.
pub fn rfc5424_format(data: &[u8]) {
    let env = envelope(data);
    let mut out = Vec::new();
    format_rfc5424(&env, FormatOptions::default(), &mut out);
    assert_eq!(out.last(), Some(&b'\n'));
    assert!(!out.contains(&0), "NUL bytes are removed");
    // syslog_loose stops a header field at `:` (an RFC 3164 habit) and then reads the whole
    // line as RFC 3164, so an id holding one does not read back through it, though the bytes
    // are valid RFC 5424 (rsyslog reads them).
    // `-` is RFC 5424's NILVALUE: such an id is written, and reads back as no app name.
    if env.source_id.contains(':') || env.source_id == "-" {
        return;
    }
    let text = String::from_utf8_lossy(&out[..out.len() - 1]);
    let parsed = syslog_loose::parse_message(&text, syslog_loose::Variant::RFC5424);
    let app: String = env.source_id.chars().take(48).collect();
    assert_eq!(parsed.appname, Some(app.as_str()), "{text}");
    let severity = match env.channel {
        Channel::Out => syslog_loose::SyslogSeverity::SEV_INFO,
        Channel::Err => syslog_loose::SyslogSeverity::SEV_ERR,
    };
    assert_eq!(parsed.severity, Some(severity), "{text}");
    let message = &env.message[..];
    let plain = message.iter().all(|&b| (0x21..=0x7e).contains(&b));
    if plain && !message.is_empty() {
        assert_eq!(parsed.msg.as_bytes(), message, "{text}");
    }
}

/// The JSONL reader: any text is read without a panic, and a line the persister writes is read
/// back with its seq, stream and text.
pub fn jsonl_reader(data: &[u8]) {
    let mut by_seq = BTreeMap::new();
    let mut unsequenced = Vec::new();
    sluice_store::read::parse_jsonl(
        &String::from_utf8_lossy(data),
        &mut by_seq,
        &mut unsequenced,
    );

    let env = envelope(data);
    let mut line = Vec::new();
    write_line(&env, &mut line);
    let mut by_seq = BTreeMap::new();
    let mut unsequenced = Vec::new();
    sluice_store::read::parse_jsonl(
        std::str::from_utf8(&line).expect("the persister writes UTF-8"),
        &mut by_seq,
        &mut unsequenced,
    );
    assert!(unsequenced.is_empty());
    let read = by_seq.get(&env.seq).expect("the line is read back");
    assert_eq!(read.line, String::from_utf8_lossy(&env.message));
    let stream = match env.channel {
        Channel::Out => "stdout",
        Channel::Err => "stderr",
    };
    assert_eq!(read.stream, stream);
}

/// The config loader: any text is a config or an error naming the problem; a config that loads
/// survives being written out and loaded again.
pub fn config_loader(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    match Config::parse(&text, Path::new("fuzz.yaml")) {
        Ok(config) => {
            let written = serde_norway::to_string(&config).expect("a config can be written");
            let again = Config::parse(&written, Path::new("fuzz.yaml"))
                .unwrap_or_else(|e| panic!("{e}\n{written}"));
            assert_eq!(again, config);
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}

/// Drain URLs: any text is a URL or an error; what is shown never holds credentials, and reads
/// back as the same drain.
pub fn drain_url(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    if let Ok(url) = DrainUrl::parse(&text) {
        let shown = url.to_string();
        let authority = shown.split_once("://").map_or("", |(_, rest)| {
            rest.split(['/', '?', '#']).next().unwrap_or_default()
        });
        assert!(!authority.contains('@'), "credentials shown: {shown}");
        let again = DrainUrl::parse(&shown).unwrap_or_else(|e| panic!("{shown}: {e}"));
        assert_eq!(again.to_string(), shown);
        assert_eq!((again.scheme, again.port), (url.scheme, url.port));
    }
}

/// The query parsers of tails and `recent`: any query is a filter and numbers, or a 400 with a
/// reason; never a panic.
pub fn http_query(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut q = HashMap::new();
    for pair in text.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let decode = |s: &str| {
            percent_encoding::percent_decode_str(&s.replace('+', " "))
                .decode_utf8_lossy()
                .into_owned()
        };
        q.insert(decode(k), decode(v));
    }
    let known = [
        "limit", "origin", "channel", "step", "instance", "format", "backfill",
    ];
    match crate::http::known_params(&q, &known) {
        // `token` is every endpoint's (a bearer token where no header can go).
        Ok(()) => assert!(
            q.keys()
                .all(|k| known.contains(&k.as_str()) || k == "token")
        ),
        Err(e) => assert!(e.message.starts_with("unknown query parameter")),
    }
    if let Ok(filter) = crate::http::filter_from_query(&q) {
        assert!(filter.origins.iter().all(|o| !o.is_empty()));
        assert!(filter.instances.iter().all(|i| !i.is_empty()));
    }
    for name in ["limit", "backfill"] {
        if let Ok(Some(n)) = crate::http::number_param::<usize>(&q, name) {
            assert_eq!(q[name].parse::<usize>().ok(), Some(n));
        }
    }
}

/// `POST /api/v1/ingest`'s body, as each content type reads it, and the path table that says
/// which scope a request needs: any body is a batch of 1 to `max` envelopes or a 400/413 with a
/// reason (413 exactly when there are too many); any source id put in a path comes back out of
/// it whole.
pub fn http_ingest(data: &[u8]) {
    const MAX: usize = 8;
    let kinds = [
        None,
        Some("application/json"),
        Some("application/x-ndjson"),
        Some("application/msgpack"),
    ];
    let kind = kinds[data.first().map_or(0, |b| usize::from(*b) % kinds.len())];
    let body = data.get(1..).unwrap_or_default();
    match crate::http::ingest::decode(kind, body, MAX) {
        Ok(batch) => assert!(
            (1..=MAX).contains(&batch.len()),
            "{} envelopes",
            batch.len()
        ),
        Err(e) => {
            assert!(!e.message.is_empty());
            assert!(
                matches!(e.status.as_u16(), 400 | 413),
                "{}: {}",
                e.status,
                e.message
            );
        }
    }
    // Any visible-ASCII id, percent-encoded into a path, is the source its rule names.
    let id: String = String::from_utf8_lossy(body)
        .chars()
        .filter(|c| c.is_ascii_graphic())
        .take(64)
        .collect();
    if !id.is_empty() {
        let path = format!(
            "/api/v1/sources/{}/recent",
            crate::client::encode_component(&id)
        );
        assert_eq!(
            crate::http::auth::rule(&warp::http::Method::GET, &path),
            crate::http::auth::Rule::Read(id.clone()),
            "{path}"
        );
        let path = format!("/worker/jobs/{}/logs", crate::client::encode_component(&id));
        assert_eq!(
            crate::http::auth::rule(&warp::http::Method::POST, &path),
            crate::http::auth::Rule::Ingest(Some(id)),
            "{path}"
        );
    }
}
