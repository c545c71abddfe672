#!/usr/bin/env bash
# GPU benchmark in one script, sized for the device tool's 15-minute budget (at most ~9.5 minutes).
# Each bench_vs_peer runner is its own worker process (startup ~5 s each); they share the GPU.
#
# Measures on one GPU, electra_jax against the HF/PyTorch peer on the same GPU, alternating:
#   1. the matmul peak (float32 and bfloat16, n = 4096 / 8192) with JAX;
#   2. ELECTRA-Small 128 x 128: ours float32/einsum, bfloat16/cudnn and mixed/einsum
#      (model.matmul_dtype=bfloat16) against the peer's float32 and bfloat16 autocast;
#   3. ELECTRA-Base 32 x 512 (the goal: >= 45% MFU in bf16 on an H200): ours bfloat16/cudnn
#      and float32/einsum against the peer's bfloat16 autocast and float32.
#
# Prepare once on the CPU machine (the GPU image lacks ml_collections; nothing can be
# fetched there), from the repo root:
#   python -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 --platform any -d .whl ml_collections==1.1.0
# Then run with the device tool: command "bash benchmarks/gpu.sh", carry [".whl"], timeout_s 590.
# Or on any CUDA machine with the repo's requirements: OUT=/tmp/gpu bash benchmarks/gpu.sh
# Results (JSON + logs) land in $OUT; copy the tables into benchmarks/README.md with the date.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/electra_jax_gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}

if ls .whl/*.whl >/dev/null 2>&1; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
{
  date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  $PY -c "import jax, torch, transformers, flax; print('jax', jax.__version__, jax.devices(),
'torch', torch.__version__, torch.cuda.get_device_name(0), 'transformers', transformers.__version__,
'flax', flax.__version__)"
} 2>&1 | tee "$OUT/env.txt"

run() {  # run <seconds> <name> <command...>: time-limited, log kept even when killed
  local secs=$1 name=$2; shift 2
  echo "== $name" | tee -a "$OUT/summary.txt"
  timeout "$secs" "$@" 2>&1 | tee "$OUT/$name.log" | grep -E '^\||GFLOP/step|peak|round' \
    | tee -a "$OUT/summary.txt"
}

run 60 peak $PY benchmarks/matmul_peak.py --sizes 4096 8192 --seconds 2 --json "$OUT/peak.json"
run 270 small128 $PY benchmarks/bench_vs_peer.py --size small --batch 128 --seq-len 128 \
  --ours float32/einsum bfloat16/cudnn mixed/einsum --peer float32 bfloat16 --peer-device cuda \
  --warmup 3 --rounds 20 --peak-sizes 4096 8192 --peak-seconds 1 --json "$OUT/small128.json"
run 250 base512 $PY benchmarks/bench_vs_peer.py --size base --batch 32 --seq-len 512 \
  --ours bfloat16/cudnn float32/einsum --peer bfloat16 float32 --peer-device cuda \
  --warmup 3 --rounds 10 --peak-sizes 4096 8192 --peak-seconds 1 --json "$OUT/base512.json"
echo "done $(date -u)" | tee -a "$OUT/summary.txt"
