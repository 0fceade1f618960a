"""
PGD (Yang et al., "Prediction-Guided Distillation for Dense Object Detection", ECCV 2022): feature
imitation of the head's first tower block (as published; or of the FPN features) on the teacher's
*key predictive regions*. For every GT the teacher's quality
q = score^(1 - a) * IoU^a ranks all locations; the top k, weighted by a 2-D Gaussian fitted to their
centres, form the foreground mask (one for classification with a = 0.8, one for regression with
a = 0.6). The classification-side loss is FGD-style (teacher spatial and channel attention, foreground
and background terms, attention imitation), the regression-side loss a channel-attention-weighted
MSE on the regression mask.
"""
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.structures import Instances
from torch import Tensor, nn

from ..structures import DenseOutputs, DistillLayout, batched_iou
from .adapters import AdaptedDistiller, build_adapter, build_tower_adapters
from .base import DISTILLER_REGISTRY, check_loss_weights
from .helpers import feature_pairs, normalize_feature_pairs, pad_targets

__all__ = ["PGD", "background_mask", "key_predictive_mask"]

#: values of MODEL.DISTILL.PGD.FEATURES
FEATURES = ("head", "fpn")


def _inside(centers: Tensor, gt_boxes: Tensor) -> Tensor:
    """[N, A, M] whether each location centre [A, 2] lies strictly inside each GT box [N, M, 4]."""
    c = centers[None, :, None, :]
    return ((c > gt_boxes[:, None, :, :2]) & (c < gt_boxes[:, None, :, 2:])).all(dim=-1)


@torch.no_grad()
def key_predictive_mask(
    boxes: Tensor,
    cls_logits: Tensor,
    centers: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    gt_valid: Tensor,
    alpha: float,
    topk: int,
    eps: float = 1e-4,
) -> Tensor:
    """
    PGD's foreground weights from the teacher's predictions.

    Args:
        boxes: [N, A, 4] teacher boxes; cls_logits: [N, A, K] its logits; centers: [A, 2] location
            centres (all levels); gt_boxes [N, M, 4], gt_classes [N, M], gt_valid [N, M] (padded).
        alpha: q = sigmoid(logit of the GT class)^(1 - alpha) * IoU^alpha.
        topk: locations kept per GT (all levels pooled).
        eps: added to the Gaussian's covariance diagonal (in pixels^2), so that collinear or
            coincident candidates still give a finite inverse.

    Returns:
        [N, A] in [0, 1]: for each location the max over GTs of the Gaussian weight of the
        location's centre if it is among the GT's top-k and inside the GT box, else 0.
    """
    n, a = boxes.shape[:2]
    if gt_boxes.shape[1] == 0:
        return boxes.new_zeros(n, a)
    iou = batched_iou(boxes.float(), gt_boxes.float(), eps=1e-9).clamp(min=0)  # [N, A, M]
    cls = cls_logits.float().sigmoid().gather(
        2, gt_classes.clamp(min=0)[:, None, :].expand(n, a, -1)
    )  # [N, A, M]
    quality = cls.pow(1 - alpha) * iou.pow(alpha)
    quality = quality.masked_fill(~gt_valid[:, None, :], -1.0)
    k = min(int(topk), a)
    idx = quality.topk(k, dim=1).indices  # [N, k, M]
    cand = centers[idx]  # [N, k, M, 2]
    mean = cand.mean(dim=1, keepdim=True)
    diff = cand - mean  # [N, k, M, 2]
    cov = torch.einsum("nkmi,nkmj->nmij", diff, diff) / k
    cov = cov + eps * torch.eye(2, device=cov.device, dtype=cov.dtype)
    inv = torch.linalg.inv(cov)  # [N, M, 2, 2]
    mahal = torch.einsum("nkmi,nmij,nkmj->nkm", diff, inv, diff)
    weight = boxes.new_zeros(n, a, gt_boxes.shape[1])
    weight.scatter_(1, idx, torch.exp(-0.5 * mahal))
    weight = weight * _inside(centers, gt_boxes.float()) * gt_valid[:, None, :]
    return weight.max(dim=2).values


@torch.no_grad()
def background_mask(centers: Tensor, gt_boxes: Tensor, gt_valid: Tensor) -> Tensor:
    """[N, A] 1 where the location centre lies inside no GT box, else 0."""
    if gt_boxes.shape[1] == 0:
        return centers.new_ones(gt_boxes.shape[0], centers.shape[0])
    inside = _inside(centers, gt_boxes.float()) & gt_valid[:, None, :]
    return (~inside.any(dim=2)).float()


def _attention(feat: Tensor, temperature: float) -> Tuple[Tensor, Tensor]:
    """Spatial [N, H, W] (H*W x softmax over locations of the channel-mean |F|) and per-location
    channel [N, C, H, W] (C x softmax over channels of |F|) attention."""
    n, c, h, w = feat.shape
    value = feat.abs()
    spatial = h * w * F.softmax((value.mean(dim=1) / temperature).reshape(n, -1), dim=1)
    channel = c * F.softmax(value / temperature, dim=1)
    return spatial.reshape(n, h, w), channel


def _per_image_normalized(mask: Tensor) -> Tensor:
    """mask [N, H, W] divided by its number of non-zero entries in each image (0 stays 0)."""
    count = (mask != 0).flatten(1).sum(dim=1).clamp(min=1)
    return mask / count[:, None, None]


@DISTILLER_REGISTRY.register()
class PGD(AdaptedDistiller):
    """
    Losses (each times the warm-up), summed over levels with per-level weights w_l:
    - loss_pgd_cls: w_l * (ALPHA * fg + BETA * bg) + DELTA * attention imitation, on the
      classification mask;
    - loss_pgd_reg: GAMMA * channel-attention MSE on the regression mask + DELTA * attention
      imitation.
    FEATURES "head" (published): the classification terms imitate the output of the first block
    (conv, GN, ReLU) of the head's classification tower, the regression terms that of the regression
    tower (`DistillableDetector.head_towers`), each through its own adapter; "fpn": both imitate the
    FPN features the head reads.
    """

    config = {
        "TEMPERATURE": (0.8, "attention softmax temperature"),
        "ALPHA": (0.04, "classification-side foreground feature loss"),
        "BETA": (0.02, "classification-side background feature loss"),
        "GAMMA": (0.064, "regression-side feature loss"),
        "DELTA": (0.0008, "attention imitation"),
        "LEVEL_WEIGHTS": ([1.0, 1.25, 1.5, 1.75, 2.0], "classification side, one per level (P3..P7)"),
        "TOPK": (30, "key predictive locations per GT"),
        "CLS_QUALITY_ALPHA": (0.8, "q = score^(1-a) IoU^a, classification mask"),
        "REG_QUALITY_ALPHA": (0.6, "the same, regression mask"),
        "FEATURES": ("head", '"head": each branch imitates its head tower\'s first block output (published); '
                     '"fpn": both imitate the FPN features'),
    }
    main_weights = ("ALPHA", "BETA", "GAMMA", "DELTA")
    needs_dense_class_head = True

    @configurable
    def __init__(
        self,
        *,
        temperature: float,
        alpha: float,
        beta: float,
        gamma: float,
        delta: float,
        level_weights: Sequence[float],
        topk: int,
        cls_quality_alpha: float,
        reg_quality_alpha: float,
        features: str,
        num_levels: int,
        reg_adapter: Optional[nn.Module],
        **kwargs,
    ):
        """Arguments are the MODEL.DISTILL.PGD keys (defaults: PGD's GFL R-101 -> R-50 config);
        num_levels: the pair's FPN levels (one LEVEL_WEIGHTS entry each); reg_adapter: the
        regression tower's adapter (FEATURES "head"; the FPN form uses `adapter` for both);
        kwargs: the `AdaptedDistiller` arguments."""
        super().__init__(**kwargs)
        if features not in FEATURES:
            raise ValueError(f"MODEL.DISTILL.PGD.FEATURES must be one of {FEATURES}, got '{features}'")
        if len(level_weights) < num_levels:
            raise ValueError(
                f"MODEL.DISTILL.PGD.LEVEL_WEIGHTS has {len(level_weights)} entries for {num_levels} FPN "
                "levels; give one per level"
            )
        check_loss_weights(
            "MODEL.DISTILL.PGD", ALPHA=alpha, BETA=beta, GAMMA=gamma, DELTA=delta,
            LEVEL_WEIGHTS=min(level_weights, default=0.0),
        )  # fmt: skip
        if not temperature > 0 or int(topk) < 1:
            raise ValueError(
                f"MODEL.DISTILL.PGD.TEMPERATURE must be > 0 and TOPK >= 1, got {temperature} / {topk}"
            )
        for key, v in (("CLS_QUALITY_ALPHA", cls_quality_alpha), ("REG_QUALITY_ALPHA", reg_quality_alpha)):
            if not 0 <= v <= 1:
                raise ValueError(f"MODEL.DISTILL.PGD.{key} must be in [0, 1], got {v}")
        self.temperature = float(temperature)
        self.alpha, self.beta, self.gamma, self.delta = map(float, (alpha, beta, gamma, delta))
        self.level_weights = [float(w) for w in level_weights]
        self.topk = int(topk)
        self.cls_quality_alpha = float(cls_quality_alpha)
        self.reg_quality_alpha = float(reg_quality_alpha)
        self.features = features
        self.reg_adapter = reg_adapter

    @classmethod
    def from_config(cls, cfg, layout: DistillLayout):
        args = {**super(AdaptedDistiller, cls).from_config(cfg, layout), "num_levels": layout.num_levels}
        if args["features"] == "fpn":
            adapter = build_adapter(cfg.ADAPTER, layout.student_channels, layout.teacher_channels)
            return {**args, "adapter": adapter, "reg_adapter": None}
        adapter, reg_adapter = build_tower_adapters(
            cfg.ADAPTER, layout, "MODEL.DISTILL.PGD.FEATURES 'head'", "use FEATURES 'fpn'"
        )
        return {**args, "adapter": adapter, "reg_adapter": reg_adapter}

    def feature_pairs(
        self, teacher: DenseOutputs, student: DenseOutputs
    ) -> Tuple[List[Tuple[Tensor, Tensor]], List[Tuple[Tensor, Tensor]]]:
        """(classification-side, regression-side) per-level (teacher, adapted student) pairs: the
        first tower block of each head branch ("head") or the FPN features ("fpn") for both."""
        if self.features == "fpn":
            pairs = feature_pairs(teacher, student, self.adapter, "PGD", norm=self.feature_norm)
            return pairs, pairs
        teacher_model, student_model = self.models()
        with torch.no_grad():
            t_cls, t_reg = teacher_model.head_towers(teacher.features, 1)
        s_cls, s_reg = student_model.head_towers(student.features, 1)
        out = []
        for t_feats, s_feats, adapter in ((t_cls, s_cls, self.adapter), (t_reg, s_reg, self.reg_adapter)):
            pairs = [(t, adapter(s)) for t, s in zip(t_feats, s_feats)]
            out.append(normalize_feature_pairs(pairs, self.feature_norm))
        return out[0], out[1]

    @torch.no_grad()
    def masks(self, teacher: DenseOutputs, targets: List[Instances]) -> Dict[str, Tensor]:
        """{"cls", "reg", "bg"}: [N, A] masks over all locations (level order, row-major)."""
        gt_boxes, gt_classes, gt_valid = pad_targets(targets, teacher.features[0].device)
        anchors = torch.cat(teacher.anchors).float()
        centers = (anchors[:, :2] + anchors[:, 2:]) / 2
        boxes, logits = teacher.flat("boxes"), teacher.flat("cls_logits")
        args = (boxes, logits, centers, gt_boxes, gt_classes, gt_valid)
        return {
            "cls": key_predictive_mask(*args, alpha=self.cls_quality_alpha, topk=self.topk),
            "reg": key_predictive_mask(*args, alpha=self.reg_quality_alpha, topk=self.topk),
            "bg": background_mask(centers, gt_boxes, gt_valid),
        }

    def _cls_level(self, ft: Tensor, fs: Tensor, fg: Tensor, bg: Tensor, weight: float) -> Tensor:
        s_t, c_t = _attention(ft, self.temperature)
        s_s, c_s = _attention(fs, self.temperature)
        att = (s_t[:, None] * c_t).detach()
        sq = (fs - ft).pow(2) * att  # [N, C, H, W]
        n = ft.shape[0]
        fg_loss = (sq * _per_image_normalized(fg)[:, None]).sum() / n
        bg_loss = (sq * _per_image_normalized(bg)[:, None]).sum() / n
        h, w = ft.shape[-2:]
        att_loss = (c_s - c_t).abs().sum() / (n * h * w) + (s_s - s_t).abs().sum() / n
        return weight * (self.alpha * fg_loss + self.beta * bg_loss) + self.delta * att_loss

    def _reg_level(self, ft: Tensor, fs: Tensor, mask: Tensor) -> Tensor:
        c = ft.shape[1]
        pos = mask.flatten() > 0
        t = ft.permute(0, 2, 3, 1).reshape(-1, c)[pos]
        s = fs.permute(0, 2, 3, 1).reshape(-1, c)[pos]
        if t.shape[0] == 0:
            return fs.sum() * 0.0
        c_t = c * F.softmax(t.abs() / self.temperature, dim=1)
        c_s = c * F.softmax(s.abs() / self.temperature, dim=1)
        fea = ((s - t).pow(2) * c_t.detach()).mean(dim=1) * mask.flatten()[pos]
        return self.gamma * fea.mean() + self.delta * (c_s - c_t).abs().sum() / t.shape[0]

    def losses(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        cls_pairs, reg_pairs = self.feature_pairs(teacher, student)
        m = self.masks(teacher, targets)
        sizes = [h * w for h, w in teacher.level_shapes]
        split = {k: v.split(sizes, dim=1) for k, v in m.items()}
        loss_cls, loss_reg = [], []
        for lvl, (h, w) in enumerate(teacher.level_shapes):
            fg, bg, reg = (split[k][lvl].reshape(-1, h, w) for k in ("cls", "bg", "reg"))
            (ct, cs), (rt, rs) = cls_pairs[lvl], reg_pairs[lvl]
            loss_cls.append(self._cls_level(ct.float(), cs.float(), fg, bg, self.level_weights[lvl]))
            loss_reg.append(self._reg_level(rt.float(), rs.float(), reg))
        diagnostics = {
            "pgd/frac_fg_cls": (m["cls"] > 0).float().mean(),
            "pgd/frac_fg_reg": (m["reg"] > 0).float().mean(),
        }
        return {"cls": torch.stack(loss_cls).sum(), "reg": torch.stack(loss_reg).sum()}, diagnostics
