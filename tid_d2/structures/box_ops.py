"""`batched_iou`: the one IoU of this project for box sets that Detectron2's `pairwise_iou` (one
image, `Boxes`) does not cover: per-image batches and an explicit union floor."""
import torch
from torch import Tensor

__all__ = ["batched_iou"]


def batched_iou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """
    IoU of every box of `boxes1` with every box of `boxes2`, batch by batch, with the union clamped
    below at `eps` (mmdetection's `bbox_overlaps` rule; Detectron2's `pairwise_iou` gives the same
    values whenever every union is >= eps). Degenerate boxes count as zero area.

    Args:
        boxes1: [..., A, 4] XYXY.
        boxes2: [..., M, 4] XYXY, the same leading dims.

    Returns:
        [..., A, M] in the inputs' dtype; at most three [..., A, M] buffers at once.
    """
    x1, y1, x2, y2 = boxes1.unsqueeze(-2).unbind(-1)  # [..., A, 1] each
    gx1, gy1, gx2, gy2 = boxes2.unsqueeze(-3).unbind(-1)  # [..., 1, M] each
    inter = torch.min(x2, gx2).sub_(torch.max(x1, gx1)).clamp_(min=0)
    inter.mul_(torch.min(y2, gy2).sub_(torch.max(y1, gy1)).clamp_(min=0))
    area1 = (x2 - x1).clamp(min=0) * (y2 - y1).clamp(min=0)
    area2 = (gx2 - gx1).clamp(min=0) * (gy2 - gy1).clamp(min=0)
    union = (area1 + area2).sub_(inter).clamp_(min=eps)
    return inter.div_(union)
