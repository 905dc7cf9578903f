#!/usr/bin/env bash
# The README's main job on small built-in data: `make demo` runs this with the venv's python.
set -euo pipefail
PY=${1:-python}
OUT=${2:-demo_out}
mkdir -p "$OUT"
echo "== 1/2 generate synthetic data -> $OUT/data"
"$PY" -m data_pipeline generate --out "$OUT/data" --rows 200000 --items 5000 --users 20000 --seed 0 --overwrite
echo "== 2/2 inspect"
"$PY" -m data_pipeline inspect "$OUT/data"
