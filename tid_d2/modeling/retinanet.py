"""
`DistillableRetinaNet`: Detectron2's own RetinaNet behind the distiller contract (the worked example
of "Distilling your own detector" in the README).

RetinaNet predicts A anchors per location (3 sizes x 3 aspect ratios by default); distillers work on
one prediction per location. Per location, the anchor whose best class score is highest (the one
inference is most likely to keep) gives the location's class logits and decoded box; its positive
set is "any of the location's anchors is a foreground anchor"; its square anchor (first size,
aspect ratio 1) is the location's anchor. Its positive criterion is a fixed IoU threshold
(MODEL.RETINANET.IOU_THRESHOLDS), so `pos_thresholds` is None and TID uses MODEL.DISTILL.TID.POS_THRESH.
"""
from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from detectron2.config import configurable
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.modeling.meta_arch.retinanet import RetinaNet
from detectron2.structures import Instances

from ..structures import DenseOutputs
from .anchor_reduction import best_anchor_per_location, pick_anchor, square_anchor_index
from .distillable import DistillableDetector, decode_level_boxes

__all__ = ["DistillableRetinaNet", "best_anchor_per_location", "square_anchor_index"]


@META_ARCH_REGISTRY.register()
class DistillableRetinaNet(DistillableDetector, RetinaNet):
    """Detectron2's RetinaNet (built from MODEL.RETINANET.* as usual) that can teach and learn."""

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.num_anchors = self.anchor_generator.num_cell_anchors[0]
        if len(set(self.anchor_generator.num_cell_anchors)) != 1:
            raise ValueError("DistillableRetinaNet needs the same number of anchors on every level")
        self.square_anchor = square_anchor_index(next(iter(self.anchor_generator.cell_anchors)))

    @classmethod
    def from_config(cls, cfg):
        return RetinaNet.from_config(cfg)

    def head_predictions(self, cls_feats: List[Tensor], reg_feats: List[Tensor]) -> List[List[Tensor]]:
        """Detectron2's RetinaNetHead.forward after its towers: class logits, box regression."""
        return [self.head.cls_score(x) for x in cls_feats], [self.head.bbox_pred(x) for x in reg_feats]

    def dense_outputs_from_predictions(
        self,
        features: List[Tensor],
        predictions: List[List[Tensor]],
        image_sizes: Sequence[Tuple[int, int]],
        gt_instances: Optional[List[Instances]] = None,
    ) -> DenseOutputs:
        a = self.num_anchors
        logits, deltas = self._transpose_dense_predictions(predictions, [self.num_classes, 4])
        anchors = self.anchor_generator(features)
        boxes = decode_level_boxes(self.box2box_transform, anchors, deltas)
        picks = [best_anchor_per_location(x, a) for x in logits]
        extras = {}
        if gt_instances is not None:
            gt_labels = torch.stack(self.label_anchors(anchors, gt_instances)[0])
            fg = (gt_labels >= 0) & (gt_labels < self.num_classes)
            extras["pos_mask"] = fg.reshape(fg.shape[0], -1, a).any(dim=-1)
        return DenseOutputs(
            features=features,
            cls_logits=[pick_anchor(x, i, a) for x, i in zip(logits, picks)],
            boxes=[pick_anchor(b, i, a) for b, i in zip(boxes, picks)],
            anchors=[x.tensor.reshape(-1, a, 4)[:, self.square_anchor] for x in anchors],
            strides=self.strides,
            image_sizes=list(image_sizes),
            offset=self.anchor_offset,
            extras=extras,
        )
