#!/usr/bin/env bash
# Builds the histor container image without a Docker engine and without pulling any base image:
# static musl binaries, staged with CA certificates into a context for the FROM scratch Dockerfile,
# built with podman (vfs storage, works as root in containers), then run once (`histor --version`).
#
# Skips with a clear message and exit status 0 when it cannot run here: SKIP_IMAGE=1, no podman, or
# no musl target/toolchain. Any failure after that point is a real failure (exit status 1).
#
# Environment:
#   SKIP_IMAGE=1     skip entirely
#   IMAGE=NAME:TAG   image to build (default localhost/histor:<version from Cargo.toml>)
#   CARGO_BUILD=0    use binaries already in target/x86_64-unknown-linux-musl/release/
#   KEEP_CONTEXT=1   keep the staged build context (its path is printed)
set -euo pipefail
cd "$(dirname "$0")/.."

TARGET=x86_64-unknown-linux-musl
BIN_DIR="target/$TARGET/release"
VERSION=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n 1)
IMAGE=${IMAGE:-localhost/histor:$VERSION}
CA_BUNDLE=${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}
PODMAN=(podman --storage-driver=vfs)
# Sandboxed machines may forbid raising resource limits; podman's defaults raise them, and the
# container fails to start ("error setting rlimit"). Lowered limits are always allowed.
PODMAN_RUN=(podman --storage-driver=vfs --runtime=runc --cgroup-manager=cgroupfs run --rm --network=none
  --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)

skip() {
  echo "SKIP image build: $*"
  exit 0
}

if [ "${SKIP_IMAGE:-0}" = 1 ]; then
  skip "SKIP_IMAGE=1"
fi
if ! command -v podman >/dev/null 2>&1; then
  skip "podman is not installed (Debian/Ubuntu: apt-get install -y podman)"
fi
if [ ! -r "$CA_BUNDLE" ]; then
  skip "no CA bundle at $CA_BUNDLE (Debian: apt-get install -y ca-certificates)"
fi

if [ "${CARGO_BUILD:-1}" != 0 ]; then
  if ! command -v rustup >/dev/null 2>&1; then
    skip "rustup is not installed, so the $TARGET target cannot be added"
  fi
  if ! rustup target list --installed | grep -qx "$TARGET"; then
    echo "== rustup target add $TARGET"
    rustup target add "$TARGET" || skip "the $TARGET target could not be added (offline?)"
  fi
  # ring (TLS) compiles C and assembly, so the musl target needs musl-gcc.
  if ! command -v musl-gcc >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      echo "== apt-get install musl-tools"
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends musl-tools >/dev/null ||
        skip "musl-tools could not be installed"
    else
      skip "musl-gcc is missing (Debian/Ubuntu: apt-get install -y musl-tools)"
    fi
  fi
  echo "== cargo build --release --target $TARGET --bins"
  CC_x86_64_unknown_linux_musl=musl-gcc cargo build --release --locked --target "$TARGET" --bins
fi

for bin in histor kubectl-blame; do
  if [ ! -x "$BIN_DIR/$bin" ]; then
    echo "FAIL: $BIN_DIR/$bin is missing" >&2
    exit 1
  fi
  # FROM scratch has no loader and no libc: the binaries must be static.
  if command -v file >/dev/null 2>&1 && ! file -L "$BIN_DIR/$bin" | grep -Eq 'statically linked|static-pie linked'; then
    echo "FAIL: $BIN_DIR/$bin is not statically linked: $(file -L "$BIN_DIR/$bin")" >&2
    exit 1
  fi
done

context=$(mktemp -d)
if [ "${KEEP_CONTEXT:-0}" = 1 ]; then
  echo "build context kept in $context"
else
  trap 'rm -rf -- "$context"' EXIT
fi
cp Dockerfile "$context/"
cp "$BIN_DIR/histor" "$BIN_DIR/kubectl-blame" "$context/"
cp "$CA_BUNDLE" "$context/ca-certificates.crt"
echo "== staged context: $(cd "$context" && ls)"

echo "== podman build $IMAGE"
"${PODMAN[@]}" build --build-arg "VERSION=$VERSION" -t "$IMAGE" -f "$context/Dockerfile" "$context"

echo "== podman run $IMAGE --version"
"${PODMAN_RUN[@]}" "$IMAGE" --version

echo "== podman run --entrypoint /kubectl-blame $IMAGE --help"
"${PODMAN_RUN[@]}" --entrypoint /kubectl-blame "$IMAGE" --help >/dev/null

user=$("${PODMAN[@]}" image inspect --format '{{.Config.User}}' "$IMAGE")
if [ "$user" != "65532:65532" ]; then
  echo "FAIL: image user is '$user', want 65532:65532" >&2
  exit 1
fi
if "${PODMAN_RUN[@]}" --entrypoint /bin/sh "$IMAGE" -c true >/dev/null 2>&1; then
  echo "FAIL: the image has a shell" >&2
  exit 1
fi
echo "image $IMAGE built: runs as $user, no shell, $("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE") bytes"
