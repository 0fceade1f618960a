"""FitNet-style feature imitation: MSE between adapted student and teacher FPN features.

Also home of `feature_pairs`, the level-by-level pairing (checks, teacher detach, adapter) that the
feature distillers (FitNet, FGD, PKD, CWD) share.
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import Instances
from torch import Tensor, nn

from ..modeling.outputs import DenseOutputs
from .adapters import build_adapter
from .base import DISTILLER_REGISTRY, Distiller

__all__ = ["FITNET", "feature_pairs"]


def feature_pairs(
    teacher: DenseOutputs,
    student: DenseOutputs,
    adapter,
    method: str,
    resize_student: bool = False,
) -> List[Tuple[Tensor, Tensor]]:
    """
    Pair the FPN features of teacher and student level by level.

    Args:
        adapter: an `nn.Module` applied to every student level, or a sequence with one per level.
        method: the distiller's name, for error messages.
        resize_student: bilinearly resize student maps whose size differs from the teacher's
            (PKD does); otherwise a size mismatch is an error.

    Returns:
        L pairs (t, s): t [N, Ct, Hl, Wl] detached teacher features; s [N, Ct, Hl, Wl] student
        features after the adapter (carrying the student's graph).
    """
    if teacher.num_levels != student.num_levels:
        raise ValueError(
            f"{method}: teacher has {teacher.num_levels} FPN levels, student {student.num_levels}; "
            "feature distillation needs the same levels (check MODEL.<HEAD>.IN_FEATURES)"
        )
    per_level = isinstance(adapter, (list, tuple, nn.ModuleList))
    pairs = []
    for level, (t, s) in enumerate(zip(teacher.features, student.features)):
        if t.shape[0] != s.shape[0]:
            raise ValueError(
                f"{method}: teacher features have batch {t.shape[0]}, student {s.shape[0]} "
                f"at level {level}"
            )
        s = (adapter[level] if per_level else adapter)(s)
        if s.shape[1] != t.shape[1]:
            raise ValueError(
                f"{method}: adapted student features have {s.shape[1]} channels, teacher "
                f"{t.shape[1]} at level {level}; MODEL.DISTILL.ADAPTER must not be 'none' when "
                "channels differ"
            )
        if s.shape[-2:] != t.shape[-2:]:
            if not resize_student:
                raise ValueError(
                    f"{method}: student feature map {tuple(s.shape[-2:])} differs from teacher "
                    f"{tuple(t.shape[-2:])} at level {level}; feed both detectors the same images"
                )
            s = F.interpolate(s, size=t.shape[-2:], mode="bilinear", align_corners=False)
        pairs.append((t.detach(), s))
    return pairs


@DISTILLER_REGISTRY.register()
class FITNET(Distiller):
    """
    Feature imitation in the spirit of FitNets (Romero et al., ICLR 2015) as used for detectors:
    the mean squared error between the adapted student and the teacher features, averaged over all
    channels and all locations of all FPN levels (every location weighs the same).
    """

    name = "fitnet"

    @configurable
    def __init__(self, *, adapter: nn.Module, loss_weight: float):
        """
        Args:
            adapter: maps student features [N, Cs, H, W] to [N, Ct, H, W]; shared by all levels,
                as the detection head that reads them is.
            loss_weight: multiplies the mean squared error.
        """
        super().__init__()
        self.adapter = adapter
        self.loss_weight = loss_weight

    @classmethod
    def from_config(cls, cfg, teacher_channels: int, student_channels: int):
        return {
            "adapter": build_adapter(cfg.MODEL.DISTILL.ADAPTER, student_channels, teacher_channels),
            "loss_weight": cfg.MODEL.DISTILL.FITNET.LOSS_WEIGHT,
        }

    def forward(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Dict[str, Tensor]:
        pairs = feature_pairs(teacher, student, self.adapter, "FITNET")
        sums = torch.stack([F.mse_loss(s, t, reduction="sum") for t, s in pairs])
        numel = sum(t.numel() for t, _ in pairs)
        loss = sums.sum() / max(numel, 1)
        self.diagnostics = {
            "mse_per_level": torch.stack(
                [sq.detach() / max(t.numel(), 1) for sq, (t, _) in zip(sums, pairs)]
            )
        }
        return {"loss_fitnet": loss * self.loss_weight * self.loss_scale}
