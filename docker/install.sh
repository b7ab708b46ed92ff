#!/bin/sh
# Installs artwatch into a Python environment, exactly as the container image
# does (Dockerfile) and as tests/foundation/test_clean_install.py checks:
#   docker/install.sh PYTHON [EXTRAS]
# With no EXTRAS this is the plain install (`pip install -c requirements.lock .`):
# everything the web app, the CPU workers and the embedded default run. EXTRAS=clip
# adds the open_clip embedder for GPU workers; torch and torchvision go first and
# pinned, so pip never resolves a newer torch. Run from the project's root.
set -eu
py=$1
extras=${2:-}
if [ -n "$extras" ]; then
  "$py" -m pip install torch==2.14.1 torchvision==0.29.1
  "$py" -m pip install -c requirements.lock ".[$extras]"
else
  "$py" -m pip install -c requirements.lock .
fi
