//! Stable digests of names, for keys engines persist: the same on every build and platform
//! (unlike std's `DefaultHasher`), because they outlive the process.

use ring::digest;

/// A 64-bit hash of `parts` joined by NUL.
pub fn hash64(parts: &[&str]) -> u64 {
    let mut ctx = digest::Context::new(&digest::SHA256);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            ctx.update(&[0]);
        }
        ctx.update(p.as_bytes());
    }
    let d = ctx.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

/// A request uid as dedupe keys it: 128 bits of its SHA-256.
pub fn request_digest(uid: &str) -> [u8; 16] {
    let d = digest::digest(&digest::SHA256, uid.as_bytes());
    let mut b = [0u8; 16];
    b.copy_from_slice(&d.as_ref()[..16]);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_stable_across_builds() {
        // Persisted in keys: a change here would orphan every stored history.
        assert_eq!(hash64(&["a", "b"]), 0x59b2_71ae_1bbc_b1d3);
        assert_ne!(hash64(&["a", "b"]), hash64(&["ab"]));
        assert_eq!(request_digest("r")[..4], [0x45, 0x43, 0x49, 0xe4]);
    }
}
