"""ATSS assignment on hand-made scenes and against a loop-based reference."""

import math
import statistics

import pytest
import torch
from detectron2.structures import Boxes, pairwise_iou

from tid_d2.modeling.assigners import atss_assign
from tid_d2.structures import batched_iou as pairwise_iou_eps

FAR = [[200.0, 200.0, 210.0, 210.0], [300.0, 300.0, 310.0, 310.0], [400.0, 0.0, 410.0, 10.0]]


def _iou(a, b, eps=1e-6):
    w = max(min(a[2], b[2]) - max(a[0], b[0]), 0.0)
    h = max(min(a[3], b[3]) - max(a[1], b[1]), 0.0)
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / max(union, eps)


def _centre(b):
    return (b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0


def reference_atss(anchors, levels, gts, topk):
    """ATSS one pair at a time, in Python floats: (matched list, thresholds list)."""
    anchors, gts = anchors.tolist(), gts.tolist()
    positives = {}  # anchor -> [(iou, gt)]
    thresholds = []
    for j, gt in enumerate(gts):
        gx, gy = _centre(gt)
        candidates, start = [], 0
        for n in levels:
            level = sorted(
                range(start, start + n), key=lambda i: math.dist(_centre(anchors[i]), (gx, gy))
            )
            candidates += level[: min(topk, n)]
            start += n
        ious = [_iou(anchors[i], gt) for i in candidates]
        thr = statistics.mean(ious) + statistics.stdev(ious) if len(ious) > 1 else math.nan
        thresholds.append(thr)
        for i, v in zip(candidates, ious):
            cx, cy = _centre(anchors[i])
            if v >= thr and min(cx - gt[0], cy - gt[1], gt[2] - cx, gt[3] - cy) > 0.01:
                positives.setdefault(i, []).append((v, j))
    matched = [-1] * len(anchors)
    for i, pairs in positives.items():
        best = max(v for v, _ in pairs)
        matched[i] = min(j for v, j in pairs if v == best)
    return matched, thresholds


def test_centre_rule_rejects_high_iou_anchor_with_centre_on_the_edge():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # anchors 0 and 1 both have IoU 0.5; anchor 0's centre sits on the GT's left side (margin 0)
    anchors = torch.tensor([[-10.0, 0.0, 10.0, 10.0], [-9.0, 0.0, 11.0, 10.0]] + FAR + FAR)
    matched, thr = atss_assign(anchors, [len(anchors)], gt)
    ious = pairwise_iou_eps(anchors, gt)[:, 0]
    assert ious[0] == ious[1] == 0.5 and ious[0] >= thr[0]
    assert matched.tolist() == [-1, 0] + [-1] * 6
    # moving anchor 0 half a pixel right puts its centre inside: it becomes positive
    anchors[0] += torch.tensor([0.5, 0.0, 0.5, 0.0])
    matched, _ = atss_assign(anchors, [len(anchors)], gt)
    assert matched[:2].tolist() == [0, 0]


def test_one_gt_threshold_by_hand():
    # 3x3 grid of disjoint 10 px anchors; the GT is the centre anchor
    anchors = torch.tensor(
        [[x, y, x + 10.0, y + 10.0] for y in (0.0, 10.0, 20.0) for x in (0.0, 10.0, 20.0)]
    )
    matched, thr = atss_assign(anchors, [9], torch.tensor([[10.0, 10.0, 20.0, 20.0]]))
    # IoUs: one 1 and eight 0 -> mean 1/9, unbiased std 1/3
    assert thr.shape == (1,) and thr.item() == pytest.approx(1 / 9 + 1 / 3, abs=1e-6)
    assert matched.tolist() == [-1] * 4 + [0] + [-1] * 4


def test_iou_equal_to_threshold_is_positive():
    # the four quadrants of the GT all have IoU 0.25, so std = 0 and the threshold is exactly 0.25
    anchors = torch.tensor(
        [
            [0.0, 0.0, 10.0, 10.0],
            [10.0, 0.0, 20.0, 10.0],
            [0.0, 10.0, 10.0, 20.0],
            [10.0, 10.0, 20.0, 20.0],
        ]
    )
    matched, thr = atss_assign(anchors, [4], torch.tensor([[0.0, 0.0, 20.0, 20.0]]))
    assert thr.item() == 0.25
    assert matched.tolist() == [0, 0, 0, 0]


def test_topk_per_level_larger_than_level_and_thresholds_mean_plus_std():
    g = torch.Generator().manual_seed(3)
    levels = [2, 20, 5]
    centres = torch.rand(sum(levels), 2, generator=g, dtype=torch.float64) * 40
    anchors = torch.cat([centres - 6, centres + 6], 1)
    gts = torch.tensor([[5.0, 5.0, 25.0, 30.0], [10.0, 0.0, 40.0, 12.0]], dtype=torch.float64)
    matched, thr = atss_assign(anchors, levels, gts, topk=9)
    assert thr.dtype == torch.float64 and matched.dtype == torch.long
    for j in range(2):
        gc = ((gts[j, :2] + gts[j, 2:]) / 2).tolist()
        cand, start = [], 0
        for n in levels:
            d = [
                math.dist(
                    (
                        (anchors[i, 0] + anchors[i, 2]).item() / 2,
                        (anchors[i, 1] + anchors[i, 3]).item() / 2,
                    ),
                    gc,
                )
                for i in range(start, start + n)
            ]
            cand += [start + i for i in sorted(range(n), key=d.__getitem__)[: min(9, n)]]
            start += n
        assert len(cand) == 2 + 9 + 5
        ious = [_iou(anchors[i].tolist(), gts[j].tolist()) for i in cand]
        assert thr[j].item() == pytest.approx(
            statistics.mean(ious) + statistics.stdev(ious), rel=1e-12
        )


def test_anchor_positive_for_two_gts_takes_higher_iou_and_ties_take_lower_index():
    gts = torch.tensor([[0.0, 0.0, 10.0, 10.0], [2.0, 0.0, 12.0, 10.0]])
    shifted = [1.5, 0.0, 11.5, 10.0]  # IoU 85/115 with GT 0, 95/105 with GT 1
    centred = [1.0, 0.0, 11.0, 10.0]  # IoU 90/110 with both
    for anchor, expected in ((shifted, 1), (centred, 0)):
        anchors = torch.tensor([anchor] + FAR + FAR)
        for j in range(2):  # positive for each GT alone
            assert atss_assign(anchors, [7], gts[j : j + 1])[0][0] == 0
        matched, _ = atss_assign(anchors, [7], gts)
        assert matched[0] == expected and (matched[1:] == -1).all()
        matched, _ = atss_assign(anchors, [7], gts.flip(0))
        assert matched[0] == (1 - expected if anchor is shifted else 0)


def test_no_gt_and_no_anchor():
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]] + FAR)
    matched, thr = atss_assign(anchors, [1, 3], torch.zeros(0, 4))
    assert matched.tolist() == [-1] * 4 and thr.shape == (0,)
    matched, thr = atss_assign(torch.zeros(0, 4), [0, 0], torch.tensor([[0.0, 0.0, 10.0, 10.0]]))
    assert matched.shape == (0,) and thr.shape == (1,) and torch.isnan(thr).all()


def test_accepts_boxes_runs_without_grad_and_checks_levels():
    anchors = torch.tensor([[-9.0, 0.0, 11.0, 10.0]] + FAR + FAR, requires_grad=True)
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    m1, t1 = atss_assign(anchors, [3, 4], gt)
    m2, t2 = atss_assign(Boxes(anchors.detach()), [3, 4], Boxes(gt))
    assert torch.equal(m1, m2) and torch.equal(t1, t2) and not t1.requires_grad
    with pytest.raises(ValueError, match="num_anchors_per_level"):
        atss_assign(anchors, [3, 3], gt)
    with pytest.raises(ValueError, match="gt_boxes"):
        atss_assign(anchors, [7], torch.zeros(2, 5))


def test_pairwise_iou_eps_vs_detectron2():
    g = torch.Generator().manual_seed(4)
    xy = torch.rand(50, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + torch.rand(50, 2, generator=g) * 40 + 0.5], 1)
    assert torch.equal(
        pairwise_iou_eps(boxes, boxes[:20]), pairwise_iou(Boxes(boxes), Boxes(boxes[:20]))
    )
    # they differ only when the union is below eps
    tiny = torch.tensor([[0.0, 0.0, 1e-4, 1e-4]])
    wide = torch.tensor([[0.0, 0.0, 5e-4, 1e-4]])
    assert pairwise_iou(Boxes(tiny), Boxes(wide)).item() == pytest.approx(0.2)
    assert pairwise_iou_eps(tiny, wide).item() == pytest.approx(1e-8 / 1e-6)


@pytest.mark.parametrize("seed", range(40))
def test_matches_loop_reference_on_random_scenes(seed):
    g = torch.Generator().manual_seed(seed)
    levels, anchors = [], []
    for size in (8.0, 16.0, 32.0):
        n = int(torch.randint(1, 40, (1,), generator=g))
        centres = torch.rand(n, 2, generator=g, dtype=torch.float64) * 64
        half = size * (0.5 + torch.rand(n, 1, generator=g, dtype=torch.float64))
        anchors.append(torch.cat([centres - half, centres + half], 1))
        levels.append(n)
    anchors = torch.cat(anchors)
    num_gts = int(torch.randint(1, 7, (1,), generator=g))
    xy = torch.rand(num_gts, 2, generator=g, dtype=torch.float64) * 50
    gts = torch.cat([xy, xy + torch.rand(num_gts, 2, generator=g, dtype=torch.float64) * 40 + 2], 1)
    topk = int(torch.randint(1, 15, (1,), generator=g))

    matched, thr = atss_assign(anchors, levels, gts, topk=topk)
    ref_matched, ref_thr = reference_atss(anchors, levels, gts, topk)
    assert matched.tolist() == ref_matched
    torch.testing.assert_close(
        thr, torch.tensor(ref_thr, dtype=torch.float64), rtol=1e-12, atol=1e-12, equal_nan=True
    )
