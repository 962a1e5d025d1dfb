//! Rate limiting of repetitive warnings. A hostile or merely unlucky client can make every review
//! fail the same way (a policy condition that errors on its input, an oversized field), and one
//! log line per review would flood the log at the apiserver's request rate. [`LogLimiter`] lets one
//! line per key through per interval and counts the ones it held back, so the next line can say
//! how many there were. Time comes in as an argument: the logic is tested with injected instants.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Default interval: at most one line per key per minute.
pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(60);

/// Most keys tracked at once. Keys are policy and condition names or fixed field names, so real
/// use stays far below; past it, stale keys are forgotten (a forgotten key logs at once again).
const MAX_KEYS: usize = 4096;

/// One line per key per interval; see the module docs.
#[derive(Debug)]
pub struct LogLimiter {
    interval: Duration,
    keys: Mutex<HashMap<String, Slot>>,
}

#[derive(Debug)]
struct Slot {
    /// When the last line for this key was let through.
    logged_at: Instant,
    /// Lines held back since then.
    suppressed: u64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        LogLimiter::new(DEFAULT_INTERVAL)
    }
}

impl LogLimiter {
    /// A limiter letting one line per key through every `interval`.
    pub fn new(interval: Duration) -> Self {
        LogLimiter {
            interval,
            keys: Mutex::new(HashMap::new()),
        }
    }

    /// Whether a line for `key` may be logged at `now`: `Some(n)` with the number of lines held
    /// back for this key since the last one logged, or `None` (counted) to stay quiet.
    pub fn check(&self, key: &str, now: Instant) -> Option<u64> {
        let mut keys = self.keys.lock();
        if let Some(slot) = keys.get_mut(key) {
            if now.saturating_duration_since(slot.logged_at) < self.interval {
                slot.suppressed += 1;
                return None;
            }
            let held = std::mem::take(&mut slot.suppressed);
            slot.logged_at = now;
            return Some(held);
        }
        if keys.len() >= MAX_KEYS {
            let interval = self.interval;
            keys.retain(|_, s| now.saturating_duration_since(s.logged_at) < interval);
            if keys.len() >= MAX_KEYS {
                // Every key is active: forget them all rather than grow (each logs once more).
                keys.clear();
            }
        }
        keys.insert(
            key.to_owned(),
            Slot {
                logged_at: now,
                suppressed: 0,
            },
        );
        Some(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_key_per_interval_with_the_count_held_back() {
        let limiter = LogLimiter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(limiter.check("p/c", at(0)), Some(0));
        assert_eq!(limiter.check("p/c", at(1)), None);
        assert_eq!(limiter.check("p/c", at(59)), None);
        // Another key has its own budget.
        assert_eq!(limiter.check("p/d", at(30)), Some(0));
        assert_eq!(limiter.check("p/c", at(60)), Some(2));
        assert_eq!(limiter.check("p/c", at(61)), None);
        assert_eq!(limiter.check("p/c", at(200)), Some(1));
        assert_eq!(limiter.check("p/c", at(260)), Some(0));
        // Time going backwards (an injected clock) keeps it quiet rather than panicking.
        assert_eq!(limiter.check("p/c", at(100)), None);
    }

    #[test]
    fn keys_are_bounded() {
        let limiter = LogLimiter::new(Duration::from_secs(60));
        let t0 = Instant::now();
        for i in 0..MAX_KEYS + 10 {
            assert_eq!(limiter.check(&format!("k{i}"), t0), Some(0));
        }
        assert!(limiter.keys.lock().len() <= MAX_KEYS);
        // Stale keys go first.
        let later = t0 + Duration::from_secs(61);
        for i in 0..MAX_KEYS + 10 {
            limiter.check(&format!("n{i}"), later);
        }
        assert!(limiter.keys.lock().len() <= MAX_KEYS);
    }
}
