#!/usr/bin/env bash
# GPU check: the CUDA paths of rep-tune on one NVIDIA GPU, in under 8 minutes, results under
# benchmarks/results/gpu-<name>/ (one .log per step, summary.txt, the files each step writes).
#
#   benchmarks/gpu_check.sh              # on a CUDA machine
#   benchmarks/gpu_check.sh --dry-run    # print the plan (anywhere; exits 0 without a GPU)
#   benchmarks/gpu_check.sh --steps profile,published   # a subset, in the order given
#
# Runs against the machine's python3 (PYTHON=... to override) with the repository on PYTHONPATH.
# Needs torch, timm, pyyaml, numpy, tqdm, nvidia-ml-py; no optuna, ray, scikit-learn, scipy,
# psutil or network. pytest is used for step 1 when installed (skipped and said otherwise).
#
# Steps (each under its own time limit; a failing step is recorded and the next one runs; the default
# set is gpu, profile, published, memory, verify; bench and cost run when --steps names them):
#   1 gpu      the gpu-marked tests (tests/test_gpu.py, tests/test_telemetry.py)
#   2 profile  rep-tune profile --quick --device cuda  -> profile.yaml
#   3 bench    bench_runtime.py: ViT-Ti and ViT-B at 224, batch 16 and 32, baseline vs paper preset,
#              fp32 and bf16: ms/iter, CUDA peak MiB, NVML J/iter, TFLOP/s and % of the profile's peak
#   4 cost     the cost model's error on the fresh profile: predicted vs step 3's measured ms/iter
#              (cost_model_error.csv), then benchmarks/bench_cost_model.py with the flags it has
#   5 verify   rep-tune verify of a ViT-B/16 paper config (precision = the profile's dtype)
#              against the fresh profile (its budgets and its cost-model prediction)
#   6 published  bench_published.py's rows (REP-L2P ViT-L/16 ablation) timed by rep-tune's runtime,
#              fp32 and bf16, one fresh process each -> published_measured.csv
#   7 memory   live-tensor vs CUDA-allocator peak over ViT-Ti/B x L2P/DualPrompt/CODA x baseline/paper
#              x batch 8/32 x fp32/bf16 (not timed; 6 processes at a time) -> memory_grid.csv
set -u
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
DRY=0
ONLY=""
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  [[ ${args[i]} == --steps ]] && { args[i]="--steps=${args[i+1]:-}"; unset 'args[i+1]'; }
done
for a in "${args[@]}"; do
  case "$a" in
    --dry-run|-n) DRY=1 ;;
    --steps=*) ONLY=${a#--steps=} ;;
    -h|--help) sed -n '2,24p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $a (expected --dry-run)" >&2; exit 2 ;;
  esac
done

NAME=$("$PY" - <<'PY' 2>/dev/null
import re
try:
    import torch
    name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
except Exception:
    name = "none"
print(re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "none")
PY
)
NAME=${NAME:-none}
OUT="benchmarks/results/gpu-$NAME"

STEPS_PY=benchmarks/gpu_check_steps.py        # the python parts (tested on the CPU)
cli() { "$PY" "$STEPS_PY" cli "$@"; }          # one rep-tune subcommand (`rep-tune search` imports optuna)
cost_error() { "$PY" "$STEPS_PY" cost-error "$OUT"; }
verify_config() { "$PY" "$STEPS_PY" verify-config "$OUT"; }

bench_cost_model() { # call the cost-model benchmark with whichever of these flags it has
  local help flags=(--quick --configs 12)
  help=$("$PY" benchmarks/bench_cost_model.py --help 2>/dev/null || true)
  [[ $help == *--threads* ]] && flags+=(--threads 8)
  [[ $help == *--profile* ]] && flags+=(--profile "$OUT/profile.yaml")
  [[ $help == *--device* ]] && flags+=(--device cuda)
  [[ $help == *--out* ]] && flags+=(--out "$OUT")
  "$PY" benchmarks/bench_cost_model.py "${flags[@]}"
}

run_step() {         # $1 limit (s), $2 command: in its own process group, killed whole at the limit
  if command -v setsid >/dev/null; then
    timeout --kill-after=10 "$1" setsid bash -c "trap 'kill -KILL -- -\$\$' TERM; ( $2 ) & wait \$!; exit \$?"
  else
    timeout --kill-after=10 "$1" bash -c "$2"
  fi
}

gpu_tests() {
  if ! "$PY" -c "import pytest" 2>/dev/null; then
    echo "pytest is not installed for $PY: gpu-marked tests skipped (steps 2-5 exercise the same CUDA paths)"
    return 0
  fi
  "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py tests/test_telemetry.py
}

# default steps: 540 s at most (measured 2026-12-04 on an H200: gpu 20 s, profile 17 s, published ~20 s a
# row, memory 211 s for 48 configs at 12 processes, verify 12 s); bench and cost on request (--steps)
STEPS=(gpu profile published memory verify)
declare -A LIMIT=([gpu]=60 [profile]=60 [bench]=160 [cost]=60 [verify]=50 [published]=220 [memory]=150)
declare -A CMD=(
  [gpu]="gpu_tests"
  [profile]="cli profile --quick --device cuda --out $OUT/profile.yaml --no-progress"
  [bench]="$PY benchmarks/bench_runtime.py --device cuda --backbones vit_tiny_patch16_224,vit_base_patch16_224 --batches 16,32 --variants baseline,paper --precisions fp32,bf16 --skip-accuracy --n 10 --rounds 2 --min-window-s 0.5 --profile $OUT/profile.yaml --out $OUT"
  [cost]="cost_error; e=\$?; bench_cost_model && exit \$e"
  [verify]="verify_config && cli verify --config $OUT/best_gpu_check.yaml --device $OUT/profile.yaml --run-on cuda --iters 10 --out $OUT/verify.yaml --no-progress"
  [published]="$PY $STEPS_PY published $OUT"
  [memory]="$PY $STEPS_PY memory-grid $OUT"
)
if [[ -n $ONLY ]]; then
  IFS=, read -r -a STEPS <<< "$ONLY"
  for s in "${STEPS[@]}"; do
    [[ -n ${CMD[$s]:-} ]] || { echo "gpu_check.sh: unknown step $s (expected one of ${!CMD[*]})" >&2; exit 2; }
  done
fi

if [[ $DRY == 1 ]]; then
  echo "gpu_check.sh plan (dry run): python $PY, GPU '$NAME', results in $OUT/"
  for s in "${STEPS[@]}"; do
    printf '  %-8s (<= %3d s)  %s\n' "$s" "${LIMIT[$s]}" "${CMD[$s]}"
  done
  if [[ $NAME == none ]]; then
    echo "no CUDA device here: a real run would stop before step 1"
  fi
  exit 0
fi

if [[ $NAME == none ]]; then
  echo "gpu_check.sh: no CUDA device visible to $PY (torch.cuda.is_available() is false); nothing run" >&2
  exit 2
fi

mkdir -p "$OUT"
export -f cli cost_error verify_config bench_cost_model gpu_tests 2>/dev/null || true
export PY OUT STEPS_PY
SUMMARY="$OUT/summary.txt"
{
  echo "gpu_check.sh on $(hostname) at $(date -Is)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv,noheader 2>/dev/null || echo "nvidia-smi unavailable"
  "$PY" -c "import torch, timm; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'timm', timm.__version__)"
} | tee "$SUMMARY"
T0=$(date +%s)
FAILED=0
for s in "${STEPS[@]}"; do
  t=$(date +%s)
  echo "== step $s (limit ${LIMIT[$s]} s): ${CMD[$s]}" | tee -a "$SUMMARY"
  run_step "${LIMIT[$s]}" "${CMD[$s]}" > "$OUT/$s.log" 2>&1
  rc=$?
  tail -n 40 "$OUT/$s.log"
  [[ $rc == 124 || $rc == 137 ]] && note=" (timed out)" || note=""
  [[ $rc != 0 ]] && FAILED=1
  echo "== step $s: exit $rc$note in $(( $(date +%s) - t )) s" | tee -a "$SUMMARY"
done
echo "total $(( $(date +%s) - T0 )) s; logs and results in $OUT/" | tee -a "$SUMMARY"
exit $FAILED
