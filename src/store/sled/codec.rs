//! Compact binary encodings of what the sled store keeps: event records, per-object heads and
//! the small primitives they are made of. Pure functions over bytes; no sled here.
//!
//! Disk use is a product requirement (a few hundred bytes per update event), so records are
//! binary: varints, UUIDs as 16 raw bytes, repeated strings (users, resources, kinds, policies,
//! namespaces) as ids into a dictionary the store keeps, and the diff as op/path/value triples.

use crate::crd::Operation;
use crate::pipeline::{ChangeOp, FieldChange};
use crate::{Error, Result};
use serde_json::Value;

/// Appends `v` as an LEB128 varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Appends a length-prefixed byte string.
pub fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    put_varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// Reads what the `put_*` functions wrote.
pub struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub fn u8(&mut self) -> Result<u8> {
        let (&b, rest) = self.buf.split_first().ok_or_else(short)?;
        self.buf = rest;
        Ok(b)
    }

    pub fn varint(&mut self) -> Result<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(v);
            }
        }
        Err(Error::Corrupt("varint too long".into()))
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        if self.buf.len() < n {
            return Err(short());
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    pub fn bytes(&mut self) -> Result<&'a [u8]> {
        let n = self.varint()? as usize;
        self.take(n)
    }

    pub fn string(&mut self) -> Result<String> {
        let b = self.bytes()?;
        String::from_utf8(b.to_vec()).map_err(|_| Error::Corrupt("string is not UTF-8".into()))
    }
}

fn short() -> Error {
    Error::Corrupt("record ends early".into())
}

pub fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

pub fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Identifiers that are canonical lower-case UUIDs (request and object uids almost always are)
/// take 16 bytes instead of 36; anything else is kept verbatim. Marker byte 0 = UUID, 1 = text.
pub fn put_id_string(out: &mut Vec<u8>, s: &str) {
    match parse_uuid(s) {
        Some(raw) => {
            out.push(0);
            out.extend_from_slice(&raw);
        }
        None => {
            out.push(1);
            put_bytes(out, s.as_bytes());
        }
    }
}

pub fn skip_id_string(r: &mut Reader<'_>) -> Result<()> {
    match r.u8()? {
        0 => r.take(16).map(drop),
        _ => r.bytes().map(drop),
    }
}

pub fn get_id_string(r: &mut Reader<'_>) -> Result<String> {
    match r.u8()? {
        0 => Ok(format_uuid(r.take(16)?)),
        1 => r.string(),
        m => Err(Error::Corrupt(format!("unknown id marker {m}"))),
    }
}

/// The 16 bytes of a canonical (lower-case, hyphenated) UUID; `None` for anything that would not
/// format back to exactly `s`.
pub fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || [8, 13, 18, 23].iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut hi: Option<u8> = None;
    for &c in b {
        let d = match c {
            b'-' => continue,
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        match hi.take() {
            None => hi = Some(d),
            Some(h) => {
                out[n] = (h << 4) | d;
                n += 1;
            }
        }
    }
    Some(out)
}

pub fn format_uuid(raw: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(36);
    for (i, b) in raw.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[usize::from(b >> 4)] as char);
        s.push(HEX[usize::from(b & 15)] as char);
    }
    s
}

pub fn op_code(op: Operation) -> u8 {
    match op {
        Operation::Create => 0,
        Operation::Update => 1,
        Operation::Delete => 2,
        Operation::Connect => 3,
    }
}

pub fn op_from_code(c: u8) -> Operation {
    match c & 3 {
        0 => Operation::Create,
        1 => Operation::Update,
        2 => Operation::Delete,
        _ => Operation::Connect,
    }
}

/// Diff operations as `op, path, [old], [new]`, values as compact JSON.
pub fn put_changes(out: &mut Vec<u8>, changes: &[FieldChange]) -> Result<()> {
    put_varint(out, changes.len() as u64);
    for c in changes {
        let op = match c.op {
            ChangeOp::Add => 0,
            ChangeOp::Remove => 1,
            ChangeOp::Replace => 2,
        };
        let flags = op | if c.old.is_some() { 4 } else { 0 } | if c.new.is_some() { 8 } else { 0 };
        out.push(flags);
        put_bytes(out, c.path.as_bytes());
        for v in [&c.old, &c.new].into_iter().flatten() {
            put_bytes(out, &serde_json::to_vec(v)?);
        }
    }
    Ok(())
}

pub fn get_changes(r: &mut Reader<'_>) -> Result<Vec<FieldChange>> {
    let n = r.varint()? as usize;
    let mut changes = Vec::with_capacity(n.min(1024));
    for _ in 0..n {
        let flags = r.u8()?;
        let op = match flags & 3 {
            0 => ChangeOp::Add,
            1 => ChangeOp::Remove,
            _ => ChangeOp::Replace,
        };
        let path = r.string()?;
        let mut value = |present: bool| -> Result<Option<Value>> {
            if present {
                Ok(Some(serde_json::from_slice(r.bytes()?)?))
            } else {
                Ok(None)
            }
        };
        let old = value(flags & 4 != 0)?;
        let new = value(flags & 8 != 0)?;
        changes.push(FieldChange { op, path, old, new });
    }
    Ok(changes)
}

/// Per-object bookkeeping that lets the writer decide between a delta and a snapshot, and lets
/// retention find objects over their event limit without scanning events.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Head {
    /// The object's newest event.
    pub last: u64,
    /// Events the object has in the store.
    pub count: u64,
    /// Events since the last snapshot.
    pub since_snapshot: u64,
    /// The state after `last` is not known (a break the writer could not repair yet).
    pub broken: bool,
}

impl Head {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24);
        out.push(u8::from(self.broken));
        put_varint(&mut out, self.last);
        put_varint(&mut out, self.count);
        put_varint(&mut out, self.since_snapshot);
        out
    }

    pub fn decode(buf: &[u8]) -> Result<Head> {
        let mut r = Reader::new(buf);
        let broken = r.u8()? != 0;
        let last = r.varint()?;
        let count = r.varint()?;
        // Older heads end with a 16-byte state digest, which nothing reads any more.
        let since_snapshot = r.varint()?;
        Ok(Head {
            last,
            count,
            since_snapshot,
            broken,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_and_zigzag_round_trip() {
        for v in [0u64, 1, 127, 128, 300, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(Reader::new(&out).varint().unwrap(), v);
        }
        for v in [0i64, -1, 1, i64::MIN, i64::MAX] {
            assert_eq!(unzigzag(zigzag(v)), v);
        }
    }

    #[test]
    fn uuids_compress_only_when_canonical() {
        let u = "5f7c0deb-38fa-4591-b677-95437ac76d3d";
        assert_eq!(format_uuid(&parse_uuid(u).unwrap()), u);
        assert!(parse_uuid("5F7C0DEB-38FA-4591-B677-95437AC76D3D").is_none());
        assert!(parse_uuid("not-a-uuid").is_none());
        for s in [u, "weird uid", ""] {
            let mut out = Vec::new();
            put_id_string(&mut out, s);
            assert_eq!(get_id_string(&mut Reader::new(&out)).unwrap(), s);
        }
    }
}
