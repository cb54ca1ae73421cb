//! The RFC 3164 ("BSD") header, read as rsyslog's `pmrfc3164` reads it, on the raw bytes.
//!
//! `[<PRI>][SP*][TIMESTAMP SP][HOSTNAME SP]TAG[:] MSG`, every part but the message optional:
//! - PRI: `<` 1-3 digits `>`, at most 191;
//! - TIMESTAMP: `Mmm dd hh:mm:ss` (the day space-padded or not) with an optional fraction of a
//!   second (`02:00:00.156789`), or an RFC 3339 time; a BSD time has no year or zone: it is
//!   taken as UTC in the current year (the year before when that would put it more than a day
//!   ahead of now);
//! - HOSTNAME: the next word when it is followed by a space and made only of letters, digits,
//!   `.`, `-` and `_` (so `xapi:` and `123456789:` are tags, not hosts);
//! - TAG: up to `:`, a space or the end; `name[pid]` gives the app name and the PROCID;
//! - MSG: what follows, less the one space that separates it (rsyslog keeps that space in
//!   `%msg%`; the RFCs call it a separator).
//!
//! rsyslog accepts messages without a timestamp (`<27>xapi: [error] ...`, Cisco's
//! `<14>123456789: HOSTNAME: ...`) and with fractional seconds; `syslog_loose` does not, hence
//! this parser. It never fails: a message without any header is all MSG.

use chrono::{Datelike, NaiveDate, TimeZone, Utc};

/// The parts of an RFC 3164 header; `msg_at` is where MSG starts in the input.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Header<'a> {
    pub pri: Option<u8>,
    /// Nanoseconds since the Unix epoch.
    pub timestamp: Option<i64>,
    pub hostname: Option<&'a str>,
    pub appname: Option<&'a str>,
    pub procid: Option<&'a str>,
    pub msg_at: usize,
}

const MONTHS: [&[u8; 3]; 12] = [
    b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov", b"Dec",
];

/// Reads the header of `raw`; `now_ns` picks the year of a BSD timestamp.
pub fn parse(raw: &[u8], now_ns: i64) -> Header<'_> {
    let mut h = Header::default();
    let mut at = 0;
    if let Some((pri, len)) = pri(raw) {
        h.pri = Some(pri);
        at = len;
    }
    while raw.get(at) == Some(&b' ') {
        at += 1;
    }
    if let Some((ts, len)) = bsd_time(&raw[at..], now_ns).or_else(|| rfc3339_time(&raw[at..])) {
        h.timestamp = Some(ts);
        at += len;
        while raw.get(at) == Some(&b' ') {
            at += 1;
        }
    }
    let word_end = |from: usize| {
        raw[from..]
            .iter()
            .position(|&b| b == b' ')
            .map_or(raw.len(), |i| from + i)
    };
    // HOSTNAME: a word of host characters followed by a space.
    let end = word_end(at);
    if end < raw.len()
        && end > at
        && raw[at..end]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
    {
        h.hostname = std::str::from_utf8(&raw[at..end]).ok();
        at = end + 1;
    }
    // TAG: to a colon (kept out), a space or the end.
    let tag_end = raw[at..]
        .iter()
        .position(|&b| b == b':' || b == b' ')
        .map_or(raw.len(), |i| at + i);
    if tag_end > at
        && let Ok(tag) = std::str::from_utf8(&raw[at..tag_end])
    {
        match tag.split_once('[') {
            Some((name, rest)) if rest.ends_with(']') && rest.len() > 1 => {
                h.appname = Some(name).filter(|n| !n.is_empty());
                h.procid = Some(&rest[..rest.len() - 1]);
            }
            _ => h.appname = Some(tag),
        }
        at = tag_end;
        if raw.get(at) == Some(&b':') {
            at += 1;
        }
    }
    if raw.get(at) == Some(&b' ') {
        at += 1;
    }
    h.msg_at = at;
    h
}

/// `<PRI>`: the value and the length of the field.
fn pri(raw: &[u8]) -> Option<(u8, usize)> {
    let rest = raw.strip_prefix(b"<")?;
    let digits = rest
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if !(1..=3).contains(&digits) || rest.get(digits) != Some(&b'>') {
        return None;
    }
    let value: u16 = std::str::from_utf8(&rest[..digits]).ok()?.parse().ok()?;
    (value <= 191).then_some((value as u8, digits + 2))
}

fn two_digits(b: &[u8]) -> Option<u32> {
    match b {
        [a @ b'0'..=b'9', c @ b'0'..=b'9'] => Some(u32::from(a - b'0') * 10 + u32::from(c - b'0')),
        _ => None,
    }
}

/// `Mmm dd hh:mm:ss[.frac]` followed by a space or the end: nanoseconds and length. The month
/// in any case (`MAR`), the day padded with a space, a zero, or not at all (`Mar 7`).
fn bsd_time(s: &[u8], now_ns: i64) -> Option<(i64, usize)> {
    let name = s.get(..3)?;
    let month = MONTHS.iter().position(|m| name.eq_ignore_ascii_case(*m))? as u32 + 1;
    if s.get(3) != Some(&b' ') {
        return None;
    }
    let mut i = 4;
    if s.get(i) == Some(&b' ') {
        i += 1;
    }
    let digits = s[i..]
        .iter()
        .take(2)
        .take_while(|b| b.is_ascii_digit())
        .count();
    let day = match digits {
        1 => u32::from(s[i] - b'0'),
        2 => two_digits(&s[i..i + 2])?,
        _ => return None,
    };
    i += digits;
    let clock = s.get(i..i + 9)?;
    if clock[0] != b' ' || clock[3] != b':' || clock[6] != b':' {
        return None;
    }
    let (hour, min, sec) = (
        two_digits(&clock[1..3])?,
        two_digits(&clock[4..6])?,
        two_digits(&clock[7..9])?,
    );
    let mut len = i + 9;
    let mut nanos = 0u32;
    if s.get(len) == Some(&b'.') {
        let digits = s[len + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 {
            return None;
        }
        for (k, d) in s[len + 1..len + 1 + digits].iter().take(9).enumerate() {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - k as u32);
        }
        len += 1 + digits;
    }
    if !matches!(s.get(len), None | Some(b' ')) {
        return None;
    }
    let now = Utc.timestamp_nanos(now_ns);
    let at = |year: i32| {
        NaiveDate::from_ymd_opt(year, month, day)?
            .and_hms_nano_opt(hour, min, sec, nanos)?
            .and_utc()
            .timestamp_nanos_opt()
    };
    let this_year = at(now.year())?;
    const DAY_NS: i64 = 86_400_000_000_000;
    let ts = if this_year > now_ns + DAY_NS {
        at(now.year() - 1)?
    } else {
        this_year
    };
    Some((ts, len))
}

/// An RFC 3339 time as the first word: nanoseconds and length.
fn rfc3339_time(s: &[u8]) -> Option<(i64, usize)> {
    if !s.first()?.is_ascii_digit() {
        return None;
    }
    let end = s.iter().position(|&b| b == b' ').unwrap_or(s.len());
    let word = std::str::from_utf8(&s[..end]).ok()?;
    let t = chrono::DateTime::parse_from_rfc3339(word).ok()?;
    Some((t.timestamp_nanos_opt()?, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-11-23T00:00:00Z
    const NOW: i64 = 1_795_392_000_000_000_000;

    fn ns(rfc3339: &str) -> i64 {
        chrono::DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_nanos_opt()
            .unwrap()
    }

    fn msg<'a>(raw: &'a [u8], h: &Header<'_>) -> &'a str {
        std::str::from_utf8(&raw[h.msg_at..]).unwrap()
    }

    /// Each case as rsyslog 8.2302 parsed it (`%pri% %hostname% %app-name% %procid%
    /// %timereported% %msg%`), the one separating space left out of MSG.
    #[test]
    fn headers_as_rsyslog_reads_them() {
        /// Input, PRI, HOSTNAME, APP-NAME, PROCID, TIMESTAMP, MSG.
        type Case<'a> = (
            &'a [u8],
            Option<u8>,
            Option<&'a str>,
            Option<&'a str>,
            Option<&'a str>,
            Option<i64>,
            &'a str,
        );
        let cases: &[Case<'_>] = &[
            (
                b"<27>xapi: [error|xenserver|1|] Connection to master died",
                Some(27),
                None,
                Some("xapi"),
                None,
                None,
                "[error|xenserver|1|] Connection to master died",
            ),
            (
                b"<14>123456789: HOSTNAME: %LINK-3-UPDOWN: Interface up",
                Some(14),
                None,
                Some("123456789"),
                None,
                None,
                "HOSTNAME: %LINK-3-UPDOWN: Interface up",
            ),
            (
                b"<7> Aug 29 02:00:00.156789 ctld snmpd[2499]: Connection from UDP",
                Some(7),
                Some("ctld"),
                Some("snmpd"),
                Some("2499"),
                Some(ns("2026-08-29T02:00:00.156789Z")),
                "Connection from UDP",
            ),
            (
                b"<13>Oct 11 22:14:15 host tag:  msgnum:2",
                Some(13),
                Some("host"),
                Some("tag"),
                None,
                Some(ns("2026-10-11T22:14:15Z")),
                " msgnum:2",
            ),
            (
                b"<13>tag: msg",
                Some(13),
                None,
                Some("tag"),
                None,
                None,
                "msg",
            ),
            (
                b"<13>just text",
                Some(13),
                Some("just"),
                Some("text"),
                None,
                None,
                "",
            ),
            (
                b"no pri at all",
                None,
                Some("no"),
                Some("pri"),
                None,
                None,
                "at all",
            ),
            (
                b"<34>Oct  1 22:14:15 mymachine su: 'su root' failed",
                Some(34),
                Some("mymachine"),
                Some("su"),
                None,
                Some(ns("2026-10-01T22:14:15Z")),
                "'su root' failed",
            ),
            (
                b"<13>2003-10-11T22:14:15.003Z host app[12]: rfc3339 in 3164",
                Some(13),
                Some("host"),
                Some("app"),
                Some("12"),
                Some(ns("2003-10-11T22:14:15.003Z")),
                "rfc3339 in 3164",
            ),
            (
                b"<13>Oct 11 22:14:15 host app[12] no colon",
                Some(13),
                Some("host"),
                Some("app"),
                Some("12"),
                Some(ns("2026-10-11T22:14:15Z")),
                "no colon",
            ),
            // December seen in January is last year's.
            (
                b"<13>Dec 31 23:59:59 host app: x",
                Some(13),
                Some("host"),
                Some("app"),
                None,
                Some(ns("2025-12-31T23:59:59Z")),
                "x",
            ),
        ];
        for &(raw, pri, host, app, procid, ts, text) in cases {
            let now = if raw.starts_with(b"<13>Dec") {
                ns("2026-01-02T00:00:00Z")
            } else {
                NOW
            };
            let h = parse(raw, now);
            let what = String::from_utf8_lossy(raw);
            assert_eq!(
                (h.pri, h.hostname, h.appname, h.procid, h.timestamp),
                (pri, host, app, procid, ts),
                "{what}"
            );
            assert_eq!(msg(raw, &h), text, "{what}");
        }
    }

    #[test]
    fn anything_is_a_message_and_nothing_panics() {
        for raw in [
            &b""[..],
            b"<",
            b"<999>x",
            b"<1",
            b"<13>",
            b"<13>Feb 30 10:00:00 host app: bad day",
            b"<13>Oct 11 22:14:15.",
            b"<13>Oct 11 22:14:1",
            b"<13>\xff\xfe: x",
            b"<13>[: x",
        ] {
            let h = parse(raw, NOW);
            assert!(h.msg_at <= raw.len());
        }
        let h = parse(b"<13>Feb 30 10:00:00 host app: bad day", NOW);
        assert_eq!(h.timestamp, None, "not a date: no timestamp");
    }
}
