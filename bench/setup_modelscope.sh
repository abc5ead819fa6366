#!/usr/bin/env bash
# Makes .venv-modelscope: a separate virtualenv holding ModelScope's own M2FP code, for
# bench/compare_modelscope.py. Nothing of ModelScope is committed to this repository.
#
# torch is installed first, pinned to the CPU build, so that pip never pulls the multi-GB
# CUDA build as a dependency of something else. mmcv and torchvision cannot be installed
# here; compare_modelscope.py injects small stand-ins for the parts M2FP uses.
#
# Usage: bash bench/setup_modelscope.sh            (safe to run again)
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=.venv-modelscope
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0+cpu}"
MODELSCOPE_SPEC="modelscope==1.40.2"
# What ModelScope's M2FP import path (model, pipeline, config reader) imports at module level,
# beyond modelscope's own requirements. numpy/Pillow pinned as the project pins them.
DEPS=(
  numpy==2.4.6 pillow==13.0.0 addict simplejson sortedcontainers python-dateutil
  pyyaml einops scipy opencv-python-headless timm==1.0.26 datasets
)

if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
PY="$VENV/bin/python"

if ! "$PY" -c 'import torch, sys; sys.exit(torch.__version__ != "2.13.0+cpu")' 2>/dev/null; then
  echo "setup_modelscope: installing $TORCH_SPEC"
  if ! "$PY" -m pip install -q "$TORCH_SPEC"; then
    echo "setup_modelscope: $TORCH_SPEC was not found. Point pip at the PyTorch CPU wheel" >&2
    echo "  index (PIP_EXTRA_INDEX_URL) or a folder holding the wheel (PIP_FIND_LINKS)." >&2
    exit 1
  fi
fi
# A constraints file keeps every later install from replacing torch with another build.
constraints="$VENV/constraints.txt"
echo "torch==2.13.0+cpu" >"$constraints"
"$PY" -m pip install -q -c "$constraints" "$MODELSCOPE_SPEC" "${DEPS[@]}"
"$PY" -m pip install -q --no-deps "${NODEPS[@]}"
"$PY" - <<'PY'
import torch
assert torch.version.cuda is None, f"CUDA torch build installed: {torch.__version__}"
import modelscope
print(f"setup_modelscope: ready (modelscope {modelscope.__version__}, torch {torch.__version__})")
PY
