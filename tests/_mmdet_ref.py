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
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]  # torchvision, RGB
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


def mmdet_model_cfg(arch: str, num_classes: int, depth: int = 50) -> dict:
    """mmdetection's gfl_r50_fpn_1x_coco / atss_r50_fpn_1x_coco model settings (`depth`: the
    ResNet's), `num_classes` classes."""
    anchors = dict(
        type="AnchorGenerator", ratios=[1.0], octave_base_scale=8, scales_per_octave=1,
        strides=[8, 16, 32, 64, 128],
    )
    head = dict(num_classes=num_classes, in_channels=256, stacked_convs=4, feat_channels=256,
                anchor_generator=anchors)
    if arch == "GFL":
        head.update(
            type="GFLHead", reg_max=16,
            loss_cls=dict(type="QualityFocalLoss", use_sigmoid=True, beta=2.0, loss_weight=1.0),
            loss_dfl=dict(type="DistributionFocalLoss", loss_weight=0.25),
            loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
        )
    else:
        head.update(
            type="ATSSHead",
            bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                            target_stds=[0.1, 0.1, 0.2, 0.2]),
            loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
            loss_bbox=dict(type="GIoULoss", loss_weight=2.0),
            loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0),
        )
    return dict(
        type=arch,
        data_preprocessor=dict(type="DetDataPreprocessor", mean=MEAN, std=STD, bgr_to_rgb=True,
                               pad_size_divisor=32),
        backbone=dict(type="ResNet", depth=depth, num_stages=4, out_indices=(0, 1, 2, 3),
                      frozen_stages=1, norm_cfg=dict(type="BN", requires_grad=True), norm_eval=True,
                      style="pytorch"),
        neck=dict(type="FPN", in_channels=[256, 512, 1024, 2048], out_channels=256, start_level=1,
                  add_extra_convs="on_output", num_outs=5),
        bbox_head=head,
        train_cfg=dict(assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1,
                       debug=False),
        test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                      nms=dict(type="nms", iou_threshold=0.6), max_per_img=100),
    )


def perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
    """Move every bias, norm and scale off its initial value (zeros/ones would hide a swapped or
    dropped tensor), keeping activations of order one."""
    with torch.no_grad():
        for name, t in model.state_dict().items():
            if name.endswith("num_batches_tracked") or name.endswith("integral.project"):
                continue
            if name.endswith(("running_var", "scale")) or (t.dim() == 1 and name.endswith("weight")):
                t.copy_(0.5 + torch.rand(t.shape, generator=gen))
            elif t.dim() == 1:
                t.copy_(0.1 * torch.randn(t.shape, generator=gen))
            elif t.dim() == 0:
                t.copy_(0.5 + torch.rand((), generator=gen))
