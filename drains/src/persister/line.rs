//! One envelope as one JSONL line, Strøm's four fields first:
//! `{"ts":"2025-02-12T10:56:45.123Z","stream":"stdout","step":"say-hello","line":"Hello World","origin":"APP/0","seq":17}`
//! (`step` is left out when the envelope has none).

use std::io::Write;

use serde::{Deserialize, Serialize};
use sluice_router::envelope::UtcTime;
use sluice_router::{Channel, Envelope};

/// The step name of router-side events about a source.
pub const SERVER_STEP: &str = "_server";

/// Appends the JSONL line (with its newline) for `env` to `out`.
pub fn write_line(env: &Envelope, out: &mut Vec<u8>) {
    let t = UtcTime::from_ns(env.timestamp);
    out.extend_from_slice(b"{\"ts\":\"");
    t.write_rfc3339(out, 3, "Z\",\"stream\":\"");
    out.extend_from_slice(match env.channel {
        Channel::Out => b"stdout\"",
        Channel::Err => b"stderr\"",
    });
    if let Some(step) = &env.step {
        out.extend_from_slice(b",\"step\":");
        let _ = serde_json::to_writer(&mut *out, step);
    }
    out.extend_from_slice(b",\"line\":");
    let _ = serde_json::to_writer(&mut *out, &String::from_utf8_lossy(&env.message));
    out.extend_from_slice(b",\"origin\":");
    let _ = serde_json::to_writer(&mut *out, &format!("{}/{}", env.origin, env.instance_id));
    let _ = writeln!(out, ",\"seq\":{}}}", env.seq);
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
    pub fn from_envelope(env: &Envelope) -> Line {
        let mut out = Vec::with_capacity(128 + env.message.len());
        write_line(env, &mut out);
        // write_line produces valid JSON of exactly this shape.
        serde_json::from_slice(&out).expect("write_line writes a Line")
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
