"""
`DistillableDetector`: the whole contract between a dense detector and the distillers.

A distiller sees a detector only through `DenseOutputs` and the members below. A detector becomes
distillable by mixing this class into a Detectron2 `DenseDetector` (it already provides
`preprocess_image`, `backbone`, `head`, `head_in_features`, `forward_training`, `pixel_mean` and
`pixel_std`) and implementing `dense_outputs_from_predictions`. See `retinanet.py` for a worked
example on Detectron2's own RetinaNet, and `rcnn.py` for a two-stage detector (its RPN is the dense head).
"""
import abc
import contextlib
from typing import Dict, List, Optional, Sequence, Tuple

from torch import Tensor, nn

from detectron2.structures import Boxes, ImageList, Instances

from ..structures import DenseOutputs
from .heads import tower_blocks

__all__ = ["DistillableDetector", "decode_level_boxes"]


def decode_level_boxes(box2box_transform, anchors: List[Boxes], deltas: List[Tensor]) -> List[Tensor]:
    """Decode per-level deltas L x [N, R, 4] on anchors L x Boxes(R) -> L x [N, R, 4] XYXY boxes."""
    boxes = []
    for a, d in zip(anchors, deltas):
        n, r, _ = d.shape
        decoded = box2box_transform.apply_deltas(d.reshape(n * r, 4), a.tensor.repeat(n, 1))
        boxes.append(decoded.reshape(n, r, 4))
    return boxes


class DistillableDetector(abc.ABC):
    """
    What a distiller may use of a detector:

    - `num_classes`, `input_format` ("BGR"/"RGB"), `pixel_mean` / `pixel_std` ([3, 1, 1] buffers):
      attributes every Detectron2 dense detector has;
    - `strides`, `feature_channels`, `anchor_offset`, `has_box_distributions`: the FPN layout;
    - `forward_distill` (student: its own `forward_training` losses and its DenseOutputs),
      `dense_outputs` (teacher: DenseOutputs only), `head_outputs` (the head on *given* features,
      e.g. the teacher's head on the student's features for CrossKD-style methods) and
      `gt_instances`.
    """

    #: whether DenseOutputs.box_logits holds GFL-style box-side distributions
    has_box_distributions: bool = False
    #: whether DenseOutputs.pos_thresholds holds per-GT positive IoU thresholds (an IoU-based assigner)
    gives_pos_thresholds: bool = False
    #: whether DenseOutputs.cls_logits are per-class scores of the detector's classifier (False for a
    #: two-stage detector, whose dense head is the class-agnostic RPN)
    has_dense_class_head: bool = True
    #: channel order of input images ("BGR" or "RGB"); detectors set it from INPUT.FORMAT
    input_format: str = "BGR"

    @abc.abstractmethod
    def dense_outputs_from_predictions(
        self,
        features: List[Tensor],
        predictions: List[List[Tensor]],
        image_sizes: Sequence[Tuple[int, int]],
        gt_instances: Optional[List[Instances]] = None,
    ) -> DenseOutputs:
        """
        Per-location outputs from the head's raw predictions on `features` (L x [N, C, Hl, Wl]).
        With `gt_instances`, also the detector's own positive criterion: `pos_thresholds` (when it is
        IoU based) and `extras["pos_mask"]` [N, sum Hl*Wl].
        """

    @property
    def strides(self) -> List[int]:
        """The stride of each head input level (the anchor generator's, fixed at construction)."""
        return list(self.anchor_generator.strides)

    @property
    def feature_channels(self) -> int:
        """Channels of the features the head reads (one count for all levels)."""
        shapes = self.backbone.output_shape()
        channels = {shapes[f].channels for f in self.head_in_features}
        if len(channels) != 1:
            raise ValueError(f"{type(self).__name__}: head levels have different channels {channels}")
        return channels.pop()

    @property
    def anchor_offset(self) -> float:
        """Where a location's centre sits in its stride cell (0.0: the cell's corner)."""
        return float(self.anchor_generator.offset)

    def inheritable_parts(self) -> Dict[str, nn.Module]:
        """What MODEL.DISTILL.INHERIT may copy from a teacher: the neck (the backbone without its
        `bottom_up` network, i.e. the FPN) and the head."""
        return {"neck": self.backbone, "head": self.head}

    def gt_instances(self, batched_inputs: List[Dict]) -> List[Instances]:
        if "instances" not in batched_inputs[0]:
            raise ValueError("Training needs 'instances' in every input dict (ground-truth boxes).")
        return [x["instances"].to(self.device) for x in batched_inputs]

    def extract_features(self, images: ImageList) -> List[Tensor]:
        """The head's input features L x [N, C, Hl, Wl] of a normalized, padded batch."""
        features = self.backbone(images.tensor)
        return [features[f] for f in self.head_in_features]

    def head_outputs(
        self,
        features: List[Tensor],
        image_sizes: Sequence[Tuple[int, int]],
        gt_instances: Optional[List[Instances]] = None,
    ) -> DenseOutputs:
        """Run this detector's head on `features` (its own or another model's of the same layout)."""
        return self.dense_outputs_from_predictions(
            features, self.head(features), image_sizes, gt_instances
        )

    def head_tower_blocks(self) -> Tuple[List[nn.Module], List[nn.Module]]:
        """The head's classification and regression conv towers (`head.cls_subnet`, `head.bbox_subnet`,
        as Detectron2's RetinaNet/FCOS heads and `DenseTowerHead` name them), as blocks of conv, norm
        and activation (`heads.tower_blocks`)."""
        cls, reg = getattr(self.head, "cls_subnet", None), getattr(self.head, "bbox_subnet", None)
        if not isinstance(cls, nn.Sequential) or not isinstance(reg, nn.Sequential):
            raise TypeError(
                f"{type(self).__name__}'s head has no cls_subnet / bbox_subnet conv towers: methods "
                "that read or reuse the head's towers (PGD FEATURES head, CrossKD) do not apply"
            )
        return tower_blocks(cls), tower_blocks(reg)

    def _cls_tower_blocks(self) -> List[nn.Module]:
        """The classification tower's blocks, or none when the head has no conv towers."""
        try:
            return self.head_tower_blocks()[0]
        except TypeError:
            return []

    @property
    def tower_channels(self) -> int:
        """Output channels of the head towers' first block (0 when the head has no conv towers)."""
        blocks = self._cls_tower_blocks()
        return blocks[0][0].out_channels if blocks else 0

    @property
    def tower_blocks(self) -> int:
        """Blocks in each head tower (0 when the head has no conv towers)."""
        return len(self._cls_tower_blocks())

    def head_towers(
        self, features: List[Tensor], blocks: int, activation: bool = True
    ) -> Tuple[List[Tensor], List[Tensor]]:
        """
        The classification and regression towers after their first `blocks` blocks, on `features`
        (L x [N, C, H, W]): two lists L x [N, C', H, W]. activation=False stops before the last
        block's activation (CrossKD reads the normalized, not yet activated tower output).
        """
        out = []
        for tower in self.head_tower_blocks():
            if not 1 <= blocks <= len(tower):
                raise ValueError(f"the head's towers have {len(tower)} blocks, asked for {blocks}")
            last = tower[blocks - 1] if activation else tower[blocks - 1][:-1]
            upto = nn.Sequential(*tower[: blocks - 1], last)
            out.append([upto(x) for x in features])
        return out[0], out[1]

    def head_outputs_from_towers(
        self,
        cls_feats: List[Tensor],
        reg_feats: List[Tensor],
        start: int,
        features: List[Tensor],
        image_sizes: Sequence[Tuple[int, int]],
    ) -> DenseOutputs:
        """
        This head from inside its towers: its tower blocks from `start` (0-based) on the given
        per-level tower inputs, then its predictors (`head.predict`), as DenseOutputs (`features`:
        what DenseOutputs.features holds). With start = 0 this is `head_outputs(features)`.
        """
        cls_tower, reg_tower = (nn.Sequential(*t[start:]) for t in self.head_tower_blocks())
        predictions = self.head_predictions([cls_tower(x) for x in cls_feats], [reg_tower(x) for x in reg_feats])
        return self.dense_outputs_from_predictions(features, predictions, image_sizes)

    def head_predictions(self, cls_feats: List[Tensor], reg_feats: List[Tensor]) -> List[List[Tensor]]:
        """The head's predictors on its towers' outputs, as `head(features)` returns them: the head's
        own `predict` (`DenseTowerHead`); a detector around another head overrides this."""
        if not hasattr(self.head, "predict"):
            raise TypeError(
                f"{type(self.head).__name__} has no predict(cls_feats, box_feats): override "
                f"{type(self).__name__}.head_predictions"
            )
        return self.head.predict(cls_feats, reg_feats)

    def dense_outputs(
        self, batched_inputs: List[Dict], gt_instances: Optional[List[Instances]] = None
    ) -> DenseOutputs:
        """A teacher's forward: DenseOutputs of a batch, no losses."""
        images = self.preprocess_image(batched_inputs)
        return self.head_outputs(self.extract_features(images), images.image_sizes, gt_instances)

    def forward_distill(self, batched_inputs: List[Dict]) -> Tuple[Dict[str, Tensor], DenseOutputs]:
        """
        A student's forward: the detector's own `forward_training` losses (so a subclass that
        overrides `losses` or `forward_training` is distilled as it trains) and its DenseOutputs.
        The anchors' labels are computed once for both.
        """
        images = self.preprocess_image(batched_inputs)
        features = self.extract_features(images)
        predictions = self.head(features)
        gt = self.gt_instances(batched_inputs)
        with self._labels_computed_once():
            losses = self.forward_training(images, features, predictions, gt)
            outputs = self.dense_outputs_from_predictions(
                features, predictions, images.image_sizes, gt
            )
        return losses, outputs

    @contextlib.contextmanager
    def _labels_computed_once(self):
        """Inside, `label_anchors` returns its first result again for the same GT objects and anchor
        layout (anchors are a function of the feature shapes, which do not change in one step)."""
        original = self.label_anchors
        memo = {}

        def label_anchors(anchors, gt_instances):
            key = (tuple(len(a) for a in anchors), tuple(id(g) for g in gt_instances))
            if key not in memo:
                memo[key] = (original(anchors, gt_instances), gt_instances)  # keeps the ids alive
            return memo[key][0]

        self.label_anchors = label_anchors
        try:
            yield
        finally:
            del self.label_anchors
