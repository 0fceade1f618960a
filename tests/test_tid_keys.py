"""Every MODEL.DISTILL.TID key changes TID's total loss at the defaults, on a real batch: the real
student, its real ATSS assigner (thresholds, positives), and a teacher whose predictions are made
good where the assigner matches a GT (its matched box, the right class, mostly confident, some boxes
half as well localized) with a few confident background errors; the student is as good as the teacher
at half of those matches (key area) and lags at the rest (weak area), so every area and level occurs."""
import copy

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from test_teacher_student import batch, tid_cfg
from tid_d2.distill.tid import TID
from tid_d2.modeling.teacher_student import check_compatible

#: each key's alternative to its default (VIS_PERIOD draws pictures: it is the one key with no loss)
ALTERNATIVES = {
    "TASKS": "reg",
    "THRESHOLD_MODE": "fixed",
    "POS_THRESH": 0.7,
    "NEG_THRESH": 0.2,
    "SCORE_LEVELS": [2.0, 1.2, 0.4],
    "CLS_TAU": 0.1,
    "CLS_TAU_BG": 0.001,
    "KEY_THRESH": 2.25,
    "WEAK_THRESH": 1.0,
    "AREA_PRECEDENCE": "key",
    "LDAM": False,
    "SOFT_WEIGHTS": True,
    "ALPHA": 1.0,
    "BETA": 1.0,
    "GAMMA": 0.25,
    "NORMALIZE": "area",
    "LOSS_WEIGHT": 1.0,
}
NON_LOSS_KEYS = {"VIS_PERIOD"}


@pytest.fixture(scope="module")
def real_batch(teachers, tiny_shapes):
    """(teacher outputs made good at the assigner's matches, student outputs, targets, models)."""
    cfg = tid_cfg(teachers, "TID-GFL", "GFL-teacher", "SOLVER.IMS_PER_BATCH", "4")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    data = batch(cfg, tiny_shapes[0], n=4)
    targets = model.student.gt_instances(data)
    # one large object, whose ATSS threshold (mean + std of its candidates' anchor IoUs) is above the
    # 0.5 floor, so that assigner and fixed thresholds differ somewhere
    big_box = torch.tensor([[0.0, 0.0, 128.0, 128.0]])  # ATSS threshold 0.555
    big = Instances(targets[0].image_size, gt_boxes=Boxes(big_box),
                    gt_classes=torch.tensor([1]))
    targets[0] = Instances.cat([targets[0], big])
    with torch.no_grad():
        student = model.student.dense_outputs(data, targets)
        teacher = model.teacher.dense_outputs(data, targets)
        anchors = [Boxes(a) for a in teacher.anchors]
        labels, matched, _ = model.teacher.label_anchors(anchors, targets)  # [N, A], [N, A, 4]
    g = torch.Generator().manual_seed(0)
    k = teacher.num_classes
    pos = (labels >= 0) & (labels < k)
    sizes = [b.shape[1] for b in teacher.boxes]
    boxes, logits = teacher.flat("boxes").clone(), torch.full_like(teacher.flat("cls_logits"), -6.0)
    size = (matched[..., 2:] - matched[..., :2]).repeat(1, 1, 2)
    draw = torch.rand(pos.shape, generator=g)[..., None]
    inward = torch.tensor([1, 1, -1, -1])
    # IoU 1, 0.64 (over thr_pos 0.5, under 0.7), 0.49 (between thr_neg 0.4 and thr_pos) or 0.36 (between 0.2 and 0.4)
    levels = torch.where(draw < 0.2, 0.1, torch.where(draw < 0.45, 0.15, torch.where(draw < 0.6, 0.2, 0.0)))
    # at the large object: IoU 0.53, between the 0.5 floor and its ATSS threshold, and an unsure class
    on_big = (pos & (matched == big_box).all(dim=-1))[..., None]
    levels = torch.where(on_big, 0.136, levels)
    good = matched + size * levels * inward
    boxes = torch.where(pos[..., None], good, boxes)
    conf = torch.where(torch.rand(pos.shape, generator=g) < 0.3, 0.2, 0.9)  # some unsure
    conf = torch.where(on_big[..., 0], 0.2, conf)
    cls_index = labels.clamp(0, k - 1)
    logits.scatter_(2, cls_index[..., None], torch.where(pos, torch.logit(conf), torch.tensor(-6.0))[..., None])
    noisy_bg = (~pos) & (torch.rand(pos.shape, generator=g) < 0.05)  # a few confident background errors
    logits[..., 0] = torch.where(noisy_bg, torch.tensor(2.0), logits[..., 0])
    teacher = copy.copy(teacher)
    teacher.boxes, teacher.cls_logits = list(boxes.split(sizes, 1)), list(logits.split(sizes, 1))
    learned = pos & ((torch.rand(pos.shape, generator=g) < 0.5) | on_big[..., 0])  # where the student matches it
    student = copy.copy(student)
    s_boxes = torch.where(learned[..., None], boxes, student.flat("boxes"))
    s_logits = torch.where(learned[..., None], logits, student.flat("cls_logits"))
    false_positive = (~pos) & (torch.rand(pos.shape, generator=g) < 0.05)  # the student's confident errors
    s_logits[..., 1] = torch.where(false_positive, torch.tensor(2.0), s_logits[..., 1])
    student.boxes, student.cls_logits = list(s_boxes.split(sizes, 1)), list(s_logits.split(sizes, 1))
    return teacher, student, targets, check_compatible(model.teacher, model.student)


def total_loss(real_batch, **override):
    teacher, student, targets, layout = real_batch
    torch.manual_seed(5)  # the same adapter for every variant
    tid = TID.from_defaults(layout, **override)
    with torch.no_grad():
        return float(sum(tid(teacher, student, targets).values())), tid


def test_the_scene_has_every_area(real_batch):
    _, tid = total_loss(real_batch)
    teacher, student, targets, _ = real_batch
    s = tid.compute_scores(teacher, student, targets)
    assert s["key"].any() and s["weak"].any() and s["other"].any()
    assert s["score_r_t"].unique().tolist() == pytest.approx([0.4, 1.5, 2.0])
    assert max(t.max() for t in teacher.pos_thresholds if len(t)) > 0.5  # the large object's


def test_every_key_is_listed():
    assert set(ALTERNATIVES) | NON_LOSS_KEYS == set(TID.config)


#: the known gap: at NORMALIZE "all" with ALPHA == BETA, K and W carry the same weight per location, so
#: moving a location between them (all AREA_PRECEDENCE does) cannot change the loss; the decoupled reading
#: (NORMALIZE "area") or ALPHA != BETA make it count (test below). Strict: it fails once the defaults change.
SAME_WEIGHT_GAP = pytest.mark.xfail(strict=True, reason="K and W weigh the same at NORMALIZE all, ALPHA == BETA")


@pytest.mark.parametrize(
    "key", [pytest.param(k, marks=SAME_WEIGHT_GAP) if k == "AREA_PRECEDENCE" else k for k in sorted(ALTERNATIVES)]
)
def test_every_key_changes_the_loss_at_the_defaults(key, real_batch):
    default, _ = total_loss(real_batch)
    changed, _ = total_loss(real_batch, **{key.lower(): ALTERNATIVES[key]})
    assert changed != pytest.approx(default, rel=1e-6), f"MODEL.DISTILL.TID.{key} changes nothing at the defaults"


@pytest.mark.parametrize("reading", [dict(normalize="area"), dict(beta=3.0)])
def test_area_precedence_counts_where_key_and_weak_weigh_differently(reading, real_batch):
    weak_first, _ = total_loss(real_batch, **reading)
    key_first, _ = total_loss(real_batch, area_precedence="key", **reading)
    assert key_first != pytest.approx(weak_first, rel=1e-6)
