//! How envelopes look to people and to JSON clients. Pure functions, tested byte for byte.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt::Write;

use chrono::{TimeZone, Utc};
use serde::{Deserialize, Serialize};
use sluice_router::{Channel, Fields};

/// Width the `[ORIGIN/INSTANCE]` tag is padded to, as `cf logs` prints it.
const ORIGIN_TAG_WIDTH: usize = 12;

/// One line in the `cf logs` format, without a trailing newline:
/// `2016-06-14T14:10:05.36-0700 [API/0]      OUT Updated app ...`
///
/// Local time in `tz` with hundredths (truncated, as Go's `.00` layout does) and the UTC
/// offset; the origin tag padded to a fixed width; the channel; the message with its trailing
/// newline removed, invalid UTF-8 replaced and control characters escaped (see
/// [`escape_controls`]): this line goes to terminals.
pub fn cf_line<Tz: TimeZone>(env: &(impl Fields + ?Sized), tz: &Tz) -> String
where
    Tz::Offset: std::fmt::Display,
{
    let utc = Utc.timestamp_nanos(env.timestamp());
    let local = utc.with_timezone(tz);
    let hundredths = env.timestamp().rem_euclid(1_000_000_000) / 10_000_000;
    let mut out = String::with_capacity(64 + env.message().len());
    let _ = write!(
        out,
        "{}.{hundredths:02}{} {:<width$} {} ",
        local.format("%Y-%m-%dT%H:%M:%S"),
        local.format("%z"),
        env.origin_tag(),
        env.channel(),
        width = ORIGIN_TAG_WIDTH,
    );
    escape_controls(&message_text(env.message()), &mut out);
    out
}

/// Appends `text` with every control character escaped (`\n`, `\r`, `\x1b`, `\u{9b}`; a tab
/// stays a tab), so that a producer can neither forge a line of its own nor move a reader's
/// cursor, recolour or retitle their terminal. A backslash stays itself.
pub fn escape_controls(text: &str, out: &mut String) {
    for c in text.chars() {
        match c {
            '\t' => out.push('\t'),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            // C1 controls: 0x9b is a CSI of its own on many terminals.
            c if ('\u{80}'..='\u{9f}').contains(&c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// The message as text: invalid UTF-8 replaced, trailing line breaks removed.
pub fn message_text(message: &[u8]) -> Cow<'_, str> {
    let mut end = message.len();
    while end > 0 && matches!(message[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    String::from_utf8_lossy(&message[..end])
}

/// The JSON shape of an envelope (WebSocket `format=json`, `recent`): the SPEC §1 field names,
/// `message` as text with invalid UTF-8 replaced, `timestamp` in nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JsonEnvelope<'a> {
    pub timestamp: i64,
    pub source_id: Cow<'a, str>,
    pub instance_id: Cow<'a, str>,
    pub origin: Cow<'a, str>,
    pub channel: Channel,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub step: Option<Cow<'a, str>>,
    #[serde(default)]
    pub tags: Cow<'a, BTreeMap<String, String>>,
    pub message: Cow<'a, str>,
    pub seq: u64,
}

impl<'a> JsonEnvelope<'a> {
    pub fn new(env: &'a (impl Fields + ?Sized)) -> Self {
        JsonEnvelope {
            timestamp: env.timestamp(),
            source_id: Cow::Borrowed(env.source_id()),
            instance_id: Cow::Borrowed(env.instance_id()),
            origin: Cow::Borrowed(env.origin()),
            channel: env.channel(),
            step: env.step().map(Cow::Borrowed),
            tags: Cow::Borrowed(env.tags()),
            message: String::from_utf8_lossy(env.message()),
            seq: env.seq(),
        }
    }
}

/// One envelope as a JSON object on one line.
pub fn json_line(env: &(impl Fields + ?Sized)) -> String {
    // Serialising strings, numbers and a string map cannot fail.
    serde_json::to_string(&JsonEnvelope::new(env)).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::FixedOffset;
    use sluice_router::Envelope;

    fn env(origin: &str, instance: &str, channel: Channel, ts: i64, msg: &[u8]) -> Envelope {
        let mut e = Envelope::new("spring-music", msg.to_vec());
        e.origin = origin.into();
        e.instance_id = instance.into();
        e.channel = channel;
        e.timestamp = ts;
        e
    }

    #[test]
    fn cf_lines_match_the_cf_cli_byte_for_byte() {
        let pdt = FixedOffset::west_opt(7 * 3600).unwrap();
        // 2016-06-14T21:10:05.369Z
        let ts = 1_465_938_605_369_999_999;
        assert_eq!(
            cf_line(
                &env(
                    "API",
                    "0",
                    Channel::Out,
                    ts,
                    b"Updated app with guid cdabc600\n"
                ),
                &pdt
            ),
            "2016-06-14T14:10:05.36-0700 [API/0]      OUT Updated app with guid cdabc600"
        );
        assert_eq!(
            cf_line(&env("CELL", "0", Channel::Out, ts, b"Exit status 0"), &pdt),
            "2016-06-14T14:10:05.36-0700 [CELL/0]     OUT Exit status 0"
        );
        assert_eq!(
            cf_line(
                &env("APP/PROC/WEB", "12", Channel::Err, ts, b"bad \xff byte"),
                &Utc
            ),
            "2016-06-14T21:10:05.36+0000 [APP/PROC/WEB/12] ERR bad \u{fffd} byte"
        );
    }

    #[test]
    fn cf_lines_escape_control_characters_so_no_line_can_be_forged() {
        let forged = b"ok\n2016-06-14T21:10:05.36+0000 [RTR/0]      OUT fake\r\x1b[2J\x1b]0;title\x07\tt\xc2\x9b31m\x7f\\n\n";
        let line = cf_line(&env("APP", "0", Channel::Out, 0, forged), &Utc);
        assert_eq!(
            line,
            "1970-01-01T00:00:00.00+0000 [APP/0]      OUT ok\\n2016-06-14T21:10:05.36+0000 [RTR/0]      OUT fake\\r\\x1b[2J\\x1b]0;title\\x07\tt\\u{9b}31m\\x7f\\n"
        );
        assert!(!line.chars().any(|c| c.is_control() && c != '\t'));
    }

    #[test]
    fn json_keeps_field_names_and_replaces_bad_utf8() {
        let mut e = env("RTR", "1", Channel::Out, 5, b"caf\xc3\xa9 \xff");
        e.seq = 9;
        e.tags.insert("app_name".into(), "x".into());
        assert_eq!(
            json_line(&e),
            r#"{"timestamp":5,"source_id":"spring-music","instance_id":"1","origin":"RTR","channel":"OUT","tags":{"app_name":"x"},"message":"café �","seq":9}"#
        );
        let back: Envelope = serde_json::from_str(&json_line(&e)).unwrap();
        assert_eq!(back.message, "café \u{fffd}".as_bytes());
    }
}
