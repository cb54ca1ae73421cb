//! RFC 5424 as Loggregator's syslog agent writes it (SPEC §5): a pure function from envelope to
//! bytes, and RFC 6587 octet-counting framing.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - SD MSG\n`
//!
//! - PRI 14 (user.info) for `OUT`, 11 (user.err) for `ERR`;
//! - TIMESTAMP in UTC, microseconds without trailing zeros (Go's `.999999`):
//!   `2016-06-14T21:10:05.36+00:00`, and `…:05+00:00` at a whole second;
//! - HOSTNAME `org.space.app` from the `organization_name`, `space_name` and `app_name` tags when
//!   any of them is present (white space runs become `-`, anything but `[-a-zA-Z0-9]` is dropped,
//!   then trailing `-`; each part at most 63 bytes; a missing one is empty), else the source id;
//! - APP-NAME the source id (at most 48 bytes); PROCID `[ORIGIN/INSTANCE]`, the origin upper-cased
//!   with white space as `-` (`MY TASK` → `MY-TASK`), at most 128 bytes with the brackets (the instance is cut to 36 bytes first, then the
//!   origin); MSGID `-`;
//! - SD `[tags@47450 k="v" ...]` with keys sorted and `"`, `\`, `]` escaped in values, or `-`
//!   when there are no tags or metadata is disabled;
//! - MSG as sent with NUL bytes removed, and a `\n` added unless it already ends in one.

use std::io::Write;

use sluice_router::envelope::{UtcTime, canonical_origin};
use sluice_router::{Channel, Fields};

/// The private enterprise number Loggregator uses for its tags element.
pub const SD_ID: &str = "tags@47450";

/// RFC 5424 field limits.
const MAX_HOSTNAME: usize = 255;
const MAX_HOST_LABEL: usize = 63;
const MAX_APP_NAME: usize = 48;
const MAX_PROCID: usize = 128;
const MAX_SD_NAME: usize = 32;

/// Options a drain URL can set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FormatOptions {
    /// `?disable-metadata=true`: leave the structured data (tags) out.
    pub disable_metadata: bool,
}

/// Appends one RFC 5424 message (with its trailing newline) for `env` to `out`.
pub fn format_rfc5424(env: &(impl Fields + ?Sized), opts: FormatOptions, out: &mut Vec<u8>) {
    let pri = match env.channel() {
        Channel::Out => 14,
        Channel::Err => 11,
    };
    // Writing into a Vec cannot fail.
    let _ = write!(out, "<{pri}>1 ");
    timestamp(env.timestamp(), out);
    out.push(b' ');
    hostname(env, out);
    out.push(b' ');
    push_printable(out, env.source_id().as_bytes(), MAX_APP_NAME);
    out.push(b' ');
    procid(env, out);
    out.extend_from_slice(b" - ");
    structured_data(env, opts, out);
    out.push(b' ');
    // The payload as it is, NULs removed; a newline added only if it does not end in one.
    out.extend(env.message().iter().copied().filter(|&b| b != 0));
    if out.last() != Some(&b'\n') {
        out.push(b'\n');
    }
}

/// Go's `2006-01-02T15:04:05.999999-07:00` in UTC: microseconds with trailing zeros dropped,
/// and no fraction at all at a whole second (`05.36+00:00`, `05+00:00`).
fn timestamp(ns: i64, out: &mut Vec<u8>) {
    UtcTime::from_ns(ns).write_rfc3339(out, 6, "");
    while out.last() == Some(&b'0') {
        out.pop();
    }
    if out.last() == Some(&b'.') {
        out.pop();
    }
    out.extend_from_slice(b"+00:00");
}

/// `[ORIGIN/INSTANCE]` as Loggregator writes it, at most 128 bytes with its brackets: the origin
/// in its canonical form ([`canonical_origin`]: `MY TASK` → `MY-TASK`); when both do not fit,
/// the instance is cut to 36 bytes first, then the origin.
fn procid(env: &(impl Fields + ?Sized), out: &mut Vec<u8>) {
    const MAX_INSTANCE: usize = 36;
    // Header fields are PRINTUSASCII: other bytes are left out (counted without allocating).
    fn printable(s: &str) -> impl Iterator<Item = u8> + '_ {
        s.bytes().filter(|b| (0x21..=0x7e).contains(b))
    }
    out.push(b'[');
    let origin_at = out.len();
    canonical_origin(env.origin(), out);
    let mut origin = out.len() - origin_at;
    let mut instance = printable(env.instance_id()).count();
    if instance == 0 {
        origin = origin.min(MAX_PROCID - 2);
    } else {
        let room = MAX_PROCID - 3;
        if origin + instance > room {
            instance = instance.min(MAX_INSTANCE);
        }
        if origin + instance > room {
            origin = room - instance;
        }
    }
    out.truncate(origin_at + origin);
    if instance > 0 {
        out.push(b'/');
        out.extend(printable(env.instance_id()).take(instance));
    }
    out.push(b']');
}

/// Appends `LEN SP MSG` (RFC 6587 octet counting) for `env` to `out`.
pub fn format_octet_counted(
    env: &(impl Fields + ?Sized),
    opts: FormatOptions,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) {
    scratch.clear();
    format_rfc5424(env, opts, scratch);
    let _ = write!(out, "{} ", scratch.len());
    out.extend_from_slice(scratch);
}

/// `org.space.app` from the tags when any of the three is present (a missing one is empty), each
/// part sanitized as Loggregator does; else the source id.
fn hostname(env: &(impl Fields + ?Sized), out: &mut Vec<u8>) {
    let parts = ["organization_name", "space_name", "app_name"].map(|k| env.tags().get(k));
    if parts.iter().all(Option::is_none) {
        push_printable(out, env.source_id().as_bytes(), MAX_HOSTNAME);
        return;
    }
    for (i, part) in parts.into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        let start = out.len();
        host_label(part.map_or("", String::as_str), out);
        out.truncate(start + MAX_HOST_LABEL.min(out.len() - start));
    }
}

/// A hostname label: each run of white space becomes `-`, anything but `[-a-zA-Z0-9]` is dropped,
/// then trailing `-` (before the cut to 63 bytes, as Loggregator does it).
fn host_label(s: &str, out: &mut Vec<u8>) {
    let start = out.len();
    let mut in_space = false;
    for b in s.bytes() {
        // Go's `\s`: tab, newline, form feed, carriage return, space.
        if matches!(b, b'\t' | b'\n' | b'\x0c' | b'\r' | b' ') {
            if !in_space {
                out.push(b'-');
            }
            in_space = true;
            continue;
        }
        in_space = false;
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b);
        }
    }
    while out.len() > start && out.last() == Some(&b'-') {
        out.pop();
    }
}

/// Appends at most `max` bytes of `s`, keeping only RFC 5424 PRINTUSASCII (0x21–0x7E); `-` if
/// nothing is left, since these header fields may not be empty.
fn push_printable(out: &mut Vec<u8>, s: &[u8], max: usize) {
    let start = out.len();
    out.extend(
        s.iter()
            .copied()
            .filter(|b| (0x21..=0x7e).contains(b))
            .take(max),
    );
    if out.len() == start {
        out.push(b'-');
    }
}

fn structured_data(env: &(impl Fields + ?Sized), opts: FormatOptions, out: &mut Vec<u8>) {
    if opts.disable_metadata || env.tags().is_empty() {
        out.push(b'-');
        return;
    }
    out.push(b'[');
    out.extend_from_slice(SD_ID.as_bytes());
    // BTreeMap iterates in key order: keys come out sorted.
    for (k, v) in env.tags() {
        out.push(b' ');
        // SD-NAME: printable ASCII except '=', ' ', ']', '"'; at most 32.
        let start = out.len();
        out.extend(
            k.bytes()
                .filter(|b| (0x21..=0x7e).contains(b) && !b"= ]\"".contains(b))
                .take(MAX_SD_NAME),
        );
        if out.len() == start {
            out.push(b'_');
        }
        out.extend_from_slice(b"=\"");
        for b in v.bytes() {
            if matches!(b, b'"' | b'\\' | b']') {
                out.push(b'\\');
            }
            out.push(b);
        }
        out.push(b'"');
    }
    out.push(b']');
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_router::Envelope;

    fn env() -> Envelope {
        let mut e = Envelope::new(
            "cdabc600-0b73-48e1-b7d2-26af2c63f933",
            "Updated app with guid\n",
        );
        e.timestamp = 1_465_938_605_360_000_000; // 2016-06-14T21:10:05.36Z
        e.origin = "API".into();
        e
    }

    fn fmt(e: &Envelope, opts: FormatOptions) -> String {
        let mut out = Vec::new();
        format_rfc5424(e, opts, &mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn plain_out_line() {
        assert_eq!(
            fmt(&env(), FormatOptions::default()),
            "<14>1 2016-06-14T21:10:05.36+00:00 cdabc600-0b73-48e1-b7d2-26af2c63f933 cdabc600-0b73-48e1-b7d2-26af2c63f933 [API/0] - - Updated app with guid\n"
        );
    }

    #[test]
    fn err_line_with_hostname_tags_and_escapes() {
        let mut e = env();
        e.channel = Channel::Err;
        e.origin = "APP/PROC/WEB".into();
        e.instance_id = "3".into();
        e.message = b"a\x00b\n\n".to_vec().into();
        e.tags.insert("organization_name".into(), "my org!".into());
        e.tags.insert("space_name".into(), "dev_space".into());
        e.tags.insert("app_name".into(), "spring-music".into());
        e.tags.insert("quote".into(), r#"say "hi" \ [x]"#.into());
        assert_eq!(
            fmt(&e, FormatOptions::default()),
            r#"<11>1 2016-06-14T21:10:05.36+00:00 my-org.devspace.spring-music cdabc600-0b73-48e1-b7d2-26af2c63f933 [APP/PROC/WEB/3] - [tags@47450 app_name="spring-music" organization_name="my org!" quote="say \"hi\" \\ [x\]" space_name="dev_space"] ab"#
                .to_owned()
                + "\n\n"
        );
        assert!(
            fmt(
                &e,
                FormatOptions {
                    disable_metadata: true
                }
            )
            .contains(" [APP/PROC/WEB/3] - - ab\n\n")
        );
    }

    #[test]
    fn field_limits() {
        let mut e = env();
        e.source_id = "a".repeat(300).into();
        e.tags.insert("organization_name".into(), "o".repeat(100));
        e.tags.insert("space_name".into(), "s".into());
        e.tags.insert("app_name".into(), "a".into());
        let line = fmt(
            &e,
            FormatOptions {
                disable_metadata: true,
            },
        );
        let fields: Vec<&str> = line.splitn(7, ' ').collect();
        assert_eq!(fields[2], format!("{}.s.a", "o".repeat(63)));
        assert_eq!(fields[3], "a".repeat(48));
        e.tags.clear();
        let line = fmt(&e, FormatOptions::default());
        assert_eq!(line.split(' ').nth(2).unwrap(), "a".repeat(255));
    }

    /// Field by field, the bytes Loggregator's syslog agent writes for the same envelope.
    #[test]
    fn each_field_as_loggregator_writes_it() {
        let field = |e: &Envelope, n: usize| -> String {
            fmt(e, FormatOptions::default())
                .split(' ')
                .nth(n)
                .unwrap()
                .to_owned()
        };
        // Hostname: white space becomes `-`, trailing `-` go; any one tag is enough.
        let mut e = env();
        e.tags.insert("organization_name".into(), "someorg".into());
        e.tags.insert("space_name".into(), "some space".into());
        e.tags.insert("app_name".into(), "someapp--".into());
        assert_eq!(field(&e, 2), "someorg.some-space.someapp");
        let mut e = env();
        e.tags.insert("app_name".into(), "some app".into());
        assert_eq!(field(&e, 2), "..some-app");
        let mut e = env();
        e.tags.insert("organization_name".into(), "!!".into());
        assert_eq!(field(&e, 2), "..");

        // Timestamp: Go's `.999999`.
        let mut e = env();
        e.timestamp = 1_465_938_605_000_000_000;
        assert_eq!(field(&e, 1), "2016-06-14T21:10:05+00:00");
        e.timestamp = 1_465_938_605_000_001_000;
        assert_eq!(field(&e, 1), "2016-06-14T21:10:05.000001+00:00");
        e.timestamp = 1_465_938_605_123_456_789;
        assert_eq!(field(&e, 1), "2016-06-14T21:10:05.123456+00:00");

        // PROCID: at most 128 bytes, the closing bracket kept; the instance is cut first.
        let mut e = env();
        e.origin = "a".repeat(100).into();
        e.instance_id = "i".repeat(40).into();
        let procid = field(&e, 4);
        assert_eq!(procid.len(), 128);
        assert_eq!(procid, format!("[{}/{}]", "A".repeat(89), "i".repeat(36)));
        e.instance_id = "7".into();
        assert_eq!(field(&e, 4), format!("[{}/7]", "A".repeat(100)));
        e.instance_id = String::new().into();
        e.origin = "x".repeat(200).into();
        assert_eq!(field(&e, 4), format!("[{}]", "X".repeat(126)));

        // The payload's own line ends are kept; `\n` is added only when it does not end in one.
        for (sent, written) in [
            ("x", "x\n"),
            ("x\n", "x\n"),
            ("x\n\n", "x\n\n"),
            ("x\r\n", "x\r\n"),
            ("x\r", "x\r\n"),
            ("a\0b", "ab\n"),
        ] {
            let mut e = env();
            e.message = sent.as_bytes().to_vec().into();
            let line = fmt(&e, FormatOptions::default());
            assert!(
                line.ends_with(&format!(" - - {written}")),
                "{sent:?}: {line:?}"
            );
        }
    }

    /// The README's drain example is what the formatter writes.
    #[test]
    fn the_readme_shows_real_output() {
        let readme = include_str!("../../../README.md");
        let section = &readme[readme.find("## Syslog drains").unwrap()..];
        let shown: Vec<&str> = section
            .lines()
            .skip_while(|l| *l != "```")
            .skip(1)
            .take(2)
            .collect();
        let mut out = env();
        out.source_id = "my-app".into();
        out.origin = "APP/PROC/WEB".into();
        out.message = "message".into();
        for (k, v) in [
            ("organization_name", "acme"),
            ("space_name", "prod"),
            ("app_name", "web app"),
        ] {
            out.tags.insert(k.into(), v.into());
        }
        let mut err = Envelope::new("my-task", "it broke");
        err.origin = "my task".into();
        err.instance_id = "2".into();
        err.channel = Channel::Err;
        err.timestamp = 1_465_938_606_000_000_000;
        let written = [out, err].map(|e| fmt(&e, FormatOptions::default()));
        assert_eq!(
            shown,
            written.iter().map(|l| l.trim_end()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn octet_counting_counts_bytes_including_the_newline() {
        let mut e = env();
        e.message = "é".into();
        let mut out = Vec::new();
        format_octet_counted(&e, FormatOptions::default(), &mut out, &mut Vec::new());
        let text = String::from_utf8(out).unwrap();
        let (len, msg) = text.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.ends_with("[API/0] - - é\n"));
    }
}
