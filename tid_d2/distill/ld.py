"""LD (Zheng et al., CVPR 2022): localization distillation of GFL box-side distributions."""
import logging
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import Instances
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ..structures import DenseOutputs, batched_iou
from .base import DISTILLER_REGISTRY, Distiller, check_loss_weights
from .helpers import pad_targets

__all__ = ["LD", "batched_diou", "side_kl"]

logger = logging.getLogger(__name__)


def side_kl(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> Tensor:
    """
    KL(softmax(T / tau) || softmax(S / tau)) * tau^2 of each box side, averaged over its bins.

    Args:
        student_logits, teacher_logits: [..., 4 * (reg_max + 1)] box-side distribution logits.
    Returns:
        [..., 4] per-side divergences.
    """
    shape = student_logits.shape[:-1] + (4, -1)
    log_p_s = F.log_softmax(student_logits.reshape(shape) / tau, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.reshape(shape) / tau, dim=-1)
    return (log_p_t.exp() * (log_p_t - log_p_s)).mean(dim=-1) * tau**2


def batched_diou(a: Tensor, b: Tensor, iou: Tensor) -> Tensor:
    """DIoU [N, A, M] of boxes a [N, A, 4] and b [N, M, 4] (XYXY) from their IoU [N, A, M]."""
    a, b = a[:, :, None], b[:, None]
    center_dist = (((a[..., :2] + a[..., 2:]) - (b[..., :2] + b[..., 2:])) / 2).pow(2).sum(-1)
    hull = torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])
    return iou - center_dist / hull.pow(2).sum(-1).clamp(min=1e-6)


@DISTILLER_REGISTRY.register()
class LD(Distiller):
    """
    LD on GFL box-side distributions (`DenseOutputs.box_logits`), with per-side divergence
    kl = side_kl(S, T, tau) [N, A, 4] (see `side_kl`):

    - main region: loss_ld = W * sum over positive locations of w * sum_sides kl / 4, with w the
      student's max class score (detached), as the public LD head weights it. Positives are the
      student's assigner positives, `student.extras["pos_mask"]` [N, A]; without that key,
      locations whose teacher box has IoU >= MAIN_IOU_THRESH with a GT.
    - valuable localization region (VLR): loss_ld_vlr = W_vlr * sum over VLR locations of
      IoU * sum_sides kl / 16, where VLR = non-positive locations whose anchor has
      VLR_ALPHA * thr_g <= DIoU(anchor, g) < thr_g with some GT g (thr_g: the student assigner's
      per-GT positive threshold, `student.pos_thresholds`) and IoU its largest IoU with such a GT.
      Without thresholds (non-ATSS students) the VLR term is zero.

    Like the public LD, the sums are over the batch (not averaged over locations or images).
    """

    config = {
        "TAU": (10.0, "softmax temperature"),
        "LOSS_WEIGHT": (0.25, "main region: the student assigner's positives"),
        "VLR_WEIGHT": (0.25, "valuable localization region (0 disables it)"),
        "VLR_ALPHA": (0.25, "VLR: VLR_ALPHA * thr_pos <= DIoU(anchor, GT) < thr_pos"),
        "MAIN_IOU_THRESH": (0.5, "teacher-box IoU main region if no extras['pos_mask']"),
    }
    main_weights = ("LOSS_WEIGHT", "VLR_WEIGHT")
    needs_box_distributions = True
    needs_dense_class_head = True

    @configurable
    def __init__(
        self,
        *,
        tau: float,
        loss_weight: float,
        vlr_weight: float,
        vlr_alpha: float,
        main_iou_thresh: float,
        **base,
    ):
        """
        Args:
            tau: softmax temperature of the distributions.
            loss_weight, vlr_weight: weights W, W_vlr of the main and VLR terms.
            vlr_alpha: the VLR's lower DIoU bound as a fraction of the positive threshold.
            main_iou_thresh: teacher-box IoU that makes the main region when the student hands
                no `pos_mask`.
            base: the `Distiller` arguments.
        """
        super().__init__(**base)
        if tau <= 0:
            raise ValueError(f"MODEL.DISTILL.LD.TAU must be > 0, got {tau}")
        check_loss_weights("MODEL.DISTILL.LD", LOSS_WEIGHT=loss_weight, VLR_WEIGHT=vlr_weight)
        self.tau = tau
        self.loss_weight = loss_weight
        self.vlr_weight = vlr_weight
        self.vlr_alpha = vlr_alpha
        self.main_iou_thresh = main_iou_thresh
        self._warned_no_thresholds = False

    def losses(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        self._check(teacher, student)
        s_logits = student.flat("box_logits")  # [N, A, 4 * (reg_max + 1)]
        t_logits = teacher.flat("box_logits").detach()
        kl = side_kl(s_logits, t_logits, self.tau).sum(dim=-1)  # [N, A]

        gt, _, valid = pad_targets(targets, s_logits.device)
        main = self._main_region(teacher, student, gt, valid)
        score = student.flat("cls_logits").detach().sigmoid().max(dim=-1).values  # [N, A]
        loss_main = (kl * score * main).sum() / 4.0

        vlr = self._vlr_weights(student, gt, valid, main)
        loss_vlr = (kl * vlr).sum() / 16.0

        diagnostics = {
            "num_main": main.sum().float(),
            "num_vlr": (vlr > 0).sum().float(),
            "kl_main_mean": (kl.detach() * main).sum() / main.sum().clamp(min=1),
        }
        return {"": loss_main * self.loss_weight, "vlr": loss_vlr * self.vlr_weight}, diagnostics

    def _check(self, teacher: DenseOutputs, student: DenseOutputs) -> None:
        for who, out in (("teacher", teacher), ("student", student)):
            if out.box_logits is None:
                raise ValueError(
                    f"LD distills GFL box-side distributions, but the {who}'s "
                    "DenseOutputs.box_logits is None: LD does not apply to detectors without them "
                    "(ATSS, FCOS); remove LD from MODEL.DISTILL.METHODS or use a GFL teacher and "
                    "student"
                )
        s_shapes = [tuple(x.shape) for x in student.box_logits]
        t_shapes = [tuple(x.shape) for x in teacher.box_logits]
        if s_shapes != t_shapes:
            raise ValueError(
                "LD needs teacher and student box_logits of the same shapes (same levels, "
                f"locations and MODEL.GFL.REG_MAX), got teacher {t_shapes} and student {s_shapes}"
            )

    def _main_region(self, teacher, student, gt: Tensor, valid: Tensor) -> Tensor:
        """[N, A] float mask of the main distillation region."""
        pos = student.extras.get("pos_mask")
        if pos is not None:
            return pos.float()
        if gt.shape[1] == 0:
            return gt.new_zeros(teacher.flat("boxes").shape[:2])
        iou = batched_iou(teacher.flat("boxes").detach().float(), gt)
        iou = iou.masked_fill(~valid[:, None], 0.0)
        return (iou.max(dim=-1).values >= self.main_iou_thresh).float()

    def _vlr_weights(self, student, gt: Tensor, valid: Tensor, main: Tensor) -> Tensor:
        """[N, A] VLR weights (IoU with the GT that puts a location in the VLR, else 0)."""
        thresholds: Optional[List[Tensor]] = student.pos_thresholds
        n, a = main.shape
        if self.vlr_weight == 0 or not valid.any():
            return main.new_zeros(n, a)
        if thresholds is None:
            if not self._warned_no_thresholds:
                logger.warning(
                    "LD: the student hands no pos_thresholds (no ATSS assigner), so the "
                    "valuable-localization-region term loss_ld_vlr is zero"
                )
                self._warned_no_thresholds = True
            return main.new_zeros(n, a)
        counts = [len(t) for t in thresholds]
        if counts != valid.sum(dim=1).tolist():
            raise ValueError(
                f"LD: student.pos_thresholds hold {counts} thresholds per image but the targets "
                f"{valid.sum(dim=1).tolist()} GT boxes"
            )
        thr = pad_sequence([t.to(gt) for t in thresholds], batch_first=True)  # [N, M]
        anchors = torch.cat(student.anchors).to(gt)[None].expand(n, -1, -1)
        iou = batched_iou(anchors, gt)
        diou = batched_diou(anchors, gt, iou)
        thr = thr[:, None]
        inside = (diou >= self.vlr_alpha * thr) & (diou < thr) & valid[:, None]
        weight = iou.masked_fill(~inside, 0.0).max(dim=-1).values
        return weight * (1.0 - main)
