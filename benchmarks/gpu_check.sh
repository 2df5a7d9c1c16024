#!/usr/bin/env bash
# The GPU check (benchmarks/gpu_check.py): one H200 in ≤ 8 minutes; `--dry` runs it on CPU with tiny shapes.
#   benchmarks/gpu_check.sh [TABLE_FILE] [--dry] [--skip SECTION ...]
# Packages the GPU machine lacks (deepspeed, liger-kernel, bitsandbytes and their needs) travel as wheels in .whl/
# (ignored by git: .git/info/exclude); they are installed into /tmp/zj-site, never into the system. A package that
# is missing anyway makes its row say 'skipped: X not installed'. Runs from the source tree (PYTHONPATH=.).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_FILE=${1:-gpu-check.txt}
[ $# -gt 0 ] && shift
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/zj-site .whl/*.whl \
    && export PYTHONPATH=/tmp/zj-site${PYTHONPATH:+:$PYTHONPATH} || echo "note: wheels in .whl/ did not install"
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
[ -z "${PYTHON:-}" ] && [ -x .venv/bin/python ] && PY=.venv/bin/python
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
timeout 470 "$PY" benchmarks/gpu_check.py --out "$OUT_FILE" "$@"
rc=$?
[ $rc = 124 ] && echo "gpu_check: stopped at its 470 s limit"
exit $rc
