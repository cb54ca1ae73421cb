//! The native wire format (SPEC §2.1): frames of `u32 big-endian length | payload`, where the
//! payload is one MessagePack value:
//!
//! | first byte of the payload | meaning |
//! |---|---|
//! | a map (`0x80..=0x8f`, `0xde`, `0xdf`) | one [`Envelope`] |
//! | an array (`0x90..=0x9f`, `0xdc`, `0xdd`) | a batch of envelopes |
//! | a string (`0xa0..=0xbf`, `0xd9..=0xdb`) | a control word, such as `ack=count` |
//!
//! Server replies use the same framing, with a map payload (see [`Reply`]).
//! Everything here is pure: transports feed bytes in and take bytes out.

use std::io::Cursor;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::entry::Fields;
use crate::envelope::Envelope;
use crate::msgpack;

/// Length of the frame header.
pub const HEADER_BYTES: usize = 4;
/// Default cap on one frame's payload: large enough for a generous batch, small enough that a
/// hostile length cannot make the server allocate much.
pub const DEFAULT_MAX_FRAME_BYTES: usize = 8 * 1024 * 1024;

/// Why a frame or payload could not be read. [`FrameError::Invalid`] refuses that frame only;
/// the others close the connection that sent it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {declared} bytes exceeds the limit of {max} bytes{}", http_hint(*.declared))]
    TooLarge { declared: u64, max: usize },
    #[error("empty frame")]
    Empty,
    #[error("frame payload is not a MessagePack map, array or string (first byte 0x{0:02x})")]
    UnknownKind(u8),
    #[error("malformed MessagePack payload: {0}")]
    Decode(String),
    /// Well-formed MessagePack with a field of the wrong type or value (a `channel` of
    /// `"STDWHAT"`, a string `timestamp`): the frame's length is known, so the stream is intact.
    #[error("invalid envelope: {0}")]
    Invalid(String),
    #[error("{0} trailing bytes after the MessagePack value")]
    Trailing(usize),
    #[error("connection closed in the middle of a frame ({have} of {want} bytes received)")]
    Truncated { have: usize, want: usize },
}

/// A "length" that spells an HTTP method (`GET `, `POST`, `PUT `, `HEAD`, …) is an HTTP client
/// on the native port: say so, rather than leave only a four-gigabyte frame to puzzle over.
fn http_hint(declared: u64) -> &'static str {
    let bytes = (declared as u32).to_be_bytes();
    let method = bytes.iter().all(|&b| b.is_ascii_uppercase() || b == b' ');
    if declared <= u64::from(u32::MAX) && method && bytes[0] != b' ' {
        " (an HTTP request? this port takes length-prefixed MessagePack frames; the HTTP API \
         is on listen.http)"
    } else {
        ""
    }
}

impl FrameError {
    /// One word for the kind, as metrics label it.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::TooLarge { .. } => "too_large",
            FrameError::Empty => "empty",
            FrameError::UnknownKind(_) => "unknown_kind",
            FrameError::Decode(_) => "decode",
            FrameError::Invalid(_) => "invalid",
            FrameError::Trailing(_) => "trailing",
            FrameError::Truncated { .. } => "truncated",
        }
    }
}

/// Splits the next complete frame off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed. A header declaring more than `max` bytes is an
/// error at once, before anything is buffered for it.
pub fn decode_frame(buf: &mut BytesMut, max: usize) -> Result<Option<Bytes>, FrameError> {
    if buf.len() < HEADER_BYTES {
        return Ok(None);
    }
    let declared = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if declared > max {
        return Err(FrameError::TooLarge {
            declared: declared as u64,
            max,
        });
    }
    if declared == 0 {
        return Err(FrameError::Empty);
    }
    if buf.len() < HEADER_BYTES + declared {
        // Room for the rest is the caller's to make: a server pays for it from a budget first.
        return Ok(None);
    }
    buf.advance(HEADER_BYTES);
    Ok(Some(buf.split_to(declared).freeze()))
}

/// The length a complete or partial frame at the front of `buf` declares, once its header is in.
pub fn declared_len(buf: &[u8]) -> Option<usize> {
    let header: [u8; HEADER_BYTES] = buf.get(..HEADER_BYTES)?.try_into().ok()?;
    Some(u32::from_be_bytes(header) as usize)
}

/// How many envelopes a payload holds, read from its first bytes alone: the array's length for
/// a batch, 1 for a single envelope, 0 for a control word or anything else.
pub fn envelope_count(payload: &[u8]) -> usize {
    match payload.first() {
        Some(0x80..=0x8f | 0xde | 0xdf) => 1,
        Some(0x90..=0x9f | 0xdc | 0xdd) => msgpack::Reader::new(payload).array_len().unwrap_or(0),
        _ => 0,
    }
}

/// Called at end of stream: leftover bytes mean the peer stopped mid-frame.
pub fn check_eof(buf: &BytesMut) -> Result<(), FrameError> {
    if buf.is_empty() {
        return Ok(());
    }
    let want = if buf.len() >= HEADER_BYTES {
        HEADER_BYTES + u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize
    } else {
        HEADER_BYTES
    };
    Err(FrameError::Truncated {
        have: buf.len(),
        want,
    })
}

/// Appends `u32 length | payload` to `out`.
pub fn encode_frame(payload: &[u8], out: &mut BytesMut) {
    out.reserve(HEADER_BYTES + payload.len());
    out.put_u32(payload.len() as u32);
    out.put_slice(payload);
}

/// Appends a frame whose payload is produced by `write` into `out`, patching the length after.
pub fn encode_frame_with(out: &mut BytesMut, write: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u32(0);
    write(out);
    let len = (out.len() - start - HEADER_BYTES) as u32;
    out[start..start + HEADER_BYTES].copy_from_slice(&len.to_be_bytes());
}

/// What one frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Envelopes(Vec<Envelope>),
    Control(String),
}

impl FrameError {
    /// Whether the connection can carry on after refusing this frame.
    pub fn is_recoverable(&self) -> bool {
        matches!(self, FrameError::Invalid(_))
    }
}

/// Decodes one frame's payload. Fields are not validated here; see [`Envelope::validate`].
pub fn decode_payload(payload: &[u8]) -> Result<Payload, FrameError> {
    let first = *payload.first().ok_or(FrameError::Empty)?;
    match first {
        0x80..=0x8f | 0xde | 0xdf => Ok(Payload::Envelopes(vec![msgpack::read_envelope(payload)?])),
        0x90..=0x9f | 0xdc | 0xdd => Ok(Payload::Envelopes(msgpack::read_batch(payload)?)),
        _ => decode_other(payload),
    }
}

/// [`decode_payload`], the envelopes' messages slices of `payload` rather than copies: for
/// ingest, where the router copies each message once more into its ring entry anyway.
pub fn decode_payload_shared(payload: &Bytes) -> Result<Payload, FrameError> {
    let first = *payload.first().ok_or(FrameError::Empty)?;
    match first {
        0x80..=0x8f | 0xde | 0xdf => Ok(Payload::Envelopes(vec![msgpack::read_envelope_shared(
            payload,
        )?])),
        0x90..=0x9f | 0xdc | 0xdd => Ok(Payload::Envelopes(msgpack::read_batch_shared(payload)?)),
        _ => decode_other(payload),
    }
}

fn decode_other(payload: &[u8]) -> Result<Payload, FrameError> {
    match payload[0] {
        0xa0..=0xbf | 0xd9..=0xdb => Ok(Payload::Control(decode_exact(payload)?)),
        other => Err(FrameError::UnknownKind(other)),
    }
}

/// Decodes a single MessagePack value that must fill `bytes` exactly.
pub fn decode_exact<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, FrameError> {
    let mut de = rmp_serde::Deserializer::new(Cursor::new(bytes));
    let value = T::deserialize(&mut de).map_err(|e| FrameError::Decode(e.to_string()))?;
    let used = de.position() as usize;
    if used != bytes.len() {
        return Err(FrameError::Trailing(bytes.len() - used));
    }
    Ok(value)
}

/// Appends one envelope as a MessagePack map with the SPEC §1 field names.
pub fn encode_envelope(env: &(impl Fields + ?Sized), out: &mut BytesMut) {
    msgpack::write_envelope(env, out);
}

/// Appends a batch (a MessagePack array of envelope maps).
pub fn encode_batch<E: Fields>(envs: &[E], out: &mut BytesMut) {
    msgpack::write_batch(envs, out);
}

/// Encodes a control word such as `ack=count` as a complete frame.
pub fn encode_control_frame(word: &str, out: &mut BytesMut) {
    encode_frame_with(out, |b| {
        let mut w = b.writer();
        let _ = word.serialize(&mut rmp_serde::Serializer::new(&mut w));
    });
}

/// The server's answer to one frame, sent when acknowledgements are on, and before closing a
/// connection for a malformed frame.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Reply {
    /// Envelopes accepted from the frame this answers.
    pub accepted: u64,
    /// Why the frame, or the connection, was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    pub fn encode_frame(&self, out: &mut BytesMut) {
        encode_frame_with(out, |b| {
            let mut w = b.writer();
            let _ = self.serialize(&mut rmp_serde::Serializer::new(&mut w).with_struct_map());
        });
    }
}

/// Convenience for tests and tools: a whole frame holding `envs` as one batch.
pub fn batch_frame<E: Fields>(envs: &[E]) -> Bytes {
    let mut out = BytesMut::new();
    encode_frame_with(&mut out, |b| encode_batch(envs, b));
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Channel;

    fn sample() -> Envelope {
        let mut e = Envelope::new("cf/doppler", &b"hello\nwor\xffld"[..]);
        e.origin = "RTR".into();
        e.instance_id = "1".into();
        e.channel = Channel::Err;
        e.step = Some("build".into());
        e.tags.insert("app_name".into(), "spring-music".into());
        e.timestamp = 1_465_938_605_360_000_000;
        e.seq = 42;
        e
    }

    #[test]
    fn envelope_round_trips_as_a_named_map() {
        let env = sample();
        let mut out = BytesMut::new();
        encode_envelope(&env, &mut out);
        assert_eq!(out[0], 0x89, "a fixmap of nine fields");
        let back: Envelope = decode_exact(&out).unwrap();
        assert_eq!(back, env);
    }

    #[test]
    fn frames_split_exactly_and_wait_for_more() {
        let env = sample();
        let frame = batch_frame(&[env.clone(), env.clone()]);
        let mut buf = BytesMut::from(&frame[..frame.len() - 1]);
        assert_eq!(decode_frame(&mut buf, 1024).unwrap(), None);
        buf.extend_from_slice(&frame[frame.len() - 1..]);
        buf.extend_from_slice(&frame);
        for _ in 0..2 {
            let payload = decode_frame(&mut buf, 1024).unwrap().unwrap();
            assert_eq!(
                decode_payload(&payload).unwrap(),
                Payload::Envelopes(vec![env.clone(), env.clone()])
            );
        }
        assert!(buf.is_empty());
        check_eof(&buf).unwrap();
    }

    #[test]
    fn bad_frames_are_named() {
        let mut buf = BytesMut::from(&[0xff, 0xff, 0xff, 0xff, 1][..]);
        assert_eq!(
            decode_frame(&mut buf, 1024),
            Err(FrameError::TooLarge {
                declared: u32::MAX as u64,
                max: 1024
            })
        );
        let mut buf = BytesMut::from(&[0, 0, 0, 0][..]);
        assert_eq!(decode_frame(&mut buf, 1024), Err(FrameError::Empty));
        assert_eq!(
            check_eof(&BytesMut::from(&[0, 0, 0, 9, 1, 2][..])),
            Err(FrameError::Truncated { have: 6, want: 13 })
        );
        assert_eq!(decode_payload(&[0xc3]), Err(FrameError::UnknownKind(0xc3)));
        assert!(matches!(
            decode_payload(&[0x81, 0xa1]),
            Err(FrameError::Decode(_))
        ));
        let mut two = BytesMut::new();
        encode_envelope(&sample(), &mut two);
        two.extend_from_slice(&[0xc0]);
        assert_eq!(decode_payload(&two), Err(FrameError::Trailing(1)));
    }

    #[test]
    fn producers_may_send_only_the_essentials_and_text_messages() {
        #[derive(Serialize)]
        struct Minimal<'a> {
            source_id: &'a str,
            message: &'a str,
        }
        let bytes = rmp_serde::to_vec_named(&Minimal {
            source_id: "app",
            message: "hi",
        })
        .unwrap();
        let Payload::Envelopes(envs) = decode_payload(&bytes).unwrap() else {
            panic!("not envelopes")
        };
        assert_eq!(envs, vec![Envelope::new("app", "hi")]);
    }

    #[test]
    fn control_words_and_replies() {
        let mut out = BytesMut::new();
        encode_control_frame("ack=count", &mut out);
        let payload = decode_frame(&mut out, 64).unwrap().unwrap();
        assert_eq!(
            decode_payload(&payload).unwrap(),
            Payload::Control("ack=count".into())
        );
        let reply = Reply {
            accepted: 3,
            error: None,
        };
        let mut out = BytesMut::new();
        reply.encode_frame(&mut out);
        let payload = decode_frame(&mut out, 64).unwrap().unwrap();
        assert_eq!(decode_exact::<Reply>(&payload).unwrap(), reply);
    }
}
