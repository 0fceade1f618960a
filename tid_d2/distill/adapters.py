"""`build_adapter`: phi, a 1x1 conv from student to teacher feature channels (for any distiller), and
`AdaptedDistiller` / `AdaptedFeatureDistiller`, the bases of methods on adapted features (the latter
with one loss weight)."""

import torch
from detectron2.config import configurable
from torch import nn

from ..structures import DistillLayout
from .base import Distiller, check_loss_weights

__all__ = ["ADAPTER_MODES", "AdaptedDistiller", "AdaptedFeatureDistiller", "build_adapter"]

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
