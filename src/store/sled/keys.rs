//! Key layout of the sled trees. Every key that sorts by time ends in a big-endian event id, so
//! sled's byte order is time order and a reverse range scan is "newest first".
//!
//! Index keys name their subject (namespace, user, target) by a 64-bit hash of it rather
//! than the string: keys stay short whatever the names, and readers re-check the decoded event,
//! so a (vanishingly rare) hash collision costs a skipped row, never a wrong answer.

use super::EventId;

/// Index entry tags (first byte of a key in the `ix` tree).
pub const TAG_NAMESPACE: u8 = b'n';
pub const TAG_USER: u8 = b'u';

pub use crate::store::digest::hash64;

/// `tag ‖ subject ‖ n`: one row of a secondary index (`n` a time bucket).
pub fn index_key(tag: u8, subject: u64, n: u64) -> [u8; 17] {
    let mut k = [0u8; 17];
    k[0] = tag;
    k[1..9].copy_from_slice(&subject.to_be_bytes());
    k[9..].copy_from_slice(&n.to_be_bytes());
    k
}

/// The number at the end of an index or target key.
pub fn id_of_index_key(k: &[u8]) -> Option<EventId> {
    let tail: [u8; 8] = k.get(k.len().checked_sub(8)?..)?.try_into().ok()?;
    Some(u64::from_be_bytes(tail))
}

/// `target ‖ object`: links a `(group/resource, name)` to each object (uid) that bore it, so a
/// query by kind and name finds deleted-and-recreated objects too.
pub fn target_key(target: u64, object: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&target.to_be_bytes());
    k[8..].copy_from_slice(&object.to_be_bytes());
    k
}

pub fn id_key(id: EventId) -> [u8; 8] {
    id.to_be_bytes()
}

pub fn id_from_key(k: &[u8]) -> Option<EventId> {
    Some(u64::from_be_bytes(k.try_into().ok()?))
}

/// The hash that names an object: its uid, or when the event has none, its target and namespace.
pub fn object_hash(
    uid: Option<&str>,
    group_resource: &str,
    namespace: Option<&str>,
    name: &str,
) -> u64 {
    match uid {
        Some(uid) => hash64(&["uid", uid]),
        None => hash64(&["target", group_resource, namespace.unwrap_or(""), name]),
    }
}

pub fn target_hash(group_resource: &str, name: &str) -> u64 {
    hash64(&["gr", group_resource, name])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_keys_sort_by_id_within_a_subject() {
        let a = index_key(TAG_USER, 7, 1);
        let b = index_key(TAG_USER, 7, 256);
        assert!(a < b);
        assert!(b < index_key(TAG_USER, 8, 0));
        assert_eq!(id_of_index_key(&b), Some(256));
        assert_ne!(hash64(&["a", "b"]), hash64(&["ab"]));
    }
}
