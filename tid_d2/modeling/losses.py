"""
Dense-detector losses: GFL's quality and distribution focal losses, plus thin wrappers over fvcore.

`quality_focal_loss` and `distribution_focal_loss` return the same per-location values as
mmdetection's GFL V1 definitions (Li et al., 2020), so GFL/ATSS students and teachers trained here
are comparable with published numbers. Reductions and normalisation are left to the caller.
"""

import torch
import torch.nn.functional as F
from fvcore.nn import giou_loss, sigmoid_focal_loss
from torch import Tensor

__all__ = [
    "quality_focal_loss",
    "distribution_focal_loss",
    "giou_loss_weighted",
    "sigmoid_focal_loss",
]


def quality_focal_loss(logits: Tensor, labels: Tensor, scores: Tensor, beta: float = 2.0) -> Tensor:
    """
    Quality Focal Loss: sigmoid BCE towards a soft target (the IoU at the positive class, 0
    elsewhere), modulated by |target - sigmoid(logit)| ** beta, summed over classes.

    With target t, every entry costs BCE(logit, t) * |t - p| ** beta. For negatives t = 0, which is
    the background term BCE(logit, 0) * p ** beta bit for bit.

    Args:
        logits: [N, K] classification logits.
        labels: [N] long class ids; values in [0, K) are positives, anything else (K = background)
            is negative.
        scores: [N] IoU targets; read only at positive locations.
        beta: exponent of the modulating factor.

    Returns:
        [N] loss per location.
    """
    if logits.dim() != 2 or labels.shape != logits.shape[:1] or scores.shape != logits.shape[:1]:
        raise ValueError(
            f"quality_focal_loss: expected logits [N, K], labels [N], scores [N]; got "
            f"{tuple(logits.shape)}, {tuple(labels.shape)}, {tuple(scores.shape)}"
        )
    num_classes = logits.shape[1]
    classes = torch.arange(num_classes, device=logits.device)
    is_pos = (
        labels[:, None] == classes[None, :]
    )  # [N, K]; background and out-of-range ids never match
    target = torch.where(is_pos, scores[:, None].to(logits.dtype), logits.new_zeros(()))
    prob = logits.sigmoid()
    loss = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    loss = loss * (target - prob).abs().pow(beta)
    return loss.sum(dim=1)


def distribution_focal_loss(logits: Tensor, target: Tensor) -> Tensor:
    """
    Distribution Focal Loss: cross-entropy to the two integer bins around a real-valued target,
    weighted by linear interpolation, so the softmax mass concentrates next to the target.

    Args:
        logits: [N, n + 1] logits over the bins {0, ..., n}.
        target: [N] real distances in [0, n).

    Returns:
        [N] loss per side.
    """
    if logits.dim() != 2 or target.shape != logits.shape[:1]:
        raise ValueError(
            f"distribution_focal_loss: expected logits [N, n+1] and target [N]; got "
            f"{tuple(logits.shape)}, {tuple(target.shape)}"
        )
    num_bins = logits.shape[1]
    if target.numel() > 0 and not bool(((target >= 0) & (target < num_bins - 1)).all()):
        raise ValueError(
            f"distribution_focal_loss: `target` must lie in [0, {num_bins - 1}) for logits with "
            f"{num_bins} bins; got range [{target.min().item()}, {target.max().item()}]"
        )
    left = target.long()  # truncation == floor, since target >= 0
    right = left + 1
    weight_left = right.to(target.dtype) - target
    weight_right = target - left.to(target.dtype)
    return (
        F.cross_entropy(logits, left, reduction="none") * weight_left
        + F.cross_entropy(logits, right, reduction="none") * weight_right
    )


def giou_loss_weighted(pred_boxes: Tensor, target_boxes: Tensor, weights: Tensor) -> Tensor:
    """
    fvcore's GIoU loss (1 - GIoU) per box pair, times a per-box weight (e.g. the GFL quality score).
    Non-finite predicted boxes raise FloatingPointError (fvcore would fail with a bare "bad box").

    Args:
        pred_boxes, target_boxes: [N, 4] XYXY.
        weights: [N].

    Returns:
        [N] weighted loss per pair.
    """
    try:
        loss = giou_loss(pred_boxes, target_boxes, reduction="none")
    except AssertionError as e:  # fvcore's "bad box": NaN/Inf boxes fail its x2 >= x1 check
        if bool(torch.isfinite(pred_boxes).all()):
            raise
        raise FloatingPointError(
            "non-finite predicted boxes in the GIoU loss: the weights diverged at the previous "
            "optimizer step; lower SOLVER.BASE_LR or the distillation loss weights, or bound the "
            "gradient norm (MODEL.DISTILL.MAX_GRAD_NORM when distilling, on by default; "
            "SOLVER.CLIP_GRADIENTS for a plain detector)"
        ) from e
    return loss * weights
