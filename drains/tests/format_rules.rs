//! The drain formatter against its rules, over random envelopes: a second, deliberately plain
//! implementation of what Loggregator's syslog agent writes (its regular expressions applied one
//! after another, its `generateProcessID` step by step), with Sluice's documented RFC-keeping
//! differences in the structured data (README, "Syslog drains"). Any envelope on which the two
//! disagree is a bug in one of them.

use chrono::DateTime;
use proptest::prelude::*;
use sluice_drains::syslog::format::{FormatOptions, format_rfc5424};
use sluice_router::{Channel, Envelope};

/// Go's regexp `\s`: `[\t\n\f\r ]`.
fn go_space(c: char) -> bool {
    matches!(c, '\t' | '\n' | '\x0c' | '\r' | ' ')
}

/// Loggregator's `sanitize`: `\s+` → `-`, then `[^-a-zA-Z0-9]+` removed, then `-+$` removed.
fn sanitize(s: &str) -> String {
    let mut spaced = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if go_space(c) {
            while chars.peek().copied().is_some_and(go_space) {
                chars.next();
            }
            spaced.push('-');
        } else {
            spaced.push(c);
        }
    }
    let valid: String = spaced
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    valid.trim_end_matches('-').to_owned()
}

fn printable(s: &str, max: usize) -> String {
    let kept: String = s
        .chars()
        .filter(|c| (' '..='~').contains(c) && *c != ' ')
        .take(max)
        .collect();
    if kept.is_empty() { "-".into() } else { kept }
}

fn hostname(e: &Envelope) -> String {
    let [org, space, app] = ["organization_name", "space_name", "app_name"].map(|k| e.tags.get(k));
    if org.is_none() && space.is_none() && app.is_none() {
        return printable(&e.source_id, 255);
    }
    let part = |p: Option<&String>| {
        let mut s = sanitize(p.map_or("", String::as_str));
        s.truncate(63);
        s
    };
    format!("{}.{}.{}", part(org), part(space), part(app))
}

/// The source type as Loggregator's PROCID shows it: upper case, white space `-`, the rest of
/// what is not printable ASCII left out, trailing `-` dropped.
fn source_type(origin: &str) -> String {
    let mut s: String = origin
        .chars()
        .filter_map(|c| match c {
            ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r' => Some('-'),
            '!'..='~' => Some(c.to_ascii_uppercase()),
            _ => None,
        })
        .collect();
    while s.ends_with('-') {
        s.pop();
    }
    s
}

/// Loggregator's `generateProcessID`, step by step.
fn process_id(origin: &str, instance: &str) -> String {
    const MAX_SOURCE_INSTANCE_LENGTH: usize = 36;
    const MAX_RETURN_LEN: usize = 128;
    let mut source_type = source_type(origin);
    let mut source_instance: String = instance.chars().filter(|c| c.is_ascii_graphic()).collect();
    let mut max_return_len = MAX_RETURN_LEN - 2;
    if source_instance.is_empty() {
        source_type.truncate(max_return_len);
        return format!("[{source_type}]");
    }
    max_return_len -= 1;
    if source_instance.len() + source_type.len() > max_return_len {
        source_instance.truncate(MAX_SOURCE_INSTANCE_LENGTH);
    }
    if source_instance.len() + source_type.len() > max_return_len {
        source_type.truncate(max_return_len - source_instance.len());
    }
    format!("[{source_type}/{source_instance}]")
}

/// Go's `2006-01-02T15:04:05.999999-07:00` in UTC.
fn timestamp(ns: i64) -> String {
    let t = DateTime::from_timestamp_nanos(ns).format("%Y-%m-%dT%H:%M:%S%.6f");
    let t = t.to_string();
    format!("{}+00:00", t.trim_end_matches('0').trim_end_matches('.'))
}

/// Tags as structured data: Loggregator's sorted `k="v"` with RFC 5424 escapes, keys kept
/// valid SD-NAMEs (Sluice's documented difference).
fn structured_data(e: &Envelope, opts: FormatOptions) -> String {
    if opts.disable_metadata || e.tags.is_empty() {
        return "-".into();
    }
    let mut sd = String::from("[tags@47450");
    let mut keys: Vec<&String> = e.tags.keys().collect();
    keys.sort();
    for k in keys {
        let mut name: String = k
            .chars()
            .filter(|c| c.is_ascii_graphic() && !"=]\"".contains(*c))
            .take(32)
            .collect();
        if name.is_empty() {
            name.push('_');
        }
        let value = e.tags[k]
            .replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace(']', "\\]");
        sd.push_str(&format!(" {name}=\"{value}\""));
    }
    sd.push(']');
    sd
}

fn expected(e: &Envelope, opts: FormatOptions) -> Vec<u8> {
    let pri = match e.channel {
        Channel::Out => 14,
        Channel::Err => 11,
    };
    let mut line = format!(
        "<{pri}>1 {} {} {} {} - {} ",
        timestamp(e.timestamp),
        hostname(e),
        printable(&e.source_id, 48),
        process_id(&e.origin, &e.instance_id),
        structured_data(e, opts),
    )
    .into_bytes();
    line.extend(e.message.iter().filter(|&&b| b != 0));
    if !line.ends_with(b"\n") {
        line.push(b'\n');
    }
    line
}

fn tag_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("organization_name".to_owned()),
        Just("space_name".to_owned()),
        Just("app_name".to_owned()),
        Just("source_type".to_owned()),
        Just(String::new()),
        "[a-z_]{1,40}",
        "[ -~]{0,12}",
    ]
}

fn envelope() -> impl Strategy<Value = Envelope> {
    (
        "[!-~]{1,60}",
        prop_oneof!["[A-Z/]{1,12}", "[a-zA-Z \t/_-]{1,80}", "[ -~é]{1,70}"],
        prop_oneof!["[0-9]{1,3}", "[!-~]{0,70}", "[ -~]{0,10}"],
        any::<bool>(),
        0i64..4_000_000_000_000_000_000,
        prop::collection::btree_map(
            tag_key(),
            prop_oneof!["[ -~]{0,20}", "[a-z _\t-]{0,80}", ".{0,10}"],
            0..5,
        ),
        prop_oneof![
            prop::collection::vec(any::<u8>(), 0..80),
            "[ -~\r\n\0]{0,40}".prop_map(String::into_bytes),
        ],
    )
        .prop_map(
            |(source_id, origin, instance_id, err, timestamp, tags, message)| {
                let mut e = Envelope::new(source_id, message);
                e.origin = origin.into();
                e.instance_id = instance_id.into();
                e.channel = if err { Channel::Err } else { Channel::Out };
                e.timestamp = timestamp;
                e.tags = tags;
                e
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn the_formatter_writes_what_the_rules_say(e in envelope(), disable_metadata in any::<bool>()) {
        let opts = FormatOptions { disable_metadata };
        let mut out = Vec::new();
        format_rfc5424(&e, opts, &mut out);
        let want = expected(&e, opts);
        prop_assert_eq!(
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&want),
            "{:?}",
            e
        );
        prop_assert_eq!(out, want);
    }
}
