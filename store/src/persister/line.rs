//! One envelope as one JSONL line, Strøm's four fields first:
//! `{"ts":"2025-02-12T10:56:45.123Z","stream":"stdout","step":"say-hello","line":"Hello World","origin":"APP/0","seq":17}`
//! (`step` is left out when the envelope has none).
//!
//! Written by hand, escaping 8 bytes at a time, rather than with `format!` and serde: those were
//! ~13% of the persister's samples; by hand `write_line` went from 7.2 to 11.0 M lines/s per
//! core (BENCHMARKS.md, "Profiles").

use std::cell::Cell;

use serde::{Deserialize, Serialize};
use sluice_router::envelope::UtcTime;
use sluice_router::{Channel, Envelope, Fields};

/// The step name of router-side events about a source.
pub use sluice_router::envelope::SERVER_STEP;

/// Appends the JSONL line (with its newline) for `env` to `out`.
///
/// This runs once per line the persister writes, so it writes straight into `out`: no
/// formatting machinery, no intermediate strings unless the message is not valid UTF-8.
pub fn write_line(env: &(impl Fields + ?Sized), out: &mut Vec<u8>) {
    let message = env.message();
    out.reserve(112 + message.len() + env.origin().len() + env.instance_id().len());
    out.extend_from_slice(b"{\"ts\":\"");
    write_ts(env.timestamp(), out);
    out.extend_from_slice(b"Z\",\"stream\":\"");
    out.extend_from_slice(match env.channel() {
        Channel::Out => b"stdout\"",
        Channel::Err => b"stderr\"",
    });
    if let Some(step) = env.step() {
        out.extend_from_slice(b",\"step\":\"");
        escape_json(step.as_bytes(), out);
        out.push(b'"');
    }
    out.extend_from_slice(b",\"line\":\"");
    let mark = out.len();
    if !escape_ascii(message, out) {
        out.truncate(mark);
        match std::str::from_utf8(message) {
            Ok(text) => escape_json(text.as_bytes(), out),
            Err(_) => escape_json(String::from_utf8_lossy(message).as_bytes(), out),
        }
    }
    out.extend_from_slice(b"\",\"origin\":\"");
    escape_json(env.origin().as_bytes(), out);
    out.push(b'/');
    escape_json(env.instance_id().as_bytes(), out);
    out.extend_from_slice(b"\",\"seq\":");
    write_u64(env.seq(), out);
    out.extend_from_slice(b"}\n");
}

/// Appends `YYYY-MM-DDTHH:MM:SS.mmm` (UTC, milliseconds truncated). Consecutive lines are
/// usually of one second: its text is kept per thread and only the milliseconds are written
/// (the calendar arithmetic and digits were ~3% of the server at 1.5 M lines/s).
fn write_ts(ns: i64, out: &mut Vec<u8>) {
    thread_local!(static SECOND: Cell<(i64, [u8; 19])> = const { Cell::new((i64::MIN, [0; 19])) });
    let secs = ns.div_euclid(1_000_000_000);
    let (cached, text) = SECOND.get();
    if cached == secs {
        out.extend_from_slice(&text);
    } else {
        let start = out.len();
        UtcTime::from_ns(ns).write_rfc3339(out, 0, "");
        // Always 19 bytes (i64 nanoseconds reach from 1677 to 2262); kept only if so.
        if let Ok(text) = <[u8; 19]>::try_from(&out[start..]) {
            SECOND.set((secs, text));
        }
    }
    let ms = (ns.rem_euclid(1_000_000_000) / 1_000_000) as u32;
    out.extend_from_slice(&[
        b'.',
        b'0' + (ms / 100) as u8,
        b'0' + (ms / 10 % 10) as u8,
        b'0' + (ms % 10) as u8,
    ]);
}

/// What each byte becomes inside a JSON string: 0 = itself, `u` = `\u00XX`, else `\` + it.
const ESCAPE: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < 0x20 {
        t[i] = b'u';
        i += 1;
    }
    t[0x08] = b'b';
    t[0x09] = b't';
    t[0x0a] = b'n';
    t[0x0c] = b'f';
    t[0x0d] = b'r';
    t[b'"' as usize] = b'"';
    t[b'\\' as usize] = b'\\';
    t
};

/// Whether any of the 8 bytes in `w` needs escaping: below 0x20, `"` or `\\` (the classic
/// "has a byte less than / equal to" bit tricks; exact for "any").
fn word_needs_escape(w: u64) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let zero_byte = |v: u64| v.wrapping_sub(ONES) & !v & HIGHS;
    let control = w.wrapping_sub(ONES * 0x20) & !w & HIGHS;
    (control | zero_byte(w ^ (ONES * u64::from(b'"'))) | zero_byte(w ^ (ONES * u64::from(b'\\'))))
        != 0
}

/// Appends valid UTF-8 `s` as the inside of a JSON string, escaped as serde_json escapes it.
/// Eight bytes at a time while there is nothing to escape, which is nearly always.
fn escape_json(s: &[u8], out: &mut Vec<u8>) {
    escape::<false>(s, out);
}

/// [`escape_json`] for `s` if it is all ASCII (then valid UTF-8 without a pass of its own to
/// check it: `from_utf8` was ~2% of the server); `false`, with part of it appended, at its
/// first byte that is not.
fn escape_ascii(s: &[u8], out: &mut Vec<u8>) -> bool {
    escape::<true>(s, out)
}

fn escape<const ASCII: bool>(s: &[u8], out: &mut Vec<u8>) -> bool {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut start = 0;
    let mut i = 0;
    while i < s.len() {
        if let Some(word) = s.get(i..i + 8) {
            let w = u64::from_le_bytes(word.try_into().expect("eight bytes"));
            if !word_needs_escape(w) && (!ASCII || w & HIGHS == 0) {
                i += 8;
                continue;
            }
        }
        let b = s[i];
        if ASCII && b >= 0x80 {
            return false;
        }
        let e = ESCAPE[b as usize];
        if e != 0 {
            out.extend_from_slice(&s[start..i]);
            if e == b'u' {
                out.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[(b >> 4) as usize],
                    HEX[(b & 0xf) as usize],
                ]);
            } else {
                out.extend_from_slice(&[b'\\', e]);
            }
            start = i + 1;
        }
        i += 1;
    }
    out.extend_from_slice(&s[start..]);
    true
}

fn write_u64(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// A JSONL line read back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Line {
    pub ts: String,
    pub stream: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<String>,
    pub line: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    /// Absent in lines not written by Sluice (legacy files).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl Line {
    /// The line the persister writes for `env`, as a value.
    pub fn from_envelope(env: &(impl Fields + ?Sized)) -> Line {
        let mut out = Vec::with_capacity(128 + env.message().len());
        write_line(env, &mut out);
        // write_line produces valid JSON of exactly this shape.
        serde_json::from_slice(&out).expect("write_line writes a Line")
    }

    /// The envelope this line was written from, as far as the file keeps it: everything but
    /// tags, with the time to the millisecond.
    pub fn to_envelope(&self, source_id: &str) -> Envelope {
        let mut env = Envelope::new(source_id, self.line.clone());
        env.timestamp = UtcTime::parse_utc_ns(&self.ts).unwrap_or(0);
        env.channel = if self.stream == "stderr" {
            Channel::Err
        } else {
            Channel::Out
        };
        env.step = self.step.as_deref().map(Into::into);
        if let Some(origin) = &self.origin {
            // Written as `origin/instance`; an origin may hold `/` itself, an instance not.
            match origin.rsplit_once('/') {
                Some((o, i)) => {
                    env.origin = o.into();
                    env.instance_id = i.into();
                }
                None => env.origin = origin.as_str().into(),
            }
        }
        env.seq = self.seq.unwrap_or(0);
        env
    }

    /// One JSONL line, without its newline.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_matches_serde_json_for_every_byte_and_invalid_utf8() {
        let mut all: Vec<u8> = (0u8..=0x7f).collect();
        all.extend_from_slice("é中😀".as_bytes());
        let text = String::from_utf8(all).unwrap();
        let mut shifted = Vec::new();
        for pad in 0..9 {
            shifted.push(format!(
                "{}\"{}\n{}\\x",
                "a".repeat(pad),
                "b".repeat(pad),
                "é"
            ));
        }
        let shifted = shifted.concat();
        let ascii: Vec<u8> = (0u8..=0x7f).cycle().take(300).collect();
        for message in [
            &ascii[..],
            text.as_bytes(),
            &b"ok \xff\xfe bad"[..],
            b"",
            shifted.as_bytes(),
        ] {
            let mut e = Envelope::new("a", message.to_vec());
            e.step = Some("st\"ep\\".into());
            e.seq = u64::MAX;
            let mut out = Vec::new();
            write_line(&e, &mut out);
            let back: Line = serde_json::from_slice(&out).unwrap();
            assert_eq!(back.line, String::from_utf8_lossy(message));
            assert_eq!(back.step.as_deref(), Some("st\"ep\\"));
            assert_eq!(back.seq, Some(u64::MAX));
            let mut expected = Vec::new();
            serde_json::to_writer(&mut expected, &*String::from_utf8_lossy(message)).unwrap();
            let expected = String::from_utf8(expected).unwrap();
            assert!(
                String::from_utf8(out)
                    .unwrap()
                    .contains(&format!(",\"line\":{expected},")),
                "escaped as serde_json escapes"
            );
        }
    }

    #[test]
    fn the_kept_second_writes_what_the_calendar_does() {
        let one = 1_000_000_000i64;
        let base = 1_739_357_805 * one;
        // In and across seconds, before 1970, and the ends of the range (1677 and 2262).
        let times = [
            base,
            base + 123_999_999,
            base + one - 1,
            base + one,
            base,
            -1,
            -one - 1,
            0,
            i64::MIN,
            i64::MAX,
            base + 7,
        ];
        for ns in times {
            let mut want = Vec::new();
            UtcTime::from_ns(ns).write_rfc3339(&mut want, 3, "");
            let mut got = Vec::new();
            write_ts(ns, &mut got);
            assert_eq!(String::from_utf8(got), String::from_utf8(want), "{ns}");
        }
    }

    #[test]
    fn strom_fields_first_then_origin_and_seq() {
        let mut e = Envelope::new("job-1", "Hello \"World\"\n\u{7}");
        e.timestamp = 1_739_357_805_123_999_999; // 2025-02-12T10:56:45.123Z
        e.step = Some("say-hello".into());
        e.seq = 17;
        let mut out = Vec::new();
        write_line(&e, &mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "{\"ts\":\"2025-02-12T10:56:45.123Z\",\"stream\":\"stdout\",\"step\":\"say-hello\",\"line\":\"Hello \\\"World\\\"\\n\\u0007\",\"origin\":\"APP/0\",\"seq\":17}\n"
        );
        let back: Line = serde_json::from_slice(&out).unwrap();
        assert_eq!(back.line, "Hello \"World\"\n\u{7}");
        let mut again = e.clone();
        again.timestamp = 1_739_357_805_123_000_000;
        assert_eq!(
            back.to_envelope("job-1"),
            again,
            "all but tags and sub-millisecond time"
        );
        e.step = None;
        e.channel = Channel::Err;
        let mut out = Vec::new();
        write_line(&e, &mut out);
        assert!(
            String::from_utf8(out).unwrap().starts_with(
                "{\"ts\":\"2025-02-12T10:56:45.123Z\",\"stream\":\"stderr\",\"line\":"
            )
        );
    }
}
