"""`AnchorPointDetector`: what GFL and ATSS share (one square anchor per location, ATSS assignment,
DenseOutputs for distillers, Detectron2's per-level decoding and NMS for inference)."""
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import Tensor, nn

from detectron2.layers import batched_nms, cat
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .assigners import atss_assign
from .outputs import DenseOutputs

__all__ = ["DistillableMixin", "AnchorPointDetector", "reduce_mean", "level_names"]


def reduce_mean(x: Tensor) -> Tensor:
    """Mean of `x` over all distributed workers (identity in a single process)."""
    if comm.get_world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x.div_(comm.get_world_size()))
    return x


def level_names(strides: List[int]) -> List[str]:
    """FPN level names from strides, e.g. [8, 16] -> ["p3", "p4"]."""
    return [f"p{int(s).bit_length() - 1}" for s in strides]


class DistillableMixin:
    """What a DenseDetector needs to hand `DenseOutputs` to distillers: `extract`, `gt_instances`,
    `forward_distill` (student: losses + outputs) and `dense_outputs` (teacher: outputs only)."""

    def extract(self, batched_inputs) -> Tuple[ImageList, List[Tensor], List[List[Tensor]]]:
        """Normalize and batch images, run backbone and head: (images, features, raw predictions)."""
        images = self.preprocess_image(batched_inputs)
        features = self.backbone(images.tensor)
        features = [features[f] for f in self.head_in_features]
        return images, features, self.head(features)

    def gt_instances(self, batched_inputs) -> List[Instances]:
        if "instances" not in batched_inputs[0]:
            raise ValueError("Training needs 'instances' in every input dict (ground-truth boxes).")
        return [x["instances"].to(self.device) for x in batched_inputs]


class AnchorPointDetector(DistillableMixin, DenseDetector):
    """
    Base of dense detectors with one square anchor of `anchor_scale * stride` per location, labelled by
    `atss_assign`. Subclasses define the head's outputs (`pred_dims`), how regression outputs become
    box deltas (`level_deltas`), the losses and the inference scores.
    """

    #: names of the head outputs, in the order the head returns them
    pred_names: Tuple[str, ...] = ("cls", "reg")
    #: whether "reg" holds GFL-style box-side distributions (exposed as DenseOutputs.box_logits)
    has_box_distributions: bool = False

    def __init__(
        self,
        backbone,
        head,
        head_in_features=None,
        *,
        num_classes: int,
        box2box_transform,
        anchor_scale: float = 8.0,
        atss_topk: int = 9,
        test_score_thresh: float = 0.05,
        test_topk_candidates: int = 1000,
        test_nms_thresh: float = 0.6,
        max_detections_per_image: int = 100,
        pixel_mean,
        pixel_std,
        input_format: str = "BGR",
    ):
        super().__init__(backbone, head, head_in_features, pixel_mean=pixel_mean, pixel_std=pixel_std)
        shapes = backbone.output_shape()
        missing = [f for f in self.head_in_features if f not in shapes]
        if missing:
            raise ValueError(f"head in_features {missing} are not backbone outputs {sorted(shapes)}")
        self.strides = [shapes[f].stride for f in self.head_in_features]
        self.anchor_generator = DefaultAnchorGenerator(
            sizes=[[anchor_scale * s] for s in self.strides],
            aspect_ratios=[1.0],
            strides=self.strides,
            offset=0.0,
        )
        self.num_classes = num_classes
        self.box2box_transform = box2box_transform
        self.atss_topk = atss_topk
        self.test_score_thresh = test_score_thresh
        self.test_topk_candidates = test_topk_candidates
        self.test_nms_thresh = test_nms_thresh
        self.max_detections_per_image = max_detections_per_image
        self.input_format = input_format

    # ----- what subclasses define ---------------------------------------------------------------
    def pred_dims(self) -> List[int]:
        """Per-location channels of each head output, in `pred_names` order."""
        raise NotImplementedError

    def level_deltas(self, reg: Tensor, stride: int) -> Tensor:
        """Box deltas [..., 4] for `box2box_transform` from regression outputs [..., D] of one level."""
        raise NotImplementedError

    def losses(self, anchors: Tensor, strides: Tensor, preds: Dict[str, Tensor], gt_labels, gt_boxes):
        """Detection losses from flattened predictions `preds[name]` [N, A, D] and labels [N, A]."""
        raise NotImplementedError

    def level_scores(self, preds: Dict[str, Tensor]) -> Tensor:
        """Inference scores [..., K] of one level from its flattened predictions."""
        raise NotImplementedError

    # ----- shared machinery ---------------------------------------------------------------------
    def flatten(self, predictions: List[List[Tensor]]) -> Dict[str, List[Tensor]]:
        """Per-level raw predictions (N, D, H, W) -> dict name -> L x [N, H*W, D]."""
        per_name = self._transpose_dense_predictions(predictions, self.pred_dims())
        return dict(zip(self.pred_names, per_name))

    @torch.no_grad()
    def label_anchors(
        self, anchors: List[Boxes], gt_instances: List[Instances]
    ) -> Tuple[Tensor, Tensor, List[Tensor]]:
        """
        ATSS labels for every image.

        Returns:
            gt_labels [N, A] in [0, K] (K = background), matched gt boxes [N, A, 4] (zeros for
            background) and the per-GT IoU thresholds, N x [M_i].
        """
        num_per_level = [len(a) for a in anchors]
        all_anchors = Boxes.cat(anchors).tensor
        labels, boxes, thresholds = [], [], []
        for inst in gt_instances:
            gt = inst.gt_boxes.tensor
            idx, thr = atss_assign(all_anchors, num_per_level, gt, topk=self.atss_topk)
            pos = idx >= 0
            safe = idx.clamp(min=0)
            if len(inst) > 0:
                lab = torch.where(pos, inst.gt_classes[safe], torch.full_like(idx, self.num_classes))
                box = gt[safe] * pos[:, None]
            else:
                lab = torch.full_like(idx, self.num_classes)
                box = torch.zeros_like(all_anchors)
            labels.append(lab)
            boxes.append(box)
            thresholds.append(thr)
        return torch.stack(labels), torch.stack(boxes), thresholds

    def _train(self, images, features, predictions, gt_instances, with_outputs: bool):
        anchors = self.anchor_generator(features)
        preds = self.flatten(predictions)
        gt_labels, gt_boxes, thresholds = self.label_anchors(anchors, gt_instances)
        strides = cat(
            [torch.full((len(a),), float(s), device=self.device) for a, s in zip(anchors, self.strides)]
        )
        anchors_cat = Boxes.cat(anchors).tensor
        flat = {k: cat(v, dim=1) for k, v in preds.items()}
        losses = self.losses(anchors_cat, strides, flat, gt_labels, gt_boxes)
        if not with_outputs:
            return losses, None
        outputs = self._dense_outputs(images, features, anchors, preds, thresholds)
        outputs.extras["pos_mask"] = gt_labels < self.num_classes
        return losses, outputs

    def forward_training(self, images, features, predictions, gt_instances):
        return self._train(images, features, predictions, gt_instances, with_outputs=False)[0]

    def forward_distill(self, batched_inputs) -> Tuple[Dict[str, Tensor], DenseOutputs]:
        """Training forward for a distilled student: (detection losses, DenseOutputs)."""
        images, features, predictions = self.extract(batched_inputs)
        return self._train(images, features, predictions, self.gt_instances(batched_inputs), True)

    def dense_outputs(self, batched_inputs, gt_instances: Optional[List[Instances]] = None):
        """DenseOutputs without losses (a teacher's forward); assigner thresholds need GT."""
        images, features, predictions = self.extract(batched_inputs)
        anchors = self.anchor_generator(features)
        thresholds = None
        if gt_instances is not None:
            thresholds = self.label_anchors(anchors, gt_instances)[2]
        return self._dense_outputs(images, features, anchors, self.flatten(predictions), thresholds)

    def _dense_outputs(self, images, features, anchors, preds, thresholds) -> DenseOutputs:
        boxes = []
        for a, s, reg in zip(anchors, self.strides, preds["reg"]):
            n, hw, _ = reg.shape
            deltas = self.level_deltas(reg, s).reshape(n * hw, 4)
            decoded = self.box2box_transform.apply_deltas(deltas, a.tensor.repeat(n, 1))
            boxes.append(decoded.reshape(n, hw, 4))
        return DenseOutputs(
            features=features,
            cls_logits=preds["cls"],
            boxes=boxes,
            anchors=[a.tensor for a in anchors],
            strides=list(self.strides),
            image_sizes=list(images.image_sizes),
            pos_thresholds=thresholds,
            box_logits=preds["reg"] if self.has_box_distributions else None,
            centerness_logits=[c.squeeze(-1) for c in preds["ctr"]] if "ctr" in preds else None,
        )

    def put_num_pos(self, num_pos: float, num_images: int) -> None:
        try:
            get_event_storage().put_scalar("num_pos_anchors", num_pos / num_images)
        except AssertionError:  # no EventStorage outside a trainer
            pass

    def forward_inference(self, images: ImageList, features: List[Tensor], predictions):
        anchors = self.anchor_generator(features)
        preds = self.flatten(predictions)
        num_levels = len(anchors)
        results: List[Instances] = []
        for i, image_size in enumerate(images.image_sizes):
            level_preds = [{k: v[l][i] for k, v in preds.items()} for l in range(num_levels)]
            scores = [self.level_scores(p) for p in level_preds]
            deltas = [self.level_deltas(p["reg"], s) for p, s in zip(level_preds, self.strides)]
            pred = self._decode_multi_level_predictions(
                anchors, scores, deltas, self.test_score_thresh, self.test_topk_candidates, image_size
            )
            keep = batched_nms(
                pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh
            )
            results.append(pred[keep[: self.max_detections_per_image]])
        return results
