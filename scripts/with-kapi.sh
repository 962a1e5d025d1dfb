#!/usr/bin/env bash
# Runs a command against a real, throw-away kube-apiserver (kube-apiserver + etcd from
# ../shared/kapi, or $KAPI_DIR): its own run directory and free ports, the aggregation layer's
# front-proxy flags and a client certificate it presents to admission webhooks, stopped again
# however the command ends. The command sees the e2e environment: HISTOR_E2E_KUBECONFIG
# (cluster-admin), HISTOR_E2E_ALICE_KUBECONFIG (a second, unprivileged user),
# HISTOR_E2E_WEBHOOK_CLIENT_CA (the CA of the apiserver's webhook client certificate),
# HISTOR_E2E_AUDIT_WEBHOOK_PORT (where the apiserver's audit webhook backend posts, on 127.0.0.1,
# trusting the kit's CA) and KAPI_RUN_DIR.
#
#   scripts/with-kapi.sh cargo test --test e2e -- --nocapture
#
# Set HISTOR_E2E_REQUIRED=1 (CI does) to turn a skipped e2e test into a failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
KAPI_DIR=${KAPI_DIR:-$here/../../shared/kapi}
[[ -x $KAPI_DIR/start.sh ]] || { echo "with-kapi: no kube-apiserver kit at $KAPI_DIR (set KAPI_DIR)" >&2; exit 2; }
(($#)) || { echo "usage: with-kapi.sh COMMAND [ARG...]" >&2; exit 2; }

# The kit is read-only where CI copies it; it unpacks its binaries into KAPI_HOME.
export KAPI_HOME=${KAPI_HOME:-${XDG_CACHE_HOME:-${HOME:-/tmp}/.cache}/kapi}
"$KAPI_DIR/install.sh" >/dev/null

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
run=$(mktemp -d "${TMPDIR:-/tmp}/histor-kapi.XXXXXX")
export KAPI_RUN_DIR=$run
KAPI_ETCD_PORT=$(free_port)
KAPI_ETCD_PEER_PORT=$(free_port)
export KAPI_ETCD_PORT KAPI_ETCD_PEER_PORT
api_port=$(free_port)

stop() {
  local rc=$?
  KAPI_RUN_DIR=$run "$KAPI_DIR/stop.sh" >/dev/null 2>&1 || echo "with-kapi: stop.sh failed; see $run" >&2
  if ((rc == 0)); then rm -rf "$run"; else echo "with-kapi: apiserver logs kept in $run" >&2; fi
  exit "$rc"
}
trap stop EXIT
trap 'exit 130' INT TERM

# The aggregation layer (the query API behind `kubectl blame`) needs the front-proxy flags.
KAPI_EXTRA_ARGS="$("$KAPI_DIR/front-proxy.sh" "$run/front-proxy") ${KAPI_EXTRA_ARGS:-}"

# The apiserver proves who it is to webhooks with a client certificate (README, "Who may write
# history"): a CA of its own for that, and an AdmissionConfiguration whose kubeconfig gives the
# certificate to every webhook (`*`: the suite's operators listen on ports not known yet).
wc=$run/webhook-client
mkdir -p "$wc"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=histor-e2e-webhook-client-ca \
  -keyout "$wc/ca.key" -out "$wc/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver -keyout "$wc/client.key" \
  -out "$wc/client.csr" 2>/dev/null
printf 'extendedKeyUsage=clientAuth\n' >"$wc/client.ext"
openssl x509 -req -in "$wc/client.csr" -CA "$wc/ca.crt" -CAkey "$wc/ca.key" -CAcreateserial \
  -days 2 -extfile "$wc/client.ext" -out "$wc/client.crt" 2>/dev/null
cat >"$wc/kubeconfig" <<EOF
apiVersion: v1
kind: Config
users:
  - name: "*"
    user:
      client-certificate: $wc/client.crt
      client-key: $wc/client.key
EOF
cat >"$wc/admission-configuration.yaml" <<EOF
apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
  - name: ValidatingAdmissionWebhook
    configuration:
      apiVersion: apiserver.config.k8s.io/v1
      kind: WebhookAdmissionConfiguration
      kubeConfigFile: $wc/kubeconfig
EOF
KAPI_EXTRA_ARGS="$KAPI_EXTRA_ARGS --admission-control-config-file=$wc/admission-configuration.yaml"
# The audit webhook backend, batching every second to a port one e2e test serves (histor serve
# --audit-webhook), presenting the same client certificate. Until something listens there the
# apiserver logs its failed posts and drops those batches; nothing waits on them.
audit_port=$(free_port)
cat >"$wc/audit-webhook.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: histor
    cluster:
      server: https://127.0.0.1:$audit_port/audit
      certificate-authority: $run/pki/ca.crt
users:
  - name: kube-apiserver
    user:
      client-certificate: $wc/client.crt
      client-key: $wc/client.key
contexts:
  - name: default
    context: {cluster: histor, user: kube-apiserver}
current-context: default
EOF
KAPI_EXTRA_ARGS="$KAPI_EXTRA_ARGS --audit-webhook-config-file=$wc/audit-webhook.kubeconfig --audit-webhook-mode=batch --audit-webhook-batch-max-wait=1s --audit-webhook-initial-backoff=1s"
export HISTOR_E2E_AUDIT_WEBHOOK_PORT=$audit_port
export KAPI_EXTRA_ARGS
export HISTOR_E2E_WEBHOOK_CLIENT_CA=$wc/ca.crt
"$KAPI_DIR/start.sh" "$api_port" >"$run/start.out" 2>&1 || {
  cat "$run/start.out" >&2
  exit 1
}
grep -E 'ready at|version:' "$run/start.out" >&2

export HISTOR_E2E_KUBECONFIG=$run/admin.kubeconfig
export HISTOR_E2E_ALICE_KUBECONFIG=$run/alice.kubeconfig
# Not `exec`: the trap has to stop the apiserver once the command is done.
"$@"
