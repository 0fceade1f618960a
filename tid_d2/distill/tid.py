"""
TID (Task Integration Distillation): FPN feature imitation weighted by how well each detector does
both of its tasks at each location. DIEM scores every location, LDAM splits the locations into
key / weak / other areas, SFDM imitates the teacher's features with one loss per area.
docs/method.md describes the method as implemented here: every reading and its config key.

All maps are flat over levels: A = sum_l Hl*Wl locations in level order, then row-major inside a
level (the order of `DenseOutputs.flat`).
"""

import logging
import math
from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
from detectron2.config import configurable
from detectron2.structures import Instances
from detectron2.utils import comm
from detectron2.utils.logger import log_first_n
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from ..structures import DenseOutputs, batched_iou
from .adapters import AdaptedDistiller
from .base import DISTILLER_REGISTRY, check_loss_weights, current_storage
from .helpers import feature_pairs, pad_targets

__all__ = ["TID", "check_same_batch_layout", "diem_scores", "ldam_areas", "sfdm_loss"]

TASKS = ("both", "cls", "reg")
THRESHOLD_MODES = ("assigner", "fixed")
#: which area a location that passes both LDAM tests belongs to (MODEL.DISTILL.TID.AREA_PRECEDENCE)
PRECEDENCES = ("weak", "key")
#: tolerance of LDAM's threshold tests, so that a product of DIEM levels equal to a threshold on
#: paper (e.g. 1.5 * 1.5 = tau_K = 2.25) reaches it in floating point too.
SCORE_EPS = 1e-6
#: thr_pos never drops below this: a box that overlaps no GT is never positive.
POS_THRESH_EPS = 1e-6


@torch.no_grad()
def diem_scores(
    boxes: Tensor,
    cls_logits: Tensor,
    gt_boxes: Tensor,
    gt_classes: Tensor,
    gt_valid: Tensor,
    thr_pos: Tensor,
    thr_neg: float,
    levels: Sequence[float],
    tau: float,
    tau_bg: float,
    tasks: str = "both",
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """
    DIEM: the dual-task importance of every location of one model (no gradient).

    Args:
        boxes: [N, A, 4] the model's decoded XYXY boxes.
        cls_logits: [N, A, K] its class logits (K = 1: a class-agnostic objectness, e.g. an RPN's,
            whose prediction at an object is of the right class whatever the object's class).
        gt_boxes: [N, M, 4] XYXY GT boxes, padded; gt_classes: [N, M] int; gt_valid: [N, M] bool.
        thr_pos: [N, M] the positive IoU threshold of each GT (assigner mode: the detector's own
            per-GT threshold; fixed mode: one value everywhere). Padded entries are never used.
        thr_neg: the negative IoU threshold; at each location it is clamped to <= thr_pos(k*).
        levels: (hi, mid, lo) score values (MODEL.DISTILL.TID.SCORE_LEVELS, 2 / 1.5 / 0.4).
        tau: confidence of a "confident" class prediction; tau_bg: confidence below which a
            background location is "clean" (tau_bg <= tau).
        tasks: "both": Score = Score_r * Score_c. Single-task modes drop the grading of one task
            but keep the object/background split both tasks share: "cls": Score = S_obj * Score_c
            with S_obj = hi where the location sees an object and lo on background (the Score_r a
            well-localized object location or a background location gets); "reg": Score = hi *
            Score_r (Score_r is already lo on background). Score keeps the range of "both", tau_K /
            tau_W keep their meaning, and background never becomes key (with the defaults, key =
            an object location whose kept task scores at least mid).

    Returns:
        score, score_r, score_c: [N, A] float32 (score_r and score_c are always computed);
        iou_max: [N, A] max IoU with the image's GTs (0 in images without GT);
        k_star: [N, A] int64 index of the best GT, -1 in images without GT.

    Score_r = hi if IoU_max >= thr_pos(k*), mid if thr_neg' < IoU_max < thr_pos(k*), else lo, with
    thr_neg' = min(thr_neg, thr_pos(k*)). A location "sees an object" iff Score_r > lo; there
    Score_c = hi (argmax class == class(k*), conf >= tau), mid (right class, conf < tau) or lo
    (wrong class); elsewhere (background) Score_c = hi (conf < tau_bg), mid (tau_bg <= conf < tau)
    or lo (conf >= tau). conf = max_k sigmoid(logit_k).
    """
    hi, mid, lo = (float(v) for v in levels)
    n, a = boxes.shape[:2]
    if gt_boxes.shape[1] == 0:  # no GT in the whole batch: one invalid dummy keeps shapes uniform
        gt_boxes = gt_boxes.new_zeros(n, 1, 4)
        gt_classes = gt_classes.new_full((n, 1), -1)
        gt_valid = gt_valid.new_zeros(n, 1)
        thr_pos = thr_pos.new_ones(n, 1)

    iou = batched_iou(boxes.float(), gt_boxes.float(), eps=1e-9)
    iou = iou.masked_fill_(~gt_valid[:, None, :], -1.0)
    iou_max, k_star = iou.max(dim=2)  # [N, A]
    del iou
    has_gt = gt_valid.any(dim=1, keepdim=True).expand(n, a)
    iou_max = iou_max.clamp_(min=0.0)
    k_idx = k_star.masked_fill_(~has_gt, 0)

    t_pos = thr_pos.float().gather(1, k_idx).clamp_(min=POS_THRESH_EPS)
    t_pos = t_pos.masked_fill_(~has_gt, math.inf)
    positive = iou_max >= t_pos
    # thr_neg clamped to <= thr_pos(k*): a positive location always sees an object
    sees_object = positive | (iou_max > thr_neg)
    score_r = torch.where(positive, hi, torch.where(sees_object, mid, lo))

    max_logit, c_hat = cls_logits.max(dim=2)
    conf = max_logit.float().sigmoid()
    # one logit (an RPN's objectness): class-agnostic, right for an object of any class
    right_class = c_hat == gt_classes.gather(1, k_idx) if cls_logits.shape[2] > 1 else torch.ones_like(has_gt)
    score_obj = torch.where(right_class, torch.where(conf >= tau, hi, mid), lo)
    score_bg = torch.where(conf < tau_bg, hi, torch.where(conf < tau, mid, lo))
    score_c = torch.where(sees_object, score_obj, score_bg)

    if tasks == "both":
        score = score_r * score_c
    elif tasks == "cls":
        score = torch.where(sees_object, hi, lo) * score_c
    elif tasks == "reg":
        score = hi * score_r
    else:
        raise ValueError(f"diem_scores: tasks must be one of {TASKS}, got '{tasks}'")
    k_star = k_idx.masked_fill_(~has_gt, -1)
    return score, score_r, score_c, iou_max, k_star


@torch.no_grad()
def ldam_areas(
    score_t: Tensor,
    score_s: Tensor,
    tau_k: float,
    tau_w: float,
    ldam: bool = True,
    precedence: str = "weak",
) -> Tuple[Tensor, Tensor, Tensor]:
    """
    LDAM: split locations into key, weak and other areas.

    Args:
        score_t, score_s: [N, A] teacher / student DIEM importance.
        tau_k: the key test Score^T >= tau_k (the teacher does both tasks well).
        tau_w: the weak test Score^T - Score^S >= tau_w (the student lags the teacher).
        ldam: False: W is empty (K = the key test, the rest is O).
        precedence: where a location passing both tests goes. "weak": W = the weak test,
            K = the key test minus W, so "teacher good, student behind" is weak and K is where the
            student already matches a good teacher; "key": K = the key test, W = the weak test
            minus K.

    Returns:
        key, weak, other: [N, A] bool, pairwise disjoint, covering every location.
        Threshold tests allow SCORE_EPS of float error.
    """
    key = score_t >= tau_k - SCORE_EPS
    if ldam:
        weak = (score_t - score_s) >= tau_w - SCORE_EPS
        if precedence == "weak":
            key = key & ~weak
        elif precedence == "key":
            weak = weak & ~key
        else:
            raise ValueError(f"ldam_areas: precedence must be one of {PRECEDENCES}, got '{precedence}'")
    else:
        weak = torch.zeros_like(key)
    other = ~(key | weak)
    return key, weak, other


NORMALIZATIONS = ("area", "all")


def _area_mean(
    dist: Tensor, mask: Tensor, weight: Optional[Tensor], channels: int, normalize: str = "area"
) -> Tensor:
    """
    Weighted sum of dist [N, A] over the area mask [N, A] divided by channels and by the area's
    weight ("area": a mean inside the area) or by all N*A locations ("all": soft weights rescaled
    to mean 1 inside the area); 0 when empty.
    """
    w = mask.to(dist.dtype)
    if weight is not None:
        w = w * weight.to(dist.dtype).clamp(min=0)
    total = w.sum()
    num = (dist * w).sum()
    if normalize == "all":
        if weight is not None:
            num = num * mask.sum() / torch.where(total > 0, total, torch.ones_like(total))
        return num / (mask.numel() * channels)
    if normalize != "area":
        raise ValueError(f"sfdm_loss: normalize must be one of {NORMALIZATIONS}, got '{normalize}'")
    den = total * channels
    return num / torch.where(den > 0, den, torch.ones_like(den))


def sfdm_loss(
    feats_t: Union[Tensor, List[Tensor]],
    feats_s: Union[Tensor, List[Tensor]],
    key: Tensor,
    weak: Tensor,
    other: Tensor,
    key_weight: Optional[Tensor] = None,
    weak_weight: Optional[Tensor] = None,
    normalize: str = "area",
) -> Tuple[Tensor, Tensor, Tensor]:
    """
    SFDM: the decoupled imitation losses L_K, L_W, L_O.

    Args:
        feats_t: L x [N, C, Hl, Wl] teacher features (pass them detached), or one [N, C, H, W].
        feats_s: the same shapes: student features already mapped by the adapter phi.
        key, weak, other: [N, A] bool areas, A = sum Hl*Wl (level order, row-major).
        key_weight, weak_weight: optional [N, A] soft weights inside K and W (TID: Score^T and
            delta = Score^T - Score^S); negative values count as 0.

    Returns:
        L_K, L_W, L_O: 0-d float32 tensors. L_A = sum_{p in A} w_p * ||F^T_p - F^S_p||^2 /
        (C * sum_{p in A} w_p), w_p = 1 without soft weights: the mean over the area's locations
        (all levels and images of the batch pooled) and channels of the squared difference. Soft
        weights are thus normalized to mean 1 inside the area: they only re-weight locations
        against each other (uniform weights give the plain mean). With normalize="all" the
        denominator is C times all N*A locations instead, so L_K + L_W + L_O is FitNet's MSE and
        alpha/beta/gamma re-weight areas without amplifying small ones (stable when K is tiny).
        An empty area gives exactly 0 and keeps the graph connected.
    """
    if isinstance(feats_t, Tensor):
        feats_t, feats_s = [feats_t], [feats_s]
    if len(feats_t) != len(feats_s):
        raise ValueError(
            f"sfdm_loss: {len(feats_t)} teacher feature levels but {len(feats_s)} student ones"
        )
    for lvl, (ft, fs) in enumerate(zip(feats_t, feats_s)):
        if ft.shape != fs.shape:
            raise ValueError(
                f"sfdm_loss: level {lvl} teacher features {tuple(ft.shape)} != adapted student "
                f"features {tuple(fs.shape)}"
            )
    dist = torch.cat(
        [
            (ft.float() - fs.float()).pow(2).sum(dim=1).flatten(1)
            for ft, fs in zip(feats_t, feats_s)
        ],
        dim=1,
    )  # [N, A]
    if dist.shape != key.shape:
        raise ValueError(
            f"sfdm_loss: features give {tuple(dist.shape)} locations, "
            f"area masks are {tuple(key.shape)}"
        )
    channels = feats_t[0].shape[1]
    return (
        _area_mean(dist, key, key_weight, channels, normalize),
        _area_mean(dist, weak, weak_weight, channels, normalize),
        _area_mean(dist, other, None, channels, normalize),
    )


def check_same_batch_layout(teacher: DenseOutputs, student: DenseOutputs, num_images: int) -> None:
    """Raise a ValueError unless teacher and student describe the same image batch (levels, strides
    and classes are the `DistillLayout`'s, checked once when the distiller is built)."""
    if teacher.level_shapes != student.level_shapes:
        raise ValueError(
            f"TID: teacher level shapes {teacher.level_shapes} != student {student.level_shapes}: "
            "teacher and student must see the same padded image batch (same INPUT sizes and "
            "SIZE_DIVISIBILITY)"
        )
    if list(teacher.image_sizes) != list(student.image_sizes):
        raise ValueError(
            f"TID: teacher image sizes {list(teacher.image_sizes)} != student "
            f"{list(student.image_sizes)}: both must see the same image batch"
        )
    for who, out in (("teacher", teacher), ("student", student)):
        for lvl, (h, w) in enumerate(out.level_shapes):
            if out.features[lvl].shape[0] != num_images:
                raise ValueError(
                    f"TID: {who}.features[{lvl}] holds {out.features[lvl].shape[0]} images, "
                    f"targets {num_images}"
                )
            want = (num_images, h * w)
            for name in ("boxes", "cls_logits"):
                got = tuple(getattr(out, name)[lvl].shape[:2])
                if got != want:
                    raise ValueError(
                        f"TID: {who}.{name}[{lvl}] has shape {got}[...], expected {want} "
                        f"({num_images} targets, level {h}x{w})"
                    )


@DISTILLER_REGISTRY.register()
class TID(AdaptedDistiller):
    """
    Task Integration Distillation. Losses (each times MODEL.DISTILL.TID.LOSS_WEIGHT and the warm-up):
    loss_tid_key = alpha * L_K, loss_tid_weak = beta * L_W, loss_tid_other = gamma * L_O.
    Areas and scores are computed without gradient from both models' predictions; the teacher's
    features are detached; the student's pass through one adapter shared by all levels.
    """

    config = {
        "TASKS": ("both", '"both" | "cls" | "reg": which DIEM scores make the importance'),
        "THRESHOLD_MODE": ("assigner", '"assigner" (per-GT ATSS threshold) | "fixed"'),
        "POS_THRESH": (0.5, 'the loosest positive IoU: thr_pos in "fixed" mode, and in "assigner" mode the '
                       "floor an assigner's thr_pos is raised to (its anchor-IoU thresholds fall to a few "
                       "percent for small GTs; 0.5 is the loosest IoU a detection metric accepts; 0: the "
                       "assigner's own thresholds)"),
        "NEG_THRESH": (0.4, "thr_neg (both modes; clamped below thr_pos)"),
        "SCORE_LEVELS": ([2.0, 1.5, 0.4], "DIEM's good / moderate / poor score values"),
        "CLS_TAU": (0.3, 'tau: confidence of a "confident" class prediction'),
        "CLS_TAU_BG": (0.05, 'tau_bg: confidence below which background is "clean"'),
        "KEY_THRESH": (3.0, "tau_K: the key test Score^T >= tau_K (hi x mid)"),
        "WEAK_THRESH": (0.5, "tau_W: the weak test Score^T - Score^S >= tau_W"),
        "AREA_PRECEDENCE": ("weak", 'a location passing both tests is "weak" (W = weak test, K = key '
                            "test minus W: the student lags a good teacher there) or \"key\" (K = key "
                            "test, W = weak test minus K, the first reading)"),
        "LDAM": (True, "off: only K and O areas"),
        "SOFT_WEIGHTS": (False, "weight K by Score^T and W by delta inside the areas"),
        "ALPHA": (2.0, "weight of L_K"),
        "BETA": (2.0, "weight of L_W"),
        "GAMMA": (0.5, "weight of L_O (gamma < alpha, beta)"),
        "NORMALIZE": ("all", 'SFDM denominator: "all" divides each area\'s summed squared distance by all '
                      "locations (L_K + L_W + L_O is FitNet's MSE at unit weights); \"area\" by the "
                      "area's own size (a mean inside each area)"),
        "LOSS_WEIGHT": (2.0, "lambda: multiplies alpha L_K + beta L_W + gamma L_O"),
        "VIS_PERIOD": (0, '> 0: the area sheet of a training image goes to TensorBoard ("tid/areas") '
                       "this often"),
    }
    main_weights = ("LOSS_WEIGHT",)

    @configurable
    def __init__(
        self,
        *,
        tasks: str,
        threshold_mode: str,
        pos_thresh: float,
        neg_thresh: float,
        score_levels: Sequence[float],
        cls_tau: float,
        cls_tau_bg: float,
        key_thresh: float,
        weak_thresh: float,
        ldam: bool,
        area_precedence: str,
        soft_weights: bool,
        alpha: float,
        beta: float,
        gamma: float,
        loss_weight: float,
        normalize: str,
        vis_period: int,
        **kwargs,
    ):
        """Arguments are the MODEL.DISTILL.TID keys (`config`), validated here once; vis_period > 0
        keeps the areas of the batch's first image every vis_period iterations for the
        visualization hook (`record`); kwargs: the `AdaptedDistiller` arguments."""
        super().__init__(**kwargs)
        tasks, threshold_mode = str(tasks).lower(), str(threshold_mode).lower()
        area_precedence, normalize = str(area_precedence).lower(), str(normalize).lower()
        for key, value, choices in (
            ("TASKS", tasks, TASKS),
            ("THRESHOLD_MODE", threshold_mode, THRESHOLD_MODES),
            ("AREA_PRECEDENCE", area_precedence, PRECEDENCES),
            ("NORMALIZE", normalize, NORMALIZATIONS),
        ):
            if value not in choices:
                raise ValueError(f"MODEL.DISTILL.TID.{key} must be one of {choices}, got '{value}'")
        levels = tuple(float(v) for v in score_levels)
        if len(levels) != 3 or not levels[0] >= levels[1] >= levels[2] >= 0:
            raise ValueError(
                "MODEL.DISTILL.TID.SCORE_LEVELS must be [hi, mid, lo] with hi >= mid >= lo >= 0, "
                f"got {score_levels}"
            )
        if not 0 <= pos_thresh <= 1 or not 0 <= neg_thresh <= 1 or (threshold_mode == "fixed" and pos_thresh == 0):
            raise ValueError(
                "MODEL.DISTILL.TID.POS_THRESH and NEG_THRESH must be in [0, 1] (POS_THRESH > 0 in fixed "
                f"mode), got {pos_thresh} / {neg_thresh}"
            )
        if not 0 <= cls_tau_bg <= cls_tau <= 1:
            raise ValueError(
                "MODEL.DISTILL.TID.CLS_TAU_BG <= CLS_TAU must hold in [0, 1], got "
                f"{cls_tau_bg} / {cls_tau}"
            )
        check_loss_weights(
            "MODEL.DISTILL.TID", ALPHA=alpha, BETA=beta, GAMMA=gamma, LOSS_WEIGHT=loss_weight
        )
        self.tasks = tasks
        self.threshold_mode = threshold_mode
        self.pos_thresh = float(pos_thresh)
        self.neg_thresh = float(neg_thresh)
        self.score_levels = levels
        self.cls_tau = float(cls_tau)
        self.cls_tau_bg = float(cls_tau_bg)
        self.key_thresh = float(key_thresh)
        self.weak_thresh = float(weak_thresh)
        self.ldam = bool(ldam)
        self.area_precedence = area_precedence
        self.soft_weights = bool(soft_weights)
        self.alpha, self.beta, self.gamma = float(alpha), float(beta), float(gamma)
        self.loss_weight = float(loss_weight)
        self.normalize = normalize
        self.vis_period = int(vis_period)
        #: what `record` kept for the visualization hook (None until a visualized iteration)
        self.view: Optional[Dict] = None

    def _pos_thresholds(
        self,
        model: DenseOutputs,
        other: DenseOutputs,
        who: str,
        targets: List[Instances],
        valid: Tensor,
    ) -> Tensor:
        """
        thr_pos [N, M] of one model: POS_THRESH in fixed mode; in assigner mode its own per-GT
        thresholds, else the other model's (same GTs and anchor layout), else POS_THRESH (both
        assigners not IoU based, e.g. FCOS; logged once). An assigner's thresholds are raised to
        at least POS_THRESH: they are computed from anchor IoUs and fall to a few percent for
        small GTs, while DIEM tests predicted-box IoUs.
        """
        thresholds = None if self.threshold_mode == "fixed" else model.pos_thresholds
        if thresholds is None and self.threshold_mode == "assigner":
            thresholds = other.pos_thresholds
            if thresholds is None and self.pos_thresh == 0:
                raise ValueError(
                    "MODEL.DISTILL.TID.POS_THRESH 0 in assigner mode takes the assigners' own thresholds, "
                    "but neither teacher nor student gives any (DenseOutputs.pos_thresholds; e.g. FCOS, "
                    "RetinaNet): set POS_THRESH > 0 or THRESHOLD_MODE fixed"
                )
            if thresholds is None:
                log_first_n(
                    logging.WARNING,
                    "MODEL.DISTILL.TID.THRESHOLD_MODE='assigner' but neither teacher nor student gives "
                    f"DenseOutputs.pos_thresholds; using MODEL.DISTILL.TID.POS_THRESH={self.pos_thresh}",
                    name=__name__,
                )
        if thresholds is None:
            return valid.new_full(valid.shape, self.pos_thresh, dtype=torch.float32)
        if len(thresholds) != len(targets):
            raise ValueError(
                f"TID: {who} pos_thresholds has {len(thresholds)} entries for {len(targets)} images"
            )
        for i, (thr, t) in enumerate(zip(thresholds, targets)):
            if thr.numel() != len(t):
                raise ValueError(
                    f"TID: {who} pos_thresholds[{i}] has {thr.numel()} values for {len(t)} GT boxes"
                )
        return pad_sequence(
            [thr.reshape(-1).to(device=valid.device, dtype=torch.float32) for thr in thresholds],
            batch_first=True,
            padding_value=1.0,
        ).clamp_(min=self.pos_thresh)

    @torch.no_grad()
    def compute_scores(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Dict[str, Tensor]:
        """
        DIEM of both models and LDAM areas, flat over levels: a dict of [N, A] tensors
        score_t, score_s, delta, score_r_t, score_c_t, score_r_s, score_c_s, iou_t, iou_s
        (float32) and key, weak, other (bool).
        """
        check_same_batch_layout(teacher, student, len(targets))
        device = teacher.features[0].device
        gt_boxes, gt_classes, gt_valid = pad_targets(targets, device)
        out = {}
        for suffix, model, other in (("t", teacher, student), ("s", student, teacher)):
            thr_pos = self._pos_thresholds(
                model, other, "teacher" if suffix == "t" else "student", targets, gt_valid
            )
            score, score_r, score_c, iou_max, _ = diem_scores(
                model.flat("boxes"),
                model.flat("cls_logits"),
                gt_boxes,
                gt_classes,
                gt_valid,
                thr_pos,
                self.neg_thresh,
                self.score_levels,
                self.cls_tau,
                self.cls_tau_bg,
                self.tasks,
            )
            out[f"score_{suffix}"], out[f"iou_{suffix}"] = score, iou_max
            out[f"score_r_{suffix}"], out[f"score_c_{suffix}"] = score_r, score_c
        out["delta"] = out["score_t"] - out["score_s"]
        out["key"], out["weak"], out["other"] = ldam_areas(
            out["score_t"],
            out["score_s"],
            self.key_thresh,
            self.weak_thresh,
            self.ldam,
            self.area_precedence,
        )
        return out

    def losses(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        s = self.compute_scores(teacher, student, targets)
        pairs = feature_pairs(teacher, student, self.adapter, "TID", norm=self.feature_norm)
        feats_t, feats_s = [t for t, _ in pairs], [f for _, f in pairs]
        l_key, l_weak, l_other = sfdm_loss(
            feats_t,
            feats_s,
            s["key"],
            s["weak"],
            s["other"],
            key_weight=s["score_t"] if self.soft_weights else None,
            weak_weight=s["delta"] if self.soft_weights else None,
            normalize=self.normalize,
        )
        w = self.loss_weight
        losses = {
            "key": l_key * (w * self.alpha),
            "weak": l_weak * (w * self.beta),
            "other": l_other * (w * self.gamma),
        }
        diagnostics = self._diagnostics(s, teacher)
        diagnostics.update(self._area_means(s, (l_key, l_weak, l_other)))
        return losses, diagnostics

    @torch.no_grad()
    def _area_means(self, s: Dict[str, Tensor], area_losses: Sequence[Tensor]) -> Dict[str, Tensor]:
        """tid/mean_<area>: the mean squared distance per location and channel inside each area (the
        "area" reading's L_A, whatever NORMALIZE is: L_A(area) = L_A(all) * N*A / |A|, exactly, soft
        weights included), so that both readings' loss scales are seen in one run."""
        out = {}
        for name, loss in zip(("key", "weak", "other"), area_losses):
            if self.normalize == "area":
                out[f"tid/mean_{name}"] = loss.detach()
            else:
                size = s[name].sum().clamp(min=1)
                out[f"tid/mean_{name}"] = loss.detach() * s[name].numel() / size
        return out

    @torch.no_grad()
    def _diagnostics(self, s: Dict[str, Tensor], outputs: DenseOutputs) -> Dict[str, Tensor]:
        """Per level: fraction of locations in each area and mean importance of each model (0-d)."""
        maps = [s["key"], s["weak"], s["other"], s["score_t"], s["score_s"]]
        stats = torch.stack([m.float() for m in maps]).mean(dim=1)  # [5, A]
        sizes = [h * w for h, w in outputs.level_shapes]
        per_level = torch.stack([x.mean(dim=1) for x in stats.split(sizes, dim=1)], dim=1)  # [5, L]
        stat_names = ("frac_key", "frac_weak", "frac_other", "imp_teacher", "imp_student")
        return {
            f"tid/{lvl}/{stat}": per_level[i, j]
            for j, lvl in enumerate(outputs.level_names)
            for i, stat in enumerate(stat_names)
        }

    @torch.no_grad()
    def areas(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Dict[str, Dict[str, Tensor]]:
        """
        For visualizers: {level name: {map name: [N, Hl, Wl]}}, the maps of `compute_scores`
        (key/weak/other bool; scores, delta and IoU float).
        """
        s = self.compute_scores(teacher, student, targets)
        shapes = teacher.level_shapes
        sizes = [h * w for h, w in shapes]
        split = {k: v.split(sizes, dim=1) for k, v in s.items()}
        return {
            lvl: {k: v[j].reshape(-1, h, w) for k, v in split.items()}
            for j, (lvl, (h, w)) in enumerate(zip(teacher.level_names, shapes))
        }

    @torch.no_grad()
    def record(self, image, input_format, teacher, student, targets) -> None:
        """Every `vis_period` iterations: keep the areas of the batch's first image, with what a
        picture of them needs, in `self.view` (drawn by `visualization.TIDAreasHook`)."""
        storage = current_storage()
        if self.vis_period <= 0 or storage is None or storage.iter % self.vis_period or not comm.is_main_process():
            return
        if self.view is not None:
            log_first_n(
                logging.WARNING,
                "MODEL.DISTILL.TID.VIS_PERIOD > 0 but nothing drew TID's last areas: register "
                "tid_d2.visualization.visualization_hooks(model) in your trainer (projects/TID/train_net.py "
                "and lazy_train_net.py do)",
                name=__name__,
            )
        areas = self.areas(teacher, student, targets)
        self.view = {
            "iter": storage.iter,
            "image": image.detach().cpu(),
            "input_format": input_format,
            "areas": {lvl: {k: v[:1].cpu() for k, v in maps.items()} for lvl, maps in areas.items()},
            "gt_boxes": targets[0].gt_boxes.tensor.detach().cpu(),
            "strides": list(student.strides),
            "offset": student.offset,
            "score_max": max(self.score_levels) ** 2,
        }
