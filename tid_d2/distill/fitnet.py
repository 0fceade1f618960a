"""FitNet-style feature imitation: MSE between adapted student and teacher FPN features."""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Instances
from torch import Tensor

from ..structures import DenseOutputs
from .adapters import AdaptedFeatureDistiller
from .base import DISTILLER_REGISTRY
from .helpers import feature_pairs

__all__ = ["FITNET"]


@DISTILLER_REGISTRY.register()
class FITNET(AdaptedFeatureDistiller):
    """
    Feature imitation in the spirit of FitNets (Romero et al., ICLR 2015) as used for detectors:
    the mean squared error between the adapted student and the teacher features, averaged over all
    channels and all locations of all FPN levels (every location weighs the same).
    """

    config = {"LOSS_WEIGHT": (1.0, "weight of the mean squared error")}

    def losses(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        pairs = feature_pairs(teacher, student, self.adapter, "FITNET", norm=self.feature_norm)
        sums = torch.stack([F.mse_loss(s, t, reduction="sum") for t, s in pairs])
        numel = sum(t.numel() for t, _ in pairs)
        loss = sums.sum() / max(numel, 1)
        per_level = torch.stack([sq / max(t.numel(), 1) for sq, (t, _) in zip(sums, pairs)])
        return {"": loss * self.loss_weight}, {"mse_per_level": per_level}
