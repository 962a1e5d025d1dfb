//! Compact binary encodings of what the sled store keeps: event records, per-object heads and
//! the small primitives they are made of. Pure functions over bytes; no sled here.
//!
//! Disk use is a product requirement (a few hundred bytes per update event), so records are
//! binary: varints, UUIDs as 16 raw bytes, repeated strings (users, resources, kinds, policies,
//! namespaces) as ids into a dictionary the store keeps, and the diff as op/path/value triples.

use crate::crd::Operation;
use crate::pipeline::{
    AuditInfo, ChangeEvent, ChangeOp, ChangeState, Commit, FieldChange, InferredActor, Witness,
};
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

    /// Whether everything has been read.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
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

/// Skips what [`put_changes`] wrote, without parsing the values.
pub fn skip_changes(r: &mut Reader<'_>) -> Result<()> {
    for _ in 0..r.varint()? {
        let flags = r.u8()?;
        r.bytes()?;
        for present in [flags & 4 != 0, flags & 8 != 0] {
            if present {
                r.bytes()?;
            }
        }
    }
    Ok(())
}

// The witnessed part of a record (its tail, see `put_witnessed`): flag bits beside the state.
const W_DEDUPE: u8 = 1 << 3;
const W_COMMIT: u8 = 1 << 4;
const W_INFERRED: u8 = 1 << 5;
const W_AUDIT: u8 = 1 << 6;
const W_STATE: u8 = 7;

/// What the tail of a record holds: the state, commit, inferred actor and audit account, and
/// the dedupe key.
pub struct Witnessed {
    pub state: ChangeState,
    pub commit: Option<Commit>,
    pub inferred: Option<InferredActor>,
    pub audit: Option<AuditInfo>,
    pub dedupe: [u8; 16],
}

fn state_code(s: ChangeState) -> u8 {
    s.code()
}

fn state_of(code: u8) -> Result<ChangeState> {
    ChangeState::from_code(code)
        .ok_or_else(|| Error::Corrupt(format!("unknown change state {code}")))
}

/// The record's tail: a flag byte (the state in its low bits), then the dedupe key when it is
/// not the request uid's digest, the commit, the inferred actor. Left out entirely when all of
/// them are what a record without a tail means (unconfirmed, the uid's digest, none): records
/// written before states existed end before it, and read as that.
pub fn put_witnessed(
    out: &mut Vec<u8>,
    request_uid: &str,
    dedupe: &[u8; 16],
    e: &ChangeEvent,
) -> Result<()> {
    let own_key = *dedupe != crate::store::digest::request_digest(request_uid);
    let mut flags = state_code(e.state);
    if own_key {
        flags |= W_DEDUPE;
    }
    if e.commit.is_some() {
        flags |= W_COMMIT;
    }
    if e.inferred.is_some() {
        flags |= W_INFERRED;
    }
    if e.audit.is_some() {
        flags |= W_AUDIT;
    }
    if flags == state_code(ChangeState::Unconfirmed) {
        return Ok(());
    }
    out.push(flags);
    if own_key {
        out.extend_from_slice(dedupe);
    }
    if let Some(c) = &e.commit {
        put_bytes(out, c.resource_version.as_bytes());
        // Nanoseconds fit an i64 until 2262.
        let ns = c
            .seen_at
            .as_nanosecond()
            .clamp(i64::MIN.into(), i64::MAX.into()) as i64;
        put_varint(out, zigzag(ns));
        out.push(match c.witness {
            Witness::Watch => 0,
            Witness::Audit => 1,
        });
    }
    if let Some(a) = &e.inferred {
        put_bytes(out, &serde_json::to_vec(a)?);
    }
    if let Some(a) = &e.audit {
        put_bytes(out, &serde_json::to_vec(a)?);
    }
    Ok(())
}

/// Reads what [`put_witnessed`] wrote (nothing: an unconfirmed event deduped by its uid).
pub fn get_witnessed(r: &mut Reader<'_>, request_uid: &str) -> Result<Witnessed> {
    let mut w = Witnessed {
        state: ChangeState::Unconfirmed,
        commit: None,
        inferred: None,
        audit: None,
        dedupe: crate::store::digest::request_digest(request_uid),
    };
    if r.is_empty() {
        return Ok(w);
    }
    let flags = r.u8()?;
    w.state = state_of(flags & W_STATE)?;
    if flags & W_DEDUPE != 0 {
        w.dedupe.copy_from_slice(r.take(16)?);
    }
    if flags & W_COMMIT != 0 {
        let resource_version = r.string()?;
        let ns = unzigzag(r.varint()?);
        let seen_at = jiff::Timestamp::from_nanosecond(i128::from(ns))
            .map_err(|e| Error::Corrupt(format!("commit time: {e}")))?;
        let witness = match r.u8()? {
            0 => Witness::Watch,
            1 => Witness::Audit,
            c => return Err(Error::Corrupt(format!("unknown witness {c}"))),
        };
        w.commit = Some(Commit {
            resource_version,
            seen_at,
            witness,
        });
    }
    if flags & W_INFERRED != 0 {
        w.inferred = Some(serde_json::from_slice(r.bytes()?)?);
    }
    if flags & W_AUDIT != 0 {
        w.audit = Some(serde_json::from_slice(r.bytes()?)?);
    }
    Ok(w)
}

/// The dedupe key from a record's tail, the rest of it not decoded.
pub fn peek_witnessed_dedupe(r: &mut Reader<'_>, request_uid: &str) -> Result<[u8; 16]> {
    if !r.is_empty() && r.u8()? & W_DEDUPE != 0 {
        let mut key = [0u8; 16];
        key.copy_from_slice(r.take(16)?);
        return Ok(key);
    }
    Ok(crate::store::digest::request_digest(request_uid))
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
