#!/usr/bin/env bash
# Fresh-machine install: a .venv with the CPU torch 2.13.0 first, then zhongjing under a constraint
# pinning it, so pip can never swap in a multi-GB CUDA build.
#   scripts/install.sh          runtime (all extras: web, judge, plots, logging)
#   scripts/install.sh --dev    + test tools, DeepSpeed (ZeRO tests on CPU) and Debian's Chromium for the browser tests
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip install -q torch==2.13.0
SUDO=$([ "$(id -u)" = 0 ] || echo sudo)
apt_install() {  # Debian packages; best effort where there is no root
  $SUDO apt-get install -y -qq "$@" >/dev/null 2>&1 || { $SUDO apt-get update -qq && $SUDO apt-get install -y -qq "$@" >/dev/null; }
}
# A CJK font so report plots can label departments in Chinese (plots fall back to English labels without it).
fc-list 2>/dev/null | grep -qi "wqy\|noto sans cjk" || apt_install fonts-wqy-microhei || echo "note: no CJK font installed; plot labels in English"
if [ "${1:-}" = "--dev" ]; then
  # DeepSpeed for the ZeRO tests: DS_BUILD_OPS=0 compiles no CUDA ops at install; its CPU shared-memory comm op is
  # compiled once here (else the first ZeRO run spends ~1 min on it) and cached in ~/.cache/torch_extensions.
  DS_BUILD_OPS=0 pip install -q -c constraints.txt -e ".[dev]"
  python -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null 2>&1 \
    || echo "note: DeepSpeed's CPU comm op did not compile; ZeRO tests compile it on first use"
  command -v chromium >/dev/null 2>&1 || apt_install chromium
else
  pip install -q -c constraints.txt -e ".[all]"
fi
python -c "import torch, zhongjing; assert torch.__version__.startswith('2.13.0'), torch.__version__"
echo "zhongjing installed in .venv (torch $(python -c 'import torch; print(torch.__version__)'))"
