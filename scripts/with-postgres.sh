#!/usr/bin/env bash
# Runs a command against a real, throw-away PostgreSQL server (Debian's package, the newest
# /usr/lib/postgresql/*/bin, or $PG_BINDIR): its own data directory, unix-socket directory and free
# port on 127.0.0.1, TLS with a CA made for the run, user `histor` (scram-sha-256, CREATEDB) owning
# database `histor`; stopped again however the command ends. The command sees:
#
#   HISTOR_TEST_POSTGRES                postgres://histor@127.0.0.1:PORT/histor?sslmode=verify-full&sslrootcert=CA
#   HISTOR_TEST_POSTGRES_PASSWORD_FILE  the password of `histor`, alone (no newline)
#   HISTOR_TEST_POSTGRES_CA             the CA of the server's certificate (localhost, 127.0.0.1)
#   HISTOR_TEST_POSTGRES_ADMIN          a libpq URL for the superuser over the unix socket (trust)
#   HISTOR_TEST_PG_CTL                  a script: `stop [MODE]` (default immediate: a crash),
#                                       `start`, `restart [MODE]`, `status` of the same server
#   PGDATA_RUN_DIR                      the run directory (data/, log, tls/, sock/)
#
#   scripts/with-postgres.sh cargo test postgres
#
# Set HISTOR_PG_REQUIRED=1 (CI does) to turn a skipped PostgreSQL test into a failure. As root the
# server runs as the `postgres` user (initdb refuses root); as anyone else it runs as that user.
set -euo pipefail
(($#)) || { echo "usage: with-postgres.sh COMMAND [ARG...]" >&2; exit 2; }

if [[ -z ${PG_BINDIR:-} ]]; then
  PG_BINDIR=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin 2>/dev/null | sort -V | tail -n 1)
fi
[[ -n $PG_BINDIR && -x $PG_BINDIR/initdb ]] || {
  echo "with-postgres: no PostgreSQL server found (apt-get install postgresql, or set PG_BINDIR)" >&2
  exit 2
}
for tool in openssl python3; do
  command -v "$tool" >/dev/null || { echo "with-postgres: needs $tool" >&2; exit 2; }
done

# The server's user: initdb and postgres refuse to run as root.
as_server=()
if ((EUID == 0)); then
  getent passwd postgres >/dev/null || { echo "with-postgres: running as root needs a postgres user" >&2; exit 2; }
  command -v runuser >/dev/null || { echo "with-postgres: running as root needs runuser (util-linux)" >&2; exit 2; }
  as_server=(runuser -u postgres --)
fi

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
run=$(mktemp -d "${TMPDIR:-/tmp}/histor-pg.XXXXXX")
data=$run/data
log=$run/log
mkdir -p "$run/sock" "$run/tls"
# Commands as the server's user, from a directory it may enter (root's cwd may be closed to it).
server() { (cd "$run" && "${as_server[@]}" "$@"); }

stop() {
  local rc=$?
  if [[ -f $data/postmaster.pid ]]; then
    server "$PG_BINDIR/pg_ctl" -D "$data" -m fast -t 20 -w stop >/dev/null 2>&1 ||
      server "$PG_BINDIR/pg_ctl" -D "$data" -m immediate -w stop >/dev/null 2>&1 ||
      echo "with-postgres: the server did not stop; see $run" >&2
  fi
  if ((rc == 0)); then rm -rf "$run"; else echo "with-postgres: PostgreSQL log and data kept in $run (log: $log)" >&2; fi
  exit "$rc"
}
trap stop EXIT
trap 'exit 130' INT TERM

# A CA for this run and a server certificate from it for both names a client may dial.
tls=$run/tls
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=histor-test-postgres-ca \
  -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign \
  -keyout "$tls/ca.key" -out "$tls/ca.crt" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout "$tls/server.key" \
  -out "$tls/server.csr" 2>/dev/null
printf '%s\n' 'basicConstraints=critical,CA:FALSE' 'keyUsage=critical,digitalSignature,keyEncipherment' \
  'extendedKeyUsage=serverAuth' 'subjectAltName=DNS:localhost,IP:127.0.0.1' >"$tls/server.ext"
openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.crt" -CAkey "$tls/ca.key" -CAcreateserial \
  -days 2 -extfile "$tls/server.ext" -out "$tls/server.crt" 2>/dev/null
rm -f "$tls/ca.key" "$tls/server.csr"
chmod 0600 "$tls/server.key"
password=$(openssl rand -hex 24)
printf '%s' "$password" >"$run/password"
chmod 0600 "$run/password"
((EUID != 0)) || chown -R postgres: "$run"
server test -x "$run" || { echo "with-postgres: the postgres user cannot enter $run (set TMPDIR)" >&2; exit 2; }

server env LC_ALL=C "$PG_BINDIR/initdb" -D "$data" -U postgres -E UTF8 --no-locale \
  --auth-local=trust --auth-host=scram-sha-256 >"$run/initdb.out" 2>&1 || {
  cat "$run/initdb.out" >&2
  exit 1
}
# Files written into the data directory belong to the server's user.
owned() { cat >"$1"; ((EUID != 0)) || chown postgres: "$1"; }
# TCP only with TLS and a password; the superuser only over the private socket.
owned "$data/pg_hba.conf" <<EOF
local   all  all                  trust
hostssl all  all  127.0.0.1/32    scram-sha-256
EOF
# Our settings in a file of their own, which a retry below rewrites.
echo "include 'histor.conf'" >>"$data/postgresql.conf"

# A port found free can be taken before the server binds it: try another.
for attempt in 1 2 3 4 5; do
  port=$(free_port)
  owned "$data/histor.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$run/sock'
ssl = on
ssl_cert_file = '$tls/server.crt'
ssl_key_file = '$tls/server.key'
password_encryption = scram-sha-256
max_connections = 200
EOF
  if server "$PG_BINDIR/pg_ctl" -D "$data" -l "$log" -w -t 60 start >/dev/null 2>&1; then break; fi
  if ((attempt == 5)) || ! grep -q 'could not bind\|Address already in use' "$log" 2>/dev/null; then
    echo "with-postgres: the server did not start:" >&2
    tail -n 20 "$log" >&2 || true
    exit 1
  fi
done

admin="postgresql://postgres@/postgres?host=$run/sock&port=$port"
server "$PG_BINDIR/psql" -X -q -v ON_ERROR_STOP=1 "$admin" >/dev/null <<EOF
CREATE ROLE histor LOGIN CREATEDB PASSWORD '$password';
CREATE DATABASE histor OWNER histor;
EOF
ca_url=$(python3 -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1], safe="/"))' "$tls/ca.crt")
url="postgres://histor@127.0.0.1:$port/histor?sslmode=verify-full&sslrootcert=$ca_url"
# The way the tests come in: TCP, TLS verified against the CA, the password.
if ! "$PG_BINDIR/pg_isready" -q -h 127.0.0.1 -p "$port" -d histor -U histor -t 30 ||
  ! PGPASSWORD=$password "$PG_BINDIR/psql" -X -q -At "$url" -c 'select 1' >/dev/null; then
  echo "with-postgres: user histor cannot log in over TLS at 127.0.0.1:$port; log: $log" >&2
  exit 1
fi

# The crash-test handle: the same server, stopped and started the way the tests need.
ctl=$run/pgctl
{
  printf 'run=%q\n' "$run"
  printf 'pg_ctl=%q\n' "$PG_BINDIR/pg_ctl"
  printf 'as_server=(%s)\n' "${as_server[*]}"
} >"$run/pgctl.env"
cat >"$ctl" <<'EOF'
#!/usr/bin/env bash
# The server of with-postgres.sh: stop [MODE] (immediate unless told: a crash), start,
# restart [MODE], status.
set -euo pipefail
source "$(dirname "$0")/pgctl.env"
cd "$run"
pg() { "${as_server[@]}" "$pg_ctl" -D "$run/data" "$@"; }
case ${1:-} in
  stop) pg -m "${2:-immediate}" -w stop ;;
  start) pg -l "$run/log" -w -t 60 start ;;
  restart) pg -m "${2:-immediate}" -w stop && pg -l "$run/log" -w -t 60 start ;;
  status) pg status ;;
  *) echo "usage: pgctl stop [MODE] | start | restart [MODE] | status" >&2; exit 2 ;;
esac
EOF
chmod 0755 "$ctl"

export HISTOR_TEST_POSTGRES=$url
export HISTOR_TEST_POSTGRES_PASSWORD_FILE=$run/password
export HISTOR_TEST_POSTGRES_CA=$tls/ca.crt
export HISTOR_TEST_POSTGRES_ADMIN=$admin
export HISTOR_TEST_PG_CTL=$ctl
export PGDATA_RUN_DIR=$run
echo "with-postgres: PostgreSQL $("$PG_BINDIR/postgres" -V | awk '{print $3}') ready at 127.0.0.1:$port (TLS, run dir $run)" >&2
# Not `exec`: the trap has to stop the server once the command is done.
"$@"
