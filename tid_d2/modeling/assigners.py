"""
ATSS label assignment (Zhang et al., 2020), numerically identical to mmdetection v2.x's
`ATSSAssigner.assign` without ignore boxes, so that distillers can read the teacher's own per-GT
positive threshold (mean + std of the candidate IoUs).
"""

from typing import Sequence, Tuple, Union

import torch
from detectron2.structures import Boxes
from torch import Tensor

from ..structures import batched_iou

__all__ = ["atss_assign"]


def _xyxy_tensor(boxes: Union[Tensor, Boxes], name: str) -> Tensor:
    if isinstance(boxes, Boxes):
        boxes = boxes.tensor
    if not isinstance(boxes, Tensor) or boxes.dim() != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(
            f"atss_assign: `{name}` must be an [*, 4] XYXY Tensor or Boxes, got {shape}"
        )
    return boxes


@torch.no_grad()
def atss_assign(
    anchors: Union[Tensor, Boxes],
    num_anchors_per_level: Sequence[int],
    gt_boxes: Union[Tensor, Boxes],
    topk: int = 9,
) -> Tuple[Tensor, Tensor]:
    """
    Adaptive Training Sample Selection for one image.

    For each GT, the `min(topk, A_l)` anchors of each level whose centres are closest (L2) to the
    GT centre are candidates; the GT's threshold is mean + std (unbiased) of the candidates' IoUs.
    A candidate is positive if its IoU >= the threshold and its centre lies inside the GT by more
    than 0.01 on every side. An anchor positive for several GTs takes the one of highest IoU (ties:
    the lowest GT index, via `Tensor.max`).

    Args:
        anchors: [A, 4] XYXY anchors of all levels, concatenated level by level.
        num_anchors_per_level: L ints A_l summing to A.
        gt_boxes: [M, 4] XYXY ground-truth boxes.
        topk: candidates per level and GT.

    Returns:
        matched_gt_index: [A] long, the GT index of each anchor, -1 for negatives.
        thresholds: [M] per-GT IoU thresholds ([0] when M == 0; NaN when a GT has fewer than two
            candidates, in which case it gets no positive, as in mmdetection).
    """
    anchors = _xyxy_tensor(anchors, "anchors")
    gt_boxes = _xyxy_tensor(gt_boxes, "gt_boxes").to(device=anchors.device, dtype=anchors.dtype)
    num_anchors, num_gts = anchors.shape[0], gt_boxes.shape[0]
    if sum(num_anchors_per_level) != num_anchors:
        raise ValueError(
            f"atss_assign: `num_anchors_per_level` sums to {sum(num_anchors_per_level)} but "
            f"`anchors` has {num_anchors} rows"
        )
    matched = torch.full((num_anchors,), -1, dtype=torch.long, device=anchors.device)
    if num_gts == 0:
        return matched, anchors.new_zeros((0,))
    if num_anchors == 0:
        return matched, anchors.new_full((num_gts,), float("nan"))

    ious = batched_iou(anchors, gt_boxes)  # [A, M], union floor 1e-6 as mmdetection
    anchor_centers = (anchors[:, :2] + anchors[:, 2:]) / 2.0  # [A, 2]
    gt_centers = (gt_boxes[:, :2] + gt_boxes[:, 2:]) / 2.0  # [M, 2]
    distances = (
        (anchor_centers[:, None, :] - gt_centers[None, :, :]).pow(2).sum(-1).sqrt()
    )  # [A, M]

    candidates = []
    start = 0
    for level_size in num_anchors_per_level:
        level_distances = distances[start : start + level_size]  # [A_l, M]
        _, idx = level_distances.topk(min(topk, level_size), dim=0, largest=False)
        candidates.append(idx + start)
        start += level_size
    candidates = torch.cat(candidates, dim=0)  # [C, M] anchor indices, C = sum_l min(topk, A_l)

    candidate_ious = ious.gather(0, candidates)  # [C, M]
    thresholds = candidate_ious.mean(0) + candidate_ious.std(0)  # [M]

    cx = anchor_centers[:, 0][candidates]  # [C, M]
    cy = anchor_centers[:, 1][candidates]
    margins = torch.stack(
        [cx - gt_boxes[:, 0], cy - gt_boxes[:, 1], gt_boxes[:, 2] - cx, gt_boxes[:, 3] - cy], dim=1
    )  # [C, 4, M]
    is_pos = (candidate_ious >= thresholds[None, :]) & (margins.min(dim=1).values > 0.01)

    gt_index = torch.arange(num_gts, device=anchors.device).expand_as(candidates)  # [C, M]
    pos_ious = torch.full(
        (num_gts, num_anchors), float("-inf"), dtype=ious.dtype, device=ious.device
    )
    pos_ious[gt_index[is_pos], candidates[is_pos]] = candidate_ious[is_pos]
    best_iou, best_gt = pos_ious.t().max(dim=1)  # [A]
    matched = torch.where(best_iou != float("-inf"), best_gt, matched)
    return matched, thresholds
