//! Notifier configuration: the knobs of the delivery machinery (with `default_*` functions), the
//! per-sink view of a policy's `spec.notify` entry, and Go-style duration parsing. Pure: depends on
//! `crd` types only.

use crate::crd::{NotifySink, SecretKeyRef, SecretRef};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

/// Knobs of the notification machinery, shared by every sink.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifyConfig {
    /// First retry delay after a failed delivery; doubles on each further failure.
    #[serde(default = "default_initial_backoff", with = "duration_str")]
    pub initial_backoff: Duration,
    /// Longest delay between two attempts.
    #[serde(default = "default_max_backoff", with = "duration_str")]
    pub max_backoff: Duration,
    /// How long a notification is retried before it counts as a permanent failure.
    #[serde(default = "default_max_retry_duration", with = "duration_str")]
    pub max_retry_duration: Duration,
    /// Time limit of one delivery attempt (connect, TLS, send and answer).
    #[serde(default = "default_request_timeout", with = "duration_str")]
    pub request_timeout: Duration,
    /// How often the delivery loop looks for due work when nothing wakes it.
    #[serde(default = "default_poll_interval", with = "duration_str")]
    pub poll_interval: Duration,
    /// Changed fields shown per event in a message.
    #[serde(default = "default_max_fields")]
    pub max_fields: usize,
    /// Events listed in a digest before "and N more".
    #[serde(default = "default_max_listed")]
    pub max_listed: usize,
    /// Oldest a queued notification may get (held back by a rate limit, retried, or waiting for a
    /// sink that is no longer configured): older ones are dropped, counted as `expired`. Events
    /// buffered for a digest of a sink that is no longer configured expire at the same age.
    #[serde(default = "default_max_pending_age", with = "duration_str")]
    pub max_pending_age: Duration,
    /// Most notifications queued per sink: beyond it the oldest are dropped, counted as
    /// `overflow`, so a sink that cannot keep up hears about the present.
    #[serde(default = "default_max_pending_per_sink")]
    pub max_pending_per_sink: usize,
    /// Most events one digest window holds: a window that fills up is sent before its time.
    #[serde(default = "default_max_digest_events")]
    pub max_digest_events: usize,
}

/// Default of [`NotifyConfig::initial_backoff`]: 1s.
pub fn default_initial_backoff() -> Duration {
    Duration::from_secs(1)
}
/// Default of [`NotifyConfig::max_backoff`]: 5m.
pub fn default_max_backoff() -> Duration {
    Duration::from_secs(300)
}
/// Default of [`NotifyConfig::max_retry_duration`]: 1h.
pub fn default_max_retry_duration() -> Duration {
    Duration::from_secs(3600)
}
/// Default of [`NotifyConfig::request_timeout`]: 10s.
pub fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
/// Default of [`NotifyConfig::poll_interval`]: 1s.
pub fn default_poll_interval() -> Duration {
    Duration::from_secs(1)
}
/// Default of [`NotifyConfig::max_fields`]: 10.
pub fn default_max_fields() -> usize {
    10
}
/// Default of [`NotifyConfig::max_listed`]: 5.
pub fn default_max_listed() -> usize {
    5
}
/// Default of [`NotifyConfig::max_pending_age`]: 24h.
pub fn default_max_pending_age() -> Duration {
    Duration::from_secs(24 * 3600)
}
/// Default of [`NotifyConfig::max_pending_per_sink`]: 10,000.
pub fn default_max_pending_per_sink() -> usize {
    10_000
}
/// Default of [`NotifyConfig::max_digest_events`]: 10,000.
pub fn default_max_digest_events() -> usize {
    10_000
}

impl Default for NotifyConfig {
    fn default() -> Self {
        NotifyConfig {
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
            max_retry_duration: default_max_retry_duration(),
            request_timeout: default_request_timeout(),
            poll_interval: default_poll_interval(),
            max_fields: default_max_fields(),
            max_listed: default_max_listed(),
            max_pending_age: default_max_pending_age(),
            max_pending_per_sink: default_max_pending_per_sink(),
            max_digest_events: default_max_digest_events(),
        }
    }
}

/// The transport of a sink; also the `sink` label of metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// Slack incoming webhook.
    Slack,
    /// SMTP.
    Email,
    /// Generic JSON webhook.
    Webhook,
}

impl SinkKind {
    /// Fixed lowercase name, used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Slack => "slack",
            SinkKind::Email => "email",
            SinkKind::Webhook => "webhook",
        }
    }
}

impl fmt::Display for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names one sink of one policy.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SinkId {
    /// TrackingPolicy name.
    pub policy: String,
    /// Sink name within the policy.
    pub sink: String,
}

impl SinkId {
    /// Builds an id.
    pub fn new(policy: impl Into<String>, sink: impl Into<String>) -> Self {
        SinkId {
            policy: policy.into(),
            sink: sink.into(),
        }
    }

    /// The sink's name in the store's outbox (a key prefix on sled). Policy and sink names are
    /// DNS labels, so `/` cannot occur in them and the prefix is unambiguous.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}/", self.policy, self.sink)
    }
}

impl fmt::Display for SinkId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.policy, self.sink)
    }
}

/// Where a sink sends, as written in the policy (secret references, not secret values: those are
/// read at delivery time so that rotation needs no restart).
#[derive(Clone, Debug, PartialEq)]
pub enum SinkTarget {
    /// Slack: the incoming-webhook URL is in this Secret key.
    Slack { url: SecretKeyRef },
    /// Email: connection settings in this Secret.
    Email {
        smtp: SecretRef,
        from: String,
        to: Vec<String>,
    },
    /// Webhook: URL and optional HMAC key in these Secret keys.
    Webhook {
        url: SecretKeyRef,
        signing_key: Option<SecretKeyRef>,
    },
}

impl SinkTarget {
    /// The transport kind.
    pub fn kind(&self) -> SinkKind {
        match self {
            SinkTarget::Slack { .. } => SinkKind::Slack,
            SinkTarget::Email { .. } => SinkKind::Email,
            SinkTarget::Webhook { .. } => SinkKind::Webhook,
        }
    }
}

/// One sink of one policy, validated.
#[derive(Clone, Debug, PartialEq)]
pub struct SinkSpec {
    /// Policy and sink name.
    pub id: SinkId,
    /// Where to send.
    pub target: SinkTarget,
    /// Which events the sink gets.
    pub when: Option<crate::crd::NotifyFilter>,
    /// Digest window; `None` sends each event alone.
    pub digest: Option<Duration>,
    /// Messages per minute; `None` for no limit.
    pub rate_limit_per_minute: Option<u32>,
    /// Sent when the webhook records a change, not when the witness confirms it.
    pub on_receipt: bool,
}

impl SinkSpec {
    /// Validates one `spec.notify` entry of `policy`.
    pub fn from_crd(policy: &str, sink: &NotifySink) -> Result<Self> {
        let id = SinkId::new(policy, &sink.name);
        let bad = |message: String| Error::Notify {
            sink: id.to_string(),
            message,
        };
        let mut targets = Vec::new();
        if let Some(s) = &sink.slack {
            targets.push(SinkTarget::Slack {
                url: s.webhook_secret_ref.clone(),
            });
        }
        if let Some(e) = &sink.email {
            if e.to.is_empty() {
                return Err(bad("email needs at least one recipient in `to`".into()));
            }
            targets.push(SinkTarget::Email {
                smtp: e.smtp_secret_ref.clone(),
                from: e.from.clone(),
                to: e.to.clone(),
            });
        }
        if let Some(w) = &sink.webhook {
            targets.push(SinkTarget::Webhook {
                url: w.url_secret_ref.clone(),
                signing_key: w.signing_secret_ref.clone(),
            });
        }
        if targets.len() != 1 {
            return Err(bad(
                "a sink needs exactly one of slack, email or webhook".into()
            ));
        }
        let digest = match &sink.digest {
            Some(d) => Some(parse_duration(d).map_err(|e| bad(format!("digest: {e}")))?),
            None => None,
        };
        if let Some(when) = &sink.when {
            // Reject bad globs now, so the policy's status says so instead of every event failing.
            super::filter::CompiledFilter::new(when).map_err(|e| bad(format!("when: {e}")))?;
        }
        if sink.rate_limit_per_minute == Some(0) {
            return Err(bad("rateLimitPerMinute must be positive".into()));
        }
        Ok(SinkSpec {
            id,
            target: targets.remove(0),
            when: sink.when.clone(),
            digest: digest.filter(|d| !d.is_zero()),
            rate_limit_per_minute: sink.rate_limit_per_minute,
            on_receipt: sink.notify_on == Some(crate::crd::NotifyOn::Received),
        })
    }
}

/// A Go-style duration (`60s`, `1h30m`) as a non-negative std duration; see
/// [`crate::pipeline::parse_duration`].
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let d = crate::pipeline::parse_duration(s)?;
    Duration::try_from(d).map_err(|_| format!("{s:?}: a duration here must not be negative"))
}

/// Formats a duration the way [`parse_duration`] reads it (`1h30m`, `60s`, `250ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

mod duration_str {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_duration(*d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_duration(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{NotifyFilter, SlackSink};

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("60s"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("60").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("5d").is_err());
        for d in ["1h30m", "60s", "250ms", "2h"] {
            let parsed = parse_duration(d).unwrap();
            assert_eq!(parse_duration(&format_duration(parsed)), Ok(parsed));
        }
    }

    #[test]
    fn config_deserialises_with_defaults() {
        let c: NotifyConfig = serde_json::from_str(r#"{"maxRetryDuration":"2h"}"#).unwrap();
        assert_eq!(c.max_retry_duration, Duration::from_secs(7200));
        assert_eq!(c.initial_backoff, default_initial_backoff());
        assert!(serde_json::from_str::<NotifyConfig>(r#"{"bogus":1}"#).is_err());
    }

    #[test]
    fn sink_spec_validates() {
        let mut sink = NotifySink {
            name: "team".into(),
            slack: Some(SlackSink {
                webhook_secret_ref: SecretKeyRef {
                    namespace: "ns".into(),
                    name: "slack".into(),
                    key: "url".into(),
                },
            }),
            digest: Some("60s".into()),
            ..Default::default()
        };
        let spec = SinkSpec::from_crd("p", &sink).unwrap();
        assert_eq!(spec.target.kind(), SinkKind::Slack);
        assert_eq!(spec.digest, Some(Duration::from_secs(60)));
        sink.digest = Some("soon".into());
        assert!(SinkSpec::from_crd("p", &sink).is_err());
        sink.digest = None;
        sink.when = Some(NotifyFilter {
            users: vec!["[".into()],
            ..Default::default()
        });
        assert!(SinkSpec::from_crd("p", &sink).is_err());
        sink.when = None;
        sink.slack = None;
        assert!(SinkSpec::from_crd("p", &sink).is_err());
    }
}
