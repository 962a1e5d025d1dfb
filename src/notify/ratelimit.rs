//! Per-sink token bucket: at most `rate` messages a minute, with bursts up to a minute's worth.
//! Uses tokio's clock so tests can run it under `tokio::time::pause()`.

use std::time::Duration;
use tokio::time::Instant;

/// A token bucket refilled continuously.
#[derive(Clone, Debug)]
pub struct TokenBucket {
    capacity: f64,
    tokens: f64,
    per_second: f64,
    last: Instant,
}

impl TokenBucket {
    /// `per_minute` messages a minute; starts full.
    pub fn per_minute(per_minute: u32) -> Self {
        let capacity = f64::from(per_minute.max(1));
        TokenBucket {
            capacity,
            tokens: capacity,
            per_second: capacity / 60.0,
            last: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        self.last = now;
    }

    /// Takes a token if one is there.
    pub fn try_take(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// How long until a token is there.
    pub fn wait_time(&mut self, now: Instant) -> Duration {
        self.refill(now);
        if self.tokens >= 1.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((1.0 - self.tokens) / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refills_at_the_configured_rate() {
        let mut b = TokenBucket::per_minute(2);
        let now = Instant::now();
        assert!(b.try_take(now));
        assert!(b.try_take(now));
        assert!(!b.try_take(now));
        assert_eq!(b.wait_time(Instant::now()), Duration::from_secs(30));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(!b.try_take(Instant::now()));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(b.try_take(Instant::now()));
        // Never more than a minute's worth saved up.
        tokio::time::advance(Duration::from_secs(3600)).await;
        let now = Instant::now();
        assert!(b.try_take(now) && b.try_take(now) && !b.try_take(now));
    }
}
