"""GFL: Generalized Focal Loss V1 (Li et al., NeurIPS 2020) on Detectron2."""
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.box_regression import Box2BoxTransformLinear
from detectron2.structures import Boxes
from detectron2.structures.boxes import matched_pairwise_iou

from .dense_base import AnchorPointDetector, anchor_point_config, reduce_mean
from .losses import distribution_focal_loss, giou_loss_weighted, quality_focal_loss

__all__ = ["GFL", "integral_decode"]


def integral_decode(logits: Tensor, reg_max: int) -> Tensor:
    """Expected value of each box side's distribution: [..., 4 * (reg_max + 1)] -> [..., 4], in
    float32 whatever the logits' dtype (box decoding under AMP keeps full precision)."""
    probs = F.softmax(logits.reshape(*logits.shape[:-1], 4, reg_max + 1).float(), dim=-1)
    bins = torch.arange(reg_max + 1, dtype=probs.dtype, device=probs.device)
    return (probs * bins).sum(-1)


@META_ARCH_REGISTRY.register()
class GFL(AnchorPointDetector):
    """
    GFL V1: the classification sigmoid is a joint class-quality (IoU) score trained with Quality
    Focal Loss; each box side is a discrete distribution over 0..reg_max strides trained with
    Distribution Focal Loss and GIoU on its expectation; ATSS assignment.
    """

    has_box_distributions = True

    @configurable
    def __init__(
        self,
        *,
        reg_max: int = 16,
        qfl_beta: float = 2.0,
        loss_cls_weight: float = 1.0,
        loss_dfl_weight: float = 0.25,
        loss_box_weight: float = 2.0,
        **kwargs,
    ):
        """
        Args:
            reg_max: each box side is a distribution over 0..reg_max strides.
            qfl_beta: Quality Focal Loss's focusing exponent.
            loss_cls_weight, loss_dfl_weight, loss_box_weight: weights of QFL, DFL and GIoU.
            kwargs: the `AnchorPointDetector` arguments.
        """
        super().__init__(box2box_transform=Box2BoxTransformLinear(normalize_by_size=False), **kwargs)
        self.reg_max = reg_max
        head = kwargs["head"]
        reg_channels = getattr(getattr(head, "bbox_pred", None), "out_channels", 4 * (reg_max + 1))
        if reg_channels != 4 * (reg_max + 1):
            raise ValueError(
                f"GFL head regresses {reg_channels} channels but reg_max={reg_max} needs "
                f"4 * (reg_max + 1) = {4 * (reg_max + 1)}"
            )
        self.qfl_beta = qfl_beta
        self.loss_cls_weight = loss_cls_weight
        self.loss_dfl_weight = loss_dfl_weight
        self.loss_box_weight = loss_box_weight

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.GFL
        return {
            **anchor_point_config(cfg, "GFL", reg_channels=4 * (c.REG_MAX + 1), with_centerness=False),
            "reg_max": c.REG_MAX,
            "qfl_beta": c.QFL_BETA,
            "loss_cls_weight": c.LOSS_CLS_WEIGHT,
            "loss_dfl_weight": c.LOSS_DFL_WEIGHT,
            "loss_box_weight": c.LOSS_BOX_WEIGHT,
        }

    def pred_dims(self):
        return [self.num_classes, 4 * (self.reg_max + 1)]

    def level_deltas(self, reg: Tensor, stride: int) -> Tensor:
        return integral_decode(reg, self.reg_max) * stride

    def level_scores(self, preds: Dict[str, Tensor]):
        return preds["cls"].sigmoid(), None

    def losses(self, anchors, strides, preds, gt_labels, gt_boxes) -> Dict[str, Tensor]:
        """
        Args:
            anchors [A, 4], strides [A], preds {"cls": [N, A, K], "reg": [N, A, 4(n+1)]},
            gt_labels [N, A] (K = background, -1 = ignored), gt_boxes [N, A, 4].
        """
        cls_logits, reg = preds["cls"], preds["reg"]
        num_images = cls_logits.shape[0]
        valid = gt_labels >= 0
        pos = valid & (gt_labels < self.num_classes)  # [N, A]
        num_pos = pos.sum()
        self.put_num_pos(num_pos.item(), num_images)
        num_pos_avg = reduce_mean(num_pos.float()).clamp(min=1.0)

        pos_stride = strides.expand_as(pos)[pos][:, None]  # [P, 1]
        pos_anchor = anchors.expand(num_images, -1, -1)[pos] / pos_stride  # in stride units
        pos_target = gt_boxes[pos] / pos_stride
        pos_reg = reg[pos]  # [P, 4(n+1)]
        pos_cls = cls_logits[pos]

        transform = self.box2box_transform
        pos_pred_box = transform.apply_deltas(integral_decode(pos_reg, self.reg_max), pos_anchor)
        iou_target = torch.zeros(pos.shape, dtype=cls_logits.dtype, device=cls_logits.device)
        weight = pos_cls.detach().sigmoid().max(dim=1).values  # [P]
        if pos_pred_box.numel():
            iou = matched_pairwise_iou(Boxes(pos_pred_box.detach()), Boxes(pos_target))
            iou_target[pos] = iou.to(iou_target.dtype)
        loss_cls = quality_focal_loss(
            cls_logits.reshape(-1, self.num_classes),
            gt_labels.reshape(-1),
            iou_target.reshape(-1),
            beta=self.qfl_beta,
        )[valid.reshape(-1)].sum() / num_pos_avg

        weight_avg = reduce_mean(weight.sum()).clamp(min=1.0)
        loss_box = giou_loss_weighted(pos_pred_box, pos_target, weight).sum() / weight_avg
        side_target = transform.get_deltas(pos_anchor, pos_target).clamp(0, self.reg_max - 0.1)
        loss_dfl = (
            distribution_focal_loss(pos_reg.reshape(-1, self.reg_max + 1), side_target.reshape(-1))
            * weight.repeat_interleave(4)
        ).sum() / 4.0 / weight_avg
        return {
            "loss_gfl_cls": loss_cls * self.loss_cls_weight,
            "loss_gfl_box": loss_box * self.loss_box_weight,
            "loss_gfl_dfl": loss_dfl * self.loss_dfl_weight,
        }
