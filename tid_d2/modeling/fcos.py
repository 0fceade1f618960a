"""Detectron2's FCOS, made buildable from YAML (MODEL.FCOS.*) and distillable (DenseOutputs)."""
from typing import List, Optional

import torch

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY, build_backbone
from detectron2.modeling.meta_arch.fcos import FCOS as _D2FCOS
from detectron2.modeling.meta_arch.fcos import FCOSHead
from detectron2.structures import Instances

from .dense_base import DistillableMixin
from .outputs import DenseOutputs

__all__ = ["FCOS"]


@META_ARCH_REGISTRY.register()
class FCOS(DistillableMixin, _D2FCOS):
    """Detectron2's FCOS with a `from_config`; its positive criterion (centre sampling + scale
    ranges) is not IoU based, so `DenseOutputs.pos_thresholds` is None (TID falls back to fixed)."""

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)

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
        }

    @property
    def strides(self) -> List[int]:
        shapes = self.backbone.output_shape()
        return [shapes[f].stride for f in self.head_in_features]

    def forward_distill(self, batched_inputs):
        images, features, predictions = self.extract(batched_inputs)
        gt = self.gt_instances(batched_inputs)
        logits, deltas, ctr = self._transpose_dense_predictions(predictions, [self.num_classes, 4, 1])
        anchors = self.anchor_generator(features)
        gt_labels, gt_boxes = self.label_anchors(anchors, gt)
        losses = self.losses(anchors, logits, gt_labels, deltas, gt_boxes, ctr)
        outputs = self._dense_outputs(images, features, anchors, logits, deltas, ctr)
        outputs.extras["pos_mask"] = torch.stack(gt_labels) < self.num_classes
        return losses, outputs

    def dense_outputs(self, batched_inputs, gt_instances: Optional[List[Instances]] = None):
        images, features, predictions = self.extract(batched_inputs)
        logits, deltas, ctr = self._transpose_dense_predictions(predictions, [self.num_classes, 4, 1])
        anchors = self.anchor_generator(features)
        return self._dense_outputs(images, features, anchors, logits, deltas, ctr)

    def _dense_outputs(self, images, features, anchors, logits, deltas, ctr) -> DenseOutputs:
        boxes = []
        for a, d in zip(anchors, deltas):
            n, hw, _ = d.shape
            decoded = self.box2box_transform.apply_deltas(d.reshape(n * hw, 4), a.tensor.repeat(n, 1))
            boxes.append(decoded.reshape(n, hw, 4))
        return DenseOutputs(
            features=features,
            cls_logits=logits,
            boxes=boxes,
            anchors=[a.tensor for a in anchors],
            strides=self.strides,
            image_sizes=list(images.image_sizes),
            centerness_logits=[c.squeeze(-1) for c in ctr],
        )
