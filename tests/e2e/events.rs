//! The Events witness on a real apiserver: an `events.k8s.io/v1` Event a policy's `events`
//! selection asks for is kept once with its count as its series grows, through a restart of the
//! operator; an Event the selection does not take is not kept.

use crate::witness::metric;
use crate::{
    apply_crds, client, create_namespaces, delete_namespaces, eventually, kubectl, policy,
    start_operator, unique, wait_ready,
};
use histor::crd::TrackingPolicy;
use kube::api::{Api, DeleteParams, PostParams};
use std::time::Duration;

fn event(ns: &str, name: &str, type_: &str, reason: &str, kind: &str) -> String {
    format!(
        "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {{name: {name}, namespace: {ns}}}\n\
         eventTime: \"{now}\"\nreportingController: kubelet\nreportingInstance: node-1\n\
         action: Pulling\nreason: {reason}\ntype: {type_}\nnote: histor e2e\n\
         regarding: {{apiVersion: v1, kind: {kind}, namespace: {ns}, name: web-0}}\n",
        now = jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ"),
    )
}

fn series(kubeconfig: &str, ns: &str, name: &str, count: u32) {
    let patch = format!(
        r#"{{"series":{{"count":{count},"lastObservedTime":"{}"}}}}"#,
        jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
    );
    kubectl(
        kubeconfig,
        &[
            "-n",
            ns,
            "patch",
            "events.v1.events.k8s.io",
            name,
            "--type=merge",
            "-p",
            &patch,
        ],
    );
}

#[tokio::test]
async fn a_warning_series_is_one_event_with_its_count_across_a_restart() {
    let Some((client, kubeconfig)) = client().await else {
        return;
    };
    let instance = unique("events");
    let ns = format!("histor-e2e-{instance}");
    let operator_ns = format!("histor-e2e-op-{instance}");
    let dir = tempfile::tempdir().unwrap();
    apply_crds(&client).await;
    create_namespaces(&client, &[&ns, &operator_ns]).await;
    let policies: Api<TrackingPolicy> = Api::all(client.clone());
    let spec = serde_json::json!({
        "resources": [{"apiGroups": [""], "resources": ["configmaps"]}],
        "namespaces": {"include": [ns]},
        "events": {"types": ["Warning"], "regardingKinds": ["Pod"]}
    });
    policies
        .create(&PostParams::default(), &policy(&instance, &instance, spec))
        .await
        .expect("policy created");
    let operator = start_operator(&kubeconfig, &operator_ns, &instance, dir.path(), &[]);
    wait_ready(&client, &instance, Duration::from_secs(60)).await;

    let files = dir.path();
    let write = |name: &str, yaml: String| {
        let path = files.join(format!("{name}.yaml"));
        std::fs::write(&path, yaml).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let backoff = write(
        "backoff",
        event(&ns, "web-0.backoff", "Warning", "BackOff", "Pod"),
    );
    let normal = write(
        "normal",
        event(&ns, "web-0.pulled", "Normal", "Pulled", "Pod"),
    );
    kubectl(&kubeconfig, &["create", "-f", &backoff]);
    kubectl(&kubeconfig, &["create", "-f", &normal]);
    series(&kubeconfig, &ns, "web-0.backoff", 2);
    eventually("the Event and its repeat", Duration::from_secs(60), || {
        let op = &operator;
        async move {
            let new = metric(op, "histor_kube_events_total", r#"outcome="new""#).await?;
            let again = metric(op, "histor_kube_events_total", r#"outcome="again""#).await?;
            let skipped =
                metric(op, "histor_kube_events_total", r#"outcome="not_selected""#).await?;
            (new >= 1.0 && again >= 1.0 && skipped >= 1.0).then_some(())
        }
    })
    .await;
    drop(operator);

    // A restart resumes the watch: the Event is not recorded again, its next repeat is.
    let operator = start_operator(&kubeconfig, &operator_ns, &instance, dir.path(), &[]);
    series(&kubeconfig, &ns, "web-0.backoff", 3);
    eventually(
        "the repeat after the restart",
        Duration::from_secs(60),
        || {
            let op = &operator;
            async move {
                let again = metric(op, "histor_kube_events_total", r#"outcome="again""#).await?;
                (again >= 1.0).then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        metric(&operator, "histor_kube_events_total", r#"outcome="new""#).await,
        None,
        "nothing recorded twice"
    );
    drop(operator);

    let store = histor::store::SledStore::open(dir.path().join("data").join("store")).unwrap();
    let kept = store
        .kube_events()
        .regarding(
            &[histor::store::Regarding {
                namespace: ns.clone(),
                kind: "Pod".into(),
                name: "web-0".into(),
            }],
            jiff::Timestamp::UNIX_EPOCH,
            100,
        )
        .unwrap();
    assert_eq!(kept.len(), 1, "the Warning only: {kept:#?}");
    assert_eq!(kept[0].event.reason, "BackOff");
    assert_eq!(kept[0].event.count, 3);
    assert_eq!(
        kept[0]
            .sightings
            .iter()
            .map(|s| s.count)
            .collect::<Vec<_>>(),
        [1, 2, 3]
    );
    drop(store);

    let _ = policies.delete(&instance, &DeleteParams::default()).await;
    delete_namespaces(&client, &[&ns, &operator_ns]).await;
}
