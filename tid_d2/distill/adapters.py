"""`build_adapter`: phi, a 1x1 conv from student to teacher feature channels (for any distiller), and
`build_tower_adapters` (one per head tower); `AdaptedDistiller` / `AdaptedFeatureDistiller`, the bases
of methods on adapted features (the latter with one loss weight)."""

from typing import Tuple

import torch
from detectron2.config import configurable
from torch import nn

from ..structures import DistillLayout
from .base import Distiller, check_loss_weights

__all__ = ["ADAPTER_MODES", "AdaptedDistiller", "AdaptedFeatureDistiller", "build_adapter", "build_tower_adapters"]

#: values of MODEL.DISTILL.ADAPTER
ADAPTER_MODES = ("auto", "always", "none")


def build_adapter(cfg_mode: str, student_channels: int, teacher_channels: int) -> nn.Module:
    """
    Build phi: [N, student_channels, H, W] -> [N, teacher_channels, H, W]. It trains with the
    student and is dropped at export.

    Args:
        cfg_mode: MODEL.DISTILL.ADAPTER (case-insensitive).
            "auto": `nn.Identity` when the channel counts match, else a 1x1 conv;
            "always": a 1x1 conv (initialized to the identity map when the channel counts match,
            so that switching it on does not change the loss at the first iteration);
            "none": `nn.Identity`; the channel counts must match.
        student_channels, teacher_channels: FPN feature channels of the two detectors.
    """
    mode = str(cfg_mode).lower()
    if mode not in ADAPTER_MODES:
        raise ValueError(f"MODEL.DISTILL.ADAPTER must be one of {ADAPTER_MODES}, got '{cfg_mode}'")
    same = student_channels == teacher_channels
    if mode == "none":
        if not same:
            raise ValueError(
                f"MODEL.DISTILL.ADAPTER='none' but student features have {student_channels} "
                f"channels and teacher features {teacher_channels}; use 'auto' to add a 1x1 conv"
            )
        return nn.Identity()
    if mode == "auto" and same:
        return nn.Identity()
    conv = nn.Conv2d(student_channels, teacher_channels, kernel_size=1)
    if same:
        with torch.no_grad():
            conv.weight.copy_(torch.eye(teacher_channels).view(teacher_channels, -1, 1, 1))
            conv.bias.zero_()
    return conv


def build_tower_adapters(cfg_mode: str, layout: DistillLayout, who: str, remedy: str) -> Tuple[nn.Module, nn.Module]:
    """
    phi for each head tower (classification, regression), from the student's to the teacher's tower
    channels (`build_adapter`), for methods that read the towers; a ValueError naming `who` and the
    `remedy` when a model's head has no conv towers.
    """
    if not layout.teacher_tower_channels or not layout.student_tower_channels:
        raise ValueError(
            f"{who} reads the head towers, but this teacher or student head has none (cls_subnet / "
            f"bbox_subnet); {remedy}"
        )
    s, t = layout.student_tower_channels, layout.teacher_tower_channels
    return build_adapter(cfg_mode, s, t), build_adapter(cfg_mode, s, t)


class AdaptedDistiller(Distiller):
    """A method on student features mapped by one adapter phi (MODEL.DISTILL.ADAPTER), shared by all
    levels as the head that reads them is, built from the layout's channels."""

    @configurable
    def __init__(self, *, adapter: nn.Module, **base):
        """adapter: maps student features [N, Cs, H, W] to [N, Ct, H, W]; base: the `Distiller`
        arguments."""
        super().__init__(**base)
        self.adapter = adapter

    @classmethod
    def from_config(cls, cfg, layout: DistillLayout):
        adapter = build_adapter(cfg.ADAPTER, layout.student_channels, layout.teacher_channels)
        return {**super().from_config(cfg, layout), "adapter": adapter}


class AdaptedFeatureDistiller(AdaptedDistiller):
    """An `AdaptedDistiller` with one loss weight, its LOSS_WEIGHT key (its main weight)."""

    main_weights = ("LOSS_WEIGHT",)

    @configurable
    def __init__(self, *, loss_weight: float, **kwargs):
        """loss_weight: multiplies the method's loss; kwargs: the `AdaptedDistiller` arguments."""
        super().__init__(**kwargs)
        check_loss_weights(f"MODEL.DISTILL.{self.name.upper()}", LOSS_WEIGHT=loss_weight)
        self.loss_weight = loss_weight
