"""Detectron2's FCOS, made buildable from YAML (MODEL.FCOS.*) and distillable (DenseOutputs)."""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS as _D2FCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead
from detectron2.structures import Instances

from ..structures import DenseOutputs
from .distillable import DistillableDetector, decode_level_boxes

__all__ = ["FCOS"]


@META_ARCH_REGISTRY.register()
class FCOS(DistillableDetector, _D2FCOS):
    """Detectron2's FCOS with a `from_config`; its positive criterion (centre sampling + scale
    ranges) is not IoU based, so `DenseOutputs.pos_thresholds` is None (TID falls back to fixed)."""

    @configurable
    def __init__(self, *, input_format: str = "BGR", **kwargs):
        super().__init__(**kwargs)
        self.input_format = input_format

    @classmethod
    def from_config(cls, cfg):
        backbone = build_backbone(cfg)
        c = cfg.MODEL.FCOS
        shapes = backbone.output_shape()
        in_shapes = [shapes[f] for f in c.IN_FEATURES]
        head = FCOSHead(
            input_shape=in_shapes,
            conv_dims=[in_shapes[0].channels] * c.NUM_CONVS,
            num_classes=c.NUM_CLASSES,
            norm=c.HEAD_NORM,
            prior_prob=c.PRIOR_PROB,
        )
        return {
            "backbone": backbone,
            "head": head,
            "head_in_features": c.IN_FEATURES,
            "num_classes": c.NUM_CLASSES,
            "center_sampling_radius": c.CENTER_SAMPLING_RADIUS,
            "focal_loss_alpha": c.FOCAL_LOSS_ALPHA,
            "focal_loss_gamma": c.FOCAL_LOSS_GAMMA,
            "test_score_thresh": c.SCORE_THRESH_TEST,
            "test_topk_candidates": c.TOPK_CANDIDATES_TEST,
            "test_nms_thresh": c.NMS_THRESH_TEST,
            "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
            "pixel_mean": cfg.MODEL.PIXEL_MEAN,
            "pixel_std": cfg.MODEL.PIXEL_STD,
            "input_format": cfg.INPUT.FORMAT,
        }

    def head_predictions(self, cls_feats: List[Tensor], reg_feats: List[Tensor]) -> List[List[Tensor]]:
        """Detectron2's FCOSHead.forward after its towers: class logits, box regression, centerness."""
        head = self.head
        return (
            [head.cls_score(x) for x in cls_feats],
            [head.bbox_pred(x) for x in reg_feats],
            [head.ctrness(x) for x in reg_feats],
        )

    def dense_outputs_from_predictions(
        self,
        features: List[Tensor],
        predictions: List[List[Tensor]],
        image_sizes: Sequence[Tuple[int, int]],
        gt_instances: Optional[List[Instances]] = None,
    ) -> DenseOutputs:
        logits, deltas, _ = self._transpose_dense_predictions(predictions, [self.num_classes, 4, 1])
        anchors = self.anchor_generator(features)
        extras = {}
        if gt_instances is not None:
            gt_labels, _ = self.label_anchors(anchors, gt_instances)
            extras["pos_mask"] = torch.stack(gt_labels) < self.num_classes
        return DenseOutputs(
            features=features,
            cls_logits=logits,
            boxes=decode_level_boxes(self.box2box_transform, anchors, deltas),
            anchors=[a.tensor for a in anchors],
            strides=self.strides,
            image_sizes=list(image_sizes),
            offset=self.anchor_offset,
            extras=extras,
        )
