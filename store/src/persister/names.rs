//! File names from source ids. Plain ids stay readable (`my-app` → `my-app.jsonl`); everything
//! else is percent-encoded, so no id can name a path outside the storage directory: `/` becomes
//! `%2F`, a leading `.` becomes `%2E` (no `.`, `..` or hidden files), and ids too long for a file
//! name are cut and given a hash of the whole id.

use std::fmt::Write;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use std::path::Path;

/// Escaped in a stem: everything but `A-Z a-z 0-9 - _ .`.
const UNSAFE: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'_').remove(b'.');

/// Longest encoded stem kept whole; file systems allow 255 bytes per name, and rotation and
/// archive suffixes need room.
const MAX_STEM: usize = 200;

/// The file stem for `source_id` (without `.jsonl`).
pub fn file_stem(source_id: &str) -> String {
    // A leading `.` is escaped by hand: the set keeps `.` plain everywhere else.
    let (lead, rest) = match source_id.strip_prefix('.') {
        Some(rest) => ("%2E", rest),
        None => ("", source_id),
    };
    let mut out = String::with_capacity(source_id.len() + 2);
    out.push_str(lead);
    out.extend(utf8_percent_encode(rest, UNSAFE));
    if out.len() > MAX_STEM {
        let mut cut = MAX_STEM - 18;
        // Do not cut through a %XX escape.
        while out.as_bytes()[..cut]
            .iter()
            .rev()
            .take(2)
            .any(|&b| b == b'%')
        {
            cut -= 1;
        }
        out.truncate(cut);
        let _ = write!(out, "~{:016x}", fnv1a64(source_id.as_bytes()));
    }
    out
}

/// The source id a stem was made from; `None` for a stem cut and hashed (too long to name in
/// full) or not made by [`file_stem`].
pub fn source_of_stem(stem: &str) -> Option<String> {
    if stem.contains('~') {
        return None;
    }
    let b = stem.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let id = String::from_utf8(out).ok()?;
    (file_stem(&id) == stem).then_some(id)
}

/// Where the ids of hashed stems are kept: `<dir>/.ids/<stem>` holds the whole id.
pub const IDS_DIR: &str = ".ids";

/// Keeps `source_id` for its stem if the stem is hashed (it cannot be read back from the
/// name); once per stem. Failing is harmless: the source is then left out of listings.
pub fn remember_id(dir: &Path, stem: &str, source_id: &str) {
    if !stem.contains('~') {
        return;
    }
    let path = dir.join(IDS_DIR).join(stem);
    if path.exists() {
        return;
    }
    let _ = crate::private::create_dir_all(&dir.join(IDS_DIR))
        .and_then(|()| crate::private::write(&path, source_id.as_bytes()));
}

/// The source id of a stem under `dir`: read back from the name, or for a hashed stem from the
/// id the persister kept (checked against the stem).
pub fn source_in(dir: &Path, stem: &str) -> Option<String> {
    if !stem.contains('~') {
        return source_of_stem(stem);
    }
    let path = dir.join(IDS_DIR).join(stem);
    // An id is at most 256 bytes: anything longer is not one of ours.
    let meta = std::fs::metadata(&path).ok()?;
    if meta.len() > 1024 {
        return None;
    }
    let id = std::fs::read_to_string(path).ok()?;
    (file_stem(&id) == stem).then_some(id)
}

/// FNV-1a, 64 bits: stable across versions and platforms, which the std hasher is not promised
/// to be; names must not change between releases.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stems_read_back_as_their_ids() {
        for id in [
            "my-app",
            "cf/doppler",
            "../../etc/passwd",
            ".hidden",
            "a%b",
            "x y",
        ] {
            assert_eq!(source_of_stem(&file_stem(id)).as_deref(), Some(id), "{id}");
        }
        assert_eq!(source_of_stem(&file_stem(&"a".repeat(300))), None, "hashed");
        assert_eq!(source_of_stem("%zz"), None);
        assert_eq!(source_of_stem("a%2"), None);
        assert_eq!(source_of_stem("%61"), None, "not a stem file_stem makes");
    }

    #[test]
    fn stems_are_the_names_earlier_releases_gave() {
        // The byte-by-byte encoder stems were first made with: names must never change.
        let earlier = |id: &str| -> String {
            let mut out = String::new();
            for (i, b) in id.bytes().enumerate() {
                let plain =
                    b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && i > 0);
                if plain {
                    out.push(b as char);
                } else {
                    let _ = write!(out, "%{b:02X}");
                }
            }
            out
        };
        for a in 0x21u8..0x7f {
            for b in 0x21u8..0x7f {
                let id = format!("{}{}x", a as char, b as char);
                assert_eq!(file_stem(&id), earlier(&id), "{id}");
            }
        }
    }

    #[test]
    fn hashed_stems_read_back_through_the_kept_id() {
        let dir = std::env::temp_dir().join(format!("sluice-names-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let long = "a/".repeat(120);
        let stem = file_stem(&long);
        assert_eq!(source_in(&dir, &stem), None, "not kept yet");
        remember_id(&dir, &stem, &long);
        assert_eq!(source_in(&dir, &stem).as_deref(), Some(long.as_str()));
        // A kept id that does not make the stem (edited, or another id's) is not believed.
        std::fs::write(dir.join(IDS_DIR).join(&stem), "someone-else").unwrap();
        assert_eq!(source_in(&dir, &stem), None);
        remember_id(&dir, "plain", "plain");
        assert!(
            !dir.join(IDS_DIR).join("plain").exists(),
            "only hashed stems"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn plain_ids_stay_readable_and_hostile_ones_stay_inside() {
        assert_eq!(file_stem("my-app"), "my-app");
        assert_eq!(file_stem("job_42.v2"), "job_42.v2");
        assert_eq!(file_stem("cf/doppler"), "cf%2Fdoppler");
        assert_eq!(file_stem("../../etc/passwd"), "%2E.%2F..%2Fetc%2Fpasswd");
        assert_eq!(file_stem(".."), "%2E.");
        assert_eq!(file_stem("."), "%2E");
        assert_eq!(file_stem(".hidden"), "%2Ehidden");
        assert_eq!(file_stem("%2e%2e%2f"), "%252e%252e%252f");
        assert_eq!(file_stem("a\\b:c*"), "a%5Cb%3Ac%2A");
        for id in [
            "../../etc/passwd",
            "a/b",
            "..",
            "%2e%2e%2f",
            "./x",
            "x/../../y",
        ] {
            let stem = file_stem(id);
            assert!(
                !stem.contains('/') && stem != "." && stem != ".." && !stem.starts_with('.'),
                "{id} -> {stem}"
            );
        }
    }

    #[test]
    fn long_ids_are_cut_with_a_hash_and_stay_distinct() {
        let a = file_stem(&"/".repeat(256));
        let b = file_stem(&format!("{}x", "/".repeat(255)));
        assert!(
            a.len() <= MAX_STEM && b.len() <= MAX_STEM,
            "{} {}",
            a.len(),
            b.len()
        );
        assert_ne!(a, b);
        assert!(!a.ends_with('%'));
        assert_eq!(file_stem(&"a".repeat(256)).len(), MAX_STEM - 1);
    }
}
