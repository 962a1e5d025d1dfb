#!/usr/bin/env python3
# Copied unchanged from the kube-apiserver test kit (kapi/webhook.py), so that the e2e suite needs
# nothing from outside the repository: the second webhook that denies what histor allowed.
"""Tiny HTTPS validating admission webhook for tests.

Answers every AdmissionReview (admission.k8s.io/v1) with allowed: true (unless the object
carries the label kapi.test/deny=true), returns an audit annotation `request-uid` so the
audit event can be matched to the AdmissionReview, and records every request:
  OUT_DIR/requests.jsonl        one JSON line per request: {"headers":..., "path":..., "body":...}
  OUT_DIR/NNNN-op-resource.json  the pretty AdmissionReview request body
POSTs to /audit* are treated as an audit webhook backend: the events of each EventList are appended
to OUT_DIR/audit-webhook.jsonl.
Usage: webhook.py --port 9443 --cert webhook.crt --key webhook.key --out-dir DIR
"""
import argparse
import json
import os
import ssl
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

LOCK = threading.Lock()
COUNTER = [0]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9443)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--out-dir", required=True)
    args = ap.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, fmt, *a):
            sys.stderr.write("webhook: " + (fmt % a) + "\n")

        def do_GET(self):
            body = b"ok\n"
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):
            n = int(self.headers.get("Content-Length", "0"))
            raw = self.rfile.read(n)
            if self.path.startswith("/audit"):
                # audit webhook backend (--audit-webhook-config-file): body is an audit.k8s.io/v1 EventList
                try:
                    events = json.loads(raw).get("items") or []
                except Exception:  # noqa: BLE001
                    events = []
                with LOCK, open(os.path.join(args.out_dir, "audit-webhook.jsonl"), "a") as f:
                    for ev in events:
                        f.write(json.dumps(ev) + "\n")
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            try:
                review = json.loads(raw)
                req = review["request"]
            except Exception as e:  # noqa: BLE001
                self.send_error(400, f"bad AdmissionReview: {e}")
                return
            obj = req.get("object") or req.get("oldObject") or {}
            labels = ((obj.get("metadata") or {}).get("labels") or {})
            allowed = labels.get("kapi.test/deny") != "true"
            resp = {
                "apiVersion": review.get("apiVersion", "admission.k8s.io/v1"),
                "kind": "AdmissionReview",
                "response": {
                    "uid": req["uid"],
                    "allowed": allowed,
                    "auditAnnotations": {"request-uid": req["uid"]},
                },
            }
            if not allowed:
                resp["response"]["status"] = {"code": 403, "message": "denied by kapi test webhook (label kapi.test/deny=true)"}
            with LOCK:
                COUNTER[0] += 1
                seq = COUNTER[0]
                res = req.get("resource", {}).get("resource", "unknown")
                sub = req.get("subResource")
                name = "%04d-%s-%s%s%s.json" % (
                    seq, req.get("operation", "X").lower(), res, ("-" + sub) if sub else "",
                    "-dryrun" if req.get("dryRun") else "")
                with open(os.path.join(args.out_dir, name), "w") as f:
                    json.dump(review, f, indent=2, sort_keys=False)
                    f.write("\n")
                with open(os.path.join(args.out_dir, "requests.jsonl"), "a") as f:
                    f.write(json.dumps({"seq": seq, "path": self.path, "headers": dict(self.headers.items()),
                                        "body": review}) + "\n")
            sys.stderr.write("webhook: #%d %s %s %s/%s user=%s dryRun=%s -> allowed=%s\n" % (
                seq, req.get("operation"), req.get("kind", {}).get("kind"), req.get("namespace", ""),
                req.get("name", ""), req.get("userInfo", {}).get("username"), req.get("dryRun"), allowed))
            out = json.dumps(resp).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(out)))
            self.end_headers()
            self.wfile.write(out)

    httpd = ThreadingHTTPServer((args.host, args.port), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    sys.stderr.write(f"webhook: listening on https://{args.host}:{args.port}\n")
    sys.stderr.flush()
    httpd.serve_forever()


if __name__ == "__main__":
    main()
