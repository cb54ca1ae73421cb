//! The envelope: one log line with its routing metadata (SPEC §1).

use std::collections::BTreeMap;
use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
pub use compact_str::{CompactString, ToCompactString};
use serde::{Deserialize, Serialize};

/// Longest accepted `source_id`, in bytes.
pub const MAX_SOURCE_ID_BYTES: usize = 256;
/// Longest accepted `origin`, in bytes.
pub const MAX_ORIGIN_BYTES: usize = 64;
/// Longest accepted `instance_id`, in bytes.
pub const MAX_INSTANCE_ID_BYTES: usize = 64;

/// The origin code the router uses for envelopes about a source that it writes itself.
pub const ORIGIN_ROUTER: &str = "LGR";

/// The step of router-side events about a source (drain failures, losses, archive failures):
/// Strøm's "server events" panel.
pub const SERVER_STEP: &str = "_server";

/// stdout or stderr of the emitting process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Channel {
    #[default]
    #[serde(rename = "OUT", alias = "out", alias = "stdout")]
    Out,
    #[serde(rename = "ERR", alias = "err", alias = "stderr")]
    Err,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Out => "OUT",
            Channel::Err => "ERR",
        }
    }

    /// The spellings an envelope on the wire may use (the serde aliases above): `OUT`, `out`,
    /// `stdout`, `ERR`, `err`, `stderr`.
    pub fn from_wire(s: &[u8]) -> Option<Channel> {
        match s {
            b"OUT" | b"out" | b"stdout" => Some(Channel::Out),
            b"ERR" | b"err" | b"stderr" => Some(Channel::Err),
            _ => None,
        }
    }

    /// Parses what a person types: `OUT`/`ERR` in any case, and `stdout`/`stderr`.
    pub fn parse(s: &str) -> Option<Channel> {
        match s.to_ascii_lowercase().as_str() {
            "out" | "stdout" => Some(Channel::Out),
            "err" | "stderr" => Some(Channel::Err),
            _ => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One log line. Producers fill everything but `seq` (the router assigns it) and may leave
/// `timestamp` at 0 (the router stamps the time of receipt).
///
/// On the wire this is a MessagePack map with exactly these field names; every field but
/// `source_id` has a default, so a producer may send `{"source_id": "app", "message": "hi"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Envelope {
    /// Nanoseconds since the Unix epoch.
    pub timestamp: i64,
    /// The app, job or allocation the line belongs to; see [`validate_source_id`].
    ///
    /// The ids are [`CompactString`]s: up to 24 bytes live inside the envelope itself, so the
    /// usual ids, origins, instances and steps cost no allocation of their own (three to four
    /// fewer per envelope than `String`s: decoded, retained and freed at eviction).
    pub source_id: CompactString,
    /// Instance index within the source.
    pub instance_id: CompactString,
    /// Origin code: `APP/PROC/WEB`, `RTR`, `STG`, `LGR`, …
    pub origin: CompactString,
    pub channel: Channel,
    /// A job's step or a group's task; `_server` is reserved for router-side events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step: Option<CompactString>,
    pub tags: BTreeMap<String, String>,
    /// Opaque bytes: may hold newlines and invalid UTF-8.
    pub message: Bytes,
    /// Per-source sequence number assigned by the router: strictly increasing, no gaps.
    pub seq: u64,
}

impl Default for Envelope {
    fn default() -> Self {
        Envelope {
            timestamp: 0,
            source_id: CompactString::default(),
            instance_id: CompactString::const_new("0"),
            origin: CompactString::const_new("APP"),
            channel: Channel::Out,
            step: None,
            tags: BTreeMap::new(),
            message: Bytes::new(),
            seq: 0,
        }
    }
}

impl Envelope {
    /// An envelope for `source_id` carrying `message`, with every other field at its default.
    pub fn new(source_id: impl Into<CompactString>, message: impl Into<Bytes>) -> Self {
        Envelope {
            source_id: source_id.into(),
            message: message.into(),
            ..Envelope::default()
        }
    }

    /// One of Sluice's own notices about `source_id`: origin `LGR`, channel `ERR`, step
    /// `_server` (Strøm's server events), stamped now. Publish it with
    /// [`crate::Router::publish_notice`]; producers cannot send these.
    pub fn notice(source_id: impl Into<CompactString>, text: impl Into<Bytes>) -> Self {
        Envelope {
            source_id: source_id.into(),
            message: text.into(),
            origin: CompactString::const_new(ORIGIN_ROUTER),
            channel: Channel::Err,
            step: Some(CompactString::const_new(SERVER_STEP)),
            timestamp: now_ns(),
            ..Envelope::default()
        }
    }

    /// Checks the fields a producer controls. The router calls this at every ingress.
    pub fn validate(&self) -> Result<(), EnvelopeError> {
        self.validate_fields()?;
        // Sluice's own notices must be told apart from anything a producer sends.
        if is_router_origin(&self.origin) {
            return Err(EnvelopeError::Reserved(format!("origin {:?}", self.origin)));
        }
        if self.step.as_deref() == Some(SERVER_STEP) {
            return Err(EnvelopeError::Reserved(format!("step {SERVER_STEP:?}")));
        }
        Ok(())
    }

    /// [`Envelope::validate`] without the reserved origin and step, for the router's own notices.
    pub fn validate_fields(&self) -> Result<(), EnvelopeError> {
        validate_source_id(&self.source_id)?;
        validate_origin(&self.origin)?;
        let inst = &self.instance_id;
        if inst.is_empty()
            || inst.len() > MAX_INSTANCE_ID_BYTES
            || !inst.bytes().all(is_visible_ascii)
        {
            return Err(EnvelopeError::InstanceId(inst.to_string()));
        }
        Ok(())
    }
}

/// The block an allocator hands out for `n` bytes: mimalloc's size classes (8-byte steps to
/// 64, then four classes per doubling); 0 for nothing.
pub fn alloc_size(n: usize) -> usize {
    match n {
        0 => 0,
        1..=64 => (n + 7) & !7,
        _ => {
            // A quarter of the power of two below `n`: masks, no division (every envelope's
            // size goes through here at publish).
            let step = 1usize << ((usize::BITS - 1 - (n - 1).leading_zeros()) - 2);
            (n + step - 1) & !(step - 1)
        }
    }
}

fn is_visible_ascii(b: u8) -> bool {
    (0x21..=0x7e).contains(&b)
}

/// A `source_id` is 1–256 bytes of printable ASCII without spaces (0x21–0x7E).
pub fn validate_source_id(id: &str) -> Result<(), EnvelopeError> {
    if id.is_empty() || id.len() > MAX_SOURCE_ID_BYTES || !id.bytes().all(is_visible_ascii) {
        return Err(EnvelopeError::SourceId(shorten(id)));
    }
    Ok(())
}

/// Whether `origin` is the router's own: `LGR`, or under it (`LGR/...`), in any spelling that
/// a syslog drain would write as `[LGR...]` (see [`canonical_origin`]).
pub fn is_router_origin(origin: &str) -> bool {
    // The canonical form before its trailing `-` are trimmed, read lazily: no allocation, since
    // every envelope at every ingress is checked. Trimmed, it is `LGR` or starts `LGR/` when
    // untrimmed it starts `LGR` and goes on with `/`, nothing, or only `-`.
    let mut canonical = origin.bytes().filter_map(canonical_byte);
    if !canonical.by_ref().take(3).eq(ORIGIN_ROUTER.bytes()) {
        return false;
    }
    match canonical.next() {
        None | Some(b'/') => true,
        Some(b'-') => canonical.all(|b| b == b'-'),
        Some(_) => false,
    }
}

/// One byte of an origin in its canonical form, or `None` when the form leaves it out.
fn canonical_byte(b: u8) -> Option<u8> {
    match b {
        b' ' | b'\t' | b'\n' | b'\x0b' | b'\x0c' | b'\r' => Some(b'-'),
        0x21..=0x7e => Some(b.to_ascii_uppercase()),
        _ => None,
    }
}

/// An origin is what the producer calls its source type, kept as sent: 1 to 64 bytes of text
/// without control characters, with at least one visible ASCII character (`APP/PROC/WEB`,
/// `RTR`, and Loggregator's free-form `source_type`s such as `MY TASK`).
pub fn validate_origin(origin: &str) -> Result<(), EnvelopeError> {
    let ok = !origin.is_empty()
        && origin.len() <= MAX_ORIGIN_BYTES
        && !origin.chars().any(char::is_control)
        && origin.bytes().any(is_visible_ascii);
    if ok {
        Ok(())
    } else {
        Err(EnvelopeError::Origin(shorten(origin)))
    }
}

/// The origin as Loggregator writes it into a syslog PROCID: ASCII letters upper-cased, each
/// white-space character turned into `-`, anything else that is not visible ASCII (0x21-0x7E)
/// left out, and trailing `-` dropped (`my task ` → `MY-TASK`).
pub fn canonical_origin(origin: &str, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend(origin.bytes().filter_map(canonical_byte));
    while out.len() > start && out.last() == Some(&b'-') {
        out.pop();
    }
}

/// Keeps error messages readable when someone sends a megabyte of id.
fn shorten(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}

/// Why an envelope was refused at ingress.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error(
        "invalid source_id {0:?}: a source_id is 1 to 256 bytes of printable ASCII (0x21-0x7E), without spaces"
    )]
    SourceId(String),
    #[error(
        "invalid origin {0:?}: an origin is 1 to 64 bytes of text without control characters, with at least one visible ASCII character, such as APP/PROC/WEB, RTR or MY TASK"
    )]
    Origin(String),
    #[error(
        "invalid instance_id {0:?}: an instance_id is 1 to 64 bytes of printable ASCII, without spaces"
    )]
    InstanceId(String),
    #[error(
        "reserved {0}: origin LGR and step _server are sluice's own notices, which producers cannot send"
    )]
    Reserved(String),
    /// The source is new and the router holds `max` sources already.
    #[error(
        "new source {source_id:?} refused: sluice holds {max} sources, its limit (router.max_sources); lines for the sources it holds are still taken. Sources idle for router.forget_idle_secs are forgotten (their lines stay stored), making room; or raise the limit"
    )]
    TooManySources { source_id: String, max: usize },
    /// A reader asked for a source with no lines yet (to wait for its first), and `max` such
    /// sources that readers opened, a tenth of `router.max_sources`, are held already.
    #[error(
        "new source {source_id:?} refused: readers have opened as many sources that have no lines yet as they may ({max}, a tenth of router.max_sources); a source counts as a reader's until its first line arrives"
    )]
    TooManyWaitingSources { source_id: String, max: usize },
    /// The source is not held and storage could not say where its seqs left off (a file that
    /// exists could not be read): made now, it could hand out seqs it already has.
    #[error(
        "source {source_id:?} refused for now: its stored lines cannot be read ({reason}), so its seqs cannot be continued; try again"
    )]
    StorageUnreadable { source_id: String, reason: String },
}

impl EnvelopeError {
    /// One word for the field that was refused, as metrics label it.
    pub fn reason(&self) -> &'static str {
        match self {
            EnvelopeError::SourceId(_) => "source_id",
            EnvelopeError::Origin(_) => "origin",
            EnvelopeError::InstanceId(_) => "instance_id",
            EnvelopeError::Reserved(_) => "reserved",
            EnvelopeError::TooManySources { .. } | EnvelopeError::TooManyWaitingSources { .. } => {
                "too_many_sources"
            }
            EnvelopeError::StorageUnreadable { .. } => "storage_unreadable",
        }
    }
}

/// Nanoseconds since the Unix epoch, now.
pub fn now_ns() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i64)
}

/// A UTC time broken into calendar fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UtcTime {
    pub year: i64,
    pub month: u32,
    pub day: u32,
    pub hour: u32,
    pub minute: u32,
    pub second: u32,
    pub nanos: u32,
}

impl UtcTime {
    /// Nanoseconds since the Unix epoch to calendar fields, without a date library.
    pub fn from_ns(ns: i64) -> UtcTime {
        let secs = ns.div_euclid(1_000_000_000);
        let rem = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(secs.div_euclid(86_400));
        UtcTime {
            year,
            month,
            day,
            hour: rem / 3600,
            minute: rem % 3600 / 60,
            second: rem % 60,
            nanos: ns.rem_euclid(1_000_000_000) as u32,
        }
    }
}

impl UtcTime {
    /// Appends `YYYY-MM-DDTHH:MM:SS`, a fraction of `frac_digits` digits (none for 0, at most
    /// 9, truncated), then `zone` (`Z`, `+00:00`). Shared by every timestamp format Sluice writes.
    pub fn write_rfc3339(&self, out: &mut Vec<u8>, frac_digits: u32, zone: &str) {
        // Written digit by digit, not with chrono's formatter: this runs for every line the
        // persister and drains write, and a `format!` here was part of the ~13% the persister
        // spent formatting (BENCHMARKS.md, "Profiles": 7.2 → 11.0 M lines/s per core with the
        // JSONL writer).
        fn two(out: &mut Vec<u8>, n: u32, sep: u8) {
            out.extend_from_slice(&[b'0' + (n / 10 % 10) as u8, b'0' + (n % 10) as u8, sep]);
        }
        if (0..=9999).contains(&self.year) {
            let y = self.year as u32;
            out.extend_from_slice(&[
                b'0' + (y / 1000) as u8,
                b'0' + (y / 100 % 10) as u8,
                b'0' + (y / 10 % 10) as u8,
                b'0' + (y % 10) as u8,
                b'-',
            ]);
        } else {
            use std::io::Write;
            let _ = write!(out, "{:04}-", self.year);
        }
        two(out, self.month, b'-');
        two(out, self.day, b'T');
        two(out, self.hour, b':');
        two(out, self.minute, b':');
        out.extend_from_slice(&[
            b'0' + (self.second / 10) as u8,
            b'0' + (self.second % 10) as u8,
        ]);
        let digits = frac_digits.min(9);
        if digits > 0 {
            out.push(b'.');
            let mut frac = self.nanos / 10u32.pow(9 - digits);
            let start = out.len();
            out.resize(start + digits as usize, b'0');
            for i in (0..digits as usize).rev() {
                out[start + i] = b'0' + (frac % 10) as u8;
                frac /= 10;
            }
        }
        out.extend_from_slice(zone.as_bytes());
    }
}

/// RFC 3339 in UTC with whole seconds (`2026-11-21T10:04:05Z`).
pub fn rfc3339_seconds(ns: i64) -> String {
    let mut out = Vec::with_capacity(20);
    UtcTime::from_ns(ns).write_rfc3339(&mut out, 0, "Z");
    String::from_utf8(out).unwrap_or_default()
}

impl UtcTime {
    /// Nanoseconds since the Unix epoch from `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, the UTC form
    /// Sluice writes (the JSONL `ts`); `None` for anything else.
    pub fn parse_utc_ns(s: &str) -> Option<i64> {
        let b = s.as_bytes();
        let num = |r: std::ops::Range<usize>| -> Option<u32> {
            let part = b.get(r)?;
            part.iter().all(u8::is_ascii_digit).then_some(())?;
            std::str::from_utf8(part).ok()?.parse().ok()
        };
        let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
        if b.len() < 20 || seps.iter().any(|&(i, c)| b[i] != c) || b[b.len() - 1] != b'Z' {
            return None;
        }
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
        if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || sec > 60 {
            return None;
        }
        let frac = &b[19..b.len() - 1];
        let nanos = match frac {
            [] => 0,
            [b'.', digits @ ..] if (1..=9).contains(&digits.len()) => {
                let n = num(20..20 + digits.len())?;
                n * 10u32.pow(9 - digits.len() as u32)
            }
            _ => return None,
        };
        let days = days_from_civil(i64::from(y), mo, d);
        let secs = days * 86_400 + i64::from(h * 3600 + mi * 60 + sec);
        secs.checked_mul(1_000_000_000)?
            .checked_add(i64::from(nanos))
    }
}

/// (year, month, day) to days since 1970-01-01 in the proleptic Gregorian calendar: the inverse
/// of [`civil_from_days`].
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_times_read_back_what_is_written() {
        for ns in [
            0i64,
            1_739_357_805_123_000_000,
            951_782_400_000_000_000, // 2000-02-29
            -86_400_000_000_000,
            4_102_444_799_999_000_000,
        ] {
            let mut out = Vec::new();
            UtcTime::from_ns(ns).write_rfc3339(&mut out, 3, "Z");
            let text = String::from_utf8(out).unwrap();
            assert_eq!(UtcTime::parse_utc_ns(&text), Some(ns), "{text}");
        }
        assert_eq!(
            UtcTime::parse_utc_ns("2025-02-12T10:56:45Z"),
            Some(1_739_357_805_000_000_000)
        );
        for bad in [
            "",
            "2025-02-12T10:56:45",
            "2025-02-12T10:56:45.Z",
            "2025-02-12 10:56:45Z",
            "2025-13-12T10:56:45Z",
            "2025-02-12T10:56:45+01:00",
            "2025-02-12T10:56:45.1234567890Z",
            "2025-0x-12T10:56:45Z",
        ] {
            assert_eq!(UtcTime::parse_utc_ns(bad), None, "{bad}");
        }
    }

    #[test]
    fn source_ids() {
        assert!(validate_source_id("cf/doppler").is_ok());
        assert!(validate_source_id(&"a".repeat(256)).is_ok());
        assert!(validate_source_id("").is_err());
        assert!(validate_source_id("a b").is_err());
        assert!(validate_source_id("tab\there").is_err());
        assert!(validate_source_id("é").is_err());
        assert!(validate_source_id(&"a".repeat(257)).is_err());
        let msg = validate_source_id("a b").unwrap_err().to_string();
        assert_eq!(
            msg,
            "invalid source_id \"a b\": a source_id is 1 to 256 bytes of printable ASCII (0x21-0x7E), without spaces"
        );
        let long = validate_source_id(&"x".repeat(5000))
            .unwrap_err()
            .to_string();
        assert!(long.contains("(5000 bytes)") && long.len() < 300, "{long}");
    }

    #[test]
    fn origins() {
        for ok in [
            "APP/PROC/WEB",
            "RTR",
            "LGR",
            "X_1-2",
            "MY TASK",
            "app/foo/bar",
            "tâche 1",
            &"A".repeat(64),
        ] {
            assert!(validate_origin(ok).is_ok(), "{ok}");
        }
        for bad in ["", " ", "é", "A\nB", "A\u{7f}", &"A".repeat(65)] {
            assert!(validate_origin(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn origins_in_their_canonical_form() {
        let canon = |o: &str| {
            let mut out = Vec::new();
            canonical_origin(o, &mut out);
            String::from_utf8(out).unwrap()
        };
        assert_eq!(canon("MY TASK"), "MY-TASK");
        assert_eq!(canon("app/foo/bar"), "APP/FOO/BAR");
        assert_eq!(canon("my  task \t"), "MY--TASK");
        assert_eq!(canon("tâche"), "TCHE");
        for reserved in ["LGR", "lgr", "LGR/x", "Lgr ", "lgr/2"] {
            assert!(is_router_origin(reserved), "{reserved:?}");
        }
        for free in ["LGRX", "RTR", "L GR", "XLGR"] {
            assert!(!is_router_origin(free), "{free:?}");
        }
    }

    #[test]
    fn rfc3339() {
        assert_eq!(rfc3339_seconds(0), "1970-01-01T00:00:00Z");
        // 2016-06-14T21:10:05Z
        assert_eq!(
            rfc3339_seconds(1_465_938_605_360_000_000),
            "2016-06-14T21:10:05Z"
        );
        assert_eq!(
            rfc3339_seconds(951_782_400 * 1_000_000_000),
            "2000-02-29T00:00:00Z"
        );
    }

    #[test]
    fn every_fraction_width_matches_the_formatter() {
        for ns in [0, 1, 999_999_999, 1_465_938_605_360_123_456, i64::MAX, -1] {
            let t = UtcTime::from_ns(ns);
            for digits in 0..=9u32 {
                let mut fast = Vec::new();
                t.write_rfc3339(&mut fast, digits, "+00:00");
                let mut slow = format!(
                    "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
                    t.year, t.month, t.day, t.hour, t.minute, t.second
                );
                if digits > 0 {
                    let frac = t.nanos / 10u32.pow(9 - digits);
                    slow += &format!(".{frac:0width$}", width = digits as usize);
                }
                slow += "+00:00";
                assert_eq!(String::from_utf8(fast).unwrap(), slow, "{ns} {digits}");
            }
        }
    }
}
