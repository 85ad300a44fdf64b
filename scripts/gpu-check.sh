#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): every GPU-side figure attnprof reports, measured on a
# real NVIDIA GPU in one go; its table goes to benchmarks/RESULTS.md. Installs nothing: it runs
# with the first Python whose torch sees a CUDA GPU ($PYTHON, then .venv, then python3), with
# the repository on PYTHONPATH. Exit 4 without an NVIDIA GPU, 1 when a check failed.
#   bash scripts/gpu-check.sh [--dry-run] [--only NAME,...]
set -euo pipefail
cd "$(dirname "$0")/.."
candidates=()
[ -n "${PYTHON:-}" ] && candidates+=("$PYTHON")
[ -x .venv/bin/python ] && candidates+=(.venv/bin/python)
command -v python3 >/dev/null 2>&1 && candidates+=(python3)
python=""
for candidate in "${candidates[@]}"; do
  if "$candidate" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() and torch.version.cuda else 1)" 2>/dev/null; then
    python="$candidate"
    break
  fi
done
if [ -z "$python" ]; then  # no CUDA anywhere: the first Python with torch says so (or lists, with --dry-run)
  for candidate in "${candidates[@]}"; do
    if "$candidate" -c "import torch" 2>/dev/null; then python="$candidate"; break; fi
  done
fi
if [ -z "$python" ]; then
  echo "gpu-check: needs an NVIDIA GPU and a Python with torch; found no Python with torch" >&2
  exit 4
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
exec "$python" -m benchmarks.gpu_check "$@"
