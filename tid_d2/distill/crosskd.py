"""
CrossKD (Wang et al., "CrossKD: Cross-Head Knowledge Distillation for Object Detection", CVPR 2024):
the student's head towers run up to a block (published: 3 of 4), their output, aligned to the
teacher's per-channel statistics there, goes through the rest of the teacher's frozen head; the
predictions of that cross head imitate the teacher's own predictions. The gradient reaches the student
through the teacher's head, so the student learns what moves the teacher's outputs, without the
conflict of imitating with its own head.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import Instances
from torch import Tensor, nn
from torchvision.ops import generalized_box_iou_loss

from ..structures import DenseOutputs, DistillLayout
from .adapters import AdaptedDistiller, build_adapter, build_tower_adapters
from .base import DISTILLER_REGISTRY, check_loss_weights
from .helpers import feature_pairs
from .ld import side_kl

__all__ = ["CROSSKD", "align_to_teacher", "kd_quality_focal_loss"]


def kd_quality_focal_loss(logits: Tensor, target: Tensor, beta: float = 1.0) -> Tensor:
    """Quality focal loss against soft targets: BCE(logits, target) * |sigmoid(logits) - target|^beta,
    elementwise (logits, target: [..., K]); 0 where the prediction equals the target."""
    target = target.to(logits.dtype)
    focal = (logits.sigmoid() - target).abs().pow(beta)
    return F.binary_cross_entropy_with_logits(logits, target, reduction="none") * focal


def align_to_teacher(student: Tensor, teacher: Tensor, eps: float = 1e-6) -> Tensor:
    """Standardize each student channel over (N, H, W), then give it the mean and std of the same
    teacher channel (detached), so the teacher's head sees inputs on its own scale. [N, C, H, W].
    Population std (a 1x1 map of one image gives std 0, not NaN)."""
    dims = (0, 2, 3)
    s_mean, s_std = student.mean(dim=dims, keepdim=True), student.std(dim=dims, keepdim=True, correction=0)
    t = teacher.detach()
    t_mean, t_std = t.mean(dim=dims, keepdim=True), t.std(dim=dims, keepdim=True, correction=0)
    return (student - s_mean) / (s_std + eps) * t_std + t_mean


@DISTILLER_REGISTRY.register()
class CROSSKD(AdaptedDistiller):
    """
    Losses (each times the warm-up):
    - loss_crosskd_cls: CLS_WEIGHT * kd_quality_focal_loss(cross logits, sigmoid(teacher logits)),
      summed over classes and locations, divided by the student's number of positives;
    - loss_crosskd_box: BOX_WEIGHT * GIoU loss of cross vs teacher boxes, weighted per location by
      the teacher's max class score (normalized by the weights' sum);
    - loss_crosskd_dist (detectors with GFL box distributions): DIST_WEIGHT * KL of the box-side
      distributions at temperature DIST_TAU, summed over bins, averaged over sides, same weights;
    - loss_crosskd_ctr (heads with centerness, ATSS): CTR_WEIGHT * BCE of the cross centerness against
      the teacher's (sigmoid) at the student's positives, divided by their number.
    The heads are run through the contract's `head_towers` / `head_outputs_from_towers` on the two
    detectors `TeacherStudent` attaches.
    """

    config = {
        "CLS_WEIGHT": (1.0, "KD quality focal loss of the cross head's classes"),
        "CLS_BETA": (1.0, "its focusing exponent"),
        "BOX_WEIGHT": (2.0, "GIoU of cross vs teacher boxes (the ATSS config uses 1.0)"),
        "DIST_WEIGHT": (3.0, "KL of GFL box distributions (GFL only)"),
        "DIST_TAU": (1.0, "its temperature"),
        "CTR_WEIGHT": (1.0, "BCE of the cross head's centerness against the teacher's at the student's "
                       "positives, / their number (heads with centerness: ATSS, as CrossKD's ATSS config)"),
        "REUSE_BLOCK": (-1, "the teacher's head is reused from this tower block k: the student's towers run "
                        "blocks 0..k-1 (the last one stopped before its activation), are aligned to the "
                        "teacher's there, activated, then run the teacher's blocks k.. and predictors "
                        "(reused_teacher_head_idx); negative counts from the end: -1 = the last block, "
                        "3 of the published 4; 0: the aligned FPN features enter the teacher's whole head"),
    }
    main_weights = ("CLS_WEIGHT", "BOX_WEIGHT", "DIST_WEIGHT", "CTR_WEIGHT")
    needs_dense_class_head = True

    @configurable
    def __init__(
        self,
        *,
        cls_weight: float,
        cls_beta: float,
        box_weight: float,
        dist_weight: float,
        dist_tau: float,
        ctr_weight: float,
        reuse_block: int,
        reg_adapter: Optional[nn.Module],
        **kwargs,
    ):
        """Arguments are the MODEL.DISTILL.CROSSKD keys (defaults: CrossKD's GFL R-101 -> R-50
        config); reg_adapter: the regression tower's adapter when reusing from inside the towers (the
        classification tower's is `adapter`; from the FPN features both branches share `adapter`);
        kwargs: the `AdaptedDistiller` arguments (adapters are 1x1 convs before the alignment when
        channels differ)."""
        super().__init__(**kwargs)
        check_loss_weights(
            "MODEL.DISTILL.CROSSKD", CLS_WEIGHT=cls_weight, BOX_WEIGHT=box_weight, DIST_WEIGHT=dist_weight,
            CTR_WEIGHT=ctr_weight,
        )  # fmt: skip

        if not cls_beta > 0 or not dist_tau > 0:
            raise ValueError(
                f"MODEL.DISTILL.CROSSKD.CLS_BETA and DIST_TAU must be > 0, got {cls_beta} / {dist_tau}"
            )
        self.cls_weight, self.cls_beta = float(cls_weight), float(cls_beta)
        self.box_weight = float(box_weight)
        self.dist_weight, self.dist_tau = float(dist_weight), float(dist_tau)
        self.ctr_weight = float(ctr_weight)
        if int(reuse_block) < 0:
            raise ValueError(
                f"CROSSKD: reuse_block must be a block index >= 0 (from_config resolves -1), got {reuse_block}"
            )
        self.reuse_block = int(reuse_block)
        if self.reuse_block > 0 and reg_adapter is None:
            raise ValueError("CROSSKD: reusing the head from inside its towers needs a regression-tower adapter")
        self.reg_adapter = reg_adapter

    @classmethod
    def from_config(cls, cfg, layout: DistillLayout):
        """Resolves REUSE_BLOCK against the layout's tower depth (-1: the teacher's last block) and builds
        the adapters from the student's to the teacher's channels at the reuse point: one per tower
        inside the towers, one shared by both branches on the FPN features (REUSE_BLOCK 0)."""
        args = super(AdaptedDistiller, cls).from_config(cfg, layout)
        blocks = min(layout.teacher_tower_blocks, layout.student_tower_blocks)
        k = args["reuse_block"]
        k = k + layout.teacher_tower_blocks if k < 0 else k
        if not 0 <= k <= blocks:
            raise ValueError(
                f"MODEL.DISTILL.CROSSKD.REUSE_BLOCK {args['reuse_block']} (block {k}) is outside the head "
                f"towers: the teacher's have {layout.teacher_tower_blocks} blocks, the student's "
                f"{layout.student_tower_blocks}; give a block in 0..{blocks} (0: FPN features into the whole head)"
            )
        if k == 0:
            adapter = build_adapter(cfg.ADAPTER, layout.student_channels, layout.teacher_channels)
            return {**args, "reuse_block": 0, "adapter": adapter, "reg_adapter": None}
        adapter, reg_adapter = build_tower_adapters(
            cfg.ADAPTER, layout, f"MODEL.DISTILL.CROSSKD.REUSE_BLOCK {args['reuse_block']}", "set REUSE_BLOCK 0"
        )
        return {**args, "reuse_block": k, "adapter": adapter, "reg_adapter": reg_adapter}

    def cross_head(self, teacher: DenseOutputs, student: DenseOutputs) -> DenseOutputs:
        """The teacher's head from REUSE_BLOCK on, fed the student's aligned tensors at that point
        (carries the student's graph; the teacher's weights stay frozen)."""
        teacher_model, student_model = self.models()
        k = self.reuse_block
        # the teacher's scale, not MODEL.DISTILL.FEATURE_NORM's: the result feeds the teacher's head
        if k == 0:
            pairs = feature_pairs(teacher, student, self.adapter, "CrossKD")
            feats = [align_to_teacher(s.float(), t.float()).to(t.dtype) for t, s in pairs]
            return teacher_model.head_outputs(feats, student.image_sizes)
        with torch.no_grad():
            t_towers = teacher_model.head_towers(teacher.features, k, activation=False)
        s_towers = student_model.head_towers(student.features, k, activation=False)
        cls_in, reg_in = (
            [F.relu(align_to_teacher(adapter(s).float(), t.float()).to(t.dtype)) for t, s in zip(tt, ss)]
            for tt, ss, adapter in zip(t_towers, s_towers, (self.adapter, self.reg_adapter))
        )
        return teacher_model.head_outputs_from_towers(cls_in, reg_in, k, student.features, student.image_sizes)

    def losses(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        cross = self.cross_head(teacher, student)
        t_logits = teacher.flat("cls_logits").detach().float()  # [N, A, K]
        t_prob = t_logits.sigmoid()
        pos_mask = student.extras.get("pos_mask")
        num_pos = (pos_mask.sum() if pos_mask is not None else t_prob.new_tensor(len(targets))).clamp(min=1)
        loss_cls = kd_quality_focal_loss(cross.flat("cls_logits").float(), t_prob, self.cls_beta).sum() / num_pos

        weight = t_prob.max(dim=2).values  # [N, A] the teacher's confidence
        weight_sum = weight.sum().clamp(min=1e-6)
        t_boxes = teacher.flat("boxes").detach().float().reshape(-1, 4)
        c_boxes = cross.flat("boxes").float().reshape(-1, 4)
        # torchvision's GIoU: a non-finite box gives a NaN loss (the step's finite-loss check names it)
        giou = generalized_box_iou_loss(c_boxes, t_boxes, reduction="none")
        loss_box = (giou * weight.reshape(-1)).sum() / weight_sum
        terms = {"cls": loss_cls * self.cls_weight, "box": loss_box * self.box_weight}
        if teacher.box_logits is not None and cross.box_logits is not None and self.dist_weight > 0:
            t_dist = teacher.flat("box_logits").detach().float()
            bins = t_dist.shape[-1] // 4
            kl = side_kl(cross.flat("box_logits").float(), t_dist, self.dist_tau) * bins  # [N, A, 4]
            terms["dist"] = (kl.mean(dim=2) * weight).sum() / weight_sum * self.dist_weight
        t_ctr, c_ctr = teacher.extras.get("ctr_logits"), cross.extras.get("ctr_logits")
        if t_ctr is not None and c_ctr is not None and pos_mask is not None and self.ctr_weight > 0:
            pos = pos_mask.reshape(-1)
            target = torch.cat(t_ctr, dim=1).detach().float().reshape(-1)[pos].sigmoid()
            logits = torch.cat(c_ctr, dim=1).float().reshape(-1)[pos]
            bce = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
            terms["ctr"] = bce / num_pos * self.ctr_weight
        diagnostics = {"crosskd/num_pos": num_pos.detach(), "crosskd/teacher_conf": weight.mean()}
        return terms, diagnostics
