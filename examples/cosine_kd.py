"""
A distillation method in one file, the walk-through of README "Distilling your own method":
the student's adapted FPN features point the same way as the teacher's, location by location
(1 - cosine similarity over channels, averaged over the locations of all levels).

Nothing else is edited. Put this module on the path and name it in TID_D2_DISTILLERS, then pick it
by its class name in any entry point:

    PYTHONPATH=examples TID_D2_DISTILLERS=cosine_kd python projects/TID/train_net.py \
        --config-file configs/quickstart/TID-GFL.yaml MODEL.DISTILL.METHODS "['COSINEKD']" \
        MODEL.DISTILL.COSINEKD.LOSS_WEIGHT 2.0

(a module saved in tid_d2/distill/ needs no TID_D2_DISTILLERS: the package imports all of its modules).
"""
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import Instances
from torch import Tensor

from tid_d2.distill import DISTILLER_REGISTRY
from tid_d2.distill.adapters import AdaptedFeatureDistiller
from tid_d2.distill.helpers import feature_pairs
from tid_d2.structures import DenseOutputs


@DISTILLER_REGISTRY.register()
class COSINEKD(AdaptedFeatureDistiller):
    """loss_cosinekd = LOSS_WEIGHT * mean over locations of (1 - cos(T_p, phi(S)_p))."""

    # MODEL.DISTILL.COSINEKD: each key's default and meaning; LOSS_WEIGHT is the main weight the
    # tuning protocol scales (`AdaptedFeatureDistiller.main_weights`)
    config = {
        "LOSS_WEIGHT": (1.0, "weight of the mean cosine distance"),
        "EPS": (1e-6, "added to the feature norms"),
    }

    @configurable
    def __init__(self, *, eps: float, **kwargs):
        """eps: MODEL.DISTILL.COSINEKD.EPS; kwargs: the adapter, the loss weight and the `Distiller`
        arguments (built from the config and the teacher/student layout by `from_config`)."""
        super().__init__(**kwargs)
        if not eps > 0:
            raise ValueError(f"MODEL.DISTILL.COSINEKD.EPS must be > 0, got {eps}")
        self.eps = float(eps)

    def losses(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        pairs = feature_pairs(teacher, student, self.adapter, "COSINEKD", norm=self.feature_norm)
        dist = [1 - F.cosine_similarity(s, t, dim=1, eps=self.eps) for t, s in pairs]  # L x [N, H, W]
        loss = torch.cat([d.flatten() for d in dist]).mean()
        per_level = torch.stack([d.mean() for d in dist])
        return {"": loss * self.loss_weight}, {"cosine_distance_per_level": per_level}
