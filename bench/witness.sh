#!/usr/bin/env bash
# witness.sh HISTOR_BIN [N_OBJECTS=10000] [N_CHANGES=300]: the watch witness on a real
# kube-apiserver. Measures the operator's memory with N_OBJECTS ConfigMaps watched, and the
# confirmation lag of N_CHANGES changes (review received -> committed object seen by the watch).
#
#   cargo build --release --bin histor
#   bash scripts/with-kapi.sh bash bench/witness.sh target/release/histor
#
# Builds nothing. Needs kubectl, curl, python3 and the environment scripts/with-kapi.sh sets
# (HISTOR_E2E_KUBECONFIG, cluster-admin; HISTOR_E2E_WEBHOOK_CLIENT_CA, optional).
#
# The run:
# 1. applies crds/, creates a namespace and N_OBJECTS ConfigMaps in it (about 300 B of data
#    each; `kubectl create -f` of List manifests of 500, PARALLEL at a time), before histor runs;
# 2. starts `histor operator` outside the cluster in url mode, as the e2e suite does
#    (tests/e2e/main.rs, start_operator), with `--confirm-window 30s`, and waits until it idles:
#    VmRSS/VmHWM from /proc/PID/status, "idle operator";
# 3. creates a TrackingPolicy on configmaps in that namespace, waits for its Ready condition and
#    for `histor_witness_watches 1`, then until the first list has been taken in (the operator
#    idles: under 10% of a core and VmRSS within 1 MiB for 3 s in a row): memory, "watched";
# 4. patches N_CHANGES ConfigMaps (change i: object i mod N_OBJECTS, a new value each time), one
#    `kubectl patch` after the other in each of PARALLEL workers, then waits until every change
#    has a verdict (`histor_witness_verdicts_total`) and `histor_witness_pending` is 0; reads
#    `histor_witness_confirmation_lag_seconds` from /metrics: count, mean, and p50/p99 as the
#    upper bounds of the histogram buckets they fall in (buckets 1 ms, 2 ms, 4 ms, ... 65.5 s);
# 5. memory again, "after changes".
# Cleans up on exit: the policy, the operator, its webhook configuration, the namespaces.
#
# Environment: PARALLEL (workers creating and patching, default 4), SETTLE_TIMEOUT (seconds to
# wait for the first list to be taken in, default 600).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
(($# >= 1)) || { echo "usage: witness.sh HISTOR_BIN [N_OBJECTS=10000] [N_CHANGES=300]" >&2; exit 2; }
bin=$1
n_objects=${2:-10000}
n_changes=${3:-300}
parallel=${PARALLEL:-4}
settle_timeout=${SETTLE_TIMEOUT:-600}

for tool in kubectl curl python3; do
  command -v "$tool" >/dev/null || { echo "witness: needs $tool" >&2; exit 2; }
done
[[ -x $bin ]] || { echo "witness: no histor binary at $bin" >&2; exit 2; }
[[ -r ${HISTOR_E2E_KUBECONFIG:-} ]] || {
  echo "witness: no apiserver; run under scripts/with-kapi.sh" >&2
  exit 2
}
((n_objects > 0 && n_changes > 0)) || { echo "witness: N_OBJECTS and N_CHANGES must be positive" >&2; exit 2; }
export KUBECONFIG=$HISTOR_E2E_KUBECONFIG

instance=bench-$(python3 -c 'import secrets; print(secrets.token_hex(4))')
ns=histor-$instance
op_ns=histor-op-$instance
work=$(mktemp -d "${TMPDIR:-/tmp}/witness-bench.XXXXXX")
pid=
policy=
cleanup() {
  local rc=$?
  # The policy first, while the operator runs: it removes its webhook configuration.
  if [[ -n $policy ]]; then
    kubectl delete trackingpolicy "$policy" --ignore-not-found --wait=false >/dev/null 2>&1 || true
    [[ -n $pid ]] && sleep 2
  fi
  if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  kubectl delete validatingwebhookconfiguration "histor-$instance" --ignore-not-found >/dev/null 2>&1 || true
  kubectl delete namespace "$ns" "$op_ns" --ignore-not-found --wait=false >/dev/null 2>&1 || true
  if ((rc != 0)) && [[ -f $work/operator.log ]]; then
    echo "witness: the operator's log (last 40 lines):" >&2
    tail -n 40 "$work/operator.log" >&2
  fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# The value of one Prometheus sample (0 when absent).
sample() { awk -v name="$2" '$1 == name { v = $2 } END { print v + 0 }' <<<"$1"; }
metrics() { curl -sf "http://127.0.0.1:$metrics_port/metrics"; }
# VmRSS and VmHWM of the operator, in MiB.
memory() {
  awk '$1 == "VmRSS:" { r = $2 } $1 == "VmHWM:" { h = $2 }
    END { printf "VmRSS %.1f MiB, VmHWM %.1f MiB", r / 1024, h / 1024 }' "/proc/$pid/status"
}
rss_kib() { awk '$1 == "VmRSS:" { print $2 }' "/proc/$pid/status"; }
# CPU time of the operator in clock ticks (user + system; fields after the command name).
cpu_ticks() { sed 's/.*) //' "/proc/$pid/stat" | awk '{ print $12 + $13 }'; }
alive() { kill -0 "$pid" 2>/dev/null || { echo "witness: the operator exited" >&2; exit 1; }; }

# settle WHAT: waits until the operator idles (under 10% of a core, VmRSS within 1 MiB) for 3
# seconds in a row; prints how long that took.
settle() {
  local what=$1 started=$SECONDS calm=0 ticks rss hz
  hz=$(getconf CLK_TCK)
  ticks=$(cpu_ticks)
  rss=$(rss_kib)
  while ((calm < 3)); do
    ((SECONDS - started < settle_timeout)) || { echo "witness: $what did not settle in ${settle_timeout}s" >&2; exit 1; }
    sleep 1
    alive
    local t r
    t=$(cpu_ticks)
    r=$(rss_kib)
    if (((t - ticks) * 10 < hz && (r > rss ? r - rss : rss - r) <= 1024)); then
      calm=$((calm + 1))
    else
      calm=0
    fi
    ticks=$t
    rss=$r
  done
  echo $((SECONDS - started - 3))
}

# wait_for WHAT SECONDS COMMAND...: polls COMMAND every 0.2 s until it succeeds.
wait_for() {
  local what=$1 timeout=$2 deadline
  shift 2
  deadline=$((SECONDS + timeout))
  until "$@"; do
    ((SECONDS < deadline)) || { echo "witness: timed out waiting for $what" >&2; exit 1; }
    alive
    sleep 0.2
  done
}

echo "witness: $bin, $n_objects objects, $n_changes changes, $parallel workers, $(nproc) cores"

# 1. The CRDs, the namespaces, the objects.
kubectl apply -f "$here/crds/" >/dev/null
kubectl wait --for condition=established --timeout=60s \
  crd/trackingpolicies.histor.dev crd/changerecords.histor.dev >/dev/null
kubectl create namespace "$ns" >/dev/null
kubectl create namespace "$op_ns" >/dev/null
python3 - "$work/objects" "$ns" "$n_objects" <<'PY'
import json, os, sys
out, ns, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
os.makedirs(out)
for start in range(0, n, 500):
    items = [{
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": f"cm-{i}", "namespace": ns, "labels": {"app": "witness-bench"}},
        "data": {"index": str(i), "settings.yaml": f"replicas: 3\nimage: example/app:{i}\n" + "x" * 256},
    } for i in range(start, min(start + 500, n))]
    with open(f"{out}/list-{start:06d}.json", "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": items}, f)
PY
created_at=$SECONDS
find "$work/objects" -name 'list-*.json' -print0 |
  xargs -0 -P "$parallel" -I{} kubectl create -f {} -o name >/dev/null
count=$(kubectl get configmaps -n "$ns" -l app=witness-bench -o name | wc -l)
((count == n_objects)) || { echo "witness: $count ConfigMaps created, not $n_objects" >&2; exit 1; }
echo "created $n_objects ConfigMaps in $((SECONDS - created_at))s"

# 2. The operator, as tests/e2e/main.rs start_operator runs it.
port=$(free_port)
metrics_port=$(free_port)
client_ca=()
if [[ -n ${HISTOR_E2E_WEBHOOK_CLIENT_CA:-} ]]; then
  client_ca=(--webhook-client-ca "$HISTOR_E2E_WEBHOOK_CLIENT_CA" --webhook-client-names kube-apiserver)
fi
"$bin" operator --namespace "$op_ns" --leader-election=false "${client_ca[@]}" \
  --policy-selector "e2e.histor.dev/instance=$instance" \
  --webhook-url "https://127.0.0.1:$port" --listen "127.0.0.1:$port" \
  --metrics-listen "127.0.0.1:$metrics_port" --confirm-window 30s \
  --data-dir "$work/data" >"$work/operator.log" 2>&1 &
pid=$!
wait_for "the operator's /readyz" 60 curl -sf -o /dev/null "http://127.0.0.1:$metrics_port/readyz"
settle "the idle operator" >/dev/null
mem_idle=$(memory)
echo "idle operator (no policy): $mem_idle"

# 3. The policy: one watch of configmaps, its first list the baseline.
policy=$instance
cat >"$work/policy.json" <<EOF
{"apiVersion": "histor.dev/v1alpha1", "kind": "TrackingPolicy",
 "metadata": {"name": "$policy", "labels": {"e2e.histor.dev/instance": "$instance"}},
 "spec": {"resources": [{"apiGroups": [""], "resources": ["configmaps"]}],
          "namespaces": {"include": ["$ns"]}}}
EOF
kubectl create -f "$work/policy.json" >/dev/null
policy_at=$SECONDS
ready() {
  [[ $(kubectl get trackingpolicy "$policy" \
    -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null) == True ]]
}
wait_for "the policy's Ready condition" 60 ready
watching() { (($(sample "$(metrics)" histor_witness_watches) >= 1)); }
wait_for "histor_witness_watches 1" 60 watching
watch_at=$SECONDS
settled=$(settle "the first list")
mem_watched=$(memory)
echo "watching $n_objects ConfigMaps: $mem_watched (Ready and watching $((watch_at - policy_at))s after the policy, first list taken in ${settled}s later)"

# 4. The changes.
before=$(metrics)
reviews_before=$(sample "$before" 'histor_admission_reviews_total{outcome="recorded"}')
changes_at=$SECONDS
run_id=$RANDOM
workers=()
for w in $(seq 0 $((parallel - 1))); do
  (
    for ((i = w; i < n_changes; i += parallel)); do
      kubectl patch configmap -n "$ns" "cm-$((i % n_objects))" --type merge \
        -p "{\"data\":{\"change\":\"$run_id-$i\"}}" >/dev/null
    done
  ) &
  workers+=($!)
done
failed=0
for w in "${workers[@]}"; do wait "$w" || failed=1; done
((failed == 0)) || { echo "witness: some kubectl patch failed" >&2; exit 1; }
changes_took=$((SECONDS - changes_at))
echo "made $n_changes changes in ${changes_took}s"
# Every change has a verdict (the window is 30 s: 90 s is plenty) and none is pending.
decided() {
  local m
  m=$(metrics) || return 1
  local n
  n=$(grep '^histor_witness_verdicts_total{' <<<"$m" | grep -v 'state="observed"' |
    awk '{ s += $2 } END { print s + 0 }')
  ((${n%.*} >= n_changes)) && (($(sample "$m" histor_witness_pending) == 0))
}
wait_for "a verdict on every change" 90 decided
after=$(metrics)
mem_after=$(memory)
echo "after the changes: $mem_after"

reviews=$(sample "$after" 'histor_admission_reviews_total{outcome="recorded"}')
reviews=$(awk -v a="$reviews" -v b="$reviews_before" 'BEGIN { print a - b }')
verdicts=$(grep '^histor_witness_verdicts_total{' <<<"$after" |
  sed 's/.*state="\([^"]*\)"} *\([0-9.e+]*\).*/\1=\2/' | tr '\n' ' ' | sed 's/ $//' || true)
lag=$(grep '^histor_witness_confirmation_lag_seconds' <<<"$after" | awk '
  /_bucket\{/ { match($0, /le="[^"]*"/); le = substr($0, RSTART + 4, RLENGTH - 5); n++; bound[n] = le; cum[n] = $2 }
  /_sum / { sum = $2 }
  /_count / { count = $2 }
  function at(q,   i, need) {
    need = q * count
    for (i = 1; i <= n; i++) if (cum[i] >= need) return bound[i] == "+Inf" ? "+Inf" : bound[i] * 1000 " ms"
    return "?"
  }
  END {
    if (count == 0) { print "count=0"; exit }
    printf "count=%d mean=%.1f ms p50<=%s p99<=%s", count, sum / count * 1000, at(0.5), at(0.99)
  }')
echo "confirmation lag: $lag (p50/p99: upper bounds of the histogram buckets they fall in)"
echo "verdicts: $verdicts; reviews recorded: $reviews"

confirmed=$(sample "$after" 'histor_witness_verdicts_total{state="confirmed"}')
echo
echo "summary ($n_objects objects, $n_changes changes, $(basename "$bin")):"
echo "  memory: idle $mem_idle; watching $n_objects: $mem_watched; after the changes: $mem_after"
echo "  confirmation lag: $lag (bucket bounds)"
echo "  verdicts: $verdicts, of $n_changes changes ($reviews reviews recorded)"
((${confirmed%.*} == n_changes)) || { echo "witness: not every change was confirmed" >&2; exit 1; }
