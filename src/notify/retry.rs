//! Retry decisions, apart from any transport (as vector's `sinks/util/retries.rs`): which outcomes
//! are worth another attempt, how long to wait (jittered, capped, exponential, honouring
//! `Retry-After`), and when to give up. Pure; time is always passed in.

use jiff::{SignedDuration, Timestamp};
use std::time::Duration;

/// What one delivery attempt came to.
#[derive(Clone, Debug, PartialEq)]
pub enum DeliveryResult {
    /// The receiver confirmed it.
    Delivered,
    /// Failed, but another attempt may work (timeouts, connection errors, 408, 429, 5xx).
    Retry {
        /// Why, for logs and health (no secrets in here).
        reason: String,
        /// The receiver's `Retry-After`, when it sent one.
        retry_after: Option<Duration>,
    },
    /// Failed in a way retrying cannot fix (other 4xx, a rejected address, bad configuration).
    Permanent {
        /// Why.
        reason: String,
    },
}

impl DeliveryResult {
    /// A retryable failure without a receiver hint.
    pub fn retry(reason: impl Into<String>) -> Self {
        DeliveryResult::Retry {
            reason: reason.into(),
            retry_after: None,
        }
    }

    /// A permanent failure.
    pub fn permanent(reason: impl Into<String>) -> Self {
        DeliveryResult::Permanent {
            reason: reason.into(),
        }
    }

    /// Fixed outcome label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            DeliveryResult::Delivered => "delivered",
            DeliveryResult::Retry { .. } => "retry",
            DeliveryResult::Permanent { .. } => "permanent",
        }
    }
}

/// Classifies an HTTP answer: 2xx delivered; 408, 429 and 5xx except 501 retried; anything else
/// (other 4xx, 501, stray 1xx/3xx) permanent. `retry_after` is the raw header value.
pub fn classify_http(status: u16, retry_after: Option<&str>, now: Timestamp) -> DeliveryResult {
    match status {
        200..=299 => DeliveryResult::Delivered,
        408 | 429 | 500 | 502..=599 => DeliveryResult::Retry {
            reason: format!("HTTP {status}"),
            retry_after: retry_after.and_then(|v| parse_retry_after(v, now)),
        },
        _ => DeliveryResult::permanent(format!("HTTP {status}")),
    }
}

/// Reads `Retry-After`: delay-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: Timestamp) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = jiff::fmt::rfc2822::parse(value).ok()?.timestamp();
    Some(Duration::try_from(at.duration_since(now)).unwrap_or(Duration::ZERO))
}

/// How failed deliveries are retried.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// First delay.
    pub initial: Duration,
    /// Cap on any one delay (a `Retry-After` is capped too, so a receiver cannot park a sink).
    pub max_delay: Duration,
    /// Give up when the next attempt would start later than this after the notification was made.
    pub max_duration: Duration,
}

impl RetryPolicy {
    /// Delay before attempt number `failures + 1`, given that `failures` attempts failed:
    /// `initial * 2^(failures-1)`, capped, then "equal jitter" (half fixed, half random) so that
    /// sinks failing together do not retry in lockstep yet never retry immediately. `random` is
    /// any uniformly random u64.
    pub fn backoff(&self, failures: u32, random: u64) -> Duration {
        let exp = failures.saturating_sub(1).min(32);
        let base = self
            .initial
            .checked_mul(1u32 << exp.min(31))
            .unwrap_or(self.max_delay)
            .min(self.max_delay);
        let half = base / 2;
        let jitter_ns = match half.as_nanos() as u64 {
            0 => 0,
            span => random % span,
        };
        half + Duration::from_nanos(jitter_ns)
    }

    /// When to try again after a failed attempt, or `None` to give up (permanent failure).
    pub fn next_attempt(
        &self,
        created: Timestamp,
        now: Timestamp,
        failures: u32,
        result: &DeliveryResult,
        random: u64,
    ) -> Option<Timestamp> {
        let DeliveryResult::Retry { retry_after, .. } = result else {
            return None;
        };
        let delay = match retry_after {
            Some(d) => (*d).min(self.max_delay),
            None => self.backoff(failures, random),
        };
        let at = now
            .checked_add(SignedDuration::try_from(delay).ok()?)
            .ok()?;
        let deadline = created
            .checked_add(SignedDuration::try_from(self.max_duration).ok()?)
            .ok()?;
        (at <= deadline).then_some(at)
    }
}

/// A random u64 from the system RNG (for jitter; falls back to the clock if the RNG fails).
pub fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    match ring::rand::SystemRandom::new().fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => Timestamp::now().subsec_nanosecond() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn http_classification() {
        let now = t("2026-01-01T00:00:00Z");
        assert_eq!(classify_http(200, None, now), DeliveryResult::Delivered);
        assert_eq!(classify_http(204, None, now), DeliveryResult::Delivered);
        for s in [408, 429, 500, 502, 503, 504, 599] {
            assert!(
                matches!(classify_http(s, None, now), DeliveryResult::Retry { .. }),
                "{s}"
            );
        }
        for s in [301, 400, 401, 403, 404, 410, 413, 422, 501] {
            assert!(
                matches!(
                    classify_http(s, None, now),
                    DeliveryResult::Permanent { .. }
                ),
                "{s}"
            );
        }
    }

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = t("2015-10-21T07:28:00Z");
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:30:00 GMT", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(
            classify_http(429, Some("7"), now),
            DeliveryResult::Retry {
                reason: "HTTP 429".into(),
                retry_after: Some(Duration::from_secs(7))
            }
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy {
            initial: Duration::from_secs(1),
            max_delay: Duration::from_secs(60),
            max_duration: Duration::from_secs(3600),
        };
        for failures in 1..40 {
            let full = Duration::from_secs(1u64 << (failures - 1).min(20)).min(p.max_delay);
            for r in [0, 1, u64::MAX / 3, u64::MAX] {
                let d = p.backoff(failures, r);
                assert!(d >= full / 2 && d <= full, "{failures} {r} {d:?}");
            }
        }
        assert_eq!(p.backoff(1, 0), Duration::from_millis(500));
        assert_eq!(p.backoff(3, 0), Duration::from_secs(2));
        assert_eq!(p.backoff(30, 0), Duration::from_secs(30));
    }

    #[test]
    fn gives_up_after_the_max_duration() {
        let p = RetryPolicy {
            initial: Duration::from_secs(10),
            max_delay: Duration::from_secs(600),
            max_duration: Duration::from_secs(3600),
        };
        let created = t("2026-01-01T00:00:00Z");
        let retry = DeliveryResult::retry("HTTP 503");
        let next = p.next_attempt(created, created, 1, &retry, 0).unwrap();
        assert_eq!(next, t("2026-01-01T00:00:05Z"));
        assert_eq!(
            p.next_attempt(created, t("2026-01-01T00:59:00Z"), 10, &retry, 0),
            None
        );
        assert_eq!(
            p.next_attempt(
                created,
                created,
                1,
                &DeliveryResult::permanent("HTTP 400"),
                0
            ),
            None
        );
        // Retry-After wins over the backoff but stays capped.
        let hinted = DeliveryResult::Retry {
            reason: "HTTP 429".into(),
            retry_after: Some(Duration::from_secs(86400)),
        };
        assert_eq!(
            p.next_attempt(created, created, 1, &hinted, 0),
            Some(t("2026-01-01T00:10:00Z"))
        );
    }
}
