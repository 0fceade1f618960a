"""`AnchorPointDetector`: what GFL and ATSS share (one square anchor per location, ATSS assignment,
DenseOutputs for distillers, Detectron2's per-level decoding and NMS for inference)."""
from typing import Dict, List, Optional, Sequence, Tuple

import math

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

__all__ = ["AnchorPointDetector", "anchor_point_config", "reduce_mean", "select_candidates"]


def reduce_mean(x: Tensor) -> Tensor:
    """Mean of `x` over all distributed workers (identity in a single process)."""
    if comm.get_world_size() == 1:
        return x
    x = x.clone()
    dist.all_reduce(x.div_(comm.get_world_size()))
    return x


def select_candidates(scores: Tensor, thresh: float, topk: int) -> Tuple[Tensor, Tensor, Tensor]:
    """
    The (location, class) pairs of `scores` [R, K] above `thresh`, at most `topk` of them, highest
    first (Detectron2's and mmdetection's per-level pre-NMS selection) -> scores, location and class
    indices, each [C].
    """
    keep = scores > thresh
    idx = keep.nonzero()
    kept, order = scores[keep].topk(min(topk, len(idx)))
    locations, classes = idx[order].unbind(dim=1)
    return kept, locations, classes


def valid_anchor_mask(
    anchors: List[Boxes], strides: Sequence[int], image_size: Tuple[int, int], size_divisibility: int
) -> Tensor:
    """
    [A] bool: anchors whose feature location lies inside the image's own padded area (its size
    rounded up to `size_divisibility`), not in the extra padding a batch adds to smaller images.
    These are mmdetection's anchor valid flags; level l keeps locations x < ceil(padded_w / s_l).
    """
    h, w = image_size
    if size_divisibility > 1:
        h, w = (math.ceil(v / size_divisibility) * size_divisibility for v in (h, w))
    masks = []
    for a, s in zip(anchors, strides):
        limit = a.tensor.new_tensor([math.ceil(w / s), math.ceil(h / s)])
        masks.append(((a.get_centers() / s).floor() < limit).all(dim=1))
    return cat(masks)


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
        "test_clip_boxes": c.CLIP_BOXES_TEST,
        "ignore_batch_padding": c.IGNORE_BATCH_PADDING,
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
    gives_pos_thresholds = True  # the ATSS assigner's per-GT thresholds

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
        test_clip_boxes: bool = False,
        ignore_batch_padding: bool = False,
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
        self.test_clip_boxes = test_clip_boxes
        self.ignore_batch_padding = ignore_batch_padding
        self.input_format = input_format

    # ----- what subclasses define ---------------------------------------------------------------
    def pred_dims(self) -> List[int]:
        """Per-location channels of each head output, in `pred_names` order."""
        raise NotImplementedError

    def level_deltas(self, reg: Tensor, stride: int) -> Tensor:
        """Box deltas [..., 4] for `box2box_transform` from regression outputs [..., D] of one level."""
        raise NotImplementedError

    def losses(self, anchors: Tensor, strides: Tensor, preds: Dict[str, Tensor], gt_labels, gt_boxes):
        """Detection losses from flattened predictions `preds[name]` [N, A, D] and labels [N, A]
        (-1: ignored, no loss)."""
        raise NotImplementedError

    def level_scores(self, preds: Dict[str, Tensor]) -> Tuple[Tensor, Optional[Tensor]]:
        """
        Inference scores of one level from its flattened predictions: the scores [R, K] that are
        thresholded and top-k selected, and an optional factor [R] the kept scores are multiplied
        by before NMS (None: none).
        """
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
        ATSS labels for every image. With `ignore_batch_padding`, anchors outside an image's own
        padded area (`Instances.image_size` rounded up to the backbone's size divisibility) are
        not candidates and get label -1 (no loss), as mmdetection's valid flags.

        Returns:
            gt_labels [N, A] in [-1, K] (K = background, -1 = ignored), matched gt boxes [N, A, 4]
            (zeros for background) and the per-GT IoU thresholds, N x [M_i].
        """
        num_per_level = [len(a) for a in anchors]
        all_anchors = Boxes.cat(anchors).tensor
        labels, boxes, thresholds = [], [], []
        for inst in gt_instances:
            gt = inst.gt_boxes.tensor
            if self.ignore_batch_padding:
                valid = valid_anchor_mask(
                    anchors, self.strides, inst.image_size, self.backbone.size_divisibility
                )
                per_level = torch.stack([v.sum() for v in valid.split(num_per_level)]).tolist()
                valid_idx, thr = atss_assign(all_anchors[valid], per_level, gt, topk=self.atss_topk)
                idx = torch.full((len(all_anchors),), -1, dtype=torch.long, device=gt.device)
                idx[valid] = valid_idx
            else:
                valid = None
                idx, thr = atss_assign(all_anchors, num_per_level, gt, topk=self.atss_topk)
            pos = idx >= 0
            safe = idx.clamp(min=0)
            if len(inst) > 0:
                lab = torch.where(pos, inst.gt_classes[safe], torch.full_like(idx, self.num_classes))
                box = gt[safe] * pos[:, None]
            else:
                lab = torch.full_like(idx, self.num_classes)
                box = torch.zeros_like(all_anchors)
            if valid is not None:
                lab = lab.masked_fill(~valid, -1)
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
            extras["pos_mask"] = (gt_labels >= 0) & (gt_labels < self.num_classes)
        if "ctr" in preds:  # L x [N, Hl*Wl, 1] centerness logits (ATSS)
            extras["ctr_logits"] = preds["ctr"]
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
        return [
            self.inference_single_image(
                anchors, [{k: v[l][i] for k, v in preds.items()} for l in range(len(anchors))], size
            )
            for i, size in enumerate(images.image_sizes)
        ]

    def inference_single_image(
        self, anchors: List[Boxes], level_preds: List[Dict[str, Tensor]], image_size: Tuple[int, int]
    ) -> Instances:
        """
        Detections of one image from its per-level predictions `level_preds[l][name]` [R_l, D]:
        per-level threshold and top-k, box decoding, optional clipping to the image (dropping boxes
        left empty) before class-wise NMS, then the `max_detections_per_image` best.
        """
        boxes, scores, classes = [], [], []
        for a, p, stride in zip(anchors, level_preds, self.strides):
            level_scores, factor = self.level_scores(p)
            kept, loc, cls = select_candidates(
                level_scores, self.test_score_thresh, self.test_topk_candidates
            )
            deltas = self.level_deltas(p["reg"][loc], stride)
            boxes.append(self.box2box_transform.apply_deltas(deltas, a.tensor[loc]))
            scores.append(kept if factor is None else kept * factor[loc])
            classes.append(cls)
        pred = Instances(
            image_size, pred_boxes=Boxes(cat(boxes)), scores=cat(scores), pred_classes=cat(classes)
        )
        if self.test_clip_boxes:
            pred.pred_boxes.clip(image_size)
            pred = pred[pred.pred_boxes.nonempty()]
        keep = batched_nms(pred.pred_boxes.tensor, pred.scores, pred.pred_classes, self.test_nms_thresh)
        return pred[keep[: self.max_detections_per_image]]
