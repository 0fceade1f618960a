"""`AnchorPointDetector`: what GFL and ATSS share (one square anchor per location, ATSS assignment,
DenseOutputs for distillers, Detectron2's per-level decoding and NMS for inference)."""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
from torch import Tensor

from detectron2.layers import batched_nms, cat
from detectron2.modeling import build_backbone
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator
from detectron2.modeling.meta_arch.dense_detector import DenseDetector
from detectron2.structures import Boxes, ImageList, Instances
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..structures import DenseOutputs
from .assigners import atss_assign
from .distillable import DistillableDetector, decode_level_boxes
from .heads import DenseTowerHead

__all__ = ["AnchorPointDetector", "anchor_point_config", "reduce_mean"]


def reduce_mean(x: Tensor) -> Tensor:
    """Mean of `x` over all distributed workers (identity in a single process)."""
    if comm.get_world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x.div_(comm.get_world_size()))
    return x


def check_head_in_features(in_features, shapes, what: str = "head in_features") -> None:
    """Every head input must be a backbone output (named before anything is built on it)."""
    missing = [f for f in in_features if f not in shapes]
    if missing:
        raise ValueError(f"{what} {missing} are not backbone outputs {sorted(shapes)}")


def anchor_point_config(cfg, node_name: str, reg_channels: int, with_centerness: bool) -> Dict:
    """The `AnchorPointDetector` arguments of a yacs config whose detector keys are MODEL.<node_name>
    (backbone, DenseTowerHead, anchors, assignment, inference and input normalization)."""
    backbone = build_backbone(cfg)
    c = getattr(cfg.MODEL, node_name)
    shapes = backbone.output_shape()
    check_head_in_features(c.IN_FEATURES, shapes, f"MODEL.{node_name}.IN_FEATURES")
    head = DenseTowerHead(
        cfg,
        [shapes[f] for f in c.IN_FEATURES],
        node_name=node_name,
        reg_channels=reg_channels,
        with_centerness=with_centerness,
    )
    return {
        "backbone": backbone,
        "head": head,
        "head_in_features": c.IN_FEATURES,
        "num_classes": c.NUM_CLASSES,
        "anchor_scale": c.ANCHOR_SCALE,
        "atss_topk": c.ATSS_TOPK,
        "test_score_thresh": c.SCORE_THRESH_TEST,
        "test_topk_candidates": c.TOPK_CANDIDATES_TEST,
        "test_nms_thresh": c.NMS_THRESH_TEST,
        "max_detections_per_image": cfg.TEST.DETECTIONS_PER_IMAGE,
        "pixel_mean": cfg.MODEL.PIXEL_MEAN,
        "pixel_std": cfg.MODEL.PIXEL_STD,
        "input_format": cfg.INPUT.FORMAT,
    }


class AnchorPointDetector(DistillableDetector, DenseDetector):
    """
    Base of dense detectors with one square anchor of `anchor_scale * stride` per location, labelled by
    `atss_assign`. Subclasses define the head's outputs (`pred_dims`), how regression outputs become
    box deltas (`level_deltas`), the losses and the inference scores.
    """

    #: names of the head outputs, in the order the head returns them
    pred_names: Tuple[str, ...] = ("cls", "reg")

    def __init__(
        self,
        *,
        backbone,
        head,
        head_in_features=None,
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
        check_head_in_features(self.head_in_features, shapes)
        strides = [shapes[f].stride for f in self.head_in_features]
        self.anchor_generator = DefaultAnchorGenerator(
            sizes=[[anchor_scale * s] for s in strides],
            aspect_ratios=[1.0],
            strides=strides,
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

    def forward_training(self, images, features, predictions, gt_instances):
        anchors = self.anchor_generator(features)
        preds = {k: cat(v, dim=1) for k, v in self.flatten(predictions).items()}
        gt_labels, gt_boxes, _ = self.label_anchors(anchors, gt_instances)
        strides = cat(
            [torch.full((len(a),), float(s), device=self.device) for a, s in zip(anchors, self.strides)]
        )
        return self.losses(Boxes.cat(anchors).tensor, strides, preds, gt_labels, gt_boxes)

    def dense_outputs_from_predictions(
        self,
        features: List[Tensor],
        predictions: List[List[Tensor]],
        image_sizes: Sequence[Tuple[int, int]],
        gt_instances: Optional[List[Instances]] = None,
    ) -> DenseOutputs:
        anchors = self.anchor_generator(features)
        preds = self.flatten(predictions)
        thresholds, extras = None, {}
        if gt_instances is not None:
            gt_labels, _, thresholds = self.label_anchors(anchors, gt_instances)
            extras["pos_mask"] = gt_labels < self.num_classes
        deltas = [self.level_deltas(r, s) for r, s in zip(preds["reg"], self.strides)]
        return DenseOutputs(
            features=features,
            cls_logits=preds["cls"],
            boxes=decode_level_boxes(self.box2box_transform, anchors, deltas),
            anchors=[a.tensor for a in anchors],
            strides=list(self.strides),
            image_sizes=list(image_sizes),
            offset=self.anchor_offset,
            pos_thresholds=thresholds,
            box_logits=preds["reg"] if self.has_box_distributions else None,
            extras=extras,
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
