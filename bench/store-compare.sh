#!/usr/bin/env bash
# store-compare.sh [HISTOR_BIN]: the same load against the sled and the PostgreSQL store in one
# run, engines alternating (sled, postgres, sled, postgres, ...), each run on a fresh store; prints
# one line per run and a summary (median rate of each engine, and postgres / sled).
#
#   cargo build --release --bin histor
#   bash scripts/with-postgres.sh bash bench/store-compare.sh [target/release/histor]
#
# Builds nothing: HISTOR_BIN defaults to target/release/histor (or $CARGO_TARGET_DIR/release/histor).
# Needs Debian's `wrk` (apt-get install wrk), curl, python3 (a free port) and psql (disk per event
# on PostgreSQL). PostgreSQL comes from the environment scripts/with-postgres.sh sets:
# HISTOR_TEST_POSTGRES (the URL) and HISTOR_TEST_POSTGRES_PASSWORD_FILE; each run gets a schema of
# its own (`schema=bench_<random>`), dropped after the run.
#
# Each run: `histor serve` with bench/policy.yaml (every resource tracked, retention 100 events per
# object, 720h) in a fresh --data-dir, then
#   wrk -t2 -cCONNS -dDURATION --latency -s bench/admit.lua https://localhost:PORT/admit/bench
# (the 8.7 KB update-deployment review, a fresh request uid each time). A line per run:
#   ENGINE c=CONNS rate=REQ/s p99=LATENCY recorded=N disk_per_event=B outcomes=[...] spooled_batches=N
# recorded is histor_admission_reviews_total{outcome="recorded"}: answered after a durable write to
# the engine itself. outcomes lists every other outcome counted (spooled: durable in the local
# spool, not in PostgreSQL; deadline_exceeded: answered before its write; dropped: never written),
# so "every review durable before its answer" is outcomes=[] with no non-2xx answers from wrk.
# disk_per_event: sled, `du -sb` of the data directory after shutdown / recorded; PostgreSQL, the
# schema's tables with their indexes and TOAST (pg_total_relation_size) / recorded (WAL not counted).
#
# Environment: RUNS (runs per engine, default 2), CONNS (default 16), DURATION (default 20s),
# WIDE_CONNS (one more run per engine at this many connections at the end, default 64; empty: none).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${1:-${CARGO_TARGET_DIR:-$here/target}/release/histor}
runs=${RUNS:-2}
conns=${CONNS:-16}
duration=${DURATION:-20s}
wide=${WIDE_CONNS-64}

for tool in wrk curl python3 psql; do
  command -v "$tool" >/dev/null || { echo "store-compare: needs $tool" >&2; exit 2; }
done
[[ -x $bin ]] || { echo "store-compare: no histor binary at $bin (cargo build --release --bin histor)" >&2; exit 2; }
[[ -n ${HISTOR_TEST_POSTGRES:-} && -r ${HISTOR_TEST_POSTGRES_PASSWORD_FILE:-} ]] || {
  echo "store-compare: no PostgreSQL; run under scripts/with-postgres.sh" >&2
  exit 2
}
pg_url=$HISTOR_TEST_POSTGRES
pg_password=$(<"$HISTOR_TEST_POSTGRES_PASSWORD_FILE")

work=$(mktemp -d "${TMPDIR:-/tmp}/store-compare.XXXXXX")
pid=
cleanup() {
  if [[ -n $pid ]]; then kill -TERM "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# psql against the benchmark's server, as histor's user; the URL carries the TLS settings.
pg_sql() { PGPASSWORD=$pg_password PGOPTIONS="-c client_min_messages=warning" psql -X -q -At -v ON_ERROR_STOP=1 "$pg_url" -c "$1"; }
# The value of one Prometheus sample (0 when absent).
sample() { awk -v name="$2" '$1 == name { v = $2 } END { print v + 0 }' <<<"$1"; }

# run ENGINE CONNS: one run on a fresh store; prints its line and appends "ENGINE RATE" to rates.
run() {
  local engine=$1 c=$2 port dir store=() schema=
  port=$(free_port)
  dir=$work/$engine-$RANDOM
  mkdir -p "$dir"
  if [[ $engine == postgres ]]; then
    schema=bench_$(python3 -c 'import secrets; print(secrets.token_hex(6))')
    local sep='?'
    [[ $pg_url == *\?* ]] && sep='&'
    store=(--store "$pg_url${sep}schema=$schema" --store-password-file "$HISTOR_TEST_POSTGRES_PASSWORD_FILE")
  fi
  # The previous run's write-back must not land in this one.
  sync
  "$bin" serve --policy-file "$here/bench/policy.yaml" --data-dir "$dir/data" "${store[@]}" \
    --listen "127.0.0.1:$port" --log-level warn >"$dir/log" 2>&1 &
  pid=$!
  local ready=
  for _ in $(seq 300); do
    if curl -sfk "https://127.0.0.1:$port/readyz" >/dev/null 2>&1; then ready=1; break; fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  [[ -n $ready ]] || { echo "store-compare: $engine server not ready; its log:" >&2; cat "$dir/log" >&2; exit 1; }

  local out metrics
  out=$(cd "$here" && wrk -t2 "-c$c" "-d$duration" --latency -s bench/admit.lua \
    "https://localhost:$port/admit/bench" 2>&1)
  metrics=$(curl -sfk "https://127.0.0.1:$port/metrics")
  kill -TERM "$pid"
  wait "$pid" || true
  pid=

  local rate p99 rec others non2xx spooled bytes
  rate=$(awk '/^Requests\/sec/ { print $2 }' <<<"$out")
  p99=$(awk '$1 == "99%" { print $2 }' <<<"$out")
  non2xx=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
  rec=$(sample "$metrics" 'histor_admission_reviews_total{outcome="recorded"}')
  rec=${rec%.*}
  others=$(grep '^histor_admission_reviews_total{' <<<"$metrics" | grep -v 'outcome="recorded"' |
    sed 's/.*outcome="\([^"]*\)"} *\([0-9.e+]*\).*/\1=\2/' | tr '\n' ' ' | sed 's/ $//' || true)
  spooled=$(sample "$metrics" histor_spooled_batches_total)
  if [[ $engine == postgres ]]; then
    bytes=$(pg_sql "select coalesce(sum(pg_total_relation_size(c.oid)), 0) from pg_class c \
      join pg_namespace n on n.oid = c.relnamespace where n.nspname = '$schema' and c.relkind = 'r'")
    pg_sql "drop schema $schema cascade" >/dev/null
  else
    bytes=$(du -sb "$dir/data" | cut -f1)
  fi
  local per=n/a
  ((rec > 0)) && per=$((bytes / rec))B
  echo "$engine c=$c rate=${rate:-?}/s p99=${p99:-?} recorded=$rec disk_per_event=$per" \
    "outcomes=[$others] spooled_batches=$spooled non2xx=${non2xx:-0}"
  [[ $c == "$conns" ]] && echo "$engine ${rate:-0}" >>"$work/rates"
  rm -rf "$dir"
}

echo "store-compare: $bin, $runs runs per engine, wrk -t2 -c$conns -d$duration, $(nproc) cores"
for _ in $(seq "$runs"); do
  run sled "$conns"
  run postgres "$conns"
done
if [[ -n $wide ]]; then
  run sled "$wide"
  run postgres "$wide"
fi

median() {
  awk -v e="$1" '$1 == e { print $2 }' "$work/rates" | sort -g |
    awk '{ v[NR] = $1 } END { if (NR == 0) print 0; else if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
sled_rate=$(median sled)
pg_rate=$(median postgres)
awk -v s="$sled_rate" -v p="$pg_rate" -v c="$conns" \
  'BEGIN { printf "summary c=%s: median sled %.0f/s, median postgres %.0f/s, postgres/sled %.2f\n", c, s, p, (s > 0 ? p / s : 0) }'
