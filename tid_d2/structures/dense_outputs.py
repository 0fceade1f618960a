"""`DenseOutputs`: the one form in which any dense detector hands its per-location predictions to a
distiller (distillers import this, never a detector)."""
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["DenseOutputs"]


@dataclass
class DenseOutputs:
    """
    Per-level dense predictions of one detector on one batch of N images (L FPN levels, K classes).

    Attributes:
        features: L x [N, C, Hl, Wl] FPN features fed to the head (what feature distillers imitate).
        cls_logits: L x [N, Hl*Wl, K] raw classification logits (sigmoid gives class scores); K = 1 for
            a class-agnostic dense head (a two-stage detector's RPN objectness).
        boxes: L x [N, Hl*Wl, 4] decoded boxes, XYXY in padded input-image pixels.
        anchors: L x [Hl*Wl, 4] XYXY anchors of each location (the square the assigner scores).
        strides: L ints, the stride of each level.
        image_sizes: N (h, w) of the un-padded input images.
        pos_thresholds: N x [M_i] the detector's own per-GT positive IoU threshold (ATSS: mean + std
            of the candidate IoUs), or None when its positive criterion is not IoU based.
        box_logits: L x [N, Hl*Wl, 4 * (reg_max + 1)] GFL box-side distributions, or None.
        offset: where a location's centre sits in its stride cell (the anchor generator's offset).
        extras: detector-specific additions; "ctr_logits" L x [N, Hl*Wl, 1] centerness logits (heads
            that predict centerness); "pos_mask" [N, sum Hl*Wl] bool marks the detector's
            own training positives (given when GT was passed).
    """

    features: List[Tensor]
    cls_logits: List[Tensor]
    boxes: List[Tensor]
    anchors: List[Tensor]
    strides: List[int]
    image_sizes: List[Tuple[int, int]]
    pos_thresholds: Optional[List[Tensor]] = None
    box_logits: Optional[List[Tensor]] = None
    offset: float = 0.0
    extras: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        """Columns of cls_logits (1 for a class-agnostic head, whatever the detector's class count)."""
        return self.cls_logits[0].shape[-1]

    @property
    def num_levels(self) -> int:
        return len(self.features)

    @property
    def level_names(self) -> List[str]:
        """FPN level names from strides: stride 8 -> "p3"."""
        return [f"p{int(s).bit_length() - 1}" for s in self.strides]

    @property
    def level_shapes(self) -> List[Tuple[int, int]]:
        return [tuple(f.shape[-2:]) for f in self.features]

    def detach(self) -> "DenseOutputs":
        """A copy with every tensor detached (for teacher outputs and diagnostics)."""

        def _d(xs):
            return None if xs is None else [x.detach() for x in xs]

        return DenseOutputs(
            features=_d(self.features),
            cls_logits=_d(self.cls_logits),
            boxes=_d(self.boxes),
            anchors=_d(self.anchors),
            strides=list(self.strides),
            image_sizes=list(self.image_sizes),
            pos_thresholds=_d(self.pos_thresholds),
            box_logits=_d(self.box_logits),
            offset=self.offset,
            extras=dict(self.extras),
        )

    def flat(self, name: str) -> Tensor:
        """Concatenate a per-location attribute over levels: [N, sum(Hl*Wl), ...]."""
        return torch.cat(getattr(self, name), dim=1)
