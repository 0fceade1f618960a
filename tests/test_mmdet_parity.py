"""mmdetection's own GFL/ATSS R-50 FPN (3.3.0, random weights), converted with
`tid_d2.convert.mmdet`, give the same per-level outputs in the models of `configs/mmdet/`."""
import os

import pytest
import torch

from tid_d2.convert import convert_mmdet_checkpoint
from tid_d2.engine.defaults import build_eval_model, setup_cfg

from _mmdet_ref import import_mmdet

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 4
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def _mmdet_model_cfg(arch: str) -> dict:
    """mmdetection's gfl_r50_fpn_1x_coco / atss_r50_fpn_1x_coco model settings, NUM_CLASSES classes."""
    anchors = dict(
        type="AnchorGenerator", ratios=[1.0], octave_base_scale=8, scales_per_octave=1,
        strides=[8, 16, 32, 64, 128],
    )
    head = dict(num_classes=NUM_CLASSES, in_channels=256, stacked_convs=4, feat_channels=256,
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
        backbone=dict(type="ResNet", depth=50, num_stages=4, out_indices=(0, 1, 2, 3),
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


def _perturb(model: torch.nn.Module, gen: torch.Generator) -> None:
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


@pytest.fixture(scope="module", params=["GFL", "ATSS"])
def converted(request, tmp_path_factory):
    """(arch, mmdetection model, our model) holding the same random weights."""
    arch = request.param
    MODELS, ConfigDict = import_mmdet()
    torch.manual_seed(0)
    ref = MODELS.build(ConfigDict(_mmdet_model_cfg(arch)))
    ref.init_weights()
    _perturb(ref, torch.Generator().manual_seed(1))
    ref.eval()
    out = tmp_path_factory.mktemp(f"mmdet_{arch}")
    src, dst = str(out / "mmdet.pth"), str(out / "converted.pth")
    torch.save({"state_dict": ref.state_dict(), "meta": {}}, src)
    cfg = setup_cfg(
        os.path.join(REPO, "configs", "mmdet", f"{arch}-R50-1x.yaml"),
        ["MODEL.DEVICE", "cpu", f"MODEL.{arch}.NUM_CLASSES", str(NUM_CLASSES), "MODEL.WEIGHTS", ""],
    )
    convert_mmdet_checkpoint(src, dst, depth=50, meta_architecture=arch, log=lambda s: None)
    ours = build_eval_model(cfg, dst)  # the --eval-only load: strict
    return arch, ref, ours, cfg


def _batch():
    gen = torch.Generator().manual_seed(2)
    return torch.randn(1, 3, 128, 160, generator=gen)


def _ours_forward(model, x):
    features = model.backbone(x)
    return model.head([features[f] for f in model.head_in_features])


@torch.no_grad()
def test_per_level_outputs_equal(converted):
    arch, ref, ours, _ = converted
    x = _batch()
    expected = ref.bbox_head(ref.extract_feat(x))
    got = _ours_forward(ours, x)
    assert len(got) == len(expected) == (3 if arch == "ATSS" else 2)
    for name, e_levels, g_levels in zip(("cls", "reg", "centerness"), expected, got):
        assert len(e_levels) == len(g_levels) == 5
        for level, (e, g) in enumerate(zip(e_levels, g_levels)):
            assert e.shape == g.shape, (name, level)
            assert e.abs().max() > 1e-2, f"{name} P{level + 3} is ~0: the comparison would be vacuous"
            torch.testing.assert_close(g, e, rtol=0, atol=1e-4, msg=f"{arch} {name} P{level + 3}")


@torch.no_grad()
def test_relu_before_p7_changes_p7(converted):
    """Control: Detectron2's ReLU before P7 (MODEL.FPN.P7_RELU True) changes P7 beyond the tolerance,
    so the parity above depends on the key."""
    arch, ref, ours, cfg = converted
    x = _batch()
    expected = ref.bbox_head(ref.extract_feat(x))[0][4]
    ours.backbone.top_block.forward = lambda p5: [
        ours.backbone.top_block.p6(p5),
        ours.backbone.top_block.p7(torch.relu(ours.backbone.top_block.p6(p5))),
    ]
    try:
        got = _ours_forward(ours, x)[0][4]
    finally:
        del ours.backbone.top_block.forward
    assert (got - expected).abs().max() > 1e-3


def test_input_normalization_matches(converted):
    """Both normalize RGB with torchvision's statistics."""
    _, ref, ours, _ = converted
    assert ours.input_format == "RGB"
    torch.testing.assert_close(ours.pixel_mean.flatten(), ref.data_preprocessor.mean.flatten())
    torch.testing.assert_close(ours.pixel_std.flatten(), ref.data_preprocessor.std.flatten())
