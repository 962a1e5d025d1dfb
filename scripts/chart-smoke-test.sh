#!/usr/bin/env bash
# Proves an installed chart works on a real cluster (CI runs it on kind after `helm install`):
# the operator is ready, a TrackingPolicy becomes Ready with its webhook configuration and caBundle,
# changes made with kubectl come back as ChangeRecords, the query API answers through the aggregator,
# and deleting the policy removes its webhook configuration.
#
# Usage: scripts/chart-smoke-test.sh [RELEASE_NAMESPACE]   (current kubectl context, cluster-admin)
set -euo pipefail
cd "$(dirname "$0")/.."

NS=${1:-histor-system}
TEST_NS=histor-smoke
POLICY=smoke

step() { echo "== $*"; }
fail() {
  echo "FAIL: $*" >&2
  kubectl -n "$NS" get pods -o wide >&2 || true
  kubectl -n "$NS" logs deployment/histor --tail=100 >&2 || true
  kubectl get trackingpolicy "$POLICY" -o yaml >&2 || true
  exit 1
}
# retry SECONDS COMMAND...: until COMMAND succeeds, or fail.
retry() {
  local deadline=$((SECONDS + $1))
  shift
  until "$@" >/dev/null 2>&1; do
    [ "$SECONDS" -lt "$deadline" ] || return 1
    sleep 2
  done
}

step "operator ready"
kubectl -n "$NS" rollout status deployment/histor --timeout=180s || fail "the operator did not become ready"

step "TrackingPolicy $POLICY"
kubectl create namespace "$TEST_NS" --dry-run=client -o yaml | kubectl apply -f -
kubectl apply -f - <<EOF
apiVersion: histor.dev/v1alpha1
kind: TrackingPolicy
metadata:
  name: $POLICY
spec:
  resources:
    - apiGroups: ["apps"]
      resources: ["deployments", "deployments/scale"]
    - apiGroups: [""]
      resources: ["configmaps"]
  namespaces:
    include: ["$TEST_NS"]
EOF
kubectl wait --for=condition=Ready "trackingpolicy/$POLICY" --timeout=120s || fail "policy not Ready"
ca=$(kubectl get validatingwebhookconfiguration "histor-$POLICY" -o jsonpath='{.webhooks[0].clientConfig.caBundle}') ||
  fail "no ValidatingWebhookConfiguration histor-$POLICY"
[ -n "$ca" ] || fail "histor-$POLICY has no caBundle"

step "changes are recorded"
kubectl -n "$TEST_NS" create deployment web --image=registry.k8s.io/pause:3.10
kubectl -n "$TEST_NS" scale deployment web --replicas=2
kubectl -n "$TEST_NS" create configmap settings --from-literal=mode=a
kubectl -n "$TEST_NS" patch configmap settings -p '{"data":{"mode":"b"}}'
has_records() {
  local out
  out=$(kubectl -n "$TEST_NS" get changerecords \
    -o jsonpath='{range .items[*]}{.spec.target}={.status.changeCount}{"\n"}{end}')
  echo "$out" | grep -Eiq '^deployment(\.apps)?/web=[2-9]' && echo "$out" | grep -Eiq '^configmap/settings=[2-9]'
}
retry 60 has_records || {
  kubectl -n "$TEST_NS" get changerecords -o wide >&2 || true
  fail "ChangeRecords for deployment/web and configmap/settings did not show both changes"
}
kubectl get changerecords -A

step "query API through the aggregator"
retry 120 kubectl wait --for=condition=Available apiservice/v1alpha1.query.histor.dev --timeout=5s ||
  fail "APIService v1alpha1.query.histor.dev is not Available"
kubectl get --raw "/apis/query.histor.dev/v1alpha1/namespaces/$TEST_NS/changes?limit=10" ||
  fail "the query API did not answer"
echo

step "deleting the policy removes its webhook configuration"
kubectl delete trackingpolicy "$POLICY" --timeout=60s
retry 60 bash -c "! kubectl get validatingwebhookconfiguration histor-$POLICY" ||
  fail "histor-$POLICY still exists"
kubectl delete namespace "$TEST_NS" --wait=false
echo "chart smoke test passed"
