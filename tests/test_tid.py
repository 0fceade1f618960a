"""TID distiller: DIEM branches, LDAM areas, SFDM values, ablation switches, gradients, errors."""

import math

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils.events import EventStorage

from tid_d2.config import add_tid_config
from tid_d2.distill.adapters import build_adapter
from tid_d2.distill.base import build_distillers, distillers_builder
from tid_d2.distill.tid import TID, diem_scores, ldam_areas, sfdm_loss
from tid_d2.structures import DenseOutputs, DistillLayout, batched_iou

LAYOUT8 = DistillLayout(teacher_channels=8, student_channels=8)

HI, MID, LO = 2.0, 1.5, 0.4
LEVELS = (HI, MID, LO)
TAU, TAU_BG = 0.3, 0.05


def logits_for(cls: int, p: float, k: int = 3, rest: float = 0.01) -> list:
    """Logits whose sigmoid is p for class `cls` and `rest` for the others."""
    out = [math.log(rest / (1 - rest))] * k
    if cls >= 0:
        out[cls] = math.log(p / (1 - p))
    return out


# ---------------------------------------------------------------------------------------------
# DIEM on hand-made boxes: GT0 = [0,0,10,10] class 0 (assigner thr 0.7), GT1 = [20,20,30,30]
# class 1 (assigner thr 0.3). Fixed mode: 0.5 / 0.4. thr_neg = 0.4.
# Each row: box, logits, (Score_r, Score_c) fixed, (Score_r, Score_c) assigner, k*.
FAR = [40.0, 40.0, 50.0, 50.0]
DIEM_CASES = [
    # IoU 1 with GT0, right class confident
    ([0, 0, 10, 10], logits_for(0, 0.9), (HI, HI), (HI, HI), 0),
    # IoU 0.45: between thresholds; right class unconfident
    ([0, 0, 10, 4.5], logits_for(0, 0.2), (MID, MID), (MID, MID), 0),
    # IoU 0.5: fixed >= thr_pos; GT0's own threshold 0.7 -> between; wrong class
    ([0, 0, 10, 5], logits_for(2, 0.8), (HI, LO), (MID, LO), 0),
    # IoU 0.3 <= thr_neg: background, clean
    ([0, 0, 10, 3], logits_for(-1, 0.0), (LO, HI), (LO, HI), 0),
    # IoU exactly 0.4 == thr_neg: background, confident
    ([0, 0, 10, 4], logits_for(0, 0.9), (LO, LO), (LO, LO), 0),
    # IoU 0.35 with GT1: fixed -> background (confident: lo); GT1's threshold 0.3 -> positive,
    # and thr_neg is clamped to 0.3, so the location sees an object: right class confident
    ([20, 20, 30, 23.5], logits_for(1, 0.9), (LO, LO), (HI, HI), 1),
    # IoU 0.5 with GT1: positive in both modes; right class unconfident
    ([20, 20, 30, 25], logits_for(1, 0.1), (HI, MID), (HI, MID), 1),
    # no overlap: background, middling confidence
    (FAR, logits_for(2, 0.1), (LO, MID), (LO, MID), None),
]


def _diem_inputs():
    boxes = torch.tensor([c[0] for c in DIEM_CASES], dtype=torch.float32)
    logits = torch.tensor([c[1] for c in DIEM_CASES], dtype=torch.float32)
    # image 0 has the two GTs, image 1 (same predictions) has none
    boxes, logits = torch.stack([boxes, boxes]), torch.stack([logits, logits])
    gt_boxes = torch.tensor([[[0, 0, 10, 10], [20, 20, 30, 30]], [[0, 0, 0, 0], [0, 0, 0, 0]]])
    gt_classes = torch.tensor([[0, 1], [-1, -1]])
    gt_valid = torch.tensor([[True, True], [False, False]])
    return boxes, logits, gt_boxes.float(), gt_classes, gt_valid


@pytest.mark.parametrize("mode", ["fixed", "assigner"])
def test_diem_branches(mode):
    boxes, logits, gt_boxes, gt_classes, gt_valid = _diem_inputs()
    if mode == "fixed":
        thr_pos = torch.full((2, 2), 0.5)
    else:
        thr_pos = torch.tensor([[0.7, 0.3], [1.0, 1.0]])
    score, score_r, score_c, iou_max, k_star = diem_scores(
        boxes, logits, gt_boxes, gt_classes, gt_valid, thr_pos, 0.4, LEVELS, TAU, TAU_BG
    )
    col = 2 if mode == "fixed" else 3
    want_r = torch.tensor([c[col][0] for c in DIEM_CASES])
    want_c = torch.tensor([c[col][1] for c in DIEM_CASES])
    assert torch.equal(score_r[0], want_r)
    assert torch.equal(score_c[0], want_c)
    assert torch.allclose(score[0], want_r * want_c)
    assert torch.allclose(iou_max[0], torch.tensor([1.0, 0.45, 0.5, 0.3, 0.4, 0.35, 0.5, 0.0]))
    assert k_star[0, :7].tolist() == [c[4] for c in DIEM_CASES[:7]]
    # image without GT: IoU 0, k* = -1, everything background (Score_r = lo)
    assert torch.equal(iou_max[1], torch.zeros(8))
    assert torch.equal(k_star[1], torch.full((8,), -1))
    assert torch.equal(score_r[1], torch.full((8,), LO))
    conf = logits[1].max(dim=1).values.sigmoid()
    bg = torch.where(conf < TAU_BG, HI, torch.where(conf < TAU, MID, LO))
    assert torch.equal(score_c[1], bg)


def test_diem_picks_threshold_of_matched_gt():
    boxes, logits, gt_boxes, gt_classes, gt_valid = _diem_inputs()
    # swap the per-GT thresholds: now GT0's is 0.3 and GT1's is 0.7
    thr_pos = torch.tensor([[0.3, 0.7], [1.0, 1.0]])
    _, score_r, _, _, _ = diem_scores(
        boxes, logits, gt_boxes, gt_classes, gt_valid, thr_pos, 0.4, LEVELS, TAU, TAU_BG
    )
    # IoU 0.45 and 0.5 with GT0 -> positive; IoU 0.35 / 0.5 with GT1 -> lo / mid
    assert torch.equal(score_r[0, [1, 2, 5, 6]], torch.tensor([HI, HI, LO, MID]))


def test_diem_tasks_scaling_and_no_gt_batch():
    boxes, logits, gt_boxes, gt_classes, gt_valid = _diem_inputs()
    thr_pos = torch.full((2, 2), 0.5)
    args = (boxes, logits, gt_boxes, gt_classes, gt_valid, thr_pos, 0.4, LEVELS, TAU, TAU_BG)
    both, r, c, _, _ = diem_scores(*args, tasks="both")
    cls_only = diem_scores(*args, tasks="cls")[0]
    reg_only = diem_scores(*args, tasks="reg")[0]
    assert torch.allclose(both, r * c)
    # the dropped regression grading keeps the object / background split: background is lo x Score_c
    assert torch.allclose(cls_only, torch.where(r > LO, HI, LO) * c)
    clean_background = (r == LO) & (c == HI)
    assert clean_background.any() and (cls_only[clean_background] < 3.0).all()  # never key (tau_K 3)
    assert torch.allclose(reg_only, HI * r)
    with pytest.raises(ValueError, match="tasks must be one of"):
        diem_scores(*args, tasks="box")
    # a batch without any GT at all
    empty = diem_scores(
        boxes,
        logits,
        torch.zeros(2, 0, 4),
        torch.zeros(2, 0, dtype=torch.long),
        torch.zeros(2, 0, dtype=torch.bool),
        torch.zeros(2, 0),
        0.4,
        LEVELS,
        TAU,
        TAU_BG,
    )
    assert torch.equal(empty[3], torch.zeros(2, 8))
    assert torch.equal(empty[1], torch.full((2, 8), LO))


def test_batched_iou_matches_pairwise_iou():
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 30, 2, generator=g) * 50
    boxes = torch.cat([xy, xy + torch.rand(2, 30, 2, generator=g) * 30], dim=2)
    gxy = torch.rand(2, 5, 2, generator=g) * 50
    gts = torch.cat([gxy, gxy + torch.rand(2, 5, 2, generator=g) * 30 + 1], dim=2)
    iou = batched_iou(boxes, gts)
    for i in range(2):
        assert torch.allclose(iou[i], pairwise_iou(Boxes(boxes[i]), Boxes(gts[i])), atol=1e-6)


# ---------------------------------------------------------------------------------------------
def test_ldam_areas():
    score_t = torch.tensor([[4.0, 3.0, 1.5 * 1.5, 0.8, 0.8, 0.16, 4.0]])
    score_s = torch.tensor([[0.16, 4.0, 0.16, 0.16, 0.6, 0.16, 4.0]])
    key, weak, other = ldam_areas(score_t, score_s, 2.25, 0.4, precedence="key")
    assert key[0].tolist() == [True, True, True, False, False, False, True]
    assert weak[0].tolist() == [False, False, False, True, False, False, False]
    assert other[0].tolist() == [False, False, False, False, True, True, False]
    assert torch.equal(key.int() + weak.int() + other.int(), torch.ones_like(key, dtype=torch.int))
    key2, weak2, other2 = ldam_areas(score_t, score_s, 2.25, 0.4, ldam=False, precedence="key")
    assert torch.equal(key2, key) and not weak2.any()
    assert torch.equal(other2, ~key)


def test_ldam_weak_precedence_puts_teacher_good_student_bad_in_weak():
    """The case LDAM exists for (teacher good, student behind) is weak; K is where the student
    already matches a good teacher; LDAM off gives the key test alone."""
    score_t = torch.tensor([[4.0, 4.0, 3.0, 3.0, 2.25, 0.8, 0.6]])
    score_s = torch.tensor([[4.0, 0.16, 3.0, 2.25, 0.16, 0.16, 0.16]])
    key, weak, other = ldam_areas(score_t, score_s, 3.0, 0.5, precedence="weak")
    assert key[0].tolist() == [True, False, True, False, False, False, False]
    assert weak[0].tolist() == [False, True, False, True, True, True, False]  # 0.6-0.16 < 0.5
    assert torch.equal(key.int() + weak.int() + other.int(), torch.ones_like(key, dtype=torch.int))
    key_first, weak_first, _ = ldam_areas(score_t, score_s, 3.0, 0.5, precedence="key")
    assert key_first[0].tolist() == [True, True, True, True, False, False, False]
    assert weak_first[0].tolist() == [False, False, False, False, True, True, False]
    key_off, weak_off, _ = ldam_areas(score_t, score_s, 3.0, 0.5, ldam=False)
    assert torch.equal(key_off, score_t >= 3.0) and not weak_off.any()
    with pytest.raises(ValueError, match="precedence must be one of"):
        ldam_areas(score_t, score_s, 3.0, 0.5, precedence="both")


@pytest.mark.parametrize("precedence", ["weak", "key"])
def test_ldam_areas_random_partition(precedence):
    g = torch.Generator().manual_seed(1)
    vals = torch.tensor([4.0, 3.0, 2.25, 0.8, 0.6, 0.16])
    score_t = vals[torch.randint(0, 6, (3, 50), generator=g)]
    score_s = vals[torch.randint(0, 6, (3, 50), generator=g)]
    key, weak, other = ldam_areas(score_t, score_s, 2.25, 0.4, precedence=precedence)
    total = key.int() + weak.int() + other.int()
    assert torch.equal(total, torch.ones_like(total))
    weak_test = score_t - score_s >= 0.4 - 1e-6
    if precedence == "key":
        assert torch.equal(key, score_t >= 2.25)
        assert torch.equal(weak, weak_test & (score_t < 2.25))
    else:
        assert torch.equal(weak, weak_test)
        assert torch.equal(key, (score_t >= 2.25) & ~weak_test)


# ---------------------------------------------------------------------------------------------
def _sfdm_feats():
    ft = torch.zeros(1, 2, 1, 3)
    fs = torch.tensor([[[[1.0, 2.0, 0.0]], [[1.0, 0.0, 3.0]]]], requires_grad=True)
    return ft, fs  # squared distances per location: 2, 4, 9 (C = 2)


def test_sfdm_hand_values_and_empty_area():
    ft, fs = _sfdm_feats()
    key = torch.tensor([[True, False, False]])
    weak = torch.tensor([[False, True, True]])
    other = torch.zeros(1, 3, dtype=torch.bool)
    l_k, l_w, l_o = sfdm_loss(ft, fs, key, weak, other)
    assert l_k.item() == pytest.approx(1.0)
    assert l_w.item() == pytest.approx(13 / 4)
    assert l_o.item() == 0.0 and not torch.isnan(l_o)
    l_o.backward(retain_graph=True)  # the empty area keeps the graph connected
    assert torch.equal(fs.grad, torch.zeros_like(fs))
    (l_k + l_w).backward()
    assert torch.isfinite(fs.grad).all() and fs.grad.abs().sum() > 0


def test_sfdm_soft_weights():
    ft, fs = _sfdm_feats()
    key = torch.tensor([[True, False, False]])
    weak = torch.tensor([[False, True, True]])
    other = torch.zeros(1, 3, dtype=torch.bool)
    # weights 1 and 3 inside W: (4 * 1 + 9 * 3) / (2 * 4)
    l_k, l_w, _ = sfdm_loss(
        ft, fs, key, weak, other, torch.full((1, 3), 4.0), torch.tensor([[9.0, 1.0, 3.0]])
    )
    assert l_w.item() == pytest.approx(31 / 8)
    assert l_k.item() == pytest.approx(1.0)  # uniform weights: the plain mean
    uniform = sfdm_loss(ft, fs, key, weak, other, None, torch.full((1, 3), 0.7))[1]
    assert uniform.item() == pytest.approx(13 / 4)


def test_sfdm_multi_level_order():
    ft = [torch.zeros(1, 2, 2, 2), torch.zeros(1, 2, 1, 1)]
    fs = [torch.zeros(1, 2, 2, 2), torch.full((1, 2, 1, 1), 3.0)]
    fs[0][0, :, 1, 0] = 1.0  # level 0, row 1, col 0 -> flat index 2
    key = torch.zeros(1, 5, dtype=torch.bool)
    key[0, 2] = True
    weak = torch.zeros(1, 5, dtype=torch.bool)
    weak[0, 4] = True
    other = ~(key | weak)
    l_k, l_w, l_o = sfdm_loss(ft, fs, key, weak, other)
    assert (l_k.item(), l_w.item(), l_o.item()) == pytest.approx((1.0, 9.0, 0.0))
    with pytest.raises(ValueError, match="area masks"):
        sfdm_loss(ft, fs, key[:, :4], weak[:, :4], other[:, :4])


# ---------------------------------------------------------------------------------------------
# A hand-built batch: 2 images of 32x32, levels 4x4 (stride 8) and 2x2 (stride 16), 3 classes.
SHAPES = [(4, 4), (2, 2)]
STRIDES = [8, 16]
A = 20
BAD_BOX = [100.0, 100.0, 101.0, 101.0]
GT0, GT1, GT2 = [0.0, 0.0, 16.0, 16.0], [16.0, 16.0, 32.0, 32.0], [0.0, 16.0, 16.0, 32.0]


def make_targets(with_gt=True):
    t0, t1 = Instances((32, 32)), Instances((32, 32))
    if with_gt:
        t0.gt_boxes, t0.gt_classes = Boxes(torch.tensor([GT0, GT1])), torch.tensor([0, 1])
        t1.gt_boxes, t1.gt_classes = Boxes(torch.tensor([GT2])), torch.tensor([2])
    else:
        for t in (t0, t1):
            t.gt_boxes, t.gt_classes = Boxes(torch.zeros(0, 4)), torch.zeros(0, dtype=torch.long)
    return [t0, t1]


def _split(x, shapes):
    return [t.clone() for t in x.split([h * w for h, w in shapes], dim=1)]


def make_outputs(
    boxes,
    logits,
    channels=8,
    seed=0,
    pos_thresholds="default",
    shapes=SHAPES,
    strides=STRIDES,
    feats=None,
):
    g = torch.Generator().manual_seed(seed)
    if feats is None:
        feats = [torch.randn(2, channels, h, w, generator=g) for h, w in shapes]
    anchors = [torch.zeros(h * w, 4) for h, w in shapes]
    if pos_thresholds == "default":
        pos_thresholds = [torch.tensor([0.6, 0.3]), torch.tensor([0.6])]
    return DenseOutputs(
        features=feats,
        cls_logits=_split(logits, shapes),
        boxes=_split(boxes, shapes),
        anchors=anchors,
        strides=list(strides),
        image_sizes=[(32, 32), (32, 32)],
        pos_thresholds=pos_thresholds,
    )


def scene():
    """
    Flat predictions [2, A, 4] / [2, A, 3] of teacher and student. Defaults: a box touching no GT
    and clean background (Score 0.4 * 2 = 0.8). Image 0:
      0  teacher and student: GT0, class 0 confident                  -> 4 / 4     key
      5  teacher: GT0, class 0 unconfident; student default           -> 3 / 0.8   key
      10 teacher: IoU 0.35 with GT1 (its threshold 0.3), confident    -> 4 / 0.8   key (assigner)
      16 teacher: GT0 but wrong class; student: confident background  -> 0.8 / 0.16 weak
      19 teacher: GT1, class 1 confident; student: confident bg       -> 4 / 0.16  key
      3  teacher default; student: confident background               -> 0.8 / 0.16 weak
    Image 1: location 8 both models GT2, class 2 confident            -> key
    """
    clean, fp = logits_for(-1, 0.0, rest=0.0025), logits_for(0, 0.5)
    tb, tl = torch.tensor(BAD_BOX).repeat(2, A, 1), torch.tensor(clean).repeat(2, A, 1)
    sb, sl = tb.clone(), tl.clone()
    for b, l in ((tb, tl), (sb, sl)):
        b[0, 0], l[0, 0] = torch.tensor(GT0), torch.tensor(logits_for(0, 0.95))
        b[1, 8], l[1, 8] = torch.tensor(GT2), torch.tensor(logits_for(2, 0.95))
    tb[0, 5], tl[0, 5] = torch.tensor(GT0), torch.tensor(logits_for(0, 0.2))
    tb[0, 10], tl[0, 10] = torch.tensor([16.0, 16.0, 32.0, 21.6]), torch.tensor(logits_for(1, 0.95))
    tb[0, 16], tl[0, 16] = torch.tensor(GT0), torch.tensor(logits_for(2, 0.95))
    sl[0, 16] = torch.tensor(fp)
    tb[0, 19], tl[0, 19] = torch.tensor(GT1), torch.tensor(logits_for(1, 0.95))
    sl[0, 19] = torch.tensor(fp)
    sl[0, 3] = torch.tensor(fp)
    return tb, tl, sb, sl


def make_pair(t_channels=8, s_channels=8, **kw):
    tb, tl, sb, sl = scene()
    return (
        make_outputs(tb, tl, channels=t_channels, seed=0, **kw),
        make_outputs(sb, sl, channels=s_channels, seed=1, **kw),
    )


def flat_index(mask_levels):
    """Flat indices of True entries of image 0, from {level: [N, H, W]} maps."""
    flat = torch.cat([m[0].flatten() for m in mask_levels], dim=0)
    return flat.nonzero().flatten().tolist()


#: the first LDAM reading, which the hand-made scene's expected areas below are written for
V1_AREAS = dict(area_precedence="key", key_thresh=2.25, weak_thresh=0.4, pos_thresh=0.0)


def build(layout=LAYOUT8, **kw):
    args = dict(normalize="area", loss_weight=1.0, **V1_AREAS)
    args.update(kw)
    return TID.from_defaults(layout, **args)


def test_scene_areas_at_the_defaults():
    """The same scene under the default LDAM (weak first, tau_K = hi x mid, tau_W = 0.5, thr_pos
    floor 0.5): teacher-good locations where the student lags (5, 19) are weak, not key; location
    10 (IoU 0.35 above its assigner threshold 0.3) is not well localized under the floor."""
    teacher, student = make_pair()
    tid = TID.from_defaults(LAYOUT8)
    areas = tid.areas(teacher, student, make_targets())
    p3, p4 = areas["p3"], areas["p4"]
    assert flat_index([p3["key"], p4["key"]]) == [0]
    assert flat_index([p3["weak"], p4["weak"]]) == [3, 5, 16, 19]
    assert p3["key"][1].flatten().nonzero().flatten().tolist() == [8]
    no_floor = TID.from_defaults(LAYOUT8, pos_thresh=0.0)
    a = no_floor.areas(teacher, student, make_targets())
    assert flat_index([a["p3"]["weak"], a["p4"]["weak"]]) == [3, 5, 10, 16, 19]


def test_scene_areas_and_diagnostics():
    teacher, student = make_pair()
    tid = build()
    areas = tid.areas(teacher, student, make_targets())
    assert set(areas) == {"p3", "p4"}
    assert areas["p3"]["key"].shape == (2, 4, 4) and areas["p4"]["score_t"].shape == (2, 2, 2)
    p3, p4 = areas["p3"], areas["p4"]
    assert flat_index([p3["key"], p4["key"]]) == [0, 5, 10, 19]
    assert flat_index([p3["weak"], p4["weak"]]) == [3, 16]
    assert p3["key"][1].flatten().nonzero().flatten().tolist() == [8]
    assert p3["score_t"][0, 1, 1].item() == pytest.approx(3.0)
    assert p4["score_s"][0, 1, 1].item() == pytest.approx(LO * LO)
    tid(teacher, student, make_targets())
    d = tid.diagnostics
    names = {
        f"tid/{p}/{s}"
        for p in ("p3", "p4")
        for s in ("frac_key", "frac_weak", "frac_other", "imp_teacher", "imp_student")
    }
    assert set(d) == names | {"tid/mean_key", "tid/mean_weak", "tid/mean_other"}
    assert d["tid/p3/frac_key"].item() == pytest.approx(4 / 32)
    assert d["tid/p4/frac_weak"].item() == pytest.approx(1 / 8)
    for p in ("p3", "p4"):
        total = sum(d[f"tid/{p}/{s}"].item() for s in ("frac_key", "frac_weak", "frac_other"))
        assert total == pytest.approx(1.0)
        assert d[f"tid/{p}/imp_teacher"].item() == pytest.approx(areas[p]["score_t"].mean().item())
        assert not d[f"tid/{p}/imp_student"].requires_grad


def _manual_losses(teacher, student, areas, adapter=lambda x: x, soft=False):
    """Reference SFDM from the maps of `areas`, level by level with explicit sums."""
    num = {"key": 0.0, "weak": 0.0, "other": 0.0}
    den = {"key": 0.0, "weak": 0.0, "other": 0.0}
    for lvl, ft, fs in zip(("p3", "p4"), teacher.features, student.features):
        dist = (ft - adapter(fs)).pow(2).sum(dim=1)
        for name in num:
            w = areas[lvl][name].float()
            if soft and name == "key":
                w = w * areas[lvl]["score_t"]
            if soft and name == "weak":
                w = w * areas[lvl]["delta"]
            num[name] = num[name] + (dist * w).sum()
            den[name] += w.sum().item() * ft.shape[1]
    return {n: (num[n] / den[n]).item() if den[n] else 0.0 for n in num}


@pytest.mark.parametrize("soft", [False, True])
def test_forward_matches_reference(soft):
    teacher, student = make_pair()
    tid = build(soft_weights=soft, alpha=1.0, beta=1.0, gamma=1.0)
    losses = tid(teacher, student, make_targets())
    assert set(losses) == {"loss_tid_key", "loss_tid_weak", "loss_tid_other"}
    ref = _manual_losses(teacher, student, tid.areas(teacher, student, make_targets()), soft=soft)
    for name in ("key", "weak", "other"):
        assert losses[f"loss_tid_{name}"].item() == pytest.approx(ref[name], rel=1e-5)


def test_normalize_all_sums_to_fitnet_mse_and_keeps_area_ratios():
    teacher, student = make_pair()
    targets = make_targets()
    per_area = build(alpha=1.0, beta=1.0, gamma=1.0)(teacher, student, targets)
    per_all = build(alpha=1.0, beta=1.0, gamma=1.0, normalize="all")(teacher, student, targets)
    mse = torch.cat(
        [(ft - fs).pow(2).flatten(2) for ft, fs in zip(teacher.features, student.features)], dim=2
    ).mean()
    assert sum(v.item() for v in per_all.values()) == pytest.approx(mse.item(), rel=1e-5)
    areas = build().areas(teacher, student, targets)
    total = sum(a["key"].numel() for a in areas.values())
    for name in ("key", "weak", "other"):
        count = sum(a[name].sum().item() for a in areas.values())
        expected = per_area[f"loss_tid_{name}"].item() * count / total
        assert per_all[f"loss_tid_{name}"].item() == pytest.approx(expected, rel=1e-5)
    for soft in (False, True):  # both readings log the "area" reading's per-area means, exactly
        logged = []
        for normalize in ("area", "all"):
            tid = build(normalize=normalize, soft_weights=soft)
            tid(teacher, student, targets)
            logged.append([tid.diagnostics[f"tid/mean_{a}"].item() for a in ("key", "weak", "other")])
        assert logged[0] == pytest.approx(logged[1], rel=1e-5)
        assert logged[0][0] == pytest.approx(per_area["loss_tid_key"].item(), rel=1e-5) or soft
    with pytest.raises(ValueError, match="NORMALIZE"):
        build(normalize="mean")


def test_soft_weights_change_key_and_weak_losses():
    teacher, student = make_pair()
    hard = build()(teacher, student, make_targets())
    soft = build(soft_weights=True)(teacher, student, make_targets())
    # K holds Score^T 4 and 3, W holds delta 0.64 only: soft weights re-weight K but not W or O
    assert soft["loss_tid_key"].item() != pytest.approx(hard["loss_tid_key"].item())
    assert soft["loss_tid_weak"].item() == pytest.approx(hard["loss_tid_weak"].item())
    assert soft["loss_tid_other"].item() == pytest.approx(hard["loss_tid_other"].item())


def test_ablation_switches_change_areas():
    targets = make_targets()
    teacher, student = make_pair()

    def keys(**kw):
        a = build(**kw).areas(teacher, student, targets)
        return flat_index([a["p3"]["key"], a["p4"]["key"]]), flat_index(
            [a["p3"]["weak"], a["p4"]["weak"]]
        )

    assert keys() == ([0, 5, 10, 19], [3, 16])
    # fixed thresholds: IoU 0.35 at location 10 is background (confident: lo * lo)
    assert keys(threshold_mode="fixed", pos_thresh=0.5) == ([0, 5, 19], [3, 16])
    # reg-only: teacher's wrong-class box at 16 counts as well done (hi * hi)
    assert keys(tasks="reg")[0] == [0, 5, 10, 16, 19]
    # cls-only: clean background stays out of K (lo * hi); the object locations with the right class
    # are key, as in "both" here (this scene grades each object location's box hi or lo, never mid)
    assert keys(tasks="cls")[0] == [0, 5, 10, 19]
    # LDAM off: no weak area
    assert keys(ldam=False) == ([0, 5, 10, 19], [])


def test_ablation_switches_change_losses():
    targets = make_targets()
    teacher, student = make_pair()
    w = dict(alpha=1.0, beta=1.0, gamma=0.1)  # the factors below are relative to these
    base = build(**w)(teacher, student, targets)
    assert all(v.item() > 0 for v in base.values())

    no_ldam = build(ldam=False, **w)(teacher, student, targets)
    assert no_ldam["loss_tid_weak"].item() == 0.0
    assert no_ldam["loss_tid_key"].item() == pytest.approx(base["loss_tid_key"].item())
    assert no_ldam["loss_tid_other"].item() != pytest.approx(base["loss_tid_other"].item())

    scaled = build(alpha=2.0, beta=3.0, gamma=0.5, loss_weight=10.0)(teacher, student, targets)
    for name, f in (("key", 20.0), ("weak", 30.0), ("other", 50.0)):
        assert scaled[f"loss_tid_{name}"].item() == pytest.approx(
            f * base[f"loss_tid_{name}"].item(), rel=1e-5
        )
    tid = build(**w)
    tid.warmup_iters = 4  # iteration 0 of a 4-iteration warm-up: factor 1/4
    with EventStorage(0):
        assert tid.loss_scale == 0.25
        warm = tid(teacher, student, targets)
    for name in base:
        assert warm[name].item() == pytest.approx(0.25 * base[name].item(), rel=1e-5)
    reg_only = build(tasks="reg", **w)(teacher, student, targets)
    assert reg_only["loss_tid_key"].item() != pytest.approx(base["loss_tid_key"].item())
    fixed = build(threshold_mode="fixed", pos_thresh=0.5, **w)(teacher, student, targets)
    assert fixed["loss_tid_key"].item() != pytest.approx(base["loss_tid_key"].item())


def test_gradients_reach_student_and_adapter_only():
    teacher, student = make_pair(t_channels=8, s_channels=4)
    no_grad = teacher.features + teacher.boxes + teacher.cls_logits
    no_grad += student.boxes + student.cls_logits
    for x in no_grad:
        x.requires_grad_(True)
    for f in student.features:
        f.requires_grad_(True)
    tid = build(layout=DistillLayout(8, 4))
    assert isinstance(tid.adapter, torch.nn.Conv2d)
    losses = tid(teacher, student, make_targets())
    sum(losses.values()).backward()
    for f in student.features:
        assert f.grad is not None and f.grad.abs().sum() > 0
    assert tid.adapter.weight.grad is not None and tid.adapter.weight.grad.abs().sum() > 0
    for x in no_grad:
        assert x.grad is None
    ref = _manual_losses(teacher, student, tid.areas(teacher, student, make_targets()), tid.adapter)
    assert losses["loss_tid_key"].item() == pytest.approx(tid.alpha * ref["key"], rel=1e-5)


def test_zero_loss_when_features_equal():
    tb, tl, sb, sl = scene()
    teacher = make_outputs(tb, tl, seed=0)
    same = [f.clone().requires_grad_(True) for f in teacher.features]
    student = make_outputs(sb, sl, feats=same)
    losses = build(soft_weights=True)(teacher, student, make_targets())
    for v in losses.values():
        assert v.item() == 0.0
    sum(losses.values()).backward()
    assert all(torch.equal(f.grad, torch.zeros_like(f)) for f in same)


def test_images_without_gt_give_finite_losses():
    teacher, student = make_pair(pos_thresholds=[torch.zeros(0), torch.zeros(0)])
    for f in student.features:
        f.requires_grad_(True)
    losses = build()(teacher, student, make_targets(with_gt=False))
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_tid_key"].item() == 0.0  # without GT no location reaches tau_K
    assert losses["loss_tid_other"].item() > 0
    sum(losses.values()).backward()
    assert all(torch.isfinite(f.grad).all() for f in student.features)


def test_threshold_fallback_and_missing_thresholds():
    tb, tl, sb, sl = scene()
    targets = make_targets()
    teacher = make_outputs(tb, tl, seed=0)
    student = make_outputs(sb, sl, seed=1, pos_thresholds=None)  # e.g. an FCOS student
    a = build().areas(teacher, student, targets)
    assert flat_index([a["p3"]["key"], a["p4"]["key"]]) == [0, 5, 10, 19]
    # neither model gives thresholds (e.g. FCOS): assigner mode falls back to fixed POS_THRESH
    teacher.pos_thresholds = None
    assert torch.equal(
        build(pos_thresh=0.5)(teacher, student, targets)["loss_tid_key"],
        build(threshold_mode="fixed", pos_thresh=0.5)(teacher, student, targets)["loss_tid_key"],
    )
    a = build(pos_thresh=0.5).areas(teacher, student, targets)
    assert flat_index([a["p3"]["key"], a["p4"]["key"]]) == [0, 5, 19]
    with pytest.raises(ValueError, match="POS_THRESH 0 in assigner mode"):
        build()(teacher, student, targets)  # no floor and no assigner thresholds: nothing to test IoU against
    teacher.pos_thresholds = [torch.tensor([0.5]), torch.tensor([0.6])]
    with pytest.raises(ValueError, match="pos_thresholds\\[0\\]"):
        build()(teacher, student, targets)


@pytest.mark.parametrize("change, match", [(dict(shapes=[(4, 4), (2, 1)]), "level shapes")])
def test_mismatched_teacher_student_raise(change, match):
    """A batch the two models saw differently; levels, strides and classes are the DistillLayout's,
    checked once at build time (test_teacher_student.py::test_check_compatible_strides_and_classes)."""
    tb, tl, sb, sl = scene()
    teacher = make_outputs(tb, tl, seed=0)
    shapes = change.get("shapes", SHAPES)
    a = sum(h * w for h, w in shapes)
    sb, sl = sb[:, :a], sl[:, :a]
    if "classes" in change:
        sl = torch.cat([sl, sl[..., :1]], dim=2)
    student = make_outputs(sb, sl, seed=1, shapes=shapes, strides=change.get("strides", STRIDES))
    with pytest.raises(ValueError, match=match):
        build()(teacher, student, make_targets())


def test_mismatched_images_and_channels_raise():
    teacher, student = make_pair()
    student.image_sizes = [(32, 32), (30, 32)]
    with pytest.raises(ValueError, match="image sizes"):
        build()(teacher, student, make_targets())
    teacher, student = make_pair(s_channels=4)
    with pytest.raises(ValueError, match="channels"):
        build()(teacher, student, make_targets())
    with pytest.raises(ValueError, match="1 images|targets 1"):
        build()(*make_pair(), make_targets()[:1])


def test_adapter_modes():
    assert isinstance(build_adapter("auto", 8, 8), torch.nn.Identity)
    conv = build_adapter("auto", 4, 8)
    assert isinstance(conv, torch.nn.Conv2d) and conv.weight.shape == (8, 4, 1, 1)
    always = build_adapter("ALWAYS", 8, 8)
    x = torch.randn(2, 8, 3, 3)
    assert isinstance(always, torch.nn.Conv2d) and torch.allclose(always(x), x, atol=1e-6)
    assert isinstance(build_adapter("none", 8, 8), torch.nn.Identity)
    with pytest.raises(ValueError, match="MODEL.DISTILL.ADAPTER"):
        build_adapter("none", 4, 8)
    with pytest.raises(ValueError, match="MODEL.DISTILL.ADAPTER"):
        build_adapter("sometimes", 8, 8)


def test_build_from_config_and_bad_keys():
    cfg = add_tid_config(get_cfg())
    cfg.MODEL.DISTILL.TID.ALPHA = 2.0
    cfg.MODEL.DISTILL.TID.TASKS = "reg"
    distillers = build_distillers(cfg.MODEL.DISTILL, DistillLayout(8, 4))
    tid = distillers["tid"]
    assert isinstance(tid, TID) and tid.name == "tid"
    assert tid.alpha == 2.0 and tid.tasks == "reg" and isinstance(tid.adapter, torch.nn.Conv2d)
    cfg.MODEL.DISTILL.TID.THRESHOLD_MODE = "median"
    with pytest.raises(ValueError, match="MODEL.DISTILL.TID.THRESHOLD_MODE"):
        TID(cfg.MODEL.DISTILL, LAYOUT8)
    cfg.MODEL.DISTILL.TID.THRESHOLD_MODE = "fixed"
    cfg.MODEL.DISTILL.TID.SCORE_LEVELS = [2.0, 1.5]
    with pytest.raises(ValueError, match="MODEL.DISTILL.TID.SCORE_LEVELS"):
        TID(cfg.MODEL.DISTILL, LAYOUT8)


def test_lazy_builder_equals_the_yaml_builder():
    """TID from the LazyConfig builder (lower-case overrides) equals TID from MODEL.DISTILL.TID."""
    cfg = add_tid_config(get_cfg())
    cfg.MODEL.DISTILL.TID.ALPHA = 1.0
    cfg.MODEL.DISTILL.WARMUP_ITERS = 7
    from_cfg = build_distillers(cfg.MODEL.DISTILL, LAYOUT8)["tid"]
    from_lazy = distillers_builder(["tid"], warmup_iters=7, tid=dict(alpha=1.0))(LAYOUT8)["tid"]
    public = lambda m: {k: v for k, v in vars(m).items() if not k.startswith("_") and k != "diagnostics"}  # noqa: E731
    assert public(from_cfg) == public(from_lazy) and from_lazy.alpha == 1.0 and from_lazy.warmup_iters == 7
    with pytest.raises(KeyError, match="not a key of MODEL.DISTILL.TID.*'alpha'"):
        distillers_builder(["tid"], tid=dict(alhpa=1.0))
    with pytest.raises(KeyError, match="neither a shared key"):
        distillers_builder(["tid"], fitnet=dict(loss_weight=1.0))
    with pytest.raises(KeyError, match="unknown methods"):
        distillers_builder(["tidd"])
