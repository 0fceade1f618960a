"""mmdetection 3.3.0 as a numerical reference for tests: installed on first use into
`.cache/mmdet_ref` (outside the venv), imported with a stub for mmcv's compiled ops."""
import importlib
import os
import subprocess
import sys
import types

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.path.join(REPO, ".cache", "mmdet_ref")
PACKAGES = ["mmengine==0.10.7", "mmcv-lite==2.1.0", "mmdet==3.3.0"]
#: what `import mmdet.models` needs besides torch/numpy (module name, pip requirement)
DEPS = [
    ("addict", "addict"),
    ("yapf", "yapf"),
    ("rich", "rich"),
    ("pygments", "pygments"),
    ("termcolor", "termcolor"),
    ("shapely", "shapely"),
    ("scipy", "scipy==1.13.1"),
    ("six", "six"),
    ("terminaltables", "terminaltables"),
    ("markdown_it", "markdown-it-py"),
    ("mdurl", "mdurl"),
    ("platformdirs", "platformdirs"),
]


def _missing_requirements():
    missing = [p for p in PACKAGES if not os.path.isdir(os.path.join(TARGET, p.split("==")[0].replace("-lite", "")))]
    sys.path.insert(0, TARGET)
    try:
        for module, req in DEPS:
            if importlib.util.find_spec(module) is None:
                missing.append(req)
    finally:
        sys.path.remove(TARGET)
    return missing


def _install(requirements):
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", TARGET, *requirements]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot install the mmdetection reference ({' '.join(requirements)}): "
                    f"pip failed, is the package registry reachable? {proc.stderr.strip()[-300:]}")


def _stub_mmcv_ext():
    """mmcv-lite has no compiled `mmcv._ext`; `mmcv.ops` imports it at module level. `nms` follows
    mmcv's CPU kernel (boxes widened by `offset`) with torchvision; anything else raises."""
    import torchvision

    ext = types.ModuleType("mmcv._ext")

    def nms(boxes, scores, iou_threshold=0.5, offset=0, **kwargs):
        if offset:
            boxes = torch.cat([boxes[:, :2], boxes[:, 2:] + offset], dim=1)
        return torchvision.ops.nms(boxes, scores, float(iou_threshold))

    def missing(name):
        def fail(*args, **kwargs):
            raise NotImplementedError(f"mmcv._ext.{name} is a compiled op, not in mmcv-lite")

        return fail

    ext.nms = nms
    ext.__getattr__ = lambda name: missing(name) if not name.startswith("__") else None
    sys.modules["mmcv._ext"] = ext


def import_mmdet():
    """(MODELS, ConfigDict) of mmdetection 3.3.0; installs it first when needed."""
    missing = _missing_requirements()
    if missing:
        os.makedirs(TARGET, exist_ok=True)
        _install(missing)
    # the folder was probed before the install: drop the finders' stale view of it
    sys.path_importer_cache.pop(TARGET, None)
    importlib.invalidate_caches()
    if TARGET not in sys.path:
        sys.path.insert(0, TARGET)
    _stub_mmcv_ext()
    from mmengine.config import ConfigDict
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    register_all_modules()
    return MODELS, ConfigDict
