//! RFC 5424 as Loggregator's syslog agent writes it (SPEC §5): a pure function from envelope to
//! bytes, and RFC 6587 octet-counting framing.
//!
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID - SD MSG\n`
//!
//! - PRI 14 (user.info) for `OUT`, 11 (user.err) for `ERR`;
//! - TIMESTAMP in UTC with microseconds: `2016-06-14T21:10:05.360000+00:00`;
//! - HOSTNAME `org.space.app` from the `organization_name`, `space_name` and `app_name` tags when
//!   all three are present (each part reduced to `[-a-zA-Z0-9]` and at most 63 bytes), else the
//!   source id;
//! - APP-NAME the source id (at most 48 bytes); PROCID `[ORIGIN/INSTANCE]` (at most 128);
//!   MSGID `-`;
//! - SD `[tags@47450 k="v" ...]` with keys sorted and `"`, `\`, `]` escaped in values, or `-`
//!   when there are no tags or metadata is disabled;
//! - MSG with NUL bytes removed and exactly one trailing `\n`.

use std::io::Write;

use sluice_router::envelope::UtcTime;
use sluice_router::{Channel, Envelope};

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
pub fn format_rfc5424(env: &Envelope, opts: FormatOptions, out: &mut Vec<u8>) {
    let pri = match env.channel {
        Channel::Out => 14,
        Channel::Err => 11,
    };
    let t = UtcTime::from_ns(env.timestamp);
    // Writing into a Vec cannot fail.
    let _ = write!(out, "<{pri}>1 ");
    t.write_rfc3339(out, 6, "+00:00 ");
    hostname(env, out);
    out.push(b' ');
    push_printable(out, env.source_id.as_bytes(), MAX_APP_NAME);
    out.push(b' ');
    let procid_start = out.len();
    out.push(b'[');
    push_printable(out, env.origin.as_bytes(), MAX_PROCID);
    out.push(b'/');
    push_printable(out, env.instance_id.as_bytes(), MAX_PROCID);
    out.push(b']');
    if out.len() - procid_start > MAX_PROCID {
        out.truncate(procid_start + MAX_PROCID);
    }
    out.extend_from_slice(b" - ");
    structured_data(env, opts, out);
    out.push(b' ');
    let mut msg: &[u8] = &env.message;
    while let [rest @ .., b'\n' | b'\r'] = msg {
        msg = rest;
    }
    out.extend(msg.iter().copied().filter(|&b| b != 0));
    out.push(b'\n');
}

/// Appends `LEN SP MSG` (RFC 6587 octet counting) for `env` to `out`.
pub fn format_octet_counted(
    env: &Envelope,
    opts: FormatOptions,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) {
    scratch.clear();
    format_rfc5424(env, opts, scratch);
    let _ = write!(out, "{} ", scratch.len());
    out.extend_from_slice(scratch);
}

fn hostname(env: &Envelope, out: &mut Vec<u8>) {
    let parts = ["organization_name", "space_name", "app_name"].map(|k| env.tags.get(k));
    if let [Some(org), Some(space), Some(app)] = parts {
        let start = out.len();
        for (i, part) in [org, space, app].into_iter().enumerate() {
            if i > 0 {
                out.push(b'.');
            }
            out.extend(
                part.bytes()
                    .filter(|b| b.is_ascii_alphanumeric() || *b == b'-')
                    .take(MAX_HOST_LABEL),
            );
        }
        if out.len() - start > 2 {
            return;
        }
        out.truncate(start); // all three reduced to nothing: fall back to the source id
    }
    push_printable(out, env.source_id.as_bytes(), MAX_HOSTNAME);
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

fn structured_data(env: &Envelope, opts: FormatOptions, out: &mut Vec<u8>) {
    if opts.disable_metadata || env.tags.is_empty() {
        out.push(b'-');
        return;
    }
    out.push(b'[');
    out.extend_from_slice(SD_ID.as_bytes());
    // BTreeMap iterates in key order: keys come out sorted.
    for (k, v) in &env.tags {
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
            "<14>1 2016-06-14T21:10:05.360000+00:00 cdabc600-0b73-48e1-b7d2-26af2c63f933 cdabc600-0b73-48e1-b7d2-26af2c63f933 [API/0] - - Updated app with guid\n"
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
            r#"<11>1 2016-06-14T21:10:05.360000+00:00 myorg.devspace.spring-music cdabc600-0b73-48e1-b7d2-26af2c63f933 [APP/PROC/WEB/3] - [tags@47450 app_name="spring-music" organization_name="my org!" quote="say \"hi\" \\ [x\]" space_name="dev_space"] ab"#
                .to_owned()
                + "\n"
        );
        assert!(
            fmt(
                &e,
                FormatOptions {
                    disable_metadata: true
                }
            )
            .contains(" [APP/PROC/WEB/3] - - ab\n")
        );
    }

    #[test]
    fn field_limits() {
        let mut e = env();
        e.source_id = "a".repeat(300);
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
