//! TrackingPolicy: which changes to capture, how long to keep them and whom to tell.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Declares which changes histor records and where it reports them. Each policy becomes one
/// ValidatingWebhookConfiguration whose webhook never denies a request.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "histor.dev",
    version = "v1alpha1",
    kind = "TrackingPolicy",
    plural = "trackingpolicies",
    shortname = "tp",
    category = "histor",
    doc = "Declares which changes histor records and where it reports them.",
    cel,
    status = "TrackingPolicyStatus",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Events","type":"integer","jsonPath":".status.eventsRecorded"}"#,
    printcolumn = r#"{"name":"Last-Event","type":"date","jsonPath":".status.lastEventTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrackingPolicySpec {
    /// Resources to track. Each entry becomes one rule of the webhook configuration.
    #[schemars(length(min = 1, max = 32))]
    pub resources: Vec<ResourceRule>,

    /// Namespaces to track. Without it every namespace (and cluster-scoped objects) is tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<NamespaceFilter>,

    /// Only objects whose labels match this selector are tracked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object_selector: Option<LabelSelector>,

    /// Users and groups whose changes are tracked or ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<UserFilter>,

    /// CEL predicates over `request`, `object` and `oldObject`; a change is recorded only when all hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(c, self.exists_one(d, d.name == c.name))").message("condition names must be unique"))]
    pub conditions: Vec<MatchCondition>,

    /// JSON pointers of fields left out of every diff, such as `/spec/replicas`. `*` stands for one
    /// path segment, as in `/metadata/annotations/*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 256)))]
    #[x_kube(validation = Rule::new("self.all(p, p.startsWith('/'))").message("ignoreFields entries are JSON pointers and start with '/'"))]
    pub ignore_fields: Vec<String>,

    /// Record changes of `status` too. Off by default: status churns and rarely says who did what.
    #[serde(default, skip_serializing_if = "is_false")]
    pub track_status: bool,

    /// How long and how much history to keep per object.
    #[serde(default)]
    pub retention: Retention,

    /// Where to send notifications about recorded changes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self.all(s, self.exists_one(t, t.name == s.name))").message("sink names must be unique"))]
    pub notify: Vec<NotifySink>,

    /// Settings of the generated ValidatingWebhookConfiguration.
    #[serde(default)]
    pub webhook: WebhookSettings,

    /// Kubernetes Events to keep (those in the namespaces this policy tracks, by `include` and
    /// `exclude`), chosen by type, reason and the kind of object they regard, with a retention
    /// of their own. Repeats are one Event with a count. Without it no Events are kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<EventSelection>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// One group of resources to track, as in a webhook rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceRule {
    /// API groups; `""` is the core group, `"*"` all groups.
    #[schemars(length(min = 1, max = 32), inner(length(max = 253)))]
    pub api_groups: Vec<String>,

    /// API versions; all versions when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16), inner(length(max = 63)))]
    pub api_versions: Vec<String>,

    /// Resources (plural names), with subresources as `deployments/scale`; `"*"` for all.
    #[schemars(length(min = 1, max = 64), inner(length(max = 253)))]
    pub resources: Vec<String>,

    /// Operations to record. Defaults to CREATE, UPDATE and DELETE.
    #[serde(default = "default_operations")]
    #[schemars(length(max = 4))]
    pub operations: Vec<Operation>,
}

fn default_operations() -> Vec<Operation> {
    vec![Operation::Create, Operation::Update, Operation::Delete]
}

/// An admission operation.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum Operation {
    /// An object was created.
    Create,
    /// An object (or one of its subresources) was changed.
    Update,
    /// An object was deleted.
    Delete,
    /// A connect request (exec, attach, port-forward); recorded only when asked for.
    Connect,
}

impl Operation {
    /// The name the apiserver uses.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "CREATE",
            Operation::Update => "UPDATE",
            Operation::Delete => "DELETE",
            Operation::Connect => "CONNECT",
        }
    }
}

impl std::fmt::Display for Operation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Operation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_uppercase().as_str() {
            "CREATE" => Ok(Operation::Create),
            "UPDATE" => Ok(Operation::Update),
            "DELETE" => Ok(Operation::Delete),
            "CONNECT" => Ok(Operation::Connect),
            other => Err(format!(
                "unknown operation {other:?} (expected CREATE, UPDATE, DELETE or CONNECT)"
            )),
        }
    }
}

/// Which namespaces to track.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceFilter {
    /// Namespace name globs to track (`prod-*`); all namespaces when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub include: Vec<String>,
    /// Namespace name globs never tracked; wins over `include`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub exclude: Vec<String>,
    /// Only namespaces whose labels match are tracked (evaluated by the apiserver).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
}

/// Which users' changes to track.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UserFilter {
    /// User name globs to track; all users when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub include: Vec<String>,
    /// User name globs never tracked, such as `system:serviceaccount:kube-system:*`; wins over `include`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub exclude: Vec<String>,
    /// Groups whose members are never tracked, such as `system:nodes`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub exclude_groups: Vec<String>,
}

/// A named CEL predicate.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MatchCondition {
    /// Name of the condition, shown in errors.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("name must be a DNS label"))]
    pub name: String,
    /// CEL expression over `request` (the AdmissionRequest), `object` and `oldObject`, returning bool.
    #[schemars(length(min = 1, max = 4096))]
    pub expression: String,
}

/// Which Kubernetes Events to keep, and for how long.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventSelection {
    /// Event types kept: `Normal`, `Warning`. Default: only `Warning`.
    #[serde(default = "default_event_types")]
    #[schemars(length(min = 1, max = 2))]
    #[x_kube(validation = Rule::new("self.all(t, t == 'Normal' || t == 'Warning')").message("event types are Normal or Warning"))]
    pub types: Vec<String>,
    /// Reasons kept, such as `BackOff` or `FailedScheduling`; empty: every reason.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 128)))]
    pub reasons: Vec<String>,
    /// Kinds of the objects the Events regard, such as `Pod` or `Deployment`; empty: every kind.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(min = 1, max = 63)))]
    pub regarding_kinds: Vec<String>,
    /// How long an Event is kept after it was last seen, as a duration such as `168h`.
    #[serde(default = "default_events_max_age")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$')").message("maxAge must be a duration such as 168h or 90m"))]
    pub max_age: String,
}

fn default_event_types() -> Vec<String> {
    vec!["Warning".into()]
}

fn default_events_max_age() -> String {
    "168h".into()
}

impl Default for EventSelection {
    fn default() -> Self {
        EventSelection {
            types: default_event_types(),
            reasons: Vec::new(),
            regarding_kinds: Vec::new(),
            max_age: default_events_max_age(),
        }
    }
}

/// How much history to keep.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retention {
    /// Most events kept per object; older ones are removed first.
    #[serde(default = "default_max_events")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 100000").message("maxEventsPerObject must be between 1 and 100000"))]
    pub max_events_per_object: u32,
    /// Oldest event kept, as a duration such as `720h` or `30m`.
    #[serde(default = "default_max_age")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ns|us|ms|s|m|h))+$')").message("maxAge must be a duration such as 720h or 90m"))]
    pub max_age: String,
}

fn default_max_events() -> u32 {
    100
}

fn default_max_age() -> String {
    "720h".into()
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            max_events_per_object: default_max_events(),
            max_age: default_max_age(),
        }
    }
}

/// A notification sink: exactly one of `slack`, `email` or `webhook`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(validation = Rule::new("[has(self.slack), has(self.email), has(self.webhook)].filter(x, x).size() == 1").message("a sink needs exactly one of slack, email or webhook"))]
pub struct NotifySink {
    /// Name of the sink, unique within the policy; shown in status and metrics.
    #[schemars(length(min = 1, max = 63))]
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$')").message("name must be a DNS label"))]
    pub name: String,
    /// Post to a Slack incoming webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub slack: Option<SlackSink>,
    /// Send email over SMTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<EmailSink>,
    /// POST JSON to any HTTPS endpoint, optionally signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookSink>,
    /// Only changes matching this filter are sent; all recorded changes when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<NotifyFilter>,
    /// Changes inside this window (such as `60s`) go out as one message; each change alone when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 32))]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(\\\\.[0-9]+)?(ms|s|m|h))+$')").message("digest must be a duration such as 60s"))]
    pub digest: Option<String>,
    /// Most messages per minute sent to this sink; further changes wait for the next message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("rateLimitPerMinute must be positive"))]
    pub rate_limit_per_minute: Option<u32>,
    /// When a change is sent: `Confirmed` (the default) once the watch saw it committed, so a
    /// change that a later admission step refused is never announced; `Received` as soon as the
    /// webhook recorded it, for speed, before anyone knows whether it will be committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_on: Option<NotifyOn>,
}

/// When the sink is told of a change: `Confirmed` (the default) once the watch saw it
/// committed (or gave up: unconfirmed), so a change a later admission step refused is never
/// announced; `Received` as soon as the webhook recorded it, for speed, before anyone knows
/// whether it will be committed. A change found not applied is never sent.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NotifyOn {
    /// Once a witness saw the change committed (or could not tell: `unconfirmed`).
    #[default]
    Confirmed,
    /// As soon as the webhook recorded it.
    Received,
}

/// A key of a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretKeyRef {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
    /// Key within the Secret's data.
    pub key: String,
}

/// A whole Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRef {
    /// Namespace of the Secret.
    pub namespace: String,
    /// Name of the Secret.
    pub name: String,
}

/// Slack incoming webhook.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SlackSink {
    /// Secret key holding the incoming-webhook URL.
    pub webhook_secret_ref: SecretKeyRef,
}

/// Email through an SMTP server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EmailSink {
    /// Secret with the connection: `host`; optional `tls` (`starttls`, the default; `tls` for
    /// implicit TLS; `none` for a local relay), `port` (default 587, 465 or 25 by `tls`),
    /// `username` and `password` (no authentication without `username`), and `ca.crt` (PEM CA to
    /// trust for a server with a private certificate). Re-read on change: no restart needed.
    pub smtp_secret_ref: SecretRef,
    /// Sender address.
    pub from: String,
    /// Recipient addresses.
    #[schemars(length(min = 1, max = 50), inner(length(max = 254)))]
    pub to: Vec<String>,
}

/// Generic JSON webhook.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSink {
    /// Secret key holding the URL to POST to.
    pub url_secret_ref: SecretKeyRef,
    /// Secret key holding the HMAC-SHA256 key used to sign each body (header `X-Histor-Signature`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_secret_ref: Option<SecretKeyRef>,
}

/// Which recorded changes a sink receives.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifyFilter {
    /// Operations to send; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub operations: Vec<Operation>,
    /// User name globs to send; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub users: Vec<String>,
    /// Namespace globs to send; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub namespaces: Vec<String>,
    /// Kinds to send (such as `Deployment`); all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64), inner(length(max = 253)))]
    pub kinds: Vec<String>,
}

/// Settings of the generated webhook.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WebhookSettings {
    /// What the apiserver does when histor cannot be reached. Keep `Ignore`: histor must never block.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Seconds the apiserver waits for histor (1 to 30).
    #[serde(default = "default_timeout")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 30").message("timeoutSeconds must be between 1 and 30"))]
    pub timeout_seconds: i32,
}

fn default_timeout() -> i32 {
    2
}

impl Default for WebhookSettings {
    fn default() -> Self {
        WebhookSettings {
            failure_policy: FailurePolicy::default(),
            timeout_seconds: default_timeout(),
        }
    }
}

/// Webhook failure policy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Requests go ahead when histor cannot answer.
    #[default]
    Ignore,
    /// Requests fail when histor cannot answer.
    Fail,
}

/// Observed state of a TrackingPolicy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TrackingPolicyStatus {
    /// `Ready`, `WebhookConfigured` and `SinksReady`, with reasons and messages.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The generation the conditions describe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Name of the ValidatingWebhookConfiguration made for this policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook_configuration: Option<String>,
    /// Events recorded under this policy.
    #[serde(default)]
    pub events_recorded: u64,
    /// Receipt time of the newest recorded event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_event_time: Option<Time>,
}
