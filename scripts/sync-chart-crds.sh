#!/usr/bin/env bash
# Copies the generated CRDs (crds/, written by `cargo run --bin crdgen -- --out-dir crds`) into the
# Helm chart's crds/ directory. The chart must ship exactly those files; scripts/check-chart.py fails
# when the copies differ. Run it after regenerating the CRDs, and commit both.
set -euo pipefail
cd "$(dirname "$0")/.."

src=crds
dst=charts/histor/crds
mkdir -p "$dst"

# Drop copies of CRDs that no longer exist, then copy byte for byte.
for f in "$dst"/*.yaml; do
  [ -e "$f" ] || continue
  if [ ! -e "$src/$(basename "$f")" ]; then
    rm -- "$f"
    echo "removed $f"
  fi
done
for f in "$src"/*.yaml; do
  cp -- "$f" "$dst/"
  echo "copied $f -> $dst/"
done
