"""The peer distillers (FitNet, FGD, PKD, CWD, LD) on hand-made DenseOutputs: 2 levels, 3 classes,
8 channels, 2 images of 64x64."""
import math
import re

import pytest
import torch
from detectron2.utils.events import EventStorage
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances
from torch import nn

from tid_d2.config import add_tid_config
from tid_d2.distill.base import DISTILLER_REGISTRY, build_distillers
from tid_d2.distill.cwd import CWD
from tid_d2.distill.fgd import FGD, box_masks
from tid_d2.distill.fitnet import FITNET
from tid_d2.distill.ld import LD
from tid_d2.distill.pgd import PGD
from tid_d2.distill.pkd import PKD
from tid_d2.structures import DenseOutputs, DistillLayout

STRIDES = [8, 16]
SHAPES = [(8, 8), (4, 4)]
IMAGE = 64
K = 3
REG_MAX = 4
METHODS = ["FITNET", "FGD", "PKD", "CWD", "LD", "PGD"]


def make_cfg(**overrides):
    cfg = add_tid_config(get_cfg())
    cfg.MODEL.DISTILL.PGD.FEATURES = "fpn"  # hand-made outputs: no detector head towers to read
    for key, value in overrides.items():  # keys relative to MODEL.DISTILL, e.g. "LD.TAU"
        *path, last = key.split(".")
        node = cfg.MODEL.DISTILL
        for p in path:
            node = node[p]
        node[last] = value
    return cfg


def make_targets(counts=(2, 1)):
    boxes = [
        [[4.0, 6.0, 30.0, 40.0], [36.0, 20.0, 60.0, 58.0]],
        [[10.0, 10.0, 50.0, 30.0]],
    ]
    out = []
    for i, n in enumerate(counts):
        inst = Instances((IMAGE, IMAGE))
        inst.gt_boxes = Boxes(torch.tensor(boxes[i][:n]).reshape(-1, 4))
        inst.gt_classes = torch.arange(n, dtype=torch.long) % K
        out.append(inst)
    return out


def level_anchors(stride, shape, scale=4):
    h, w = shape
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cx, cy = (xs.reshape(-1) + 0.5) * stride, (ys.reshape(-1) + 0.5) * stride
    half = scale * stride / 2
    return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=1)


def make_outputs(seed, channels=8, n=2, box_logits=True, pos_mask=True, thresholds=True):
    """DenseOutputs whose tensors are leaves that require grad (to check where gradients go)."""
    g = torch.Generator().manual_seed(seed)

    def leaf(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).requires_grad_()

    anchors = [level_anchors(s, hw) for s, hw in zip(STRIDES, SHAPES)]
    boxes = []
    for a in anchors:
        jitter = torch.randn(n, len(a), 4, generator=g) * 2
        boxes.append((a[None] + jitter).requires_grad_())
    out = DenseOutputs(
        features=[leaf(n, channels, h, w) for h, w in SHAPES],
        cls_logits=[leaf(n, h * w, K) for h, w in SHAPES],
        boxes=boxes,
        anchors=anchors,
        strides=list(STRIDES),
        image_sizes=[(IMAGE, IMAGE)] * n,
        pos_thresholds=[torch.tensor([0.3, 0.35]), torch.tensor([0.25])] if thresholds else None,
        box_logits=(
            [leaf(n, h * w, 4 * (REG_MAX + 1), scale=2.0) for h, w in SHAPES]
            if box_logits
            else None
        ),
    )
    if pos_mask:
        total = sum(h * w for h, w in SHAPES)
        mask = torch.zeros(n, total, dtype=torch.bool)
        mask[0, [9, 10, 45, 70]] = True
        mask[1, [20, 21, 66]] = True
        out.extras["pos_mask"] = mask
    return out


def twin(outputs: DenseOutputs) -> DenseOutputs:
    """Same values as `outputs`, in fresh leaves (a student that equals its teacher)."""

    def copy(xs):
        return None if xs is None else [x.detach().clone().requires_grad_() for x in xs]

    return DenseOutputs(
        features=copy(outputs.features),
        cls_logits=copy(outputs.cls_logits),
        boxes=copy(outputs.boxes),
        anchors=list(outputs.anchors),
        strides=list(outputs.strides),
        image_sizes=list(outputs.image_sizes),
        pos_thresholds=outputs.pos_thresholds,
        box_logits=copy(outputs.box_logits),
        extras=dict(outputs.extras),
    )


def layout(teacher_channels=8, student_channels=8):
    return DistillLayout(teacher_channels, student_channels, strides=STRIDES, box_distributions=True)


def build(name, teacher_channels=8, student_channels=8, **overrides):
    torch.manual_seed(0)
    return DISTILLER_REGISTRY.get(name)(make_cfg(**overrides).MODEL.DISTILL, layout(teacher_channels, student_channels))


def teacher_leaves(t: DenseOutputs):
    return t.features + t.cls_logits + t.boxes + (t.box_logits or [])


def student_inputs(name, s: DenseOutputs):
    """The student tensors each method learns from."""
    return s.box_logits if name == "LD" else s.features


EXPECTED_KEYS = {
    "FITNET": {"loss_fitnet"},
    "FGD": {"loss_fgd_fg", "loss_fgd_bg", "loss_fgd_mask", "loss_fgd_relation"},
    "PKD": {"loss_pkd"},
    "CWD": {"loss_cwd"},
    "LD": {"loss_ld", "loss_ld_vlr"},
    "PGD": {"loss_pgd_cls", "loss_pgd_reg"},
}


@pytest.mark.parametrize("name", METHODS)
def test_zero_when_student_equals_teacher(name):
    teacher = make_outputs(1)
    losses = build(name)(teacher, twin(teacher), make_targets())
    assert set(losses) == EXPECTED_KEYS[name]
    for k, v in losses.items():
        assert v.dim() == 0 and abs(v.item()) < 1e-5, (k, v.item())


@pytest.mark.parametrize("name", METHODS)
def test_positive_and_gradients_reach_only_the_student(name):
    teacher, student = make_outputs(1), make_outputs(2)
    distiller = build(name)
    losses = distiller(teacher, student, make_targets())
    assert set(losses) == EXPECTED_KEYS[name]
    for k, v in losses.items():
        assert torch.isfinite(v) and v.item() > 0, (k, v.item())
    sum(losses.values()).backward()
    assert all(t.grad is None for t in teacher_leaves(teacher))
    assert all(x.grad is not None and x.grad.abs().sum() > 0 for x in student_inputs(name, student))
    assert distiller.diagnostics and all(
        not v.requires_grad for v in distiller.diagnostics.values()
    )


@pytest.mark.parametrize("name", ["FITNET", "FGD", "PKD", "CWD", "PGD"])
def test_different_channels_go_through_the_adapter(name):
    teacher, student = make_outputs(1, channels=8), make_outputs(2, channels=6)
    distiller = build(name, teacher_channels=8, student_channels=6)
    adapters = [m for m in distiller.modules() if isinstance(m, nn.Conv2d) and m.in_channels == 6]
    assert adapters
    losses = distiller(teacher, student, make_targets())
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())
    assert all(a.weight.grad is not None and a.weight.grad.abs().sum() > 0 for a in adapters)
    assert all(t.grad is None for t in teacher_leaves(teacher))


@pytest.mark.parametrize("name", ["FITNET", "FGD", "PKD", "CWD", "PGD"])
def test_adapter_none_with_different_channels_is_an_error(name):
    with pytest.raises(ValueError, match="ADAPTER"):
        build(name, teacher_channels=8, student_channels=6, ADAPTER="none")


@pytest.mark.parametrize("name", METHODS)
@pytest.mark.parametrize("counts", [(2, 0), (0, 0)])
def test_empty_gt_images_give_finite_losses(name, counts):
    teacher, student = make_outputs(1), make_outputs(2)
    if counts == (0, 0):
        student.extras["pos_mask"] = torch.zeros_like(student.extras["pos_mask"])
    student.pos_thresholds = [t[:c] for t, c in zip(student.pos_thresholds, counts)]
    losses = build(name)(teacher, student, make_targets(counts))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()


@pytest.mark.parametrize("name", METHODS)
def test_loss_scale_multiplies_every_loss(name):
    teacher, student = make_outputs(1), make_outputs(2)
    distiller = build(name)
    full = distiller(teacher, student, make_targets())
    distiller.warmup_iters = 4  # iteration 0 of a 4-iteration warm-up: factor 1/4
    with EventStorage(0):
        assert distiller.loss_scale == 0.25
        scaled = distiller(teacher, student, make_targets())
    for k in full:
        assert torch.allclose(scaled[k], 0.25 * full[k], rtol=1e-5, atol=1e-8)


def test_registry_builds_every_method_from_cfg():
    cfg = make_cfg()
    cfg.MODEL.DISTILL.METHODS = METHODS
    built = build_distillers(cfg.MODEL.DISTILL, layout())
    classes = {"fitnet": FITNET, "fgd": FGD, "pkd": PKD, "cwd": CWD, "ld": LD, "pgd": PGD}
    assert {k: type(v) for k, v in built.items()} == classes
    assert LD.needs_box_distributions and not FGD.needs_box_distributions


def test_fgd_takes_its_level_count_from_the_layout():
    """No config guessing: one adapter and two context modules per level of the DistillLayout."""
    three = DistillLayout(8, 8, strides=(8, 16, 32))
    fgd = FGD(make_cfg().MODEL.DISTILL, three)
    assert len(fgd.student_context) == len(fgd.teacher_context) == len(fgd.adapters) == 3
    with pytest.raises(ValueError, match="built for 3 FPN levels"):
        fgd(make_outputs(1), make_outputs(2), make_targets())


def test_ld_without_distributions_is_a_clear_error():
    teacher, student = make_outputs(1, box_logits=False), make_outputs(2, box_logits=False)
    with pytest.raises(ValueError, match="LD does not apply"):
        build("LD")(teacher, student, make_targets())


def test_default_hyperparameters():
    d = make_cfg().MODEL.DISTILL
    fgd = (d.FGD.TEMPERATURE, d.FGD.ALPHA, d.FGD.BETA, d.FGD.GAMMA, d.FGD.LAMBDA)
    assert fgd == (0.5, 0.001, 0.0005, 0.0005, 0.000005)
    assert (d.PKD.LOSS_WEIGHT, d.CWD.TAU, d.CWD.LOSS_WEIGHT) == (10.0, 1.0, 10.0)
    assert (d.LD.TAU, d.LD.LOSS_WEIGHT, d.LD.VLR_WEIGHT) == (10.0, 0.25, 0.25)


def test_fitnet_is_the_mean_squared_error_over_all_locations():
    teacher, student = make_outputs(1), make_outputs(2)
    loss = build("FITNET")(teacher, student, make_targets())["loss_fitnet"]
    diff = torch.cat([(s - t).reshape(-1) for s, t in zip(student.features, teacher.features)])
    assert torch.allclose(loss, diff.pow(2).mean())


def test_pkd_ignores_per_channel_scale_and_shift():
    teacher = make_outputs(1)
    student = twin(teacher)
    scale = torch.rand(1, 8, 1, 1) + 0.5
    student.features = [(f * scale + 3.0).detach().requires_grad_() for f in teacher.features]
    assert build("PKD")(teacher, student, make_targets())["loss_pkd"].item() < 1e-5
    student.features = [(-f).detach().requires_grad_() for f in teacher.features]
    # anti-correlated maps: (1 - r) = 2 per level -> MSE / 2 ~ 2 * (M - 1) / M, weight 10, 2 levels
    assert build("PKD")(teacher, student, make_targets())["loss_pkd"].item() > 35


def test_cwd_matches_kl_div_and_ignores_per_channel_shift():
    teacher, student = make_outputs(1), make_outputs(2)
    loss = build("CWD", **{"CWD.TAU": 2.0})(teacher, student, make_targets())["loss_cwd"]
    expected = 0.0
    for t, s in zip(teacher.features, student.features):
        n, c = t.shape[:2]
        p_t = F.softmax(t.detach().reshape(n * c, -1) / 2.0, dim=1)
        log_p_s = F.log_softmax(s.reshape(n * c, -1) / 2.0, dim=1)
        expected = expected + F.kl_div(log_p_s, p_t, reduction="sum") * 4.0 / (n * c)
    assert torch.allclose(loss, 10.0 * expected, rtol=1e-5)
    shifted = twin(teacher)
    shifted.features = [(f + torch.randn(1, 8, 1, 1)).detach() for f in teacher.features]
    assert build("CWD")(teacher, shifted, make_targets())["loss_cwd"].item() < 1e-5


def test_fgd_masks_weigh_each_box_once_and_spread_background_evenly():
    targets = make_targets()
    fg, bg = box_masks(targets, 4, (16, 16), torch.device("cpu"))
    # image 1: one box of x 10..50, y 10..30 -> cells x 2..13, y 2..8 (inclusive), each 1/84
    assert torch.allclose(fg[1].sum(), torch.tensor(1.0))
    assert (fg[1] > 0).sum() == 12 * 7
    assert torch.allclose(bg.sum(dim=(1, 2)), torch.ones(2))
    assert ((fg > 0) & (bg > 0)).sum() == 0
    fg, bg = box_masks(make_targets((0, 0)), 4, (16, 16), torch.device("cpu"))
    assert fg.sum() == 0 and torch.allclose(bg, torch.full_like(bg, 1 / 256))


def test_fgd_relation_needs_matching_context_modules():
    """S == T zeroes the focal and attention terms always, the relation term only while the
    student and teacher context modules agree (true at init: both are the identity)."""
    teacher = make_outputs(1)
    fgd = build("FGD")
    with torch.no_grad():
        fgd.student_context[0].channel_add[-1].weight.normal_()
    losses = fgd(teacher, twin(teacher), make_targets())
    assert losses["loss_fgd_relation"].item() > 0
    for k in ("loss_fgd_fg", "loss_fgd_bg", "loss_fgd_mask"):
        assert abs(losses[k].item()) < 1e-6
    losses["loss_fgd_relation"].backward()
    assert fgd.student_context[0].conv_mask.weight.grad is not None


def test_fgd_focuses_the_foreground():
    """A student error inside a GT box counts in the fg term only, one outside in the bg term."""
    teacher = make_outputs(1)
    fg, _ = box_masks(make_targets(), STRIDES[0], SHAPES[0], torch.device("cpu"))
    fgd = build("FGD")

    def fg_bg(region):
        student = twin(teacher)
        delta = torch.zeros_like(teacher.features[0])
        delta[0, :, region[0], region[1]] = 0.5  # image 0 only
        student.features[0] = (teacher.features[0] + delta).detach()
        losses = fgd(teacher, student, make_targets())
        return losses["loss_fgd_fg"].item(), losses["loss_fgd_bg"].item()

    inside = (fg[0] > 0).nonzero()[0].tolist()
    outside = (fg[0] == 0).nonzero()[0].tolist()
    assert fg_bg(inside)[0] > 0 and fg_bg(inside)[1] == 0
    assert fg_bg(outside)[0] == 0 and fg_bg(outside)[1] > 0


def test_ld_main_region_matches_the_definition():
    teacher, student = make_outputs(1), make_outputs(2)
    student.pos_thresholds = None  # no VLR
    losses = build("LD")(teacher, student, make_targets())
    assert losses["loss_ld_vlr"].item() == 0
    s, t = student.flat("box_logits"), teacher.flat("box_logits")
    mask = student.extras["pos_mask"]
    score = student.flat("cls_logits").sigmoid().max(dim=-1).values[mask]
    ps = F.log_softmax(s[mask].reshape(-1, REG_MAX + 1) / 10, dim=1)
    pt = F.softmax(t[mask].reshape(-1, REG_MAX + 1) / 10, dim=1)
    kl = F.kl_div(ps, pt, reduction="none").mean(dim=1).reshape(-1, 4) * 100
    expected = 0.25 * (kl.sum(dim=1) * score).sum() / 4
    assert torch.allclose(losses["loss_ld"], expected, rtol=1e-5)


def test_ld_vlr_lies_outside_the_main_region_and_near_the_gts():
    teacher, student = make_outputs(1), make_outputs(2)
    ld = build("LD")
    ld(teacher, student, make_targets())
    assert ld.diagnostics["num_vlr"] > 0
    only_main = build("LD", **{"LD.VLR_WEIGHT": 0.0})(teacher, student, make_targets())
    assert only_main["loss_ld_vlr"].item() == 0
    # a student equal to the teacher outside the main region has no VLR loss
    student2 = twin(teacher)
    s_logits = [x.detach().clone() for x in student2.box_logits]
    main = student.extras["pos_mask"]
    sizes = [x.shape[1] for x in s_logits]
    flat = torch.cat(s_logits, dim=1)
    flat[main] = flat[main] + 1.0
    student2.box_logits = [x.requires_grad_() for x in flat.split(sizes, dim=1)]
    losses = ld(teacher, student2, make_targets())
    assert losses["loss_ld"].item() > 0 and losses["loss_ld_vlr"].item() < 1e-6


def test_ld_falls_back_to_teacher_iou_without_pos_mask():
    teacher, student = make_outputs(1), make_outputs(2, pos_mask=False)
    ld = build("LD", **{"LD.MAIN_IOU_THRESH": 0.3})
    losses = ld(teacher, student, make_targets())
    assert ld.diagnostics["num_main"] > 0 and losses["loss_ld"].item() > 0
    none = build("LD", **{"LD.MAIN_IOU_THRESH": 1.01})(teacher, student, make_targets())
    assert none["loss_ld"].item() == 0 and math.isfinite(none["loss_ld_vlr"].item())
    student.pos_thresholds = [t[:0] for t in student.pos_thresholds]
    empty = ld(teacher, student, make_targets((0, 0)))
    assert all(v.item() == 0 for v in empty.values())


@pytest.mark.parametrize(
    "name, key",
    [
        ("FITNET", "FITNET.LOSS_WEIGHT"),
        ("PKD", "PKD.LOSS_WEIGHT"),
        ("CWD", "CWD.LOSS_WEIGHT"),
        ("FGD", "FGD.ALPHA"),
        ("FGD", "FGD.LAMBDA"),
        ("LD", "LD.LOSS_WEIGHT"),
        ("LD", "LD.VLR_WEIGHT"),
        ("PGD", "PGD.ALPHA"),
        ("PGD", "PGD.GAMMA"),
        ("PGD", "PGD.DELTA"),
    ],
)
def test_negative_loss_weights_are_named_errors(name, key):
    pattern = re.escape(f"MODEL.DISTILL.{key} must be >= 0") + ".* got -1"
    with pytest.raises(ValueError, match=pattern):
        build(name, **{key: -1.0})
    build(name, **{key: 0.0})  # zero switches the term off and is allowed
