//! Envelopes to and from MessagePack by hand, for the hot path.
//!
//! The bytes are exactly what `rmp_serde` writes for an [`Envelope`] as a named map (the tests
//! compare the two), and the reader accepts what the serde `Deserialize` accepts: fields in any
//! order, any of them missing, unknown fields skipped, integers of any width, `message` as binary
//! or string, the channel aliases. It just does so without serde's generic machinery and without
//! filling defaults it then throws away.
//!
//! Why by hand (BENCHMARKS.md, "Profiles"): `rmp_serde`'s generic decoding was 19% of the
//! server's samples and the tail's encoder 18%; by hand, decoding went from 1.6 to 5.2 M env/s
//! per core and encoding from 4.2 to 18.6 M env/s per core.

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};

use crate::codec::FrameError;
use crate::entry::Fields;
use crate::envelope::{Channel, CompactString, Envelope};

// ---- writing ---------------------------------------------------------------------------------
//
// Everything goes through `extend_from_slice`, which inlines: the constant field names become a
// few moves instead of a call each (the tail's encoder ran mostly in `memmove` before).

fn put_str(out: &mut BytesMut, s: &[u8]) {
    match s.len() {
        n @ 0..=31 => out.extend_from_slice(&[0xa0 | n as u8]),
        n @ 32..=0xff => out.extend_from_slice(&[0xd9, n as u8]),
        n @ 0x100..=0xffff => {
            out.extend_from_slice(&[0xda]);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.extend_from_slice(&[0xdb]);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(s);
}

fn put_bin(out: &mut BytesMut, b: &[u8]) {
    match b.len() {
        n @ 0..=0xff => out.extend_from_slice(&[0xc4, n as u8]),
        n @ 0x100..=0xffff => {
            out.extend_from_slice(&[0xc5]);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.extend_from_slice(&[0xc6]);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
    out.extend_from_slice(b);
}

fn put_uint(out: &mut BytesMut, n: u64) {
    match n {
        0..=0x7f => out.extend_from_slice(&[n as u8]),
        0x80..=0xff => out.extend_from_slice(&[0xcc, n as u8]),
        0x100..=0xffff => {
            out.extend_from_slice(&[0xcd]);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.extend_from_slice(&[0xce]);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.extend_from_slice(&[0xcf]);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn put_int(out: &mut BytesMut, n: i64) {
    if n >= 0 {
        return put_uint(out, n as u64);
    }
    match n {
        -32..=-1 => out.extend_from_slice(&[n as u8]),
        -128..=-33 => out.extend_from_slice(&[0xd0, n as u8]),
        -32768..=-129 => {
            out.extend_from_slice(&[0xd1]);
            out.extend_from_slice(&(n as i16).to_be_bytes());
        }
        -2_147_483_648..=-32769 => {
            out.extend_from_slice(&[0xd2]);
            out.extend_from_slice(&(n as i32).to_be_bytes());
        }
        _ => {
            out.extend_from_slice(&[0xd3]);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn put_len(out: &mut BytesMut, n: usize, fix: u8, m16: u8, m32: u8) {
    match n {
        0..=15 => out.extend_from_slice(&[fix | n as u8]),
        16..=0xffff => {
            out.extend_from_slice(&[m16]);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        _ => {
            out.extend_from_slice(&[m32]);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
    }
}

/// Bytes [`write_envelope`] will need for `env`, give or take a few.
pub fn encoded_len(env: &(impl Fields + ?Sized)) -> usize {
    let tags: usize = env.tags().iter().map(|(k, v)| k.len() + v.len() + 10).sum();
    96 + env.source_id().len()
        + env.instance_id().len()
        + env.origin().len()
        + env.step().map_or(0, str::len)
        + tags
        + env.message().len()
}

/// Appends `env` as a map with the SPEC §1 field names (`step` left out when it has none).
pub fn write_envelope(env: &(impl Fields + ?Sized), out: &mut BytesMut) {
    out.reserve(encoded_len(env));
    write_fields(env, out);
}

/// [`write_envelope`] into room already reserved.
fn write_fields(env: &(impl Fields + ?Sized), out: &mut BytesMut) {
    let step = env.step();
    out.extend_from_slice(&[if step.is_some() { 0x89 } else { 0x88 }]);
    out.extend_from_slice(b"\xa9timestamp");
    put_int(out, env.timestamp());
    out.extend_from_slice(b"\xa9source_id");
    put_str(out, env.source_id().as_bytes());
    out.extend_from_slice(b"\xabinstance_id");
    put_str(out, env.instance_id().as_bytes());
    out.extend_from_slice(b"\xa6origin");
    put_str(out, env.origin().as_bytes());
    out.extend_from_slice(b"\xa7channel");
    put_str(out, env.channel().as_str().as_bytes());
    if let Some(step) = step {
        out.extend_from_slice(b"\xa4step");
        put_str(out, step.as_bytes());
    }
    let tags = env.tags();
    out.extend_from_slice(b"\xa4tags");
    put_len(out, tags.len(), 0x80, 0xde, 0xdf);
    for (k, v) in tags {
        put_str(out, k.as_bytes());
        put_str(out, v.as_bytes());
    }
    out.extend_from_slice(b"\xa7message");
    put_bin(out, env.message());
    out.extend_from_slice(b"\xa3seq");
    put_uint(out, env.seq());
}

/// Appends an array of envelopes.
pub fn write_batch<E: Fields>(envs: &[E], out: &mut BytesMut) {
    out.reserve(envs.iter().map(encoded_len).sum::<usize>() + 5);
    put_len(out, envs.len(), 0x90, 0xdc, 0xdd);
    for e in envs {
        write_fields(e, out);
    }
}

// ---- reading ---------------------------------------------------------------------------------

fn err(msg: impl Into<String>) -> FrameError {
    FrameError::Decode(msg.into())
}

/// A known field with a value of the wrong type or out of range.
fn invalid(msg: impl Into<String>) -> FrameError {
    FrameError::Invalid(msg.into())
}

/// A cursor over MessagePack bytes: the envelope reader, and enough of the format for a tool to
/// walk envelopes without building them.
#[derive(Debug)]
pub struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
    /// The buffer `b` is, when messages may share it instead of copying out of it.
    owner: Option<&'a Bytes>,
}

impl<'a> Reader<'a> {
    pub fn new(b: &'a [u8]) -> Reader<'a> {
        Reader {
            b,
            pos: 0,
            owner: None,
        }
    }

    /// A reader whose envelopes' messages are slices of `b` (no copy, no allocation each).
    pub fn shared(b: &'a Bytes) -> Reader<'a> {
        Reader {
            b,
            pos: 0,
            owner: Some(b),
        }
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.b.len());
        let end = end.ok_or_else(|| err("unexpected end of MessagePack data"))?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn byte(&mut self) -> Result<u8, FrameError> {
        Ok(self.take(1)?[0])
    }

    fn peek(&self) -> Result<u8, FrameError> {
        self.b
            .get(self.pos)
            .copied()
            .ok_or_else(|| err("unexpected end of MessagePack data"))
    }

    fn be(&mut self, n: usize) -> Result<u64, FrameError> {
        Ok(self.take(n)?.iter().fold(0, |a, &x| a << 8 | u64::from(x)))
    }

    fn len(&mut self, what: &str, fix: (u8, u8), m16: u8, m32: u8) -> Result<usize, FrameError> {
        let m = self.byte()?;
        let n = match m {
            _ if (fix.0..=fix.1).contains(&m) => u64::from(m - fix.0),
            _ if m == m16 => self.be(2)?,
            _ if m == m32 => self.be(4)?,
            _ => return Err(err(format!("expected {what}, found marker 0x{m:02x}"))),
        };
        // Every element takes at least one byte: a length beyond the data is a lie.
        if n as usize > self.b.len() - self.pos {
            return Err(err(format!(
                "{what} of {n} elements is longer than the frame"
            )));
        }
        Ok(n as usize)
    }

    pub fn array_len(&mut self) -> Result<usize, FrameError> {
        self.len("an array", (0x90, 0x9f), 0xdc, 0xdd)
    }

    pub fn map_len(&mut self) -> Result<usize, FrameError> {
        self.len("a map", (0x80, 0x8f), 0xde, 0xdf)
    }

    /// A string, or binary data (some producers send text as binary).
    pub fn raw(&mut self, field: &str) -> Result<&'a [u8], FrameError> {
        let n = match self.byte()? {
            m @ 0xa0..=0xbf => u64::from(m & 0x1f),
            0xd9 | 0xc4 => self.be(1)?,
            0xda | 0xc5 => self.be(2)?,
            0xdb | 0xc6 => self.be(4)?,
            m => {
                return Err(invalid(format!(
                    "field `{field}`: expected a string, found marker 0x{m:02x}"
                )));
            }
        };
        self.take(n as usize)
    }

    fn str(&mut self, field: &str) -> Result<&'a str, FrameError> {
        let raw = self.raw(field)?;
        std::str::from_utf8(raw).map_err(|_| invalid(format!("field `{field}`: invalid UTF-8")))
    }

    fn string(&mut self, field: &str) -> Result<String, FrameError> {
        self.str(field).map(str::to_owned)
    }

    /// An id, origin, instance or step: no allocation up to 24 bytes.
    fn text(&mut self, field: &str) -> Result<CompactString, FrameError> {
        self.str(field).map(CompactString::from)
    }

    /// An integer of any width; `field` names it in the error.
    pub fn int(&mut self, field: &str) -> Result<i128, FrameError> {
        Ok(match self.byte()? {
            m @ 0x00..=0x7f => i128::from(m),
            m @ 0xe0..=0xff => i128::from(m as i8),
            0xcc => i128::from(self.be(1)?),
            0xcd => i128::from(self.be(2)?),
            0xce => i128::from(self.be(4)?),
            0xcf => i128::from(self.be(8)?),
            0xd0 => i128::from(self.be(1)? as u8 as i8),
            0xd1 => i128::from(self.be(2)? as u16 as i16),
            0xd2 => i128::from(self.be(4)? as u32 as i32),
            0xd3 => i128::from(self.be(8)? as i64),
            m => {
                return Err(invalid(format!(
                    "field `{field}`: expected an integer, found marker 0x{m:02x}"
                )));
            }
        })
    }

    /// Steps over one value of any type.
    ///
    /// Iterative, with a count of values still to skip: a hostile frame of 20,000 nested arrays
    /// costs a counter, not 20,000 stack frames (the recursive version aborted the process).
    pub fn skip(&mut self) -> Result<(), FrameError> {
        let mut pending: u64 = 1;
        while pending > 0 {
            pending -= 1;
            match self.peek()? {
                0x00..=0x7f | 0xe0..=0xff | 0xcc..=0xd3 => drop(self.int("")?),
                0xc0 | 0xc2 | 0xc3 => self.pos += 1,
                0xa0..=0xbf | 0xd9..=0xdb | 0xc4..=0xc6 => drop(self.raw("")?),
                0xca => drop(self.take(5)?),
                0xcb => drop(self.take(9)?),
                0xd4 => drop(self.take(3)?),
                0xd5 => drop(self.take(4)?),
                0xd6 => drop(self.take(6)?),
                0xd7 => drop(self.take(10)?),
                0xd8 => drop(self.take(18)?),
                m @ (0xc7..=0xc9) => {
                    self.pos += 1;
                    let n = self.be(1 << (m - 0xc7))? as usize;
                    self.take(n + 1)?;
                }
                // `map_len` and `array_len` refuse lengths beyond the data, so `pending` stays
                // below twice the frame's size.
                0x80..=0x8f | 0xde | 0xdf => pending += 2 * self.map_len()? as u64,
                0x90..=0x9f | 0xdc | 0xdd => pending += self.array_len()? as u64,
                m => return Err(err(format!("unknown MessagePack marker 0x{m:02x}"))),
            }
        }
        Ok(())
    }

    /// One envelope map. Fields not given keep the [`Envelope::default`] values.
    pub fn envelope(&mut self) -> Result<Envelope, FrameError> {
        let fields = self.map_len()?;
        let mut timestamp = 0i64;
        let mut source_id = None;
        let mut instance_id = None;
        let mut origin = None;
        let mut channel = Channel::Out;
        let mut step = None;
        let mut tags = BTreeMap::new();
        let mut message = Bytes::new();
        let mut seq = 0u64;
        for _ in 0..fields {
            let key = match self.raw("field name") {
                Err(FrameError::Invalid(e)) => return Err(err(e)),
                other => other?,
            };
            match key {
                b"timestamp" => {
                    timestamp = i64::try_from(self.int("timestamp")?)
                        .map_err(|_| invalid("field `timestamp`: out of range"))?;
                }
                b"source_id" => source_id = Some(self.text("source_id")?),
                b"instance_id" => instance_id = Some(self.text("instance_id")?),
                b"origin" => origin = Some(self.text("origin")?),
                b"channel" => {
                    let raw = self.raw("channel")?;
                    channel = Channel::from_wire(raw).ok_or_else(|| {
                        invalid(format!(
                            "field `channel`: unknown variant {:?}, expected OUT or ERR",
                            String::from_utf8_lossy(raw)
                        ))
                    })?;
                }
                b"step" => {
                    step = if self.peek()? == 0xc0 {
                        self.pos += 1;
                        None
                    } else {
                        Some(self.text("step")?)
                    }
                }
                b"tags" => {
                    tags.clear();
                    if self.peek()? == 0xc0 {
                        self.pos += 1;
                    } else {
                        let n = match self.peek()? {
                            0x80..=0x8f | 0xde | 0xdf => self.map_len()?,
                            m => {
                                return Err(invalid(format!(
                                    "field `tags`: expected a map, found marker 0x{m:02x}"
                                )));
                            }
                        };
                        for _ in 0..n {
                            let k = self.string("tags")?;
                            let v = self.string("tags")?;
                            tags.insert(k, v);
                        }
                    }
                }
                b"message" => {
                    let raw = self.raw("message")?;
                    message = match self.owner {
                        Some(owner) => owner.slice_ref(raw),
                        None => Bytes::copy_from_slice(raw),
                    };
                }
                b"seq" => {
                    seq = u64::try_from(self.int("seq")?)
                        .map_err(|_| invalid("field `seq`: out of range"))?;
                }
                _ => self.skip()?,
            }
        }
        Ok(Envelope {
            timestamp,
            source_id: source_id.unwrap_or_default(),
            instance_id: instance_id.unwrap_or_else(|| CompactString::const_new("0")),
            origin: origin.unwrap_or_else(|| CompactString::const_new("APP")),
            channel,
            step,
            tags,
            message,
            seq,
        })
    }
}

/// Reads one envelope map that fills `bytes` exactly.
pub fn read_envelope(bytes: &[u8]) -> Result<Envelope, FrameError> {
    let mut r = Reader::new(bytes);
    let env = r.envelope()?;
    trailing(&r, bytes)?;
    Ok(env)
}

/// Reads an array of envelope maps that fills `bytes` exactly.
pub fn read_batch(bytes: &[u8]) -> Result<Vec<Envelope>, FrameError> {
    batch(Reader::new(bytes), bytes)
}

/// [`read_envelope`], the message a slice of `bytes`.
pub fn read_envelope_shared(bytes: &Bytes) -> Result<Envelope, FrameError> {
    let mut r = Reader::shared(bytes);
    let env = r.envelope()?;
    trailing(&r, bytes)?;
    Ok(env)
}

/// [`read_batch`], each message a slice of `bytes`: no copy and no allocation per envelope.
pub fn read_batch_shared(bytes: &Bytes) -> Result<Vec<Envelope>, FrameError> {
    batch(Reader::shared(bytes), bytes)
}

fn batch(mut r: Reader<'_>, bytes: &[u8]) -> Result<Vec<Envelope>, FrameError> {
    let n = r.array_len()?;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        out.push(r.envelope()?);
    }
    trailing(&r, bytes)?;
    Ok(out)
}

fn trailing(r: &Reader<'_>, bytes: &[u8]) -> Result<(), FrameError> {
    if r.pos != bytes.len() {
        return Err(FrameError::Trailing(bytes.len() - r.pos));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    fn serde_bytes(env: &Envelope) -> Vec<u8> {
        let mut out = Vec::new();
        env.serialize(&mut rmp_serde::Serializer::new(&mut out).with_struct_map())
            .unwrap();
        out
    }

    fn samples() -> Vec<Envelope> {
        let mut out = Vec::new();
        for ts in [
            0,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            1 << 40,
            -1,
            -33,
            -200,
            -40_000,
            -3_000_000_000,
            i64::MIN,
            i64::MAX,
        ] {
            for len in [0usize, 31, 32, 255, 256, 70_000] {
                let mut e = Envelope::new("x".repeat(len.min(256)), vec![0xffu8; len]);
                e.timestamp = ts;
                e.seq = ts.unsigned_abs();
                if len % 2 == 0 {
                    e.step = Some("s".repeat(len.min(300)).into());
                    e.channel = Channel::Err;
                }
                for i in 0..(len % 20) {
                    e.tags.insert(format!("k{i}"), "v".repeat(len.min(40)));
                }
                out.push(e);
            }
        }
        out
    }

    #[test]
    fn writes_exactly_what_rmp_serde_writes() {
        for e in samples() {
            let mut out = BytesMut::new();
            write_envelope(&e, &mut out);
            assert_eq!(&out[..], &serde_bytes(&e)[..], "{:?}", e.timestamp);
        }
    }

    #[test]
    fn reads_what_rmp_serde_reads() {
        let all = samples();
        let mut out = BytesMut::new();
        write_batch(&all, &mut out);
        assert_eq!(read_batch(&out).unwrap(), all);
        let serde: Vec<Envelope> = rmp_serde::from_slice(&out).unwrap();
        assert_eq!(serde, all);
    }

    #[test]
    fn accepts_the_lenient_shapes_serde_accepts() {
        #[derive(Serialize)]
        struct Loose<'a> {
            extra: Vec<u32>,
            message: &'a str,
            channel: &'a str,
            step: Option<&'a str>,
            seq: u8,
            source_id: &'a str,
            float: f64,
        }
        let bytes = rmp_serde::to_vec_named(&Loose {
            extra: vec![1, 2, 70_000],
            message: "text",
            channel: "stderr",
            step: None,
            seq: 3,
            source_id: "app",
            float: 1.5,
        })
        .unwrap();
        let mine = read_envelope(&bytes).unwrap();
        let theirs: Envelope = rmp_serde::from_slice(&bytes).unwrap();
        assert_eq!(mine, theirs);
        assert_eq!(mine.channel, Channel::Err);
        assert_eq!(&mine.message[..], b"text");
    }

    #[test]
    fn refuses_wrong_types_and_lying_lengths_with_a_reason() {
        let one = |k: &str, v: &str| rmp_serde::to_vec_named(&BTreeMap::from([(k, v)])).unwrap();
        let bad_ts = one("timestamp", "now");
        let e = read_envelope(&bad_ts).unwrap_err().to_string();
        assert!(e.contains("`timestamp`"), "{e}");
        let bad_channel = one("channel", "STDWHAT");
        assert!(read_envelope(&bad_channel).is_err());
        // An array claiming four billion elements in a few bytes.
        assert!(read_batch(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0x80]).is_err());
        assert!(read_batch(&[0x91, 0x81, 0xa1]).is_err());
        assert!(matches!(
            read_envelope(&[0x80, 0xc0]),
            Err(FrameError::Trailing(1))
        ));
    }

    #[test]
    fn skips_deeply_nested_unknown_fields_without_recursing() {
        // {"source_id":"x","y":[[[[ ... 200,000 levels ... ]]]]}: the recursive skip overflowed
        // the stack at about 20,000.
        let depth = 200_000;
        let mut bytes = vec![0x82, 0xa9];
        bytes.extend_from_slice(b"source_id");
        bytes.extend_from_slice(&[0xa1, b'x', 0xa1, b'y']);
        bytes.extend(std::iter::repeat_n(0x91, depth));
        bytes.push(0x90);
        let env = read_envelope(&bytes).unwrap();
        assert_eq!(env.source_id, "x");
        // Cut short, the same nesting is an error, not a crash.
        let e = read_envelope(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(e, FrameError::Decode(_)), "{e}");
        // Maps nest the same way.
        let mut maps = vec![0x82, 0xa9];
        maps.extend_from_slice(b"source_id");
        maps.extend_from_slice(&[0xa1, b'x', 0xa1, b'y']);
        for _ in 0..depth {
            maps.extend_from_slice(&[0x81, 0xa0]);
        }
        maps.push(0x80);
        assert_eq!(read_envelope(&maps).unwrap().source_id, "x");
    }
}
