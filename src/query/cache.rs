//! A small time-bounded, size-bounded map for authentication and authorisation decisions: the
//! apiserver is asked at most once per key per TTL, and memory stays bounded whatever callers do.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Entries expire after `ttl`; at `capacity` expired entries are dropped, then everything.
#[derive(Debug)]
pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (Instant, V)>>,
    ttl: Duration,
    capacity: usize,
}

impl<K: Hash + Eq, V: Clone> TtlCache<K, V> {
    /// An empty cache.
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        TtlCache {
            entries: Mutex::new(HashMap::new()),
            ttl,
            capacity: capacity.max(1),
        }
    }

    /// The value for `key` if it is younger than the TTL.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(key)
            .filter(|(at, _)| at.elapsed() < self.ttl)
            .map(|(_, v)| v.clone())
    }

    /// Remembers `value` for `key`.
    pub fn insert(&self, key: K, value: V) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= self.capacity {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if entries.len() >= self.capacity {
                // Only under a flood of distinct keys: forgetting costs a few extra reviews.
                entries.clear();
            }
        }
        entries.insert(key, (Instant::now(), value));
    }

    /// Entries held (expired ones included until they are swept).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_size_stays_bounded() {
        let cache = TtlCache::new(Duration::from_millis(30), 3);
        cache.insert(1, "a");
        assert_eq!(cache.get(&1), Some("a"));
        for k in 2..10 {
            cache.insert(k, "b");
        }
        assert!(cache.len() <= 3);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get(&9), None);
    }
}
