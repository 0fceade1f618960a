"""FitNet-style feature imitation: MSE between adapted student and teacher FPN features."""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import Instances
from torch import Tensor, nn

from ..structures import DenseOutputs
from .adapters import build_adapter
from .base import DISTILLER_REGISTRY, Distiller, distiller_base_config
from .helpers import feature_pairs

__all__ = ["FITNET"]


@DISTILLER_REGISTRY.register()
class FITNET(Distiller):
    """
    Feature imitation in the spirit of FitNets (Romero et al., ICLR 2015) as used for detectors:
    the mean squared error between the adapted student and the teacher features, averaged over all
    channels and all locations of all FPN levels (every location weighs the same).
    """

    name = "fitnet"

    @configurable
    def __init__(self, *, adapter: nn.Module, loss_weight: float, **base):
        """
        Args:
            adapter: maps student features [N, Cs, H, W] to [N, Ct, H, W]; shared by all levels,
                as the detection head that reads them is.
            loss_weight: multiplies the mean squared error.
            base: the `Distiller` arguments.
        """
        super().__init__(**base)
        self.adapter = adapter
        self.loss_weight = loss_weight

    @classmethod
    def from_config(cls, cfg, teacher_channels: int, student_channels: int):
        return {
            "adapter": build_adapter(cfg.MODEL.DISTILL.ADAPTER, student_channels, teacher_channels),
            "loss_weight": cfg.MODEL.DISTILL.FITNET.LOSS_WEIGHT,
            **distiller_base_config(cfg),
        }

    def losses(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        pairs = feature_pairs(teacher, student, self.adapter, "FITNET")
        sums = torch.stack([F.mse_loss(s, t, reduction="sum") for t, s in pairs])
        numel = sum(t.numel() for t, _ in pairs)
        loss = sums.sum() / max(numel, 1)
        per_level = torch.stack([sq / max(t.numel(), 1) for sq, (t, _) in zip(sums, pairs)])
        return {"": loss * self.loss_weight}, {"mse_per_level": per_level}
