"""`build_adapter`: phi, a 1x1 conv from student to teacher feature channels (for any distiller)."""

import torch
from torch import nn

__all__ = ["ADAPTER_MODES", "build_adapter"]

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
