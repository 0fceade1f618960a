"""Helpers every distiller may use: level-by-level feature pairs and padded ground truth."""
from typing import List, Tuple

import torch
import torch.nn.functional as F
from detectron2.structures import Instances
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from ..structures import DenseOutputs

__all__ = ["FEATURE_NORMS", "check_feature_norm", "feature_pairs", "normalize_feature_pairs", "pad_targets"]

#: values of MODEL.DISTILL.FEATURE_NORM
FEATURE_NORMS = ("none", "teacher_rms")


def check_feature_norm(mode: str) -> None:
    """MODEL.DISTILL.FEATURE_NORM must be one of FEATURE_NORMS."""
    if mode not in FEATURE_NORMS:
        raise ValueError(f"MODEL.DISTILL.FEATURE_NORM must be one of {FEATURE_NORMS}, got '{mode}'")


def feature_pairs(
    teacher: DenseOutputs,
    student: DenseOutputs,
    adapter,
    method: str,
    resize_student: bool = False,
    norm: str = "none",
) -> List[Tuple[Tensor, Tensor]]:
    """
    Pair the FPN features of teacher and student level by level.

    Args:
        adapter: an `nn.Module` applied to every student level, or a sequence with one per level.
        method: the distiller's name, for error messages.
        resize_student: bilinearly resize student maps whose size differs from the teacher's
            (PKD does); otherwise a size mismatch is an error.
        norm: MODEL.DISTILL.FEATURE_NORM, applied to every pair (`normalize_feature_pairs`).

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
    return normalize_feature_pairs(pairs, norm)


def normalize_feature_pairs(pairs: List[Tuple[Tensor, Tensor]], mode: str) -> List[Tuple[Tensor, Tensor]]:
    """
    Put the (teacher, adapted student) features of each level on the teacher's scale.

    "teacher_rms": both maps of a level divided by the root mean square of the teacher's map over
    the batch (detached), so a squared error becomes the error relative to the teacher's feature
    energy: its size, and the pull it puts on the student, no longer grow with the teacher's
    feature magnitude (a barely trained teacher's can be 10x a converged one's). "none": unchanged.
    """
    check_feature_norm(mode)
    if mode == "none":
        return list(pairs)
    out = []
    for t, s in pairs:
        rms = t.detach().float().pow(2).mean().sqrt().clamp(min=1e-6)
        out.append((t / rms, s / rms))
    return out


def pad_targets(targets: List[Instances], device) -> Tuple[Tensor, Tensor, Tensor]:
    """
    Pad the GTs of a batch: gt_boxes [N, M, 4] float32, gt_classes [N, M] int64 (-1 padding),
    gt_valid [N, M] bool, M = the most GTs in one image (0 when the batch has none).
    """
    boxes = pad_sequence(
        [t.gt_boxes.tensor.to(device=device, dtype=torch.float32) for t in targets],
        batch_first=True,
    )
    classes = pad_sequence(
        [t.gt_classes.to(device=device, dtype=torch.int64) for t in targets],
        batch_first=True,
        padding_value=-1,
    )
    lengths = torch.tensor([len(t) for t in targets]).to(device, non_blocking=True)
    valid = torch.arange(boxes.shape[1], device=device)[None] < lengths[:, None]
    return boxes, classes, valid
