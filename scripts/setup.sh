#!/usr/bin/env bash
# Creates .venv (if missing) and installs attnprof with its test extra into it.
#
# torch is not pinned. Where no torch is installed yet and the machine has no NVIDIA GPU, a
# CPU build is installed first, because an unpinned `torch` from the package index is the
# newest CUDA build with several GB of GPU libraries that a CPU machine never uses:
#   1. a torch wheel from the local wheelhouse pip is configured with (find-links), if any;
#   2. otherwise the newest CPU build from PyTorch's CPU wheel index.
# With a GPU, the default index's CUDA build is installed. Set ATTNPROF_TORCH to a pip
# requirement (e.g. "torch==2.5.1") to choose yourself.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if [ -n "${ATTNPROF_TORCH:-}" ]; then
    "${pip[@]}" "$ATTNPROF_TORCH"
  elif command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    "${pip[@]}" torch
  elif ! "${pip[@]}" --no-index --no-deps torch 2>/dev/null; then
    "${pip[@]}" --no-deps torch --index-url https://download.pytorch.org/whl/cpu
  fi
fi
"${pip[@]}" -e ".[test]"
