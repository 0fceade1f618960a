"""ATSS: Adaptive Training Sample Selection (Zhang et al., CVPR 2020) on Detectron2."""
from typing import Dict

import torch
import torch.nn.functional as F
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.box_regression import Box2BoxTransform, Box2BoxTransformLinear

from .dense_base import AnchorPointDetector, anchor_point_config, reduce_mean
from .losses import giou_loss_weighted, sigmoid_focal_loss

__all__ = ["ATSS", "centerness_target"]

_SCORE_MODES = ("sqrt_product", "class_then_product")
_TO_SIDES = Box2BoxTransformLinear(normalize_by_size=False)


def centerness_target(anchors: Tensor, gt_boxes: Tensor) -> Tensor:
    """FCOS centerness of anchor centres [R, 4] inside their GT boxes [R, 4] -> [R]."""
    ltrb = _TO_SIDES.get_deltas(anchors, gt_boxes)
    lr, tb = ltrb[:, [0, 2]], ltrb[:, [1, 3]]
    ratio_x = (lr.min(dim=1).values / lr.max(dim=1).values).clamp(min=0)
    ratio_y = (tb.min(dim=1).values / tb.max(dim=1).values).clamp(min=0)
    return (ratio_x * ratio_y).sqrt()


@META_ARCH_REGISTRY.register()
class ATSS(AnchorPointDetector):
    """
    ATSS: one anchor per location labelled by adaptive (mean + std IoU) selection; focal-loss
    classification, GIoU on delta-decoded boxes weighted by centerness, a centerness branch (BCE);
    inference scores combine class score and centerness as `test_score_mode` says.
    """

    pred_names = ("cls", "reg", "ctr")

    @configurable
    def __init__(
        self,
        *,
        focal_loss_alpha: float = 0.25,
        focal_loss_gamma: float = 2.0,
        loss_box_weight: float = 2.0,
        loss_centerness_weight: float = 1.0,
        test_score_mode: str = "sqrt_product",
        **kwargs,
    ):
        """
        Args:
            focal_loss_alpha, focal_loss_gamma: the classification focal loss.
            loss_box_weight, loss_centerness_weight: weights of GIoU and the centerness BCE.
            test_score_mode: "sqrt_product" (threshold, top-k and rank sqrt(class x centerness)) or
                "class_then_product" (threshold and top-k on the class score, rank class x
                centerness: mmdetection).
            kwargs: the `AnchorPointDetector` arguments.
        """
        super().__init__(box2box_transform=Box2BoxTransform(weights=(10.0, 10.0, 5.0, 5.0)), **kwargs)
        self.focal_loss_alpha = focal_loss_alpha
        self.focal_loss_gamma = focal_loss_gamma
        self.loss_box_weight = loss_box_weight
        self.loss_centerness_weight = loss_centerness_weight
        if test_score_mode not in _SCORE_MODES:
            raise ValueError(
                f"ATSS test_score_mode (MODEL.ATSS.SCORE_MODE_TEST) is {test_score_mode!r}; "
                f"expected one of {_SCORE_MODES}"
            )
        self.test_score_mode = test_score_mode

    @classmethod
    def from_config(cls, cfg):
        c = cfg.MODEL.ATSS
        return {
            **anchor_point_config(cfg, "ATSS", reg_channels=4, with_centerness=True),
            "focal_loss_alpha": c.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": c.FOCAL_LOSS_GAMMA,
            "loss_box_weight": c.LOSS_BOX_WEIGHT,
            "loss_centerness_weight": c.LOSS_CENTERNESS_WEIGHT,
            "test_score_mode": c.SCORE_MODE_TEST,
        }

    def pred_dims(self):
        return [self.num_classes, 4, 1]

    def level_deltas(self, reg: Tensor, stride: int) -> Tensor:
        return reg

    def level_scores(self, preds: Dict[str, Tensor]):
        cls, ctr = preds["cls"].sigmoid(), preds["ctr"].sigmoid()
        if self.test_score_mode == "class_then_product":
            return cls, ctr.squeeze(-1)
        return torch.sqrt(cls * ctr), None

    def losses(self, anchors, strides, preds, gt_labels, gt_boxes) -> Dict[str, Tensor]:
        """
        Args:
            anchors [A, 4], strides [A], preds {"cls": [N, A, K], "reg": [N, A, 4], "ctr": [N, A, 1]},
            gt_labels [N, A] (K = background, -1 = ignored), gt_boxes [N, A, 4].
        """
        cls_logits = preds["cls"]
        num_images = cls_logits.shape[0]
        valid = gt_labels >= 0
        pos = valid & (gt_labels < self.num_classes)
        num_pos = pos.sum()
        self.put_num_pos(num_pos.item(), num_images)
        num_pos_avg = reduce_mean(num_pos.float()).clamp(min=1.0)

        target = F.one_hot(gt_labels[valid], self.num_classes + 1)[..., :-1].to(cls_logits.dtype)
        loss_cls = sigmoid_focal_loss(
            cls_logits[valid], target, alpha=self.focal_loss_alpha, gamma=self.focal_loss_gamma,
            reduction="sum",
        ) / num_pos_avg

        pos_anchor = anchors.expand(num_images, -1, -1)[pos]
        pos_target = gt_boxes[pos]
        pos_box = self.box2box_transform.apply_deltas(preds["reg"][pos], pos_anchor)
        ctr_target = centerness_target(pos_anchor, pos_target)
        ctr_avg = reduce_mean(ctr_target.sum()).clamp(min=1.0)
        loss_box = giou_loss_weighted(pos_box, pos_target, ctr_target).sum() / ctr_avg
        loss_ctr = F.binary_cross_entropy_with_logits(
            preds["ctr"][pos].squeeze(-1), ctr_target, reduction="sum"
        ) / num_pos_avg
        return {
            "loss_atss_cls": loss_cls,
            "loss_atss_box": loss_box * self.loss_box_weight,
            "loss_atss_ctr": loss_ctr * self.loss_centerness_weight,
        }
