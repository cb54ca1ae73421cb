//! Syslog messages to envelopes (SPEC §2.2): RFC 5424 through a fast reader for the usual shape
//! ([`super::rfc5424`]) and `syslog_loose` for the rest, RFC 3164 as rsyslog reads it
//! ([`super::rfc3164`]), and RFC 6587 framing. Pure functions; the listeners
//! only move bytes.
//!
//! Mapping: APP-NAME (RFC 3164: the TAG's name) → `source_id`, else HOSTNAME; an RFC 5424
//! PROCID `[TYPE/INSTANCE]` → `origin` and `instance_id` as sent (`[TYPE]` alone: instance
//! `0`); any other PROCID (a pid, RFC 3164's `name[pid]`) → origin `SYSLOG`, the PROCID as
//! instance. A PROCID that cannot be kept that way (an origin or instance over 64 bytes) gives
//! origin `SYSLOG`, instance `0`, and the PROCID whole in the tag `syslog_procid`: nothing is
//! replaced silently. Severity 0–3 → `ERR`, else `OUT`; RFC 5424 structured data
//! `tags@47450` → `tags`; the timestamp when there is one. A PROCID of the router's own origin
//! (`[LGR/0]`, another Sluice's notice relayed by its drain) becomes `RELAYED/LGR`: kept, but
//! never mistaken for this Sluice's notices.

use std::borrow::Cow;

use bytes::Bytes;
use chrono::Datelike;
use sluice_router::envelope::{MAX_INSTANCE_ID_BYTES, is_router_origin, now_ns, validate_origin};
use sluice_router::{Channel, Envelope, validate_source_id};
use syslog_loose::{ProcId, Protocol, Variant};

use super::{rfc3164, rfc5424};

/// The origin given to syslog lines whose PROCID is not `[TYPE/INSTANCE]`.
pub const SYSLOG_ORIGIN: &str = "SYSLOG";

/// What a syslog line claiming the router's origin (`[LGR/0]`) gets in front of it.
pub const RELAYED_PREFIX: &str = "RELAYED/";

/// The tag that keeps a PROCID that could not be mapped onto `origin` and `instance_id`.
pub const PROCID_TAG: &str = "syslog_procid";

/// Why a syslog message was not turned into envelopes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyslogError {
    #[error("syslog message has neither APP-NAME nor HOSTNAME to use as source_id")]
    NoSource,
    #[error("syslog message refused: {0}")]
    Invalid(String),
}

/// Parses one syslog message into one envelope, or several when its text is longer than
/// `max_message_bytes` (split, not dropped; each part keeps the header's fields).
pub fn parse_message(
    raw: &[u8],
    max_message_bytes: usize,
    out: &mut Vec<Envelope>,
) -> Result<(), SyslogError> {
    parse_with(raw, max_message_bytes, out, true)
}

/// [`parse_message`] with every RFC 5424 message read by `syslog_loose`, none by the fast
/// reader ([`rfc5424::parse`]): what that reader must agree with (tests and fuzzing).
#[doc(hidden)]
pub fn parse_message_general(
    raw: &[u8],
    max_message_bytes: usize,
    out: &mut Vec<Envelope>,
) -> Result<(), SyslogError> {
    parse_with(raw, max_message_bytes, out, false)
}

fn parse_with(
    raw: &[u8],
    max_message_bytes: usize,
    out: &mut Vec<Envelope>,
    fast: bool,
) -> Result<(), SyslogError> {
    let mut env = Envelope::new(String::new(), Bytes::new());
    let body = match rfc5424(raw, &mut env, fast) {
        Some(body) => body?,
        None => Cow::Borrowed(rfc3164(raw, &mut env)?),
    };
    let mut body: &[u8] = &body;
    while let [rest @ .., b'\n' | b'\r'] = body {
        body = rest;
    }
    if body.len() <= max_message_bytes {
        env.message = Bytes::copy_from_slice(body);
        out.push(env);
        return Ok(());
    }
    for chunk in body.chunks(max_message_bytes.max(1)) {
        let mut part = env.clone();
        part.message = Bytes::copy_from_slice(chunk);
        out.push(part);
    }
    Ok(())
}

/// `<PRI>VERSION SP`: what RFC 5424 messages start with.
fn looks_like_rfc5424(raw: &[u8]) -> bool {
    let Some(rest) = raw.strip_prefix(b"<") else {
        return false;
    };
    let digits = rest
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    (1..=3).contains(&digits) && rest[digits..].starts_with(b">1 ")
}

/// An RFC 5424 message: the envelope's fields set and the message returned; `None` when `raw`
/// is not one (RFC 3164 is tried next, as rsyslog does). The usual shape is read by hand
/// ([`rfc5424::parse`], unless `fast` is off), the rest by `syslog_loose`.
fn rfc5424<'a>(
    raw: &'a [u8],
    env: &mut Envelope,
    fast: bool,
) -> Option<Result<Cow<'a, [u8]>, SyslogError>> {
    if !looks_like_rfc5424(raw) {
        return None;
    }
    if let Some(h) = fast.then(|| rfc5424::parse(raw)).flatten() {
        return Some(rfc5424_header(h, env).map(Cow::Borrowed));
    }
    rfc5424_general(raw, env)
}

/// The envelope's fields from a header read by [`rfc5424::parse`]: as [`rfc5424_general`] sets
/// them from what `syslog_loose` reads.
fn rfc5424_header<'a>(h: rfc5424::Header<'a>, env: &mut Envelope) -> Result<&'a [u8], SyslogError> {
    set_source(env, h.appname.or(h.hostname))?;
    match h.procid {
        // syslog_loose reads a PROCID that is an i32 as a number ("+7" and "007" are "7").
        Some(p) => match p.parse::<i32>() {
            Ok(pid) if !canonical_i32(p) => set_procid(env, Some(&pid.to_string()), true),
            _ => set_procid(env, Some(p), true),
        },
        None => set_procid(env, None, true),
    }
    env.channel = channel(Some(h.severity));
    if let Some(ts) = h.timestamp {
        env.timestamp = ts;
    }
    for (k, v) in h.tags {
        env.tags.insert(k.to_owned(), unescape_param(v));
    }
    Ok(h.msg)
}

/// Whether `s`, an i32 in decimal, is written as `i32::to_string` writes it.
fn canonical_i32(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !s.starts_with('+') && !(digits.starts_with('0') && (digits.len() > 1 || s.len() > 1))
}

/// Any RFC 5424 message, through `syslog_loose`; `None` when it does not read it as one.
fn rfc5424_general<'a>(
    raw: &'a [u8],
    env: &mut Envelope,
) -> Option<Result<Cow<'a, [u8]>, SyslogError>> {
    let text: Cow<'_, str> = String::from_utf8_lossy(raw);
    let parsed = syslog_loose::parse_message_with_year(
        &text,
        |_| chrono::Utc::now().year(),
        Variant::RFC5424,
    );
    if !matches!(parsed.protocol, Protocol::RFC5424(_)) {
        return None;
    }
    let source = parsed
        .appname
        .filter(|a| !a.is_empty() && *a != "-")
        .or(parsed.hostname.filter(|h| !h.is_empty() && *h != "-"));
    if let Err(e) = set_source(env, source) {
        return Some(Err(e));
    }
    match &parsed.procid {
        Some(ProcId::Name(name)) => set_procid(env, Some(name), true),
        Some(ProcId::PID(pid)) => set_procid(env, Some(&pid.to_string()), true),
        None => set_procid(env, None, true),
    }
    env.channel = channel(parsed.severity.map(|s| s as u8));
    if let Some(ts) = parsed.timestamp {
        env.timestamp = ts.timestamp_nanos_opt().unwrap_or(0);
    }
    for element in &parsed.structured_data {
        if element.id == "tags@47450" {
            for (k, v) in &element.params {
                env.tags.insert(k.to_string(), unescape_param(v));
            }
        }
    }

    // The message as bytes, exactly: from where it starts to the end of the frame. The parser
    // trims MSG; the RFC strips only the one space that separates it from the header, so the
    // spaces (and tabs) it trimmed before the text are given back, less that one, and so is what
    // follows the text. When the input was not UTF-8 the parser saw a lossy copy; if the header
    // before the message was ASCII, that copy's header has the same bytes as the input, so the
    // input from the same offset on is the exact message.
    let msg: &str = parsed.msg;
    let text_range = text.as_ptr() as usize..=text.as_ptr() as usize + text.len();
    let msg_at = msg.as_ptr() as usize;
    let body: Cow<'a, [u8]> = if text_range.contains(&msg_at) && !msg.is_empty() {
        let found = msg_at - text.as_ptr() as usize;
        let before = text.as_bytes();
        let mut start = found;
        while start > 0 && matches!(before[start - 1], b' ' | b'\t') {
            start -= 1;
        }
        if start < found && before[start] == b' ' {
            start += 1;
        }
        match raw.get(..start) {
            Some(header) if matches!(text, Cow::Borrowed(_)) || header.is_ascii() => {
                Cow::Borrowed(&raw[start..])
            }
            _ => Cow::Owned(msg.as_bytes().to_vec()),
        }
    } else {
        Cow::Owned(msg.as_bytes().to_vec())
    };
    Some(Ok(body))
}

/// An RFC 3164 message (or anything else: a line without a header is all message).
fn rfc3164<'a>(raw: &'a [u8], env: &mut Envelope) -> Result<&'a [u8], SyslogError> {
    let h = rfc3164::parse(raw, now_ns());
    set_source(env, h.appname.or(h.hostname))?;
    set_procid(env, h.procid, false);
    env.channel = channel(h.pri.map(|p| p & 7));
    if let Some(ts) = h.timestamp {
        env.timestamp = ts;
    }
    Ok(&raw[h.msg_at..])
}

fn set_source(env: &mut Envelope, source: Option<&str>) -> Result<(), SyslogError> {
    let source = source.ok_or(SyslogError::NoSource)?;
    validate_source_id(source).map_err(|e| SyslogError::Invalid(e.to_string()))?;
    env.source_id = source.into();
    Ok(())
}

/// Severity 0–3 (emergency to error) is `ERR`; the rest, or none, `OUT`.
fn channel(severity: Option<u8>) -> Channel {
    match severity {
        Some(s) if s <= 3 => Channel::Err,
        _ => Channel::Out,
    }
}

/// `origin` and `instance_id` from the PROCID (see the module's mapping). `bracketed`: an RFC
/// 5424 PROCID, where `[TYPE/INSTANCE]` is Loggregator's form.
fn set_procid(env: &mut Envelope, procid: Option<&str>, bracketed: bool) {
    let fits = |instance: &str| {
        !instance.is_empty()
            && instance.len() <= MAX_INSTANCE_ID_BYTES
            && instance.bytes().all(|b| (0x21..=0x7e).contains(&b))
    };
    let Some(procid) = procid.filter(|p| !p.is_empty() && *p != "-") else {
        env.origin = SYSLOG_ORIGIN.into();
        env.instance_id = "0".into();
        return;
    };
    let inner = procid
        .strip_prefix('[')
        .and_then(|p| p.strip_suffix(']'))
        .filter(|inner| bracketed && !inner.is_empty());
    if let Some(inner) = inner {
        let (origin, instance) = match inner.rsplit_once('/') {
            Some((o, i)) if !o.is_empty() && !i.is_empty() => (o, i),
            _ => (inner, "0"),
        };
        let relayed;
        let origin = if is_router_origin(origin) {
            // Another Sluice's notices, relayed by its drain: kept, but never to be taken for
            // this Sluice's own.
            relayed = format!("{RELAYED_PREFIX}{origin}");
            relayed.as_str()
        } else {
            origin
        };
        // (Found by the syslog_datagram fuzz target: the prefix once skipped this check.)
        if validate_origin(origin).is_ok() && fits(instance) {
            env.origin = origin.into();
            env.instance_id = instance.into();
            return;
        }
    } else if fits(procid) {
        env.origin = SYSLOG_ORIGIN.into();
        env.instance_id = procid.into();
        return;
    }
    env.origin = SYSLOG_ORIGIN.into();
    env.instance_id = "0".into();
    env.tags.insert(PROCID_TAG.to_owned(), procid.to_owned());
}

/// SD-PARAM values escape `"`, `\\` and `]` with a backslash (RFC 5424 §6.3.3); a backslash
/// before anything else stands for itself.
fn unescape_param(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut chars = v.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && matches!(chars.peek(), Some('"' | '\\' | ']')) {
            out.extend(chars.next());
        } else {
            out.push(c);
        }
    }
    out
}

impl SyslogError {
    /// One word for the kind, as metrics label it.
    pub fn reason(&self) -> &'static str {
        match self {
            SyslogError::NoSource => "no_source",
            SyslogError::Invalid(_) => "invalid_source_id",
        }
    }
}

/// Why a stream could not be framed; the connection is closed with this reason.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FramingError {
    #[error("octet count {0:?} is not a number")]
    BadCount(String),
    #[error("syslog frame of {declared} bytes exceeds the limit of {max} bytes")]
    TooLarge { declared: usize, max: usize },
}

impl FramingError {
    /// One word for the kind, as metrics label it.
    pub fn reason(&self) -> &'static str {
        match self {
            FramingError::BadCount(_) => "bad_octet_count",
            FramingError::TooLarge { .. } => "frame_too_large",
        }
    }
}

/// RFC 6587 framing, told apart frame by frame: a frame starting with a digit is octet counted
/// (`LEN SP MSG`), anything else runs to the next line feed.
///
/// Splits the next frame off `buf`; `Ok(None)` when more bytes are needed. A line or frame
/// longer than `max_frame_bytes` is an error (messages up to that size are split by
/// [`parse_message`], not dropped).
pub fn next_frame(
    buf: &mut bytes::BytesMut,
    max_frame_bytes: usize,
) -> Result<Option<Bytes>, FramingError> {
    // Skip stray line breaks between frames.
    while matches!(buf.first(), Some(b'\n' | b'\r')) {
        let _ = buf.split_to(1);
    }
    let Some(&first) = buf.first() else {
        return Ok(None);
    };
    if first.is_ascii_digit() {
        let Some(sp) = buf.iter().take(12).position(|&b| b == b' ') else {
            if buf.len() >= 12 {
                return Err(FramingError::BadCount(
                    String::from_utf8_lossy(&buf[..12]).into_owned(),
                ));
            }
            return Ok(None);
        };
        let digits = &buf[..sp];
        let len: usize = std::str::from_utf8(digits)
            .ok()
            .filter(|d| d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| FramingError::BadCount(String::from_utf8_lossy(digits).into_owned()))?;
        if len > max_frame_bytes {
            return Err(FramingError::TooLarge {
                declared: len,
                max: max_frame_bytes,
            });
        }
        if buf.len() < sp + 1 + len {
            buf.reserve(sp + 1 + len - buf.len());
            return Ok(None);
        }
        let _ = buf.split_to(sp + 1);
        return Ok(Some(buf.split_to(len).freeze()));
    }
    match buf.iter().position(|&b| b == b'\n') {
        Some(i) => {
            let line = buf.split_to(i + 1).freeze();
            Ok(Some(line.slice(..i)))
        }
        None if buf.len() > max_frame_bytes => Err(FramingError::TooLarge {
            declared: buf.len(),
            max: max_frame_bytes,
        }),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    fn one(raw: &[u8]) -> Envelope {
        let mut out = Vec::new();
        parse_message(raw, 1 << 16, &mut out).unwrap();
        assert_eq!(out.len(), 1);
        out.pop().unwrap()
    }

    #[test]
    fn rfc5424_as_sluice_drains_write_it() {
        let e = one(b"<11>1 2016-06-14T21:10:05.360000+00:00 org.space.app my-app [APP/PROC/WEB/3] - [tags@47450 app_name=\"web\" q=\"a\\\"b\\]c\"] boom\n");
        assert_eq!(e.source_id, "my-app");
        assert_eq!(
            (e.origin.as_str(), e.instance_id.as_str()),
            ("APP/PROC/WEB", "3")
        );
        assert_eq!(e.channel, Channel::Err);
        assert_eq!(e.timestamp, 1_465_938_605_360_000_000);
        assert_eq!(e.tags["app_name"], "web");
        assert_eq!(e.tags["q"], "a\"b]c");
        assert_eq!(&e.message[..], b"boom");
    }

    #[test]
    fn rfc3164_and_plain_procids() {
        let e = one(b"<30>Jun 14 21:10:05 host cron[1234]: job done");
        assert_eq!(e.source_id, "cron");
        assert_eq!(
            (e.origin.as_str(), e.instance_id.as_str()),
            ("SYSLOG", "1234")
        );
        assert_eq!(e.channel, Channel::Out);
        assert_eq!(&e.message[..], b"job done");
        let e = one(b"<14>1 - web01 - - - - hello");
        assert_eq!(e.source_id, "web01", "no APP-NAME: the hostname");
        assert_eq!(e.timestamp, 0, "stamped by the router on receipt");
    }

    /// Every PROCID form of the README's table; nothing replaced without a trace.
    #[test]
    fn procids_map_as_documented() {
        let ids = |raw: &[u8]| {
            let e = one(raw);
            (
                e.origin.to_string(),
                e.instance_id.to_string(),
                e.tags.get(PROCID_TAG).cloned(),
            )
        };
        let kept = |o: &str, i: &str| (o.to_owned(), i.to_owned(), None);
        assert_eq!(ids(b"<14>1 - h app [web/3] - - x"), kept("web", "3"));
        assert_eq!(
            ids(b"<14>1 - h app [APP/PROC/WEB/0] - - x"),
            kept("APP/PROC/WEB", "0")
        );
        assert_eq!(ids(b"<14>1 - h app [RTR] - - x"), kept("RTR", "0"));
        assert_eq!(ids(b"<14>1 - h app [1] - - x"), kept("1", "0"));
        assert_eq!(ids(b"<14>1 - h app 4242 - - x"), kept("SYSLOG", "4242"));
        assert_eq!(ids(b"<14>1 - h app - - - x"), kept("SYSLOG", "0"));
        assert_eq!(
            ids(b"<14>1 - h app [LGR/0] - - x"),
            kept("RELAYED/LGR", "0")
        );
        assert_eq!(
            ids(b"<14>1 - h app [lgr/0] - - x"),
            kept("RELAYED/lgr", "0")
        );
        // Too long to keep as origin or instance: the PROCID goes into a tag, whole.
        let long_instance = format!("[APP/{}]", "i".repeat(65));
        let raw = format!("<14>1 - h app {long_instance} - - x");
        assert_eq!(
            ids(raw.as_bytes()),
            ("SYSLOG".into(), "0".into(), Some(long_instance))
        );
        let long_origin = format!("[{}/1]", "O".repeat(65));
        let raw = format!("<14>1 - h app {long_origin} - - x");
        assert_eq!(
            ids(raw.as_bytes()),
            ("SYSLOG".into(), "0".into(), Some(long_origin))
        );
        let long_pid = "9".repeat(100);
        let raw = format!("<14>1 - h app {long_pid} - - x");
        assert_eq!(
            ids(raw.as_bytes()),
            ("SYSLOG".into(), "0".into(), Some(long_pid))
        );
        // RFC 3164: `name[pid]` is a pid, brackets or not inside.
        assert_eq!(
            ids(b"<13>Oct 11 22:14:15 host app[APP/0]: x"),
            kept("SYSLOG", "APP/0")
        );
    }

    /// rsyslog and syslog-ng take RFC 3164 without a timestamp and with fractional seconds.
    #[test]
    fn rfc3164_without_a_timestamp_or_with_a_fraction() {
        let e = one(b"<27>xapi: [error|xenserver|1|] Connection to master died");
        assert_eq!((e.source_id.as_str(), e.channel), ("xapi", Channel::Err));
        assert_eq!(
            &e.message[..],
            b"[error|xenserver|1|] Connection to master died"
        );
        let e = one(b"<14>123456789: HOSTNAME: %LINK-3-UPDOWN: Interface up");
        assert_eq!(e.source_id, "123456789");
        assert_eq!(&e.message[..], b"HOSTNAME: %LINK-3-UPDOWN: Interface up");
        let e = one(b"<7> Aug 29 02:00:00.156789 ctld snmpd[2499]: Connection from UDP");
        assert_eq!(
            (
                e.source_id.as_str(),
                e.origin.as_str(),
                e.instance_id.as_str()
            ),
            ("snmpd", "SYSLOG", "2499")
        );
        assert_eq!(e.timestamp % 1_000_000_000, 156_789_000);
        assert_eq!(&e.message[..], b"Connection from UDP");
    }

    /// MSG is kept byte for byte, as rsyslog keeps it: only the one separating space goes.
    #[test]
    fn the_message_keeps_its_leading_and_trailing_white_space() {
        for (raw, msg) in [
            (&b"<14>1 2003-10-11T22:14:15.003Z host app - - -  nosd-sp"[..], &b" nosd-sp"[..]),
            (
                b"<14>1 2003-10-11T22:14:15.003Z host app [APP/0] - [tags@47450 a=\"b\"]     just a test",
                b"    just a test",
            ),
            (b"<14>1 - host app - - - \tat com.example.Main.run(Main.java:5)", b"\tat com.example.Main.run(Main.java:5)"),
            (b"<14>1 - host app - - - trailing  ", b"trailing  "),
            (b"<13>Oct 11 22:14:15 host tag:  msgnum:2", b" msgnum:2"),
            // RFC 3164 has no structured data: brackets at the start are text.
            (
                b"<30>Feb  4 10:00:00 host rsyslogd:  [origin software=\"rsyslogd\" swVersion=\"8\"] start",
                b" [origin software=\"rsyslogd\" swVersion=\"8\"] start",
            ),
            (b"<14>1 - host app - - - plain\n", b"plain"),
        ] {
            let e = one(raw);
            assert_eq!(
                String::from_utf8_lossy(&e.message),
                String::from_utf8_lossy(msg),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn invalid_utf8_in_the_message_is_kept_exactly() {
        let e = one(b"<14>1 2016-06-14T21:10:05Z h app [RTR/1] - - caf\xc3\xa9 \xff\xfe end");
        assert_eq!(&e.message[..], b"caf\xc3\xa9 \xff\xfe end");
        assert_eq!(e.origin, "RTR");
    }

    #[test]
    fn long_messages_are_split_not_dropped() {
        let mut raw = b"<14>1 - h app - - - ".to_vec();
        raw.extend(std::iter::repeat_n(b'x', 250));
        let mut out = Vec::new();
        parse_message(&raw, 100, &mut out).unwrap();
        assert_eq!(
            out.iter().map(|e| e.message.len()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        assert!(out.iter().all(|e| e.source_id == "app"));
    }

    #[test]
    fn sources_that_cannot_be_ids_are_refused() {
        let mut out = Vec::new();
        assert_eq!(
            parse_message(b"<14>1 - - - - - - x", 100, &mut out),
            Err(SyslogError::NoSource)
        );
    }

    #[test]
    fn framing_is_told_apart_frame_by_frame() {
        let mut buf = BytesMut::from(&b"11 <14>1 - h a\n<14>1 - h b\n\n9 <14>1 - h"[..]);
        assert_eq!(
            next_frame(&mut buf, 100).unwrap().unwrap(),
            &b"<14>1 - h a"[..]
        );
        assert_eq!(
            next_frame(&mut buf, 100).unwrap().unwrap(),
            &b"<14>1 - h b"[..]
        );
        assert_eq!(
            next_frame(&mut buf, 100).unwrap().unwrap(),
            &b"<14>1 - h"[..]
        );
        assert_eq!(next_frame(&mut buf, 100).unwrap(), None);
        let mut buf = BytesMut::from(&b"12x4 <14>"[..]);
        assert_eq!(
            next_frame(&mut buf, 100),
            Err(FramingError::BadCount("12x4".into()))
        );
        let mut buf = BytesMut::from(&b"999999 <14>"[..]);
        assert_eq!(
            next_frame(&mut buf, 100),
            Err(FramingError::TooLarge {
                declared: 999_999,
                max: 100
            })
        );
    }
}
