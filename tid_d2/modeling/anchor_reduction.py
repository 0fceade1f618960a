"""Per-location reduction of multi-anchor predictions: distillers see one prediction per location, the
anchor inference is most likely to keep (RetinaNet's A anchors, the RPN's aspect ratios)."""
import torch
from torch import Tensor

__all__ = ["best_anchor_per_location", "pick_anchor", "square_anchor_index"]


def best_anchor_per_location(logits: Tensor, num_anchors: int) -> Tensor:
    """
    Index of each location's most confident anchor.

    Args:
        logits: [N, R*A, K] one level's class logits, location-major (Detectron2's order).
    Returns:
        [N, R, 1] int64 indices in [0, A).
    """
    n, ra, k = logits.shape
    best = logits.detach().reshape(n, ra // num_anchors, num_anchors, k).max(dim=-1).values
    return best.argmax(dim=-1, keepdim=True)


def square_anchor_index(cell_anchors: Tensor) -> int:
    """Of one level's cell anchors [A, 4], the most square one (the smallest if several)."""
    w = cell_anchors[:, 2] - cell_anchors[:, 0]
    h = cell_anchors[:, 3] - cell_anchors[:, 1]
    skew = (h / w).log().abs()
    area = torch.where(skew <= skew.min() + 1e-6, w * h, torch.full_like(w, float("inf")))
    return int(area.argmin())


def pick_anchor(x: Tensor, index: Tensor, num_anchors: int) -> Tensor:
    """Gather [N, R*A, D] -> [N, R, D] at anchors `index` [N, R, 1] (gradients flow to the pick)."""
    n, ra, d = x.shape
    x = x.reshape(n, ra // num_anchors, num_anchors, d)
    return x.gather(2, index[..., None].expand(-1, -1, 1, d)).squeeze(2)
