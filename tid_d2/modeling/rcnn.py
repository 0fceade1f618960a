"""
`DistillableRCNN`: Detectron2's own GeneralizedRCNN (Faster R-CNN, and Mask R-CNN with MODEL.MASK_ON)
behind the distiller contract, its code unchanged (the two-stage worked example of "Distilling your own
detector" in the README).

Distillers see the FPN levels the RPN reads (P2-P6) and, per location, the RPN's predictions: its
objectness as a class-agnostic class logit (K = 1) and its proposal box, each from the location's most
confident anchor (as for RetinaNet). This is the dense part of a two-stage detector: the ROI heads see only
the proposals sampled for them (512 per image, at random during training), so most FPN locations have no
ROI-head prediction to grade or imitate. The positive criterion is the RPN's anchor matcher: a location is
a training positive when one of its anchors is (IoU >= 0.7, or the best anchor of a GT), and the matcher's
positive IoU (MODEL.RPN.IOU_THRESHOLDS[-1]) is every GT's `pos_thresholds` entry. The ROI heads (box, and
mask) train exactly as in Detectron2.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.rcnn import GeneralizedRCNN
from detectron2.structures import Boxes, Instances, pairwise_iou

from ..structures import DenseOutputs
from .anchor_reduction import best_anchor_per_location, pick_anchor, square_anchor_index
from .distillable import DistillableDetector, decode_level_boxes

__all__ = ["DistillableRCNN", "rpn_dense_predictions", "matcher_pos_threshold"]


def rpn_dense_predictions(
    objectness: List[Tensor], deltas: List[Tensor], box_dim: int = 4
) -> Tuple[List[Tensor], List[Tensor]]:
    """
    The RPN head's raw outputs in Detectron2's location-major anchor order (as `RPN.forward` lays them out).

    Args:
        objectness: L x [N, A, Hl, Wl]; deltas: L x [N, A * box_dim, Hl, Wl].
    Returns:
        L x [N, Hl*Wl*A, 1] objectness logits and L x [N, Hl*Wl*A, box_dim] anchor deltas.
    """
    logits = [x.permute(0, 2, 3, 1).reshape(x.shape[0], -1, 1) for x in objectness]
    deltas = [
        x.view(x.shape[0], -1, box_dim, x.shape[-2], x.shape[-1]).permute(0, 3, 4, 1, 2).flatten(1, -2)
        for x in deltas
    ]
    return logits, deltas


def matcher_pos_threshold(matcher) -> float:
    """The lowest IoU a Detectron2 `Matcher` labels positive (label 1): 0.7 for the RPN's defaults."""
    for threshold, label in zip(matcher.thresholds[:-1], matcher.labels):
        if label == 1:
            return float(threshold)
    raise ValueError(f"the matcher (thresholds {matcher.thresholds}, labels {matcher.labels}) has no positive label")


@META_ARCH_REGISTRY.register()
class DistillableRCNN(DistillableDetector, GeneralizedRCNN):
    """Detectron2's GeneralizedRCNN (built from MODEL.RPN / MODEL.ROI_HEADS / MODEL.MASK_ON as usual) that
    can teach and learn. It needs an RPN (MODEL.PROPOSAL_GENERATOR.NAME "RPN")."""

    #: the dense head is the class-agnostic RPN: methods that need per-class dense scores do not apply
    has_dense_class_head = False
    gives_pos_thresholds = True

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        rpn = self.proposal_generator
        if rpn is None or not hasattr(rpn, "rpn_head") or not hasattr(rpn, "anchor_matcher"):
            raise ValueError(
                "DistillableRCNN needs Detectron2's RPN as its proposal generator (MODEL.PROPOSAL_GENERATOR.NAME "
                f"'RPN'), got {type(rpn).__name__}: distillers read the RPN's dense predictions"
            )
        counts = set(self.anchor_generator.num_cell_anchors)
        if len(counts) != 1:
            raise ValueError("DistillableRCNN needs the same number of RPN anchors on every level")
        self.num_anchors = counts.pop()
        self.square_anchor = square_anchor_index(next(iter(self.anchor_generator.cell_anchors)))

    @classmethod
    def from_config(cls, cfg):
        return GeneralizedRCNN.from_config(cfg)

    @property
    def num_classes(self) -> int:
        return self.roi_heads.num_classes

    @property
    def head(self) -> nn.Module:
        """The dense head distillers read: the RPN head."""
        return self.proposal_generator.rpn_head

    @property
    def head_in_features(self) -> List[str]:
        return list(self.proposal_generator.in_features)

    @property
    def anchor_generator(self):
        return self.proposal_generator.anchor_generator

    def inheritable_parts(self) -> Dict[str, nn.Module]:
        """The neck (the FPN) and the heads: the RPN and the ROI heads together."""
        return {"neck": self.backbone, "head": nn.ModuleDict({"rpn": self.proposal_generator, "roi": self.roi_heads})}

    def dense_outputs_from_predictions(
        self,
        features: List[Tensor],
        predictions: List[List[Tensor]],
        image_sizes: Sequence[Tuple[int, int]],
        gt_instances: Optional[List[Instances]] = None,
    ) -> DenseOutputs:
        a = self.num_anchors
        logits, deltas = rpn_dense_predictions(*predictions, self.anchor_generator.box_dim)
        anchors = self.anchor_generator(features)
        boxes = decode_level_boxes(self.proposal_generator.box2box_transform, anchors, deltas)
        picks = [best_anchor_per_location(x, a) for x in logits]
        pos_thresholds, extras = None, {}
        if gt_instances is not None:
            positive = self.rpn_positive_anchors(anchors, gt_instances)
            extras["pos_mask"] = positive.reshape(positive.shape[0], -1, a).any(dim=-1)
            thr = matcher_pos_threshold(self.proposal_generator.anchor_matcher)
            pos_thresholds = [g.gt_boxes.tensor.new_full((len(g),), thr) for g in gt_instances]
        return DenseOutputs(
            features=features,
            cls_logits=[pick_anchor(x, i, a) for x, i in zip(logits, picks)],
            boxes=[pick_anchor(b, i, a) for b, i in zip(boxes, picks)],
            anchors=[x.tensor.reshape(-1, a, 4)[:, self.square_anchor] for x in anchors],
            strides=self.strides,
            image_sizes=list(image_sizes),
            pos_thresholds=pos_thresholds,
            offset=self.anchor_offset,
            extras=extras,
        )

    @torch.no_grad()
    def rpn_positive_anchors(self, anchors: List[Boxes], gt_instances: List[Instances]) -> Tensor:
        """[N, sum Hl*Wl*A] bool: the anchors the RPN's matcher labels positive, before its random
        subsampling (so that reading them draws no random numbers)."""
        anchors = Boxes.cat(anchors)
        matcher = self.proposal_generator.anchor_matcher
        return torch.stack([matcher(pairwise_iou(g.gt_boxes, anchors))[1] == 1 for g in gt_instances])

    def forward_distill(self, batched_inputs: List[Dict]) -> Tuple[Dict[str, Tensor], DenseOutputs]:
        """
        A student's forward: the detector's own training `forward` (RPN, box and mask losses; a subclass
        that overrides it is distilled as it trains), with its FPN features and RPN predictions read on
        the way, and the DenseOutputs built from them.
        """
        seen = {}
        hooks = [
            self.backbone.register_forward_hook(lambda m, i, out: seen.setdefault("features", out)),
            self.head.register_forward_hook(lambda m, i, out: seen.setdefault("predictions", out)),
        ]
        try:
            losses = self(batched_inputs)
        finally:
            for h in hooks:
                h.remove()
        features = [seen["features"][f] for f in self.head_in_features]
        image_sizes = [tuple(x["image"].shape[-2:]) for x in batched_inputs]
        outputs = self.dense_outputs_from_predictions(
            features, seen["predictions"], image_sizes, self.gt_instances(batched_inputs)
        )
        return losses, outputs
