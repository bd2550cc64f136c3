#!/usr/bin/env bash
# Issue 14's GPU check: run once from the repo root on a machine lent one GPU.
#
#   bash bench/gpu_check.sh          # results under $OUT (default /tmp/gpu-check); PYTHON=... to pick the interpreter
#
# Needs torch with CUDA, timm, numpy and pyarrow only: no Ray, MLflow, Optuna, no network.
# Three stages, each under its own time limit (together under 8 minutes), so a stage that
# overruns is cut and the others still run; the Python commands rewrite their JSON as they go.
#   compare    bf16 + SDPA against fp32 + math eager, DiT-XL/2 then DiT-B/2, N = 0..4 and MeanFlow
#   max-batch  the largest batch of flow matching, RCGM N=2 and MeanFlow per model (bf16 + SDPA)
#   train      2000 steps of DiT-B/2, RCGM N=2, bf16, through trainables.loop.Trainer, untracked
# Each stage leaves NAME.md (its Markdown tables), NAME.log (its progress) and its JSON;
# summary.txt has every stage's exit status and seconds (124: cut by its time limit).
set -uo pipefail

OUT="${OUT:-/tmp/gpu-check}"
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
export PYTHONUNBUFFERED=1  # a stage cut by its time limit still leaves what it printed
mkdir -p "$OUT"
: > "$OUT/summary.txt"

stage() {  # stage NAME SECONDS ARGS...: $PYTHON ARGS under a time limit; stdout to NAME.md, stderr to NAME.log
  local name=$1 limit=$2
  shift 2
  echo "== $name (limit ${limit} s): $PYTHON $*"
  local start=$SECONDS
  timeout --kill-after=10 "$limit" "$PYTHON" "$@" > "$OUT/$name.md" 2> "$OUT/$name.log"
  local rc=$?
  tail -n 15 "$OUT/$name.log"
  cat "$OUT/$name.md"
  echo "$name: exit $rc after $((SECONDS - start)) s" | tee -a "$OUT/summary.txt"
}

{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || true
  "$PYTHON" -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)"
} 2>&1 | tee "$OUT/env.txt"
if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu_check: torch sees no GPU; run this on the machine lent one" >&2
  exit 2
fi

# DiT-XL/2 first: its rows carry the MFU and memory targets, and the JSON is rewritten after each model.
stage compare 180 -m bench.objective --device cuda --compare --quick --models DiT-XL/2,DiT-B/2 --out "$OUT/compare.json"
stage max-batch 100 -m bench.objective --device cuda --max-batch --models DiT-XL/2,DiT-B/2 --out "$OUT/max_batch.json"
stage train 140 -m bench.train_run --steps 2000 --model DiT-B/2 --device cuda --time-limit 120 --out "$OUT/train"

echo "gpu_check: results in $OUT"
cat "$OUT/summary.txt"
