#!/usr/bin/env bash
# Makes .venv-modelscope: a separate virtualenv holding ModelScope's own M2FP code, for
# bench/compare_modelscope.py. Nothing of ModelScope is committed to this repository.
#
# torch is installed first, pinned to the CPU build, and a constraints file keeps every later
# install from replacing it, so pip never pulls the multi-GB CUDA build. mmcv and torchvision
# cannot be installed here; bench/_modelscope.py injects small stand-ins for the parts of them
# that M2FP's import path touches.
#
# Usage: bash bench/setup_modelscope.sh            (safe to run again)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-modelscope
TORCH_SPEC="torch==2.13.0+cpu"
MODELSCOPE_SPEC="modelscope==1.40.2"
# What ModelScope's M2FP import path (model, pipeline, config reader) imports at module level
# beyond modelscope's own requirements, found by importing it until nothing was missing.
# numpy/Pillow as the project pins them. simplejson, python-dateutil and sortedcontainers are
# read by its JSON config reader; `datasets` comes through pipelines/base.py and opencv through
# preprocessors/image.py (neither is used by the M2FP computation).
DEPS=(
  numpy==2.4.6 pillow==13.0.0 addict==2.4.0 simplejson==4.3.0 python-dateutil==4.0.0
  sortedcontainers==2.4.0 datasets==5.2.0 opencv-python-headless==5.0.0.93
)
# timm needs torchvision, which cannot be installed here. ModelScope only checks that timm's
# distribution is installed, and its Swin backbone (never built for M2FP) imports three helpers
# from it at module level: timm goes in without its dependencies and bench/_modelscope.py puts a
# stand-in for those helpers in sys.modules, so timm's own code never runs.
NODEPS=(timm==1.0.31)

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c 'import sys, torch; sys.exit(torch.__version__ != "2.13.0+cpu")' 2>/dev/null; then
  echo "setup_modelscope: installing $TORCH_SPEC"
  if ! "$PY" -m pip install -q "$TORCH_SPEC"; then
    echo "setup_modelscope: $TORCH_SPEC was not found. Point pip at the PyTorch CPU wheel" >&2
    echo "  index (PIP_EXTRA_INDEX_URL) or at a folder holding the wheel (PIP_FIND_LINKS)." >&2
    exit 1
  fi
fi
constraints="$VENV/constraints.txt"
echo "$TORCH_SPEC" >"$constraints"
"$PY" -m pip install -q -c "$constraints" "$MODELSCOPE_SPEC" "${DEPS[@]}"
"$PY" -m pip install -q --no-deps "${NODEPS[@]}"
"$PY" - <<'PY'
import torch
assert torch.version.cuda is None, f"a CUDA torch build got installed: {torch.__version__}"
import modelscope
print(f"setup_modelscope: ready (modelscope {modelscope.__version__}, torch {torch.__version__})")
PY
