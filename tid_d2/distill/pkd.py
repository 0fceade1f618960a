"""PKD (Cao et al., NeurIPS 2022): feature imitation with the Pearson correlation coefficient."""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Instances
from torch import Tensor

from ..structures import DenseOutputs
from .adapters import AdaptedFeatureDistiller
from .base import DISTILLER_REGISTRY
from .helpers import feature_pairs

__all__ = ["PKD", "standardize_channels"]


def standardize_channels(x: Tensor, eps: float = 1e-6) -> Tensor:
    """
    Standardize every channel over the batch and the map: [N, C, H, W] -> [N, C, H, W] with zero
    mean and unit (unbiased) std per channel over (N, H, W); eps is added to the std as PKD does.
    """
    dims = (0, 2, 3)
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True)
    return (x - mean) / (std + eps)


@DISTILLER_REGISTRY.register()
class PKD(AdaptedFeatureDistiller):
    """
    PKD: on every FPN level, MSE between the channel-standardized student and teacher maps,
    divided by 2 (= 1 - Pearson r between the two maps, averaged over channels, up to the
    unbiased-std factor), times the loss weight; summed over levels.
    Student maps of another size are resized (bilinear) to the teacher's, as PKD does.
    """

    config = {"LOSS_WEIGHT": (10.0, "per level; mmrazor's dense-detector configs")}

    def losses(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        pairs = feature_pairs(
            teacher, student, self.adapter, "PKD", resize_student=True, norm=self.feature_norm
        )
        per_level = torch.stack(
            [F.mse_loss(standardize_channels(s), standardize_channels(t)) / 2 for t, s in pairs]
        )
        return {"": per_level.sum() * self.loss_weight}, {"pkd_per_level": per_level}
