//! RFC 5424 messages as nearly every sender writes them, read by hand: printable ASCII header
//! fields one space apart, an RFC 3339 timestamp (or `-`), structured data that follows the
//! RFC's grammar. Anything else (extra spaces, control bytes or UTF-8 in the header, a field
//! ending in `:`, a leap second, loose structured data) is left to `syslog_loose`, so what this
//! reads is exactly what that reads, only faster: the general parser went through a lossy UTF-8
//! copy of every message, nom combinators and chrono, ~40% of the server's samples on the
//! syslog path (BENCHMARKS.md). `differential` tests below, and the `syslog_datagram` fuzz
//! target, hold the two to the same result.

use std::cell::Cell;
use std::ops::Range;

use sluice_router::envelope::days_from_civil;

/// The `tags@47450` structured-data element: Sluice's and Loggregator's tags.
pub const TAGS_SD_ID: &[u8] = b"tags@47450";

/// What a message's header says, as `syslog_loose` would have said it.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Header<'a> {
    pub severity: u8,
    /// Nanoseconds since the epoch (0 when outside what they can hold); `None` for `-`.
    pub timestamp: Option<i64>,
    pub hostname: Option<&'a str>,
    pub appname: Option<&'a str>,
    pub procid: Option<&'a str>,
    /// The params of every `tags@47450` element in order, values as sent (escapes kept).
    pub tags: Vec<(&'a str, &'a str)>,
    /// Everything after the structured data and the one space after it; empty when that is only
    /// white space.
    pub msg: &'a [u8],
}

/// Reads `raw` if it is an RFC 5424 message of the usual shape; `None` when anything is unusual
/// (the caller then uses the general parser).
pub fn parse(raw: &[u8]) -> Option<Header<'_>> {
    // <PRI>1 SP: 1 to 3 digits, at most 191.
    if raw.first() != Some(&b'<') {
        return None;
    }
    let digits = raw[1..]
        .iter()
        .take(4)
        .take_while(|b| b.is_ascii_digit())
        .count();
    if !(1..=3).contains(&digits) {
        return None;
    }
    let pri = number(&raw[1..=digits])?;
    if pri > 191 || raw.get(1 + digits..4 + digits) != Some(b">1 ".as_slice()) {
        return None;
    }
    let mut at = 4 + digits;
    if matches!(raw.get(at), Some(b' ' | b'\t')) {
        return None;
    }
    let timestamp = match &raw[field(raw, &mut at)?] {
        b"-" => None,
        ts => Some(rfc3339_ns(ts)?),
    };
    let hostname = field(raw, &mut at)?;
    // syslog_loose ends a hostname at a trailing `:`, and then reads no RFC 5424 message.
    if raw[hostname.clone()].ends_with(b":") {
        return None;
    }
    let appname = field(raw, &mut at)?;
    let procid = field(raw, &mut at)?;
    let msgid = field(raw, &mut at)?;
    if [&appname, &procid, &msgid]
        .iter()
        .any(|r| &raw[(*r).clone()] == b":")
    {
        return None;
    }
    let mut params = Vec::new();
    match raw.get(at) {
        Some(b'-') => at += 1,
        Some(b'[') => structured_data(raw, &mut at, &mut params)?,
        _ => return None,
    }
    let msg = match raw.get(at) {
        None => &[][..],
        Some(b' ') => message(&raw[at + 1..])?,
        Some(_) => return None,
    };
    // Every byte of the header is printable ASCII (each part checked it): one check makes it text.
    let head = std::str::from_utf8(&raw[..at]).ok()?;
    let text = |r: Range<usize>| Some(&head[r]).filter(|f| *f != "-");
    Some(Header {
        severity: (pri & 7) as u8,
        timestamp,
        hostname: text(hostname),
        appname: text(appname),
        procid: text(procid),
        tags: params
            .into_iter()
            .map(|(k, v)| (&head[k], &head[v]))
            .collect(),
        msg,
    })
}

/// A header field at `at`: printable ASCII, then exactly one space before the next field (more
/// white space, or the end, is for the general parser). Moves `at` past the space.
fn field(raw: &[u8], at: &mut usize) -> Option<Range<usize>> {
    let start = *at;
    let len = raw[start..]
        .iter()
        .take_while(|b| (0x21..=0x7e).contains(*b))
        .count();
    let end = start + len;
    if len == 0
        || raw.get(end) != Some(&b' ')
        || matches!(raw.get(end + 1), None | Some(b' ' | b'\t'))
    {
        return None;
    }
    *at = end + 1;
    Some(start..end)
}

/// One or more `[ID PARAM="VALUE" ...]` elements, back to back, as RFC 5424 §6.3 writes them;
/// the params of `tags@47450` go into `tags`, as places in `raw`.
fn structured_data(
    raw: &[u8],
    at: &mut usize,
    tags: &mut Vec<(Range<usize>, Range<usize>)>,
) -> Option<()> {
    // Names: printable ASCII but `=`, `]`, `"` and space.
    let name = |at: &mut usize| -> Option<Range<usize>> {
        let start = *at;
        let len = raw[start..]
            .iter()
            .take_while(|&&b| (0x21..=0x7e).contains(&b) && !matches!(b, b'=' | b']' | b'"'))
            .count();
        *at += len;
        (len > 0).then_some(start..start + len)
    };
    while raw.get(*at) == Some(&b'[') {
        *at += 1;
        let id = name(at)?;
        let keep = &raw[id] == TAGS_SD_ID;
        loop {
            match raw.get(*at) {
                Some(b']') => {
                    *at += 1;
                    break;
                }
                Some(b' ') => *at += 1,
                _ => return None,
            }
            let param = name(at)?;
            if raw.get(*at..*at + 2) != Some(b"=\"".as_slice()) {
                return None;
            }
            *at += 2;
            let start = *at;
            // Printable ASCII or space; a backslash takes the next such byte with it.
            loop {
                match raw.get(*at)? {
                    b'"' => break,
                    b'\\' if raw.get(*at + 1).is_some_and(|b| (0x20..=0x7e).contains(b)) => {
                        *at += 2;
                    }
                    b'\\' => return None,
                    0x20..=0x7e => *at += 1,
                    _ => return None,
                }
            }
            if keep {
                tags.push((param, start..*at));
            }
            *at += 1;
        }
    }
    Some(())
}

/// The message after the space that ends the header: all of it, or nothing when it is only
/// white space (`syslog_loose` trims the whole input). `None` when that cannot be told without
/// decoding: it starts, past ASCII white space, with something not ASCII.
fn message(rest: &[u8]) -> Option<&[u8]> {
    // char::is_whitespace for ASCII (u8::is_ascii_whitespace leaves out vertical tab).
    let ws = |b: &u8| matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    match rest.iter().find(|b| !ws(b)) {
        None => Some(&[]),
        Some(b) if b.is_ascii() => Some(rest),
        Some(_) => None,
    }
}

/// `YYYY-MM-DDTHH:MM:SS[.F{1,9}](Z|±HH:MM)` to nanoseconds since the epoch, as chrono's
/// `parse_from_rfc3339` and `timestamp_nanos_opt` give them (0 past what i64 nanoseconds
/// hold); `None` for anything else, a leap second or an impossible date included.
fn rfc3339_ns(ts: &[u8]) -> Option<i64> {
    // Consecutive lines are usually of one second: its date and time are read once per thread.
    thread_local!(static SECOND: Cell<([u8; 19], Option<i64>)> = const { Cell::new(([0; 19], None)) });
    let key: [u8; 19] = ts.get(..19)?.try_into().ok()?;
    let local = match SECOND.get() {
        (k, Some(secs)) if k == key => secs,
        _ => {
            let secs = local_seconds(&key)?;
            SECOND.set((key, Some(secs)));
            secs
        }
    };
    let mut at = 19;
    let mut nanos = 0;
    if ts.get(at) == Some(&b'.') {
        let digits = ts[at + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if !(1..=9).contains(&digits) {
            return None;
        }
        nanos = number(&ts[at + 1..at + 1 + digits])? * 10i64.pow(9 - digits as u32);
        at += 1 + digits;
    }
    let offset = match &ts[at..] {
        b"Z" => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let (oh, om) = (number(&[*h1, *h2])?, number(&[*m1, *m2])?);
            if oh > 23 || om > 59 {
                return None;
            }
            let secs = oh * 3600 + om * 60;
            if *sign == b'-' { -secs } else { secs }
        }
        _ => return None,
    };
    let mut secs = local - offset;
    // chrono's way round an intermediate that underflows while the result fits.
    let mut sub = nanos;
    if secs < 0 {
        sub -= 1_000_000_000;
        secs += 1;
    }
    Some(
        secs.checked_mul(1_000_000_000)
            .and_then(|n| n.checked_add(sub))
            .unwrap_or(0),
    )
}

/// Decimal digits as a number; `None` if any is not a digit.
fn number(digits: &[u8]) -> Option<i64> {
    digits.iter().try_fold(0i64, |n, b| {
        b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0'))
    })
}

/// `YYYY-MM-DDTHH:MM:SS` as seconds since the epoch (in its own time zone); `None` for anything
/// else, a leap second or an impossible date included.
fn local_seconds(ts: &[u8; 19]) -> Option<i64> {
    let seps = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if seps.iter().any(|&(i, c)| ts[i] != c) {
        return None;
    }
    let (y, mo, d) = (number(&ts[0..4])?, number(&ts[5..7])?, number(&ts[8..10])?);
    let (h, mi, s) = (
        number(&ts[11..13])?,
        number(&ts[14..16])?,
        number(&ts[17..19])?,
    );
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let february = if leap { 29 } else { 28 };
    let month_days = [31, february, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let valid = (1..=12).contains(&mo) && (1..=month_days[mo as usize - 1]).contains(&d);
    if !valid || h > 23 || mi > 59 || s > 59 {
        return None;
    }
    Some(days_from_civil(y, mo as u32, d as u32) * 86_400 + h * 3600 + mi * 60 + s)
}

#[cfg(test)]
mod differential {
    use super::super::parse::{parse_message, parse_message_general};

    /// Messages put together from usual and unusual pieces of every part: wherever the fast
    /// reader takes one, the envelopes (or the refusal) are exactly `syslog_loose`'s.
    #[test]
    fn the_fast_reader_reads_exactly_what_syslog_loose_reads() {
        // The first few of each are what senders usually write; they are picked more often.
        let pri = [
            "<14>", "<0>", "<191>", "<3>", "<00>", "<192>", "<255>", "<011>",
        ];
        let sep = [" ", " ", " ", " ", " ", "  ", "\t", ""];
        let ts = [
            "-",
            "2024-02-29T12:34:56Z",
            "2023-02-29T12:34:56Z",
            "2024-01-01T00:00:00.123456789+01:00",
            "2024-01-01T00:00:00.1234567891Z",
            "1969-12-31T23:59:59.5Z",
            "1600-01-01T00:00:00.25Z",
            "1677-09-21T00:12:43.145224192Z",
            "1677-09-21T00:12:43.145224191Z",
            "2262-04-11T23:47:16.854775807Z",
            "2262-04-11T23:47:16.854775808Z",
            "9999-12-31T23:59:59.999999999-23:59",
            "0000-01-01T00:00:00+00:01",
            "2024-06-30T23:59:60Z",
            "2024-01-01t00:00:00z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00+24:00",
            "2024-01-01T00:00:00",
            "2024-13-01T00:00:00Z",
            "2024-01-01T00:00:00.Z",
            "2024-01-01T00:00:00+0100",
            "2025-02-12T10:56:45.123456+00:00",
        ];
        let host = [
            "-",
            "host",
            "web-01.example.com",
            "h:",
            ":",
            "::1",
            "ho\u{1}st",
            "hé",
        ];
        let app = ["-", "app", "my-app", "app:", ":", "a/b", "[x]", "-x", "é"];
        let procid = [
            "-",
            "[APP/PROC/WEB/0]",
            "[LGR/0]",
            "[RTR]",
            "[]",
            "1234",
            "+5",
            "007",
            "0",
            "-0",
            "-3",
            "2147483648",
            ":",
            "proc:",
        ];
        let msgid = ["-", "ID47", ":", "m:"];
        let sd = [
            "-",
            r#"[tags@47450 a="b" c="d e"]"#,
            r#"[tags@47450 x="q\"uote\\ \] \n z"]"#,
            r#"[exampleSDID@32473 iut="3" eventSource="App"][tags@47450 app="web"]"#,
            r#"[tags@47450 a="1"][tags@47450 a="2"]"#,
            "[id]",
            "[id ]",
            r#"[id  a="b"]"#,
            r#"[id a= "b"]"#,
            r#"[id a="b" ]"#,
            r#"[tags@47450 a=""]"#,
            r#"[id a=""x"]"#,
            r#"[id a="b""#,
            r#"[id a="b"]x"#,
            r#"[i"d a="b"]"#,
            "[]",
            r#"[tags@47450 a="é"]"#,
            r#"[id a="\"]"#,
            r#"[tags@47450 a="b\"]"#,
            "-x",
        ];
        let msg: [&[u8]; 14] = [
            b"",
            b"hello world",
            b" leading",
            b"  ",
            b"\n",
            b"trailing  \n",
            "\u{a0}".as_bytes(),
            "\u{a0}x".as_bytes(),
            "é".as_bytes(),
            b"\x0b",
            b"\x0bx",
            b"[INFO] x",
            b"\xff\xfe",
            b" \r\n",
        ];
        let mut x = 0x2545_f491_4f6c_dd1d_u64;
        let mut pick = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let (mut fast, mut total) = (0, 0);
        let mut one_of = |usual: usize, all: usize| {
            if pick(8) == 0 { pick(all) } else { pick(usual) }
        };
        for _ in 0..100_000 {
            let mut raw = Vec::new();
            raw.extend_from_slice(pri[one_of(5, pri.len())].as_bytes());
            raw.extend_from_slice(b"1");
            for part in [
                ts[one_of(13, ts.len())],
                host[one_of(3, host.len())],
                app[one_of(3, app.len())],
                procid[one_of(11, procid.len())],
                msgid[one_of(2, msgid.len())],
                sd[one_of(5, sd.len())],
            ] {
                raw.extend_from_slice(sep[one_of(1, sep.len())].as_bytes());
                raw.extend_from_slice(part.as_bytes());
            }
            raw.extend_from_slice(sep[one_of(1, sep.len())].as_bytes());
            raw.extend_from_slice(msg[one_of(msg.len(), msg.len())]);
            let (mut a, mut b) = (Vec::new(), Vec::new());
            let ra = parse_message(&raw, 1024, &mut a);
            let rb = parse_message_general(&raw, 1024, &mut b);
            assert_eq!((ra, a), (rb, b), "{:?}", String::from_utf8_lossy(&raw));
            total += 1;
            fast += usize::from(super::parse(&raw).is_some());
        }
        // Both readers were exercised.
        assert!(fast > total / 20 && fast < total / 2, "{fast} of {total}");
    }

    #[test]
    fn the_usual_shapes_take_the_fast_reader() {
        for raw in [
            &b"<14>1 2025-02-12T10:56:45.123456+00:00 host app [APP/PROC/WEB/0] - [tags@47450 a=\"b\"] hello"[..],
            b"<11>1 2003-10-11T22:14:15.003Z mymachine.example.com su - ID47 - 'su root' failed",
            b"<165>1 - - app 1234 - -",
        ] {
            assert!(super::parse(raw).is_some(), "{}", String::from_utf8_lossy(raw));
        }
    }
}
