//! The retention decision every engine shares: which events of an object its policies still
//! keep. Pure: an engine walks its records and asks; removing them and keeping what stays
//! rebuildable is the engine's job.
//!
//! An event goes when it is older than the `max_age` of every one of its policies, or when it is
//! outside the newest `max_events_per_object` events of every one of its policies (counting the
//! object's events newest first, each policy only those it is on). Unknown policies and events
//! without any use the default rule.

use super::{EventId, RetentionRule};
use jiff::{SignedDuration, Timestamp};
use std::collections::HashMap;
use std::hash::Hash;

/// Most events one retention pass removes, so a pass after a long downtime does not hold the
/// writer for long; the next pass continues.
pub const MAX_REMOVALS_PER_PASS: usize = 20_000;

/// The rules of one pass, resolved once for every policy the store holds.
pub struct Rules {
    now_us: i64,
    rules: HashMap<String, RetentionRule>,
    default: RetentionRule,
}

impl Rules {
    /// Resolves `rule` for `policies` (every policy the store has events of) at `now`.
    pub fn new(
        now: Timestamp,
        policies: impl IntoIterator<Item = String>,
        rule: &dyn Fn(&str) -> Option<RetentionRule>,
        default: RetentionRule,
    ) -> Rules {
        let rules = policies
            .into_iter()
            .map(|p| {
                let r = rule(&p).unwrap_or(default);
                (p, r)
            })
            .collect();
        Rules {
            now_us: now.as_microsecond(),
            rules,
            default,
        }
    }

    /// The rule of `policy`; `None` for the default (events without policies).
    pub fn of(&self, policy: Option<&str>) -> RetentionRule {
        policy
            .and_then(|p| self.rules.get(p).copied())
            .unwrap_or(self.default)
    }

    /// The oldest id a rule of `max_age` keeps.
    pub fn cutoff(&self, max_age: SignedDuration) -> EventId {
        (self.now_us - max_age.as_micros().clamp(0, i128::from(i64::MAX)) as i64).max(0) as u64
    }

    /// Ids from this one on are kept by age whatever their policies: only older ones need
    /// checking.
    pub fn age_floor(&self) -> EventId {
        let min_age = self
            .rules
            .values()
            .map(|r| r.max_age)
            .fold(self.default.max_age, |a, b| a.min(b));
        self.cutoff(min_age)
    }

    /// The smallest count limit of any policy: an object with no more events than this keeps
    /// them all by count. (The default only applies to events without a known policy.)
    pub fn min_count(&self) -> u32 {
        self.rules
            .values()
            .map(|r| r.max_events_per_object)
            .min()
            .unwrap_or(self.default.max_events_per_object)
    }

    /// Whether event `id` of an object goes: outside the newest `max_events_per_object` of every
    /// one of its `policies` (`walk` has seen the object's newer events; call this for every
    /// event, newest first), or older than every policy's `max_age`.
    pub fn due<'a>(
        &self,
        walk: &mut CountWalk<Option<&'a str>>,
        id: EventId,
        policies: &'a [String],
    ) -> bool {
        let limits: Vec<(Option<&str>, u32)> = if policies.is_empty() {
            vec![(None, self.of(None).max_events_per_object)]
        } else {
            policies
                .iter()
                .map(|p| (Some(p.as_str()), self.of(Some(p)).max_events_per_object))
                .collect()
        };
        // (Past every policy's age implies older than the age floor: no need to check that.)
        !walk.keeps(limits) || self.due_by_age(id, policies)
    }

    /// Whether event `id` is past the max age of every one of its policies.
    pub fn due_by_age<S: AsRef<str>>(&self, id: EventId, policies: &[S]) -> bool {
        if policies.is_empty() {
            return id < self.cutoff(self.default.max_age);
        }
        !policies
            .iter()
            .any(|p| id >= self.cutoff(self.of(Some(p.as_ref())).max_age))
    }
}

/// Walks one object's events newest first and says which the count limits keep. `K` names a
/// policy however the engine does (a name, a dictionary id); the caller gives each policy's
/// limit ([`Rules::of`]) and a key of its own for "no policy".
pub struct CountWalk<K> {
    seen: HashMap<K, u32>,
}

impl<K> Default for CountWalk<K> {
    fn default() -> Self {
        CountWalk {
            seen: HashMap::new(),
        }
    }
}

impl<K: Hash + Eq> CountWalk<K> {
    /// The next older event, with (policy, its limit) for each of its policies: true when some
    /// policy still keeps it, that is it is within that policy's newest `limit` events.
    pub fn keeps(&mut self, policies: impl IntoIterator<Item = (K, u32)>) -> bool {
        let mut keep = false;
        for (p, max) in policies {
            let n = self.seen.entry(p).or_default();
            keep |= *n < max;
            *n += 1;
        }
        keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(max_events: u32, hours: i64) -> RetentionRule {
        RetentionRule {
            max_events_per_object: max_events,
            max_age: SignedDuration::from_hours(hours),
        }
    }

    const HOUR: u64 = 3_600_000_000;

    fn rules() -> Rules {
        let now = Timestamp::from_microsecond(100 * HOUR as i64).unwrap();
        let by_name = |p: &str| match p {
            "short" => Some(rule(2, 1)),
            "long" => Some(rule(5, 50)),
            _ => None,
        };
        Rules::new(
            now,
            ["short", "long", "other"].map(String::from),
            &by_name,
            rule(3, 10),
        )
    }

    #[test]
    fn an_event_goes_by_age_only_when_every_policy_is_done_with_it() {
        let r = rules();
        let two_hours_old = 98 * HOUR;
        assert!(r.due_by_age(two_hours_old, &["short"]));
        assert!(!r.due_by_age(two_hours_old, &["short", "long"]));
        // Unknown policies and events without any use the default (10 h).
        assert!(!r.due_by_age(two_hours_old, &["other"]));
        assert!(r.due_by_age(80 * HOUR, &["other"]));
        assert!(r.due_by_age(80 * HOUR, &[] as &[&str]));
        assert!(!r.due_by_age(95 * HOUR, &[] as &[&str]));
        assert_eq!(r.age_floor(), 99 * HOUR, "the shortest age bounds the scan");
        assert_eq!(r.min_count(), 2);
    }

    #[test]
    fn each_policy_keeps_its_newest_events_counting_only_its_own() {
        let r = rules();
        let limit = |p: &'static str| (p, r.of(Some(p)).max_events_per_object);
        let mut walk = CountWalk::default();
        // Newest first: short, short, short+long, short.
        assert!(walk.keeps([limit("short")]));
        assert!(walk.keeps([limit("short")]));
        assert!(walk.keeps([limit("short"), limit("long")]), "long keeps it");
        assert!(!walk.keeps([limit("short")]), "third of short's");
    }
}
