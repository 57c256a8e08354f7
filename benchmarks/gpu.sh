#!/usr/bin/env bash
# The default training path (bfloat16, the model's default attention) on one GPU: ViT-L/16 vs
# TL-L/16 (16-TL at 12) train and forward img/s, MFU against the chip's peak and against an
# 8192^3 bf16 matmul measured in the same run, peak memory, the TL/ViT speed-up beside the FLOPs
# ratio, and the compiled memory of the ViViT-L/16 + TL 32x224 train step (Kinetics config).
# Each group runs in its own process with its own timeout; about 3-6 minutes on one H100 / H200;
# writes gpu.json (rewritten after every measurement). Installs nothing; README.md "GPU" says
# what to install. Extra arguments go to benchmarks/gpu.py (e.g. --batch=128 --out=/tmp/g.json).
#
#   bash benchmarks/gpu.sh
#   bash benchmarks/gpu.sh --groups=matmul,vit --steps=50
#
# Without a GPU backend it prints "no GPU backend: ..." and exits 1 (seconds).
set -u -o pipefail
cd "$(dirname "$0")/.."
if [[ -f .venv/bin/activate ]]; then source .venv/bin/activate; fi
PYTHON="${PYTHON:-$(command -v python3 || command -v python || true)}"
if [[ -z "$PYTHON" ]]; then
  echo "gpu.sh: no python3 (or python) on PATH; set PYTHON=/path/to/python"; exit 1
fi
if ! "$PYTHON" -c 'import jax, flax, optax' 2>/dev/null; then
  echo "gpu.sh: $PYTHON cannot import jax, flax and optax; see README.md, section GPU"; exit 1
fi
exec "$PYTHON" -m benchmarks.gpu "$@"
