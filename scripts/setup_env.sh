#!/usr/bin/env bash
# Creates or reuses .venv with torch, Detectron2 and this package. Idempotent: a second run takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.tid_setup_done
if [ -f "$STAMP" ] && [ "$STAMP" -nt setup.py ] && [ "$STAMP" -nt scripts/setup_env.sh ] \
   && $VENV/bin/python -c "import torch, torchvision, detectron2, tid_d2" 2>/dev/null; then
  echo "[setup] .venv is ready (delete $STAMP to force a re-install)"
  exit 0
fi
[ -x $VENV/bin/python ] || { echo "[setup] creating $VENV"; $PY -m venv $VENV; }
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install -q "pip>=23" "setuptools<81" wheel
if $VENV/bin/python -c "import torch, torchvision; from torchvision.ops import nms" 2>/dev/null; then
  echo "[setup] torch already works: $($VENV/bin/python -c 'import torch; print(torch.__version__)')"
else
  echo "[setup] installing torch 2.14.1 / torchvision 0.29.1 (about a minute)"
  $PIP install -q torch==2.14.1 torchvision==0.29.1
fi
if $VENV/bin/python -c "import detectron2" 2>/dev/null; then
  echo "[setup] using the importable detectron2: $($VENV/bin/python -c 'import detectron2; print(detectron2.__file__)')"
else
  echo "[setup] installing Detectron2's pure-Python sources (sal-detectron2==0.7.2) into $VENV/detectron2_src"
  $PIP install -q --no-deps --python-version 3.10 --only-binary=:all: --target $VENV/detectron2_src sal-detectron2==0.7.2
  rm -rf $VENV/detectron2_src/detectron2/_C*.so
  SITE=$($VENV/bin/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
  echo "$(pwd)/$VENV/detectron2_src" > "$SITE/detectron2_src.pth"
fi
echo "[setup] installing tid_d2 (editable) with Detectron2's runtime dependencies"
$PIP install -q -e ".[dev]"
$VENV/bin/python -c "import torch, detectron2, tid_d2; print('[setup] ok: torch', torch.__version__, '| detectron2', detectron2.__version__)"
touch "$STAMP"
