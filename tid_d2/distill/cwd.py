"""CWD (Shu et al., ICCV 2021): channel-wise distillation of FPN features."""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import Instances
from torch import Tensor

from ..structures import DenseOutputs
from .adapters import AdaptedFeatureDistiller
from .base import DISTILLER_REGISTRY
from .helpers import feature_pairs

__all__ = ["CWD", "channel_wise_kl"]


def channel_wise_kl(student: Tensor, teacher: Tensor, tau: float) -> Tensor:
    """
    Turn every channel of [N, C, H, W] maps into a distribution over its H*W locations
    (softmax(x / tau)) and return sum_{n,c} KL(teacher || student) * tau^2 / (N * C).
    """
    n, c = teacher.shape[:2]
    log_p_t = F.log_softmax(teacher.reshape(n * c, -1) / tau, dim=1)
    log_p_s = F.log_softmax(student.reshape(n * c, -1) / tau, dim=1)
    kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum()
    return kl * tau**2 / (n * c)


@DISTILLER_REGISTRY.register()
class CWD(AdaptedFeatureDistiller):
    """
    CWD: on every FPN level, KL divergence between the teacher's and the student's per-channel
    spatial distributions (temperature tau), normalized by N*C, times the loss weight; summed over
    levels.
    """

    config = {
        "TAU": (1.0, "softmax temperature"),
        "LOSS_WEIGHT": (10.0, "per level; mmrazor's FPN detection configs"),
    }

    @configurable
    def __init__(self, *, tau: float, **kwargs):
        """tau: the softmax temperature; kwargs: the `AdaptedFeatureDistiller` arguments."""
        super().__init__(**kwargs)
        if tau <= 0:
            raise ValueError(f"MODEL.DISTILL.CWD.TAU must be > 0, got {tau}")
        self.tau = tau

    def losses(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        pairs = feature_pairs(teacher, student, self.adapter, "CWD", norm=self.feature_norm)
        per_level = torch.stack([channel_wise_kl(s, t, self.tau) for t, s in pairs])
        return {"": per_level.sum() * self.loss_weight}, {"cwd_per_level": per_level}
