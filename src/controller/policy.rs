//! TrackingPolicy reconcile: policy → capture index + ValidatingWebhookConfiguration + status.
//!
//! Thin on purpose: kube's `finalizer()` splits apply from cleanup; the configuration itself comes
//! from the pure [`super::webhook::build`]. A broken policy is a normal outcome, not an error: it
//! gets conditions and a Warning Event and is looked at again later, so it never stalls the
//! controller or other policies. Errors are for the API server misbehaving.

use super::webhook::{self, WebhookParams};
use super::{CertMode, Context, Error, FIELD_MANAGER, FINALIZER, Result};
use crate::crd::{NotifySink, TrackingPolicy, TrackingPolicyStatus};
use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{Event as KubeEvent, EventType};
use kube::runtime::finalizer::{Event, finalizer};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::sync::Arc;
use std::time::Duration;
use tracing::{debug, info, warn};

/// How soon an invalid policy is looked at again (it is also re-read on every edit).
const INVALID_REQUEUE: Duration = Duration::from_secs(300);
/// How soon a policy waiting for certificates or Secrets is looked at again.
const PENDING_REQUEUE: Duration = Duration::from_secs(10);

/// Condition types.
pub const READY: &str = "Ready";
/// The webhook configuration is applied.
pub const WEBHOOK_CONFIGURED: &str = "WebhookConfigured";
/// Every sink can deliver.
pub const SINKS_READY: &str = "SinksReady";
/// Condition type: the watches that confirm this policy's changes are healthy (with a witness).
pub const WATCHES_HEALTHY: &str = "WatchesHealthy";

/// Reconciles one TrackingPolicy.
pub async fn reconcile(policy: Arc<TrackingPolicy>, ctx: Arc<Context>) -> Result<Action> {
    let name = policy.name_any();
    let api: Api<TrackingPolicy> = Api::all(ctx.client.clone());
    let action = finalizer(&api, FINALIZER, policy, |event| async {
        match event {
            Event::Apply(policy) => apply(&policy, &ctx).await,
            Event::Cleanup(policy) => cleanup(&policy, &ctx).await,
        }
    })
    .await
    .map_err(|e| Error::Finalizer(Box::new(e)))?;
    ctx.succeeded(&name);
    Ok(action)
}

/// Requeues a failed reconcile with exponential backoff (5 s doubling to 5 min), per policy.
pub fn error_policy(policy: Arc<TrackingPolicy>, error: &Error, ctx: Arc<Context>) -> Action {
    let name = policy.name_any();
    let failures = ctx.failed(&name);
    let delay = backoff(failures);
    warn!(%error, policy = %name, failures, retry_in_secs = delay.as_secs(), "reconcile failed");
    Action::requeue(delay)
}

fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(5u64.saturating_mul(1 << exp)).min(Duration::from_secs(300))
}

/// Runs the TrackingPolicy controller until its stream ends.
pub async fn run_controller(ctx: Arc<Context>) {
    let policies: Api<TrackingPolicy> = Api::all(ctx.client.clone());
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(ctx.client.clone());
    // A new caBundle must reach every webhook configuration, so its change re-reconciles all.
    let ca_changes = futures::stream::unfold(ctx.ca_bundle.subscribe(), |mut rx| async move {
        rx.changed().await.ok()?;
        Some(((), rx))
    });
    // So does a watch of the witness failing or recovering (the WatchesHealthy condition).
    let health_changes = futures::stream::unfold(ctx.watch_health_changes(), |rx| async move {
        let mut rx = rx?;
        rx.changed().await.ok()?;
        Some(((), Some(rx)))
    });
    let ca_changes = futures::stream::select(ca_changes, health_changes);
    let selected = match &ctx.settings.policy_selector {
        Some(selector) => watcher::Config::default().labels(selector),
        None => watcher::Config::default(),
    };
    info!(
        selector = ctx.settings.policy_selector.as_deref().unwrap_or("(all)"),
        "starting the TrackingPolicy controller"
    );
    Controller::new(policies, selected)
        .owns(
            configs,
            watcher::Config::default().labels(&format!(
                "{}={}",
                webhook::MANAGED_BY_LABEL,
                webhook::MANAGED_BY
            )),
        )
        .reconcile_all_on(ca_changes)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            match result {
                Ok((obj, _)) => debug!(policy = %obj.name, "reconciled"),
                Err(error) => debug!(%error, "reconcile did not complete"),
            }
        })
        .await;
}

/// What the conditions will say.
struct Verdict {
    webhook: (bool, &'static str, String),
    sinks: (Option<bool>, String, String),
    /// Why the apiserver would not trust the webhook yet, when the configuration is applied but
    /// its caBundle does not verify what histor serves (Ready stays False).
    trust: Option<String>,
}

async fn apply(policy: &TrackingPolicy, ctx: &Context) -> Result<Action> {
    let name = policy.name_any();

    if let Err(message) = ctx.registry.apply(&name, &policy.spec) {
        warn!(policy = %name, %message, "invalid policy");
        // The last good configuration (if any) stays: the capture side answers "allowed" whatever
        // the index holds, so nothing blocks while the author fixes the policy.
        let verdict = Verdict {
            webhook: (false, "InvalidPolicy", message.clone()),
            sinks: (None, "InvalidPolicy".into(), "policy is invalid".into()),
            trust: None,
        };
        patch_status(policy, ctx, &verdict, None).await?;
        publish(ctx, policy, EventType::Warning, "InvalidPolicy", &message).await;
        return Ok(Action::requeue(INVALID_REQUEUE));
    }

    let sinks = sink_condition(policy, ctx).await?;
    let configuration = webhook::configuration_name(&name);

    let ca_bundle = match &ctx.settings.cert_mode {
        CertMode::SelfManaged => match ctx.ca_bundle() {
            Some(bundle) => Some(bundle),
            None => {
                // A configuration without a caBundle would make the apiserver reject histor's
                // certificate; wait for the certificate loop instead.
                let verdict = Verdict {
                    webhook: (
                        false,
                        "CertificatePending",
                        "waiting until histor serves a webhook certificate the apiserver will trust".into(),
                    ),
                    sinks,
                    trust: None,
                };
                patch_status(policy, ctx, &verdict, None).await?;
                return Ok(Action::requeue(PENDING_REQUEUE));
            }
        },
        CertMode::CertManager { .. } => None,
    };
    let params = WebhookParams {
        operator_namespace: ctx.settings.namespace.clone(),
        service_account: ctx.settings.service_account.clone(),
        client: ctx.settings.webhook.clone(),
        ca_bundle,
        cert_manager_certificate: match &ctx.settings.cert_mode {
            CertMode::CertManager { certificate } => Some(certificate.clone()),
            CertMode::SelfManaged => None,
        },
        match_conditions: ctx.match_conditions(),
    };
    let desired = webhook::build(policy, &params);
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(ctx.client.clone());
    let applied = match configs
        .patch(
            &configuration,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&desired),
        )
        .await
    {
        Ok(applied) => applied,
        Err(error) => {
            let verdict = Verdict {
                webhook: (false, "ApplyFailed", error.to_string()),
                sinks,
                trust: None,
            };
            // Best effort: the error itself is what gets retried.
            if let Err(status_error) = patch_status(policy, ctx, &verdict, None).await {
                warn!(error = %status_error, policy = %name, "could not record the failure in status");
            }
            return Err(error.into());
        }
    };
    debug!(policy = %name, %configuration, "webhook configuration applied");
    let trust = match &ctx.settings.cert_mode {
        // The certificate loop published this caBundle only once the served certificate
        // verified against it.
        CertMode::SelfManaged => None,
        CertMode::CertManager { .. } => injected_bundle_pending(ctx, &applied).await,
    };

    let sinks_ok = sinks.0 == Some(true);
    if !sinks_ok {
        publish(ctx, policy, EventType::Warning, &sinks.1, &sinks.2).await;
    }
    let verdict = Verdict {
        webhook: (
            true,
            "Configured",
            format!("ValidatingWebhookConfiguration {configuration} is applied"),
        ),
        sinks,
        trust,
    };
    let pending = verdict.trust.is_some();
    patch_status(policy, ctx, &verdict, Some(configuration)).await?;
    if pending {
        // The CA injector's write re-triggers this reconcile (the configuration is owned);
        // the requeue covers a certificate that is still being loaded.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    Ok(Action::requeue(if sinks_ok {
        ctx.settings.resync_interval
    } else {
        PENDING_REQUEUE.max(ctx.settings.resync_interval / 6)
    }))
}

/// cert-manager mode: why the apiserver would not trust the webhook yet, if it would not. The
/// caBundle comes from cert-manager's CA injector, so it may be missing for a moment after the
/// configuration is created, or lag behind a renewed certificate.
async fn injected_bundle_pending(
    ctx: &Context,
    applied: &ValidatingWebhookConfiguration,
) -> Option<String> {
    let bundle = applied
        .webhooks
        .as_ref()?
        .first()?
        .client_config
        .ca_bundle
        .as_ref()
        .map(|b| b.0.clone())
        .filter(|b| !b.is_empty());
    let Some(bundle) = bundle else {
        return Some("waiting for cert-manager's CA injector to fill the caBundle".into());
    };
    let addr = ctx.serving()?;
    let name = ctx.settings.webhook.server_name();
    match crate::capture::tls::probe(addr, &name, &bundle, Duration::from_secs(2)).await {
        Ok(()) => None,
        Err(error) => Some(format!(
            "the served certificate does not verify against the injected caBundle yet: {error}"
        )),
    }
}

async fn cleanup(policy: &TrackingPolicy, ctx: &Context) -> Result<Action> {
    let name = policy.name_any();
    let configuration = webhook::configuration_name(&name);
    let configs: Api<ValidatingWebhookConfiguration> = Api::all(ctx.client.clone());
    match configs
        .delete(&configuration, &DeleteParams::default())
        .await
    {
        Ok(_) => info!(policy = %name, %configuration, "webhook configuration deleted"),
        Err(kube::Error::Api(status)) if status.is_not_found() => {
            debug!(policy = %name, %configuration, "webhook configuration already gone");
        }
        Err(error) => return Err(error.into()),
    }
    ctx.registry.remove(&name);
    Ok(Action::await_change())
}

/// Every Secret a sink refers to, with the key it needs (if any).
fn secret_refs(sink: &NotifySink) -> Vec<(String, String, Option<String>)> {
    let mut refs = Vec::new();
    if let Some(slack) = &sink.slack {
        let r = &slack.webhook_secret_ref;
        refs.push((r.namespace.clone(), r.name.clone(), Some(r.key.clone())));
    }
    if let Some(email) = &sink.email {
        let r = &email.smtp_secret_ref;
        refs.push((r.namespace.clone(), r.name.clone(), Some("host".into())));
    }
    if let Some(hook) = &sink.webhook {
        let r = &hook.url_secret_ref;
        refs.push((r.namespace.clone(), r.name.clone(), Some(r.key.clone())));
        if let Some(r) = &hook.signing_secret_ref {
            refs.push((r.namespace.clone(), r.name.clone(), Some(r.key.clone())));
        }
    }
    refs
}

/// `SinksReady`: referenced Secrets first (a missing one is the author's to fix), then what the
/// notify side reports.
async fn sink_condition(
    policy: &TrackingPolicy,
    ctx: &Context,
) -> Result<(Option<bool>, String, String)> {
    if policy.spec.notify.is_empty() {
        return Ok((Some(true), "NoSinks".into(), "no sinks configured".into()));
    }
    let mut missing = Vec::new();
    for sink in &policy.spec.notify {
        for (namespace, name, key) in secret_refs(sink) {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
            match secrets.get_opt(&name).await? {
                None => missing.push(format!(
                    "sink {}: Secret {namespace}/{name} not found",
                    sink.name
                )),
                Some(secret) => {
                    if let Some(key) = key {
                        let has = secret.data.as_ref().is_some_and(|d| d.contains_key(&key))
                            || secret
                                .string_data
                                .as_ref()
                                .is_some_and(|d| d.contains_key(&key));
                        if !has {
                            missing.push(format!(
                                "sink {}: Secret {namespace}/{name} has no key {key:?}",
                                sink.name
                            ));
                        }
                    }
                }
            }
        }
    }
    if !missing.is_empty() {
        return Ok((Some(false), "SecretMissing".into(), missing.join("; ")));
    }
    if let Some(health) = ctx.sink_health(&policy.name_any()) {
        let bad: Vec<&super::SinkHealth> = health.iter().filter(|h| !h.ready).collect();
        if let Some(first) = bad.first() {
            let message = bad
                .iter()
                .map(|h| format!("sink {}: {}", h.sink, h.message))
                .collect::<Vec<_>>()
                .join("; ");
            return Ok((Some(false), first.reason.clone(), message));
        }
    }
    Ok((
        Some(true),
        "SinksConfigured".into(),
        format!("{} sink(s) configured", policy.spec.notify.len()),
    ))
}

/// Server-side applies the status subresource.
async fn patch_status(
    policy: &TrackingPolicy,
    ctx: &Context,
    verdict: &Verdict,
    configuration: Option<String>,
) -> Result<()> {
    let name = policy.name_any();
    let now = Timestamp::now();
    let generation = policy.metadata.generation;
    let previous = policy
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let (webhook_ok, webhook_reason, webhook_message) = &verdict.webhook;
    let (sinks_ok, sinks_reason, sinks_message) = &verdict.sinks;
    let (ready, ready_reason, ready_message) = if !webhook_ok {
        (Some(false), *webhook_reason, webhook_message.clone())
    } else if let Some(waiting) = &verdict.trust {
        (Some(false), "CertificatePending", waiting.clone())
    } else if *sinks_ok != Some(true) {
        (Some(false), "SinksNotReady", sinks_message.clone())
    } else {
        (Some(true), "Ready", "recording changes".to_string())
    };
    let cond = |type_: &str, ok: Option<bool>, reason: &str, message: &str| {
        condition(type_, ok, reason, message, generation, previous, now)
    };
    let (events_recorded, last_event) = ctx.stats(&name);
    let mut conditions = vec![
        cond(READY, ready, ready_reason, &ready_message),
        cond(
            WEBHOOK_CONFIGURED,
            Some(*webhook_ok),
            webhook_reason,
            webhook_message,
        ),
        cond(SINKS_READY, *sinks_ok, sinks_reason, sinks_message),
    ];
    // Not part of Ready: capture works without it; changes then stay unconfirmed.
    if let Some((ok, reason, message)) = ctx.watch_health(&name) {
        conditions.push(cond(WATCHES_HEALTHY, ok, &reason, &message));
    }
    let status = TrackingPolicyStatus {
        conditions,
        observed_generation: generation,
        // Keep naming the configuration while it exists from an earlier good generation.
        webhook_configuration: configuration.or_else(|| {
            policy
                .status
                .as_ref()
                .and_then(|s| s.webhook_configuration.clone())
        }),
        events_recorded,
        last_event_time: last_event.map(Time),
    };
    let patch = serde_json::json!({
        "apiVersion": TrackingPolicy::api_version(&()),
        "kind": TrackingPolicy::kind(&()),
        "status": status,
    });
    let api: Api<TrackingPolicy> = Api::all(ctx.client.clone());
    api.patch_status(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(patch),
    )
    .await?;
    Ok(())
}

/// A metav1.Condition whose lastTransitionTime moves only when its status does.
pub fn condition(
    type_: &str,
    ok: Option<bool>,
    reason: &str,
    message: &str,
    generation: Option<i64>,
    previous: &[Condition],
    now: Timestamp,
) -> Condition {
    let status = match ok {
        Some(true) => "True",
        Some(false) => "False",
        None => "Unknown",
    };
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == type_ && c.status == status)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    Condition {
        type_: type_.into(),
        status: status.into(),
        reason: reason.into(),
        // The apiserver caps condition messages at 32 KiB; CEL errors stay far below, but a
        // pathological message must not make the status write fail.
        message: crate::render::shorten(message, 4096),
        observed_generation: generation,
        last_transition_time,
    }
}

/// Publishes an Event about `policy`; failures are logged, never fatal (Events are advisory).
async fn publish(
    ctx: &Context,
    policy: &TrackingPolicy,
    type_: EventType,
    reason: &str,
    note: &str,
) {
    let event = KubeEvent {
        type_,
        reason: reason.into(),
        note: Some(crate::render::shorten(note, 1000)),
        action: "Reconcile".into(),
        secondary: None,
    };
    if let Err(error) = ctx.recorder.publish(&event, &policy.object_ref(&())).await {
        warn!(%error, policy = %policy.name_any(), reason, "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures;
    use serde_json::json;

    const POLICY_PATH: &str = "/apis/histor.dev/v1alpha1/trackingpolicies/prod-apps";
    const WEBHOOK_PATH: &str =
        "/apis/admissionregistration.k8s.io/v1/validatingwebhookconfigurations/histor-prod-apps";

    fn policy(finalized: bool) -> TrackingPolicy {
        let mut p: TrackingPolicy = serde_json::from_value(json!({
            "apiVersion": "histor.dev/v1alpha1",
            "kind": "TrackingPolicy",
            "metadata": {"name": "prod-apps", "uid": "uid-1", "generation": 1, "resourceVersion": "1"},
            "spec": {
                "resources": [{"apiGroups": ["apps"], "resources": ["deployments", "deployments/scale"]}],
                "namespaces": {"include": ["prod"]},
                "users": {"exclude": ["system:serviceaccount:kube-system:*"]}
            }
        }))
        .expect("policy");
        if finalized {
            p.metadata.finalizers = Some(vec![FINALIZER.into()]);
        }
        p
    }

    fn condition_of<'a>(status: &'a serde_json::Value, type_: &str) -> &'a serde_json::Value {
        status["conditions"]
            .as_array()
            .expect("conditions")
            .iter()
            .find(|c| c["type"] == type_)
            .unwrap_or_else(|| panic!("no {type_} condition"))
    }

    #[tokio::test]
    async fn create_adds_finalizer_then_applies_webhook_and_status() {
        let (ctx, server, registry) = fixtures::context(vec![policy(false)]);
        ctx.set_ca_bundle(Some(b"CA-PEM".to_vec()));
        ctx.set_match_conditions(true);

        // first pass: only the finalizer
        let action = reconcile(Arc::new(policy(false)), ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(action, Action::await_change());
        // second pass: the object as the watch would deliver it, finalizer in place
        let action = reconcile(Arc::new(policy(true)), ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(action, Action::requeue(Duration::from_secs(60)));
        drop(ctx);
        let calls = server.await.expect("server");

        assert_eq!(
            fixtures::summary(&calls),
            vec![
                format!("PATCH {POLICY_PATH}"),
                format!("PATCH {WEBHOOK_PATH}"),
                format!("PATCH {POLICY_PATH}/status"),
            ]
        );
        // finalizer added by JSON patch
        assert_eq!(
            calls[0].body,
            json!([
                {"op": "test", "path": "/metadata/finalizers", "value": null},
                {"op": "add", "path": "/metadata/finalizers", "value": [FINALIZER]}
            ])
        );
        // webhook configuration by server-side apply
        assert!(
            calls[1].query.contains("fieldManager=histor") && calls[1].query.contains("force=true")
        );
        let wh = &calls[1].body["webhooks"][0];
        assert_eq!(
            calls[1].body["metadata"]["labels"]["histor.dev/policy"],
            "prod-apps"
        );
        assert_eq!(
            calls[1].body["metadata"]["ownerReferences"][0]["uid"],
            "uid-1"
        );
        assert_eq!(
            wh["rules"][0]["resources"],
            json!(["deployments", "deployments/scale"])
        );
        assert_eq!(
            wh["rules"][0]["operations"],
            json!(["CREATE", "UPDATE", "DELETE"])
        );
        assert_eq!(
            wh["namespaceSelector"]["matchExpressions"],
            json!([
                {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["prod"]},
                {"key": "kubernetes.io/metadata.name", "operator": "NotIn", "values": ["histor-system"]}
            ])
        );
        let conditions = wh["matchConditions"].as_array().expect("matchConditions");
        assert_eq!(
            conditions[0]["expression"],
            "request.userInfo.username != 'system:serviceaccount:histor-system:histor'"
        );
        assert!(conditions.iter().any(|c| c["name"] == "exclude-users"));
        // base64 of "CA-PEM"
        assert_eq!(wh["clientConfig"]["caBundle"], "Q0EtUEVN");
        assert_eq!(wh["clientConfig"]["service"]["path"], "/admit/prod-apps");
        assert_eq!(wh["failurePolicy"], "Ignore");
        assert_eq!(wh["sideEffects"], "NoneOnDryRun");

        // status by server-side apply on the status subresource
        let status = &calls[2].body["status"];
        assert_eq!(calls[2].body["kind"], "TrackingPolicy");
        assert_eq!(condition_of(status, READY)["status"], "True");
        assert_eq!(condition_of(status, WEBHOOK_CONFIGURED)["status"], "True");
        assert_eq!(condition_of(status, SINKS_READY)["reason"], "NoSinks");
        assert_eq!(status["observedGeneration"], 1);
        assert_eq!(status["webhookConfiguration"], "histor-prod-apps");
        assert_eq!(status["eventsRecorded"], 42);
        assert_eq!(registry.applied(), vec!["prod-apps".to_string()]);
    }

    #[tokio::test]
    async fn update_reapplies_new_rules_and_keeps_transition_times() {
        let mut p = policy(true);
        p.metadata.generation = Some(2);
        p.spec.resources[0].resources = vec!["statefulsets".into()];
        let old_time = Time("2026-01-01T00:00:00Z".parse().expect("time"));
        p.status = Some(TrackingPolicyStatus {
            conditions: vec![Condition {
                type_: READY.into(),
                status: "True".into(),
                reason: "Ready".into(),
                message: "recording changes".into(),
                observed_generation: Some(1),
                last_transition_time: old_time.clone(),
            }],
            ..TrackingPolicyStatus::default()
        });
        let (ctx, server, _registry) = fixtures::context(vec![p.clone()]);
        ctx.set_ca_bundle(Some(b"CA-PEM".to_vec()));
        reconcile(Arc::new(p), ctx.clone())
            .await
            .expect("reconcile");
        drop(ctx);
        let calls = server.await.expect("server");
        assert_eq!(
            fixtures::summary(&calls),
            vec![
                format!("PATCH {WEBHOOK_PATH}"),
                format!("PATCH {POLICY_PATH}/status")
            ]
        );
        let wh = &calls[0].body["webhooks"][0];
        assert_eq!(wh["rules"][0]["resources"], json!(["statefulsets"]));
        // no matchConditions on a server that does not support them
        assert!(wh.get("matchConditions").is_none());
        let status = &calls[1].body["status"];
        assert_eq!(status["observedGeneration"], 2);
        let ready = condition_of(status, READY);
        assert_eq!(ready["lastTransitionTime"], json!(old_time));
        assert_eq!(ready["observedGeneration"], 2);
    }

    #[tokio::test]
    async fn delete_removes_webhook_finalizer_and_registry_entry() {
        let mut p = policy(true);
        p.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let (ctx, server, registry) = fixtures::context(vec![p.clone()]);
        let action = reconcile(Arc::new(p), ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(action, Action::await_change());
        drop(ctx);
        let calls = server.await.expect("server");
        assert_eq!(
            fixtures::summary(&calls),
            vec![
                format!("DELETE {WEBHOOK_PATH}"),
                format!("PATCH {POLICY_PATH}")
            ]
        );
        assert_eq!(
            calls[1].body,
            json!([
                {"op": "test", "path": "/metadata/finalizers/0", "value": FINALIZER},
                {"op": "remove", "path": "/metadata/finalizers/0"}
            ])
        );
        assert_eq!(registry.removed(), vec!["prod-apps".to_string()]);
    }

    #[tokio::test]
    async fn broken_policy_reports_and_applies_no_webhook() {
        let (ctx, server, registry) = fixtures::context(vec![policy(true)]);
        ctx.set_ca_bundle(Some(b"CA-PEM".to_vec()));
        registry.fail_with("condition human-only: undeclared reference to 'reqest'");
        let action = reconcile(Arc::new(policy(true)), ctx.clone())
            .await
            .expect("a broken policy is not a reconcile error");
        assert_eq!(action, Action::requeue(INVALID_REQUEUE));
        drop(ctx);
        let calls = server.await.expect("server");
        assert_eq!(
            fixtures::summary(&calls),
            vec![
                format!("PATCH {POLICY_PATH}/status"),
                "POST /apis/events.k8s.io/v1/namespaces/default/events".to_string(),
            ]
        );
        let status = &calls[0].body["status"];
        let ready = condition_of(status, READY);
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "InvalidPolicy");
        assert_eq!(
            ready["message"],
            "condition human-only: undeclared reference to 'reqest'"
        );
        assert_eq!(condition_of(status, WEBHOOK_CONFIGURED)["status"], "False");
        let event = &calls[1].body;
        assert_eq!(event["type"], "Warning");
        assert_eq!(event["reason"], "InvalidPolicy");
        assert_eq!(event["regarding"]["name"], "prod-apps");
        assert!(
            event["note"]
                .as_str()
                .unwrap_or_default()
                .contains("reqest")
        );
    }

    #[tokio::test]
    async fn missing_sink_secret_sets_sinks_ready_false() {
        let mut p = policy(true);
        p.spec.notify = serde_json::from_value(json!([
            {"name": "team-slack", "slack": {"webhookSecretRef": {"namespace": "histor-system", "name": "slack", "key": "url"}}}
        ]))
        .expect("sinks");
        let (ctx, server, _registry) = fixtures::context(vec![p.clone()]);
        ctx.set_ca_bundle(Some(b"CA-PEM".to_vec()));
        reconcile(Arc::new(p), ctx.clone())
            .await
            .expect("reconcile");
        drop(ctx);
        let calls = server.await.expect("server");
        assert_eq!(
            fixtures::summary(&calls),
            vec![
                "GET /api/v1/namespaces/histor-system/secrets/slack".to_string(),
                format!("PATCH {WEBHOOK_PATH}"),
                "POST /apis/events.k8s.io/v1/namespaces/default/events".to_string(),
                format!("PATCH {POLICY_PATH}/status"),
            ]
        );
        let status = &calls[3].body["status"];
        let sinks = condition_of(status, SINKS_READY);
        assert_eq!(sinks["status"], "False");
        assert_eq!(sinks["reason"], "SecretMissing");
        assert_eq!(
            sinks["message"],
            "sink team-slack: Secret histor-system/slack not found"
        );
        assert_eq!(condition_of(status, READY)["reason"], "SinksNotReady");
        assert_eq!(condition_of(status, WEBHOOK_CONFIGURED)["status"], "True");
    }

    #[tokio::test]
    async fn cert_manager_mode_is_not_ready_until_the_ca_is_injected() {
        let (ctx, server, _) = fixtures::context_with(vec![policy(true)], |settings| {
            settings.cert_mode = CertMode::CertManager {
                certificate: "histor-system/histor-serving".into(),
            };
        });
        let action = reconcile(Arc::new(policy(true)), ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(action, Action::requeue(Duration::from_secs(5)));
        drop(ctx);
        let calls = server.await.expect("server");
        // The configuration is applied (for the injector to fill in), but nothing verifies the
        // serving certificate yet, so the policy does not claim to record.
        let wh = &calls[0].body["webhooks"][0];
        assert!(wh["clientConfig"].get("caBundle").is_none(), "{wh}");
        let status = &calls[1].body["status"];
        assert_eq!(condition_of(status, WEBHOOK_CONFIGURED)["status"], "True");
        let ready = condition_of(status, READY);
        assert_eq!(ready["status"], "False");
        assert_eq!(ready["reason"], "CertificatePending");
        assert!(
            ready["message"].as_str().unwrap().contains("CA injector"),
            "{ready}"
        );
    }

    #[tokio::test]
    async fn no_webhook_before_the_certificate_exists() {
        let (ctx, server, _registry) = fixtures::context(vec![policy(true)]);
        let action = reconcile(Arc::new(policy(true)), ctx.clone())
            .await
            .expect("reconcile");
        assert_eq!(action, Action::requeue(PENDING_REQUEUE));
        drop(ctx);
        let calls = server.await.expect("server");
        assert_eq!(
            fixtures::summary(&calls),
            vec![format!("PATCH {POLICY_PATH}/status")]
        );
        let status = &calls[0].body["status"];
        assert_eq!(
            condition_of(status, WEBHOOK_CONFIGURED)["reason"],
            "CertificatePending"
        );
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }
}
