#!/usr/bin/env bash
# ViT-B-32 images/second on one GPU, end to end from JPEG bytes (decode
# included): the project's batching (workers/batching.py: decode + crop on CPU
# threads overlapping batched fp16 inference) against a naive loop over single
# images. Unattended, under five minutes, nothing fetched: needs Python with
# PyTorch, numpy and Pillow; uses open_clip if installed (random weights),
# else a built-in ViT-B/32 of the same shape. Prints a table; also writes
# JSON to ${OUT:-.}/gpu-bench.json.
#
#   bash bench/gpu.sh                 # defaults below
#   IMAGES=8192 BATCH=512 bash bench/gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ]; then PY=.venv/bin/python; fi
IMAGES=${IMAGES:-4096}
NAIVE=${NAIVE:-512}
BATCH=${BATCH:-256}
THREADS=${THREADS:-$(nproc)}
OUTDIR=${OUT:-.}

"$PY" - <<'EOF'
import sys
try:
    import torch
except ImportError:
    sys.exit("PyTorch is not installed")
if not torch.cuda.is_available():
    sys.exit("no CUDA device visible to PyTorch")
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__, "| CUDA", torch.version.cuda)
EOF
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null || true

for dtype in float16 bfloat16; do
  timeout 200 "$PY" bench/throughput.py clip --device cuda --images "$IMAGES" --naive-images "$NAIVE" \
      --batch "$BATCH" --threads "$THREADS" --dtype "$dtype" --json | tee -a "$OUTDIR/gpu-bench.json" \
    | "$PY" -c 'import json,sys
sys.path.insert(0, "bench")
from throughput import print_clip
for line in sys.stdin:
    if line.startswith("{"):
        print_clip(json.loads(line)); print()'
done
