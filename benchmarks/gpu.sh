#!/usr/bin/env bash
# bf16 ViT-L/16 and TL-L/16 (8 tokens before layer 12) on one GPU: train-step img/s and MFU,
# forward img/s, attention_implementation 'xla' vs 'cudnn'. About 3-5 minutes; installs nothing.
#
#   bash benchmarks/gpu.sh                 # PEAK_TFLOPS=989 (H100/H200 dense bf16) by default
#   PEAK_TFLOPS=312 BATCH=64 bash benchmarks/gpu.sh   # e.g. an A100
#
# MFU = XLA cost-analysis FLOPs of the step / time / PEAK_TFLOPS; "fraction of matmul peak" is
# against an 8192^3 bf16 matmul measured in the same run.
set -u -o pipefail
cd "$(dirname "$0")/.."
if [[ -f .venv/bin/activate ]]; then source .venv/bin/activate; fi
PEAK_TFLOPS="${PEAK_TFLOPS:-989}"
BATCH="${BATCH:-32}"
STEPS="${STEPS:-10}"
echo "== $(date -u +%FT%TZ) $(git rev-parse --short HEAD 2>/dev/null) python: $(command -v python)"
python -c 'import jax; print("jax", jax.__version__, jax.devices())' || exit 1
if ! python -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")'; then
  echo "no GPU backend: nothing measured"; exit 1
fi
run() {  # A failing lever (e.g. no cuDNN attention for this GPU) prints its error and goes on.
  echo "== $*"
  timeout 290 python -m benchmarks.speed --only=jax --variant=L/16 --loc=12 --num_tokens=8 \
    --dtype=bfloat16 --batch="$BATCH" --steps="$STEPS" --matmul_size=8192 \
    --peak_tflops="$PEAK_TFLOPS" "$@" 2>&1 | grep -v -i 'warning' || echo "FAILED ($?): $*"
}
run --modes=train,forward --jax_variants=xla,cudnn
