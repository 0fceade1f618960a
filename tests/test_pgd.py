"""PGD: the teacher's key predictive regions (quality top-k, Gaussian-weighted) guide feature imitation."""
import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage

from test_crosskd import PAIRS
from test_teacher_student import batch, teacher_snapshot, tid_cfg
from tid_d2.distill.pgd import background_mask, key_predictive_mask

GT = torch.tensor([[[10.0, 10.0, 50.0, 50.0]]])


def _grid(step=8.0, size=64):
    """Location centres of one 8x8 level and their anchor boxes."""
    c = torch.arange(size / step) * step + step / 2
    yy, xx = torch.meshgrid(c, c, indexing="ij")
    centers = torch.stack([xx.flatten(), yy.flatten()], dim=1)
    return centers


def _predictions(centers, good):
    """Boxes far from the GT with low scores, except at `good` locations: {index: (box, prob)}."""
    a = len(centers)
    boxes = torch.tensor([[0.0, 0.0, 2.0, 2.0]]).repeat(1, a, 1)
    logits = torch.full((1, a, 2), -6.0)
    for i, (box, prob) in good.items():
        boxes[0, i] = torch.tensor(box)
        logits[0, i, 0] = torch.logit(torch.tensor(prob))
    return boxes, logits


def test_mask_keeps_the_topk_inside_the_gt_and_weights_by_a_gaussian():
    centers = _grid()
    inside = [9, 10, 18, 19, 27, 28, 36, 44]  # centres inside the GT (10..50)
    good = {i: ([10.0, 10.0, 50.0, 50.0], 0.9) for i in inside[:4]}
    good[0] = ([10.0, 10.0, 50.0, 50.0], 0.95)  # centre (4, 4) lies outside the GT box
    boxes, logits = _predictions(centers, good)
    args = (boxes, logits, centers, GT, torch.tensor([[0]]), torch.tensor([[True]]))
    w = key_predictive_mask(*args, alpha=0.8, topk=5)[0]
    assert w[0] == 0  # among the top 5 but outside the GT
    assert set(w.nonzero().flatten().tolist()) == set(inside[:4])
    assert (w <= 1).all() and (w > 0).sum() == 4
    one = key_predictive_mask(*args, alpha=0.8, topk=1)[0]
    assert not one.any()  # the single best location (index 0) lies outside the GT box


def test_alpha_trades_score_against_iou():
    centers = _grid()
    good = {19: ([10.0, 10.0, 50.0, 50.0], 0.2), 27: ([10.0, 10.0, 40.0, 40.0], 0.99)}  # IoU 1 vs 0.56
    boxes, logits = _predictions(centers, good)
    args = (boxes, logits, centers, GT, torch.tensor([[0]]), torch.tensor([[True]]))
    by_iou = key_predictive_mask(*args, alpha=1.0, topk=1)[0]
    by_score = key_predictive_mask(*args, alpha=0.0, topk=1)[0]
    assert by_iou.nonzero().flatten().tolist() == [19]
    assert by_score.nonzero().flatten().tolist() == [27]


def test_background_mask_and_images_without_gt():
    centers = _grid()
    bg = background_mask(centers, GT, torch.tensor([[True]]))[0]
    inside = ((centers > 10) & (centers < 50)).all(dim=1)
    assert torch.equal(bg, (~inside).float())
    assert background_mask(centers, torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.bool)).eq(1).all()
    boxes, logits = _predictions(centers, {})
    empty = key_predictive_mask(boxes, logits, centers, torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.long),
                                torch.zeros(1, 0, dtype=torch.bool), alpha=0.8, topk=30)
    assert empty.shape == (1, 64) and not empty.any()


@pytest.mark.parametrize("pair", sorted(PAIRS))
def test_pgd_trains_on_every_detector_pair(pair, teachers, tiny_shapes):
    name, teacher, opts = PAIRS[pair]
    cfg = tid_cfg(teachers, name, teacher, *opts, "MODEL.DISTILL.METHODS", "['TID', 'PGD']")
    torch.manual_seed(0)
    model = build_model(cfg).train()
    before = teacher_snapshot(model)
    with EventStorage():
        losses = model(batch(cfg, tiny_shapes[0]))
    assert {"loss_pgd_cls", "loss_pgd_reg", "loss_tid_key"} <= set(losses)
    assert all(torch.isfinite(v) for v in losses.values()) and losses["loss_pgd_cls"] > 0
    sum(losses.values()).backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    after = teacher_snapshot(model)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_too_few_level_weights_is_an_error(teachers, tiny_shapes):
    """At build time, from the DistillLayout (5 levels), not at the first step."""
    cfg = tid_cfg(teachers, "TID-GFL", "GFL-teacher", "MODEL.DISTILL.METHODS", "['PGD']",
                  "MODEL.DISTILL.PGD.LEVEL_WEIGHTS", "[1.0, 1.0]")
    with pytest.raises(ValueError, match="LEVEL_WEIGHTS has 2 entries for 5"):
        build_model(cfg)
