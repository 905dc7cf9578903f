#!/usr/bin/env bash
# `make demo`: the ID-vs-SID comparison on small built-in synthetic data, end to end, in a few minutes
# on a laptop CPU: generate data -> tokenize items into SIDs -> train the ID baseline and STORE with
# the same budget -> report (markdown, PNG plots, both TensorBoard runs side by side). The report's
# verdict on STORE - ID comes with its 95% interval from a paired bootstrap over the test users: on
# data this small, read "no significant difference" as "this demo cannot tell", and a "better" or
# "worse" as a statement about these two trained models (one seed; --seeds N adds more).
# 100 users over 12,000 rows: the tokenizer chooses by validation how users seen only a few times in
# the train split are tokenized (their learned rows, the reserved code, or their co-occurrence
# neighbours' SIDs), and the console's last lines say how many test rows have real SIDs per feature.
# Usage: launch/demo.sh [PYTHON] [OUT]. Rerunning reuses the stages made from the same inputs (and says so).
set -euo pipefail
PY=${1:-python}
OUT=${2:-demo_out}
mkdir -p "$OUT"
if [ ! -f "$OUT/data/spec.json" ]; then
  echo "== generate synthetic data -> $OUT/data"
  "$PY" -m data_pipeline generate --out "$OUT/data" --rows 12000 --items 400 --users 100 --seed 0 \
    --overwrite --no-progress
fi
"$PY" -m launch.compare --data "$OUT/data" --out "$OUT/compare" --epochs 2 --batch-size 256 \
  --tokenizer.num-sids 4 --tokenizer.codebook-size 32 \
  --trainer.model.embedding-dim 16 --trainer.model.num-layers 1 --trainer.eval.max-batches 8
echo
echo "Demo done. Open $OUT/compare/report/report.md (its Significance section: the verdict with its"
echo "95% interval; docs/launch.md says how to read it)"
echo "(cluster runs: docs/launch.md; throughput scaling: python benchmarks/bench_scaling.py)"
