#!/usr/bin/env bash
# The GPU figures in one script, for a machine with one NVIDIA GPU and a few minutes (<= 8 min on an
# H100/H200). Uses the torch already installed there, installs longmix without dependencies (the
# GPU machine may have no network), and writes everything to benchmarks/results/gpu/:
#   1. the CUDA tests (tests/cuda: kernels and mixers on the GPU against float64);
#   2. the main job on CUDA: exact causal attention at L = 2^20, 32 heads x 128, bf16, one GPU,
#      useful TFLOP/s against the GPU's bf16 dense peak (data sheet), verified against float64;
#   3. an LM training step at the longest context it fits, one process (softmax, mamba2, mamba),
#      each mixer with its own time budget.
# Where the tree is a copy whose git is missing or stale (a device machine), set LONGMIX_SOURCE to
# the commit: source.txt then names it, in place of what git describes.
# Multi-rank CUDA paths need several GPUs (two NCCL ranks cannot share one GPU); they are not run.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=benchmarks/results/gpu
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    echo "gpu.sh: no CUDA device visible to torch ($("$PY" -c 'import torch; print(torch.__version__)' 2>&1)); nothing run" >&2
    exit 3
fi
mkdir -p "$OUT"
"$PY" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}"   # no pip or no setuptools: run from src
missing=$("$PY" - <<'PYEOF'
import importlib.util
print(" ".join(m for m in ("einops", "tqdm", "numpy", "numba", "matplotlib", "pytest")
               if importlib.util.find_spec(m) is None))
PYEOF
)
[ -n "$missing" ] && echo "gpu.sh: not installed here: $missing (steps that need them will say so)" | tee "$OUT/missing.txt"
{ echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "source: ${LONGMIX_SOURCE:-$(git describe --always --dirty 2>/dev/null || echo "unknown (no git, LONGMIX_SOURCE unset)")}"
  "$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1; } > "$OUT/source.txt"
status=0
step() {  # step NAME TIMEOUT_S COMMAND...: runs it, keeps its output, never stops the script
    local name=$1 limit=$2; shift 2
    echo "== $name (at most ${limit}s): $*"
    timeout "$limit" "$@" > "$OUT/$name.txt" 2>&1
    local rc=$?
    echo "   exit $rc -> $OUT/$name.txt"; tail -n 3 "$OUT/$name.txt"
    [ $rc -ne 0 ] && status=1
}
step cuda_tests 120 "$PY" -m pytest -q -p no:cacheprovider tests/cuda
step attend_cuda 180 "$PY" -m longmix.cli attend --device cuda --seq-len 1048576 --heads 32 \
    --head-dim 128 --dtype bf16 --json "$OUT/attend_cuda.json" --no-progress
step train_context 150 "$PY" benchmarks/gpu_train_context.py --budget-s 40 --out-dir "$OUT"
exit $status
