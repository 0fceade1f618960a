"""mmdetection's own GFL/ATSS R-50/R-101 FPN (3.3.0, random weights), converted with
`tid_d2.convert.mmdet`, give the same per-level outputs, detections and training losses in the
models of `configs/mmdet/`."""
import os
import types

import pytest
import torch

from detectron2.structures import Boxes, ImageList, Instances

from tid_d2.convert import convert_mmdet_checkpoint
from tid_d2.engine.defaults import build_eval_model, setup_cfg

from _mmdet_ref import import_mmdet, mmdet_model_cfg, perturb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 4


#: (detector, ResNet depth, its configs/mmdet/ file)
MODELS_COMPARED = [
    ("GFL", 50, "GFL-R50-1x"),
    ("ATSS", 50, "ATSS-R50-1x"),
    ("GFL", 101, "GFL-R101-2x-ms"),
    ("ATSS", 101, "ATSS-R101-1x"),
]


@pytest.fixture(scope="module", params=MODELS_COMPARED, ids=[m[2] for m in MODELS_COMPARED])
def converted(request, tmp_path_factory):
    """(arch, mmdetection model, our model) holding the same random weights."""
    arch, depth, config = request.param
    MODELS, ConfigDict = import_mmdet()
    torch.manual_seed(0)
    ref = MODELS.build(ConfigDict(mmdet_model_cfg(arch, NUM_CLASSES, depth)))
    ref.init_weights()
    perturb(ref, torch.Generator().manual_seed(1))
    ref.eval()
    out = tmp_path_factory.mktemp(f"mmdet_{config}")
    src, dst = str(out / "mmdet.pth"), str(out / "converted.pth")
    torch.save({"state_dict": ref.state_dict(), "meta": {}}, src)
    cfg = setup_cfg(
        os.path.join(REPO, "configs", "mmdet", f"{config}.yaml"),
        ["MODEL.DEVICE", "cpu", f"MODEL.{arch}.NUM_CLASSES", str(NUM_CLASSES), "MODEL.WEIGHTS", ""],
    )
    convert_mmdet_checkpoint(src, dst, depth=depth, meta_architecture=arch, log=lambda s: None)
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


def _ours_head(model, x):
    features = model.backbone(x)
    features = [features[f] for f in model.head_in_features]
    return features, model.head(features)


def _match_detections(got, expected, box_atol=1e-2, score_atol=1e-4):
    """Fraction of `expected` detections (mmdetection InstanceData) with a detection in `got`
    (Instances) of the same label, box within `box_atol` and score within `score_atol`."""
    e_boxes, e_scores, e_labels = expected.bboxes, expected.scores, expected.labels
    g_boxes, g_scores, g_labels = got.pred_boxes.tensor, got.scores, got.pred_classes
    box_diff = (e_boxes[:, None, :] - g_boxes[None, :, :]).abs().amax(dim=-1)  # [E, G]
    close = (
        (box_diff <= box_atol)
        & ((e_scores[:, None] - g_scores[None, :]).abs() <= score_atol)
        & (e_labels[:, None] == g_labels[None, :])
    )
    return close.any(dim=1).float().mean().item()


@torch.no_grad()
def test_detections_equal_after_nms(converted):
    """The whole inference (threshold, top-k, decode, clip, NMS, top 100) gives mmdetection's boxes,
    scores and labels; torchvision's NMS stands in for mmcv's in both."""
    arch, ref, ours, _ = converted
    x = _batch()
    h, w = 120, 150  # the image inside the padded batch: boxes are clipped to it
    meta = dict(img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0), pad_shape=(128, 160))
    expected = ref.bbox_head.predict_by_feat(
        *ref.bbox_head(ref.extract_feat(x)), batch_img_metas=[meta], rescale=False
    )[0]
    features, predictions = _ours_head(ours, x)
    images = ImageList(x, [(h, w)])
    got = ours.forward_inference(images, features, predictions)[0]
    assert len(expected) >= 20, "too few detections for a meaningful comparison"
    assert len(got) == len(expected)
    assert _match_detections(got, expected) == 1.0
    assert _match_detections(expected_as_instances(expected), got_as_data(got)) == 1.0

    # controls: Detectron2's order (NMS on unclipped boxes) and, for ATSS, sqrt scoring differ
    ours.test_clip_boxes = False
    try:
        unclipped = ours.forward_inference(images, features, predictions)[0]
    finally:
        ours.test_clip_boxes = True
    assert _match_detections(unclipped, expected) < 0.99
    if arch == "ATSS":
        ours.test_score_mode = "sqrt_product"
        try:
            sqrt_scored = ours.forward_inference(images, features, predictions)[0]
        finally:
            ours.test_score_mode = "class_then_product"
        assert _match_detections(sqrt_scored, expected) < 0.5


def expected_as_instances(expected):
    """mmdetection's detections as Detectron2 Instances (for the reverse match)."""
    return Instances(
        (0, 0), pred_boxes=Boxes(expected.bboxes), scores=expected.scores, pred_classes=expected.labels
    )


def got_as_data(got):
    """Detectron2 Instances with mmdetection's field names (for the reverse match)."""
    return types.SimpleNamespace(
        bboxes=got.pred_boxes.tensor, scores=got.scores, labels=got.pred_classes
    )


def _padded_batch():
    """Two images of different sizes in one 128 x 160 batch (zeros outside each image) and their
    ground truth: the second image's own padded area (96 x 96) leaves batch padding around it."""
    gen = torch.Generator().manual_seed(3)
    sizes = [(128, 160), (72, 90)]
    x = torch.zeros(2, 3, 128, 160)
    for i, (h, w) in enumerate(sizes):
        x[i, :, :h, :w] = torch.randn(3, h, w, generator=gen)
    boxes = [
        torch.tensor([[10.0, 12.0, 70.0, 90.0], [80.0, 20.0, 150.0, 60.0], [30.0, 60.0, 46.0, 80.0]]),
        torch.tensor([[5.0, 4.0, 60.0, 50.0], [40.0, 30.0, 88.0, 70.0]]),
    ]
    labels = [torch.tensor([0, 2, 1]), torch.tensor([3, 0])]
    return x, sizes, boxes, labels


@torch.no_grad()
def test_losses_equal_on_a_padded_batch(converted):
    """Training losses equal mmdetection's `loss_by_feat` on a batch whose second image is smaller:
    the locations in its batch padding are ignored (valid flags), assigned and weighted alike."""
    from mmengine.structures import InstanceData

    arch, ref, ours, _ = converted
    x, sizes, boxes, labels = _padded_batch()
    metas = [
        dict(img_shape=s, pad_shape=tuple(-(-v // 32) * 32 for v in s), batch_input_shape=(128, 160))
        for s in sizes
    ]
    gts = [InstanceData(bboxes=b, labels=l) for b, l in zip(boxes, labels)]
    expected = ref.bbox_head.loss_by_feat(*ref.bbox_head(ref.extract_feat(x)), gts, metas)
    expected = [sum(v) if isinstance(v, (list, tuple)) else v for v in expected.values()]

    features, predictions = _ours_head(ours, x)
    instances = [
        Instances(s, gt_boxes=Boxes(b), gt_classes=l) for s, b, l in zip(sizes, boxes, labels)
    ]
    images = ImageList(x, sizes)
    got = list(ours.forward_training(images, features, predictions, instances).values())
    assert len(got) == len(expected) == 3
    for g, e in zip(got, expected):
        assert e > 1e-3
        torch.testing.assert_close(g, e, rtol=1e-4, atol=1e-6)

    # control: counting the batch padding (Detectron2's way) changes the classification loss
    ours.ignore_batch_padding = False
    try:
        counted = list(ours.forward_training(images, features, predictions, instances).values())
    finally:
        ours.ignore_batch_padding = True
    assert (counted[0] - expected[0]).abs() > 1e-3 * expected[0]
