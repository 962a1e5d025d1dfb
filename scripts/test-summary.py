#!/usr/bin/env python3
"""Sums cargo test's per-binary result lines into one closing line, and says how many e2e tests
ran against the real apiserver (their binary is `tests/e2e/main.rs`) and how many PostgreSQL tests
ran against the real server (tests whose name contains `postgres`, such as `store::postgres::...`,
and every test of a `tests/postgres*.rs` binary)."""
import re
import sys

RESULT = re.compile(r"test result: (\w+)\. (\d+) passed; (\d+) failed; (\d+) ignored")
RUNNING = re.compile(r"Running (\S+)|(Doc-tests) ")
TEST = re.compile(r"^test (\S+) \.\.\. (ok|FAILED|ignored)")

totals = [0, 0, 0]
e2e = None
postgres = {"ok": 0, "FAILED": 0, "ignored": 0}
current = ""
with open(sys.argv[1], errors="replace") as log:
    for line in log:
        m = RUNNING.search(line)
        if m:
            current = m.group(1) or m.group(2)
            continue
        m = TEST.match(line)
        if m:
            if "postgres" in m.group(1) or current.startswith("tests/postgres"):
                postgres[m.group(2)] += 1
            continue
        m = RESULT.search(line)
        if m:
            passed, failed, ignored = (int(m.group(i)) for i in (2, 3, 4))
            totals[0] += passed
            totals[1] += failed
            totals[2] += ignored
            if current.startswith("tests/e2e/"):
                e2e = (passed, failed, ignored)
if e2e is None:
    print("e2e: the suite did not run")
else:
    print(f"e2e on a real kube-apiserver: {e2e[0]} passed, {e2e[1]} failed, {e2e[2]} ignored")
if sum(postgres.values()) == 0:
    print("postgres tests: none ran")
else:
    print(f"postgres tests: {postgres['ok']} passed, {postgres['FAILED']} failed, {postgres['ignored']} ignored")
print(f"tests: {totals[0]} passed, {totals[1]} failed, {totals[2]} skipped")
