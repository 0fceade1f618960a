"""Every TID constant is live: on a batch of tid_shapes images (real GT sizes, the real GFL assigner's
per-GT thresholds, anchors and level layout) with predictions spread over all IoU and confidence
levels, changing one MODEL.DISTILL.TID key changes the key / weak / other areas. And small objects: a box with
a few percent IoU is never "well localized"."""
import dataclasses

import pytest
import torch

from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from conftest import quickstart_cfg
from tid_d2.distill.tid import TID
from tid_d2.structures import DistillLayout, batched_iou


def _spread_predictions(out, targets, noise: float, p_right: float, seed: int):
    """`out` with boxes and class logits replaced: at a location whose anchor centre lies in a GT,
    that GT jittered by `noise` x its size and a class right with probability `p_right`, confidence
    uniform in [0, 1]; elsewhere the anchor and a background confidence spread over [0, 0.5]."""
    g = torch.Generator().manual_seed(seed)
    anchors = torch.cat(out.anchors)  # [A, 4]
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    k = out.num_classes
    boxes, logits = [], []
    for t in targets:
        gt = t.gt_boxes.tensor
        inside = (centers[:, None, :] > gt[None, :, :2]).all(2) & (centers[:, None, :] < gt[None, :, 2:]).all(2)
        has = inside.any(1)
        idx = inside.float().argmax(1)
        g_box, size = gt[idx], (gt[idx, 2:] - gt[idx, :2]).repeat(1, 2)
        jitter = torch.randn(len(anchors), 4, generator=g) * noise * size
        box = torch.where(has[:, None], g_box + jitter, anchors)
        right = torch.rand(len(anchors), generator=g) < p_right
        wrong = (t.gt_classes[idx] + torch.randint(1, k, (len(anchors),), generator=g)) % k
        cls = torch.where(right, t.gt_classes[idx], wrong)
        conf = torch.where(has, torch.rand(len(anchors), generator=g), torch.rand(len(anchors), generator=g) ** 2 * 0.5)
        lg = torch.full((len(anchors), k), -9.0)
        lg[torch.arange(len(anchors)), cls] = torch.logit(conf.clamp(1e-4, 1 - 1e-4))
        boxes.append(box)
        logits.append(lg)
    sizes = [h * w for h, w in out.level_shapes]
    return dataclasses.replace(
        out,
        boxes=list(torch.stack(boxes).split(sizes, dim=1)),
        cls_logits=list(torch.stack(logits).split(sizes, dim=1)),
    )


@pytest.fixture(scope="module")
def spread_batch(tiny_shapes):
    """(cfg, teacher outputs, student outputs, targets) of 4 tiny val images plus one large GT that
    fits its anchors well (its assigner threshold is above 0.5, as for large COCO objects)."""
    torch.manual_seed(0)
    cfg = quickstart_cfg("GFL-student")
    model = build_model(cfg).eval()
    dicts = DatasetCatalog.get(tiny_shapes[1])[:4]
    batch = [DatasetMapper(cfg, is_train=True)(dict(d)) for d in dicts]
    inst = batch[0]["instances"]
    big = Instances(inst.image_size, gt_boxes=Boxes(torch.tensor([[32.0, 32.0, 96.0, 96.0]])),
                    gt_classes=torch.tensor([0]))
    batch[0]["instances"] = Instances.cat([inst, big])
    targets = model.gt_instances(batch)
    with torch.no_grad():
        out = model.dense_outputs(batch, targets)
    assert out.pos_thresholds is not None and float(out.pos_thresholds[0][-1]) > 0.5
    teacher = _spread_predictions(out, targets, noise=0.08, p_right=0.9, seed=1)
    student = _spread_predictions(out, targets, noise=0.25, p_right=0.6, seed=2)
    return teacher, student, targets


def _areas(teacher, student, targets, *opts):
    cfg = quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", "unused.pth", *opts)
    c = teacher.features[0].shape[1]
    s = TID(cfg.MODEL.DISTILL, DistillLayout(c, c)).compute_scores(teacher, student, targets)
    return s["key"], s["weak"], s["other"]


def test_default_areas_are_all_populated(spread_batch):
    key, weak, other = _areas(*spread_batch)
    assert key.sum() > 10 and weak.sum() > 10 and other.sum() > 10


@pytest.mark.parametrize(
    "key_name, value",
    [
        ("CLS_TAU", "0.6"),
        ("CLS_TAU_BG", "0.15"),
        ("KEY_THRESH", "4.0"),
        ("WEAK_THRESH", "1.0"),
        ("SCORE_LEVELS", "[2.0, 1.0, 0.4]"),
        ("THRESHOLD_MODE", "fixed"),
        ("POS_THRESH", "0.2"),
        ("NEG_THRESH", "0.2"),
        ("AREA_PRECEDENCE", "key"),
        ("TASKS", "cls"),
        ("TASKS", "reg"),
        ("LDAM", "False"),
    ],
)
def test_each_constant_changes_the_areas(spread_batch, key_name, value):
    base = _areas(*spread_batch)
    changed = _areas(*spread_batch, f"MODEL.DISTILL.TID.{key_name}", value)
    moved = sum(int((a != b).sum()) for a, b in zip(base, changed))
    assert moved > 0, f"MODEL.DISTILL.TID.{key_name}={value} changes no area: the key is dead"


@pytest.mark.parametrize("key_name, value", [("CLS_TAU", "0.6"), ("SCORE_LEVELS", "[2.0, 1.0, 0.4]")])
def test_confidence_and_levels_change_the_key_area_without_soft_weights(spread_batch, key_name, value):
    key, _, _ = _areas(*spread_batch)
    key2, _, _ = _areas(*spread_batch, f"MODEL.DISTILL.TID.{key_name}", value)
    assert (key != key2).sum() > 0


def test_pos_thresh_is_live_in_fixed_mode(spread_batch):
    fixed = ("MODEL.DISTILL.TID.THRESHOLD_MODE", "fixed")
    base = _areas(*spread_batch, *fixed)
    strict = _areas(*spread_batch, *fixed, "MODEL.DISTILL.TID.POS_THRESH", "0.8")
    assert sum(int((a != b).sum()) for a, b in zip(base, strict)) > 0


@pytest.mark.parametrize("mode", ["weak", "key"])
def test_single_task_modes_keep_a_weak_area(spread_batch, mode):
    for tasks in ("cls", "reg"):
        _, weak, _ = _areas(*spread_batch, "MODEL.DISTILL.TID.TASKS", tasks, "MODEL.DISTILL.TID.AREA_PRECEDENCE", mode)
        if mode == "weak":
            assert weak.sum() > 0, tasks
    _, weak_both, _ = _areas(*spread_batch)
    assert weak_both.sum() > 0


# ----- small objects ---------------------------------------------------------------------------------
SIDES = (8, 12, 16, 24, 32, 48, 64)


@pytest.fixture(scope="module")
def small_gt_batch(tiny_shapes):
    """One 320x320 image with a square GT of each side in SIDES (apart enough that a shifted box
    overlaps only its own GT), the real GFL assigner's thresholds, and per GT two teacher boxes:
    one shifted to IoU ~0.1 and one at IoU ~0.6."""
    torch.manual_seed(0)
    model = build_model(quickstart_cfg("GFL-student")).eval()
    corners, x, y = [], 10.0, 20.0
    for side in SIDES:
        if x + 2.2 * side > 310:
            x, y = 10.0, 150.0
        corners.append([x, y, x + side, y + side])
        x += 2.2 * side + 10
    gts = torch.tensor(corners)
    inst = Instances((320, 320), gt_boxes=Boxes(gts), gt_classes=torch.zeros(len(SIDES), dtype=torch.long))
    batch = [{"image": torch.zeros(3, 320, 320, dtype=torch.uint8), "instances": inst, "height": 320, "width": 320}]
    targets = model.gt_instances(batch)
    with torch.no_grad():
        out = model.dense_outputs(batch, targets)
    boxes = torch.cat(out.anchors).clone()[None]  # [1, A, 4]: anchors overlap little with the GTs
    logits = torch.full((1, boxes.shape[1], out.num_classes), -9.0)
    locations = {}
    for i, s in enumerate(SIDES):
        for target_iou, loc in ((0.1, 2 * i), (0.6, 2 * i + 1)):
            shift = s * (1 - target_iou) / (1 + target_iou)  # IoU of a box shifted along x by shift
            boxes[0, loc] = gts[i] + torch.tensor([shift, 0.0, shift, 0.0])
            logits[0, loc, 0] = 4.0  # right class, confident
            locations[(s, target_iou)] = loc
    sizes = [h * w for h, w in out.level_shapes]
    teacher = dataclasses.replace(
        out, boxes=list(boxes.split(sizes, dim=1)), cls_logits=list(logits.split(sizes, dim=1))
    )
    return teacher, targets, locations, gts


def test_assigner_thresholds_of_small_gts_are_tiny(small_gt_batch):
    """What the floor exists for: the ATSS per-GT threshold (from anchor IoUs) of an 8-24 px GT."""
    teacher, _, _, _ = small_gt_batch
    thr = teacher.pos_thresholds[0]
    assert (thr[:3] < 0.1).all(), thr


@pytest.mark.parametrize("mode", ["assigner", "fixed"])
def test_a_few_percent_iou_is_never_well_localized(small_gt_batch, mode):
    teacher, targets, locations, gts = small_gt_batch
    cfg = quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", "unused.pth", "MODEL.DISTILL.TID.THRESHOLD_MODE", mode)
    c = teacher.features[0].shape[1]
    s = TID(cfg.MODEL.DISTILL, DistillLayout(c, c)).compute_scores(teacher, teacher, targets)
    iou = batched_iou(teacher.flat("boxes"), gts[None])[0].max(dim=1).values
    hi = max(cfg.MODEL.DISTILL.TID.SCORE_LEVELS)
    for (side, target_iou), loc in locations.items():
        assert abs(float(iou[loc]) - target_iou) < 0.02, (side, target_iou, float(iou[loc]))
        well = float(s["score_r_t"][0, loc]) == hi
        assert well == (target_iou > 0.5), (mode, side, target_iou)
    # without the floor (the first reading) the 0.1-IoU boxes of GTs under 32 px count as well localized
    if mode == "assigner":
        raw = TID(quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", "unused.pth", "MODEL.DISTILL.TID.POS_THRESH", "0.0").MODEL.DISTILL,
                  DistillLayout(c, c)).compute_scores(teacher, teacher, targets)
        assert all(float(raw["score_r_t"][0, locations[(side, 0.1)]]) == hi for side in (8, 12, 16, 24))
