"""GFL, ATSS and FCOS: heads, box decoding, YAML builds, training steps, DenseOutputs, inference."""
import copy
import math
import os

import pytest
import torch

import detectron2.data.transforms as T
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from conftest import REPO, quickstart_cfg
from tid_d2.modeling import ATSS, FCOS, GFL
from tid_d2.engine.trainer import TIDTrainer
from tid_d2.modeling.atss import centerness_target
from tid_d2.modeling.dense_base import valid_anchor_mask
from tid_d2.modeling.gfl import integral_decode
from tid_d2.modeling.heads import DenseTowerHead
from tid_d2.engine.defaults import setup_cfg

STRIDES = [8, 16, 32, 64, 128]
# FPN level sizes of a 128 x 160 input (P6/P7: stride-2 3x3 convs, padding 1)
LEVEL_HW = [(16, 20), (8, 10), (4, 5), (2, 3), (1, 2)]
#: quickstart config, meta-architecture, class
DETECTORS = {
    "GFL": ("GFL-student", [], GFL),
    "ATSS": ("ATSS-student", [], ATSS),
    "FCOS": (
        "GFL-student", ["MODEL.META_ARCHITECTURE", "FCOS", "MODEL.FCOS.NUM_CLASSES", "6"], FCOS
    ),
}


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny convolutions: one intra-op thread is as fast alone, and far faster on a shared CPU."""
    torch.set_num_threads(1)


def tiny_model(arch: str, *opts):
    name, extra, cls = DETECTORS[arch]
    model = build_model(quickstart_cfg(name, *extra, *opts))
    assert type(model) is cls
    return model


@pytest.fixture(scope="module")
def fixed_batch(tiny_shapes):
    """Two annotated training images of the tiny dataset, resized to short side 128, no flip."""
    dicts = [d for d in DatasetCatalog.get(tiny_shapes[0]) if d["annotations"]][:2]
    mapper = DatasetMapper(
        is_train=True, augmentations=[T.ResizeShortestEdge(128, 192)], image_format="BGR"
    )
    return [mapper(d) for d in dicts]


def random_image(h: int, w: int) -> torch.Tensor:
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8)


def synthetic_image(h=128, w=160, **fields):
    """A random image with the given Instances fields (boxes XYXY in the image's pixels)."""
    inst = Instances((h, w))
    inst.gt_boxes = Boxes(torch.tensor(fields.get("boxes", []), dtype=torch.float32).reshape(-1, 4))
    inst.gt_classes = torch.tensor(fields.get("classes", []), dtype=torch.long)
    return {"image": random_image(h, w), "instances": inst}


# ---------------------------------------------------------------------------------------------
# Heads
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["GFL", "ATSS"])
def test_head_output_shapes_per_level(arch):
    model = tiny_model(arch)
    images = torch.rand(2, 3, 128, 160) * 255
    features = model.backbone(images)
    features = [features[f] for f in model.head_in_features]
    outputs = model.head(features)
    assert model.strides == STRIDES
    assert len(outputs) == (3 if arch == "ATSS" else 2)
    reg_dims = 4 * (model.reg_max + 1) if arch == "GFL" else 4
    for level, (h, w) in enumerate(LEVEL_HW):
        assert features[level].shape == (2, 32, h, w)
        assert outputs[0][level].shape == (2, 6, h, w)
        assert outputs[1][level].shape == (2, reg_dims, h, w)
        if arch == "ATSS":
            assert outputs[2][level].shape == (2, 1, h, w)
    assert reg_dims == (68 if arch == "GFL" else 4)


def test_dense_tower_head_from_explicit_kwargs():
    head = DenseTowerHead(
        input_shape=[ShapeSpec(channels=32)] * 3,
        num_classes=3,
        conv_dims=[32, 32],
        reg_channels=20,
        with_centerness=True,
        norm="GN",
        prior_prob=0.05,
    )
    feats = [torch.randn(2, 32, s, s + 1) for s in (8, 4, 2)]
    cls, reg, ctr = head(feats)
    assert [c.shape for c in cls] == [(2, 3, s, s + 1) for s in (8, 4, 2)]
    assert [r.shape for r in reg] == [(2, 20, s, s + 1) for s in (8, 4, 2)]
    assert [c.shape for c in ctr] == [(2, 1, s, s + 1) for s in (8, 4, 2)]
    # the focal-loss prior: every class starts at probability prior_prob
    assert torch.allclose(head.cls_score.bias.sigmoid(), torch.full((3,), 0.05))
    with pytest.raises(ValueError, match="3 levels"):
        head(feats[:2])
    with pytest.raises(ValueError, match="same channel count"):
        DenseTowerHead(
            input_shape=[ShapeSpec(channels=32), ShapeSpec(channels=16)],
            num_classes=3, conv_dims=[32], reg_channels=4,
        )


# ---------------------------------------------------------------------------------------------
# Box coding
# ---------------------------------------------------------------------------------------------
def test_integral_decode_by_hand():
    reg_max = 4
    # one-hot distributions (one large logit) decode to their bin
    bins = torch.tensor([0, 1, 3, 4])
    onehot = torch.full((4, reg_max + 1), -30.0)
    onehot[torch.arange(4), bins] = 30.0
    assert torch.allclose(integral_decode(onehot.reshape(-1), reg_max), bins.float(), atol=1e-4)
    # uniform distributions decode to the mean bin
    uniform = torch.zeros(7, 4 * (reg_max + 1))
    assert torch.allclose(integral_decode(uniform, reg_max), torch.full((7, 4), 2.0))
    # probabilities (1, 2, 3) / 6 over bins 0..2: (0 * 1 + 1 * 2 + 2 * 3) / 6
    logits = torch.log(torch.tensor([1.0, 2.0, 3.0])).repeat(4)
    assert torch.allclose(integral_decode(logits, 2), torch.full((4,), 8.0 / 6.0))
    # leading dimensions are kept: [N, HW, 4 (n + 1)] -> [N, HW, 4]
    assert integral_decode(torch.randn(2, 5, 4 * 17), 16).shape == (2, 5, 4)


def test_gfl_decodes_left_top_right_bottom_in_strides():
    model = tiny_model("GFL")
    n = model.reg_max + 1
    logits = torch.full((1, 4, n), -30.0)
    logits[0, torch.arange(4), torch.tensor([1, 2, 3, 4])] = 30.0
    deltas = model.level_deltas(logits.reshape(1, 4 * n), stride=8)
    assert torch.allclose(deltas, torch.tensor([[8.0, 16.0, 24.0, 32.0]]), atol=1e-3)
    anchor = torch.tensor([[-16.0, -16.0, 48.0, 48.0]])  # centre (16, 16), 8 x stride 8
    box = model.box2box_transform.apply_deltas(deltas, anchor)
    assert torch.allclose(box, torch.tensor([[8.0, 0.0, 40.0, 48.0]]), atol=1e-3)


def test_centerness_target_by_hand():
    anchors = torch.tensor(
        [
            [6.0, 6.0, 14.0, 14.0],  # centre (10, 10): l, t, r, b = 10, 10, 30, 10
            [10.0, 0.0, 30.0, 20.0],  # centre (20, 10): the GT centre
            [0.0, 0.0, 4.0, 4.0],  # centre (2, 2): l, t, r, b = 2, 2, 38, 18
            [-2.0, 4.0, 2.0, 8.0],  # centre (0, 6) on the left edge: l = 0
        ]
    )
    gt = torch.tensor([[0.0, 0.0, 40.0, 20.0]]).expand(4, 4)  # all in one GT
    expected = torch.tensor(
        [math.sqrt(10 / 30 * 10 / 10), 1.0, math.sqrt(2 / 38 * 2 / 18), 0.0]
    )
    assert torch.allclose(centerness_target(anchors, gt), expected)


# ---------------------------------------------------------------------------------------------
# Built from YAML
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, cls, num_convs, channels",
    [
        ("GFL-student", GFL, 2, 32),
        ("GFL-teacher", GFL, 2, 64),
        ("ATSS-student", ATSS, 2, 32),
        ("ATSS-teacher", ATSS, 2, 64),
    ],
)
def test_quickstart_yaml_builds(name, cls, num_convs, channels):
    model = build_model(quickstart_cfg(name))
    assert type(model) is cls and model.num_classes == 6
    assert model.strides == STRIDES
    assert model.head_in_features == ["p3", "p4", "p5", "p6", "p7"]
    assert model.head.cls_score.in_channels == channels
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.head.cls_subnet) == num_convs


@pytest.mark.parametrize(
    "path, cls, depth, num_classes",
    [
        ("GFL-R50-1x.yaml", GFL, 50, 80),
        ("ATSS-R50-1x.yaml", ATSS, 50, 80),
        ("FCOS-R50-1x.yaml", FCOS, 50, 80),
        ("GFL-R101-2x-ms.yaml", GFL, 101, 80),
        ("ATSS-R101-1x.yaml", ATSS, 101, 80),
        ("VOC/GFL-R50.yaml", GFL, 50, 20),
        ("VOC/ATSS-R50.yaml", ATSS, 50, 20),
    ],
)
def test_full_size_yaml_builds(path, cls, depth, num_classes):
    opts = ["MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", ""]
    cfg = setup_cfg(os.path.join(REPO, "configs", path), opts)
    model = build_model(cfg)
    assert type(model) is cls and model.num_classes == num_classes
    bottom_up = model.backbone.bottom_up
    blocks = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    assert [len(getattr(bottom_up, f"res{i}")) for i in range(2, 6)] == blocks
    assert model.backbone.output_shape()["p7"].stride == 128
    assert model.backbone.top_block.in_feature == "p5"  # P6/P7 from P5, not C5
    # FREEZE_AT 2: stem and res2 frozen, res3 trained
    assert not any(p.requires_grad for p in bottom_up.stem.parameters())
    assert not any(p.requires_grad for p in bottom_up.res2.parameters())
    assert all(p.requires_grad for p in bottom_up.res3.parameters())
    head = model.head
    if cls is FCOS:
        assert head.cls_score.out_channels == num_classes
    else:
        assert head.cls_score.out_channels == num_classes and head.cls_score.in_channels == 256
        assert head.bbox_pred.out_channels == (68 if cls is GFL else 4)
        assert (head.centerness is not None) == (cls is ATSS)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def train_losses(model, batch, steps: int, lr: float = 0.01):
    """Total loss before each of `steps` SGD steps on the same batch."""
    model.train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr, momentum=0.9)
    totals = []
    with EventStorage():
        for _ in range(steps):
            loss = sum(model(batch).values())
            totals.append(loss.item())
            opt.zero_grad()
            loss.backward()
            opt.step()
    return totals


@pytest.mark.parametrize("arch", ["GFL", "ATSS"])
def test_training_steps_lower_the_loss_on_a_fixed_batch(arch, fixed_batch):
    totals = train_losses(tiny_model(arch), fixed_batch, steps=11)  # the 11th: after 10 steps
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-3:]) / 3 < 0.93 * totals[0], totals


def _finite_losses_and_grads(model, batch):
    model.train()
    with EventStorage():
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values()), losses
    sum(losses.values()).backward()
    for name, p in model.named_parameters():
        assert p.grad is None or torch.isfinite(p.grad).all(), name
    return losses


@pytest.mark.parametrize("arch", ["GFL", "ATSS", "FCOS"])
def test_empty_degenerate_and_tiny_boxes_train_without_nan(arch):
    model = tiny_model(arch)
    empty = synthetic_image()
    odd = synthetic_image(
        boxes=[[40, 30, 40, 90], [20, 20, 21, 21], [70, 60, 70.5, 60.5], [10, 10, 120, 100]],
        classes=[0, 1, 2, 3],
    )
    _finite_losses_and_grads(model, [empty, odd])
    model.zero_grad()
    losses = _finite_losses_and_grads(model, [empty, synthetic_image()])
    # no positives: only the classification loss remains
    assert all(v.item() == 0 for k, v in losses.items() if not k.endswith("cls")), losses
    assert losses[next(k for k in losses if k.endswith("cls"))].item() > 0


def test_training_without_instances_is_a_clear_error():
    model = tiny_model("GFL").train()
    with pytest.raises(ValueError, match="instances"):
        model.forward_distill([{"image": torch.zeros(3, 128, 128, dtype=torch.uint8)}] * 2)


# ---------------------------------------------------------------------------------------------
# DenseOutputs for distillers
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["GFL", "ATSS", "FCOS"])
def test_forward_distill_matches_training_forward_and_shapes(arch, fixed_batch):
    model = tiny_model(arch).train()
    twin = copy.deepcopy(model)  # FCOS keeps an EMA loss normalizer: each forward updates it
    with EventStorage():
        plain = twin(fixed_batch)
        losses, out = model.forward_distill(fixed_batch)
    assert plain.keys() == losses.keys()
    for k in plain:
        assert torch.allclose(plain[k], losses[k], rtol=1e-5, atol=1e-7), k

    n, k = len(fixed_batch), 6
    hws = [h * w for h, w in out.level_shapes]
    padded = [x["image"].shape[-2:] for x in fixed_batch]
    assert out.num_levels == 5 and out.strides == STRIDES and out.num_classes == k
    assert out.image_sizes == [tuple(s) for s in padded]
    for level, hw in enumerate(hws):
        assert out.features[level].shape[:2] == (n, 32)
        assert out.cls_logits[level].shape == (n, hw, k)
        assert out.boxes[level].shape == (n, hw, 4)
        assert out.anchors[level].shape == (hw, 4)
    if arch == "FCOS":
        assert out.pos_thresholds is None
    else:
        num_gt = [len(x["instances"]) for x in fixed_batch]
        assert [t.shape for t in out.pos_thresholds] == [(m,) for m in num_gt]
    if arch == "GFL":
        assert [b.shape for b in out.box_logits] == [(n, hw, 68) for hw in hws]
    else:
        assert out.box_logits is None
    pos_mask = out.extras["pos_mask"]
    assert pos_mask.shape == (n, sum(hws)) and pos_mask.dtype == torch.bool and pos_mask.any()

    if arch == "GFL":  # decoded boxes: anchor centre -/+ expected side distances x stride
        for level in (0, 2):
            sides = integral_decode(out.box_logits[level], model.reg_max) * STRIDES[level]
            centre = (out.anchors[level][:, :2] + out.anchors[level][:, 2:]) / 2
            expected = torch.cat([centre - sides[..., :2], centre + sides[..., 2:]], dim=-1)
            assert torch.allclose(out.boxes[level], expected, atol=1e-4)
    if arch != "FCOS":  # the teacher's path gives the same thresholds
        gt = [x["instances"] for x in fixed_batch]
        with EventStorage():
            teacher = model.dense_outputs(fixed_batch, gt)
        for a, b in zip(teacher.pos_thresholds, out.pos_thresholds):
            assert torch.allclose(a, b)


# ---------------------------------------------------------------------------------------------
# Inference
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ["GFL", "ATSS"])
def test_inference_caps_sorts_and_clips(arch):
    model = tiny_model(arch).eval()
    model.test_score_thresh = 0.0  # keep every candidate: NMS output exceeds the cap
    inputs = [
        {"image": random_image(128, 160), "height": 256, "width": 320},  # rescaled outputs
        {"image": random_image(144, 128)},
    ]
    with torch.no_grad():
        results = model(inputs)
    assert len(results) == 2
    for x, r in zip(inputs, results):
        inst = r["instances"]
        h, w = x.get("height", x["image"].shape[1]), x.get("width", x["image"].shape[2])
        assert inst.image_size == (h, w)
        assert len(inst) == 100
        scores = inst.scores
        assert (scores[:-1] >= scores[1:]).all()
        boxes = inst.pred_boxes.tensor
        assert (boxes[:, :2] >= 0).all() and (boxes[:, 2] <= w).all() and (boxes[:, 3] <= h).all()
        assert ((inst.pred_classes >= 0) & (inst.pred_classes < 6)).all()
    if arch == "GFL":  # the default threshold on a fresh GFL (scores = prior 0.01) keeps nothing
        model.test_score_thresh = 0.05
        with torch.no_grad():
            assert len(model(inputs[:1])[0]["instances"]) == 0


def test_p7_relu_key_switches_the_relu_between_p6_and_p7():
    """MODEL.FPN.P7_RELU False: P7 = conv(P6) (mmdetection's FPN); True: conv(relu(P6)) (Detectron2's)."""
    from tid_d2.modeling.backbone import LastLevelP6P7NoReLU

    torch.manual_seed(0)
    with_relu = tiny_model("GFL").backbone
    without = build_model(setup_cfg(os.path.join(REPO, "configs", "quickstart", "GFL-student.yaml"),
                                    ["MODEL.FPN.P7_RELU", "False"])).backbone
    assert isinstance(without.top_block, LastLevelP6P7NoReLU)
    assert not isinstance(with_relu.top_block, LastLevelP6P7NoReLU)
    without.load_state_dict(with_relu.state_dict())  # same parameter names
    x = torch.randn(1, 3, 128, 160)
    a, b = with_relu(x), without(x)
    assert torch.equal(a["p6"], b["p6"]) and a["p6"].min() < 0
    assert torch.allclose(b["p7"], without.top_block.p7(b["p6"]))
    assert torch.allclose(a["p7"], with_relu.top_block.p7(torch.relu(a["p6"])))
    assert not torch.allclose(a["p7"], b["p7"])


@pytest.mark.parametrize("name", ["GFL-R50-1x", "ATSS-R50-1x"])
def test_mmdet_layout_configs_build_their_detector(name):
    cfg = setup_cfg(os.path.join(REPO, "configs", "mmdet", f"{name}.yaml"), ["MODEL.DEVICE", "cpu"])
    assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.FPN.P7_RELU and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    model = build_model(cfg)
    assert model.input_format == "RGB" and model.strides == STRIDES
    opt = TIDTrainer.build_optimizer(cfg, model)
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    gn_weight = model.head.cls_subnet[1].weight
    assert isinstance(model.head.cls_subnet[1], torch.nn.GroupNorm)
    assert decay[id(gn_weight)] == pytest.approx(1e-4)  # SOLVER.WEIGHT_DECAY_NORM as mmdetection
    # mmdetection's inference/training semantics; batches padded to 32 as its pad_size_divisor
    assert model.test_clip_boxes and model.ignore_batch_padding
    assert model.backbone.size_divisibility == 32
    if name.startswith("ATSS"):
        assert model.test_score_mode == "class_then_product"


def test_default_configs_keep_detectron2_semantics():
    model = tiny_model("ATSS")
    assert not model.test_clip_boxes and not model.ignore_batch_padding
    assert model.test_score_mode == "sqrt_product"


def test_atss_score_mode_is_checked():
    with pytest.raises(ValueError, match="SCORE_MODE_TEST.*'product'"):
        tiny_model("ATSS", "MODEL.ATSS.SCORE_MODE_TEST", "product")


def test_valid_anchor_mask_by_hand():
    """A 72 x 90 image padded to 32 owns 96 x 96: 12 x 12 of the 16 x 20 stride-8 locations of a
    128 x 160 batch, and ceil(96 / 128) = 1 x 1 of the 1 x 2 stride-128 ones."""
    model = tiny_model("GFL")
    features = [torch.zeros(1, 1, h, w) for h, w in LEVEL_HW]
    anchors = model.anchor_generator(features)
    mask = valid_anchor_mask(anchors, STRIDES, (72, 90), 32)
    per_level = [m.reshape(h, w) for m, (h, w) in zip(mask.split([len(a) for a in anchors]), LEVEL_HW)]
    expected_p3 = torch.zeros(16, 20, dtype=torch.bool)
    expected_p3[:12, :12] = True
    assert torch.equal(per_level[0], expected_p3)
    assert per_level[4].tolist() == [[True, False]]
    assert valid_anchor_mask(anchors, STRIDES, (128, 160), 32).all()


@pytest.mark.parametrize("arch", ["GFL", "ATSS"])
def test_ignored_batch_padding_gets_no_loss(arch):
    """IGNORE_BATCH_PADDING: a small image's batch padding is labelled -1, never positive, and the
    classification loss no longer counts it; the large image's labels are unchanged."""
    torch.manual_seed(0)
    base = tiny_model(arch)
    ignoring = tiny_model(arch, f"MODEL.{arch}.IGNORE_BATCH_PADDING", "True")
    ignoring.load_state_dict(base.state_dict())
    data = [
        synthetic_image(256, 320, boxes=[[10, 10, 120, 100]], classes=[1]),
        synthetic_image(96, 96, boxes=[[5, 5, 60, 70]], classes=[2]),
    ]
    images = base.preprocess_image(data)
    features = base.extract_features(images)
    anchors = base.anchor_generator(features)
    gts = base.gt_instances(data)
    labels, _, _ = base.label_anchors(anchors, gts)
    ignored, _, _ = ignoring.label_anchors(anchors, gts)
    assert torch.equal(labels[0], ignored[0])
    assert (ignored[1] == -1).sum() > 0 and (labels[1] >= 0).all()
    assert torch.equal(labels[1] < 6, (ignored[1] >= 0) & (ignored[1] < 6))  # same positives here
    with EventStorage():
        loss_base = base.forward_training(images, features, base.head(features), gts)
        loss_ignoring = ignoring.forward_training(images, features, ignoring.head(features), gts)
    cls_key = f"loss_{arch.lower()}_cls"
    assert loss_ignoring[cls_key] < loss_base[cls_key]


@pytest.mark.parametrize("arch", ["GFL", "ATSS"])
def test_box_decoding_is_float32_under_autocast(arch):
    """Under AMP the head runs in low precision, but boxes are decoded in float32 (GFL's integral
    included), for DenseOutputs and for the detections."""
    model = tiny_model(arch).eval()
    model.test_score_thresh = 0.0
    data = [synthetic_image(128, 160, boxes=[[10, 10, 60, 70]], classes=[1])]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        outputs = model.dense_outputs(data)
        detections = model(data)[0]["instances"]
    assert outputs.cls_logits[0].dtype == torch.bfloat16  # autocast is really on
    assert all(b.dtype == torch.float32 for b in outputs.boxes)
    assert detections.pred_boxes.tensor.dtype == torch.float32
