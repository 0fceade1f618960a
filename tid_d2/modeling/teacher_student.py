"""`TeacherStudent`: the meta-architecture that distills a frozen teacher into a trainable student."""
import functools
import logging
import os
from typing import Callable, Dict, List, Union

import torch
from torch import nn

from detectron2.config import configurable, get_cfg
from detectron2.modeling import META_ARCH_REGISTRY, build_model

from ..checkpoint import load_weights
from ..config import add_tid_config
from ..distill.base import build_distillers, check_applicable, current_storage
from ..structures import DistillLayout

__all__ = ["TeacherStudent", "load_teacher", "build_teacher_cfg", "check_compatible", "inherit_from_teacher"]

#: MODEL.DISTILL.INHERIT: which of the teacher's trained parts initialize the student
INHERIT_MODES = {"none": (), "neck": ("neck",), "neck+head": ("neck", "head")}

logger = logging.getLogger(__name__)


def _resolve(path: str) -> str:
    """A config path as given, else relative to this project's root (so configs name each other)."""
    if os.path.isfile(path) or os.path.isabs(path):
        return path
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    candidate = os.path.join(root, path)
    return candidate if os.path.isfile(candidate) else path


def build_teacher_cfg(cfg):
    """The teacher's own config: MODEL.TEACHER.CONFIG_FILE + MODEL.TEACHER.OPTS, on this device."""

    path = cfg.MODEL.TEACHER.CONFIG_FILE
    if not path:
        raise ValueError("MODEL.TEACHER.CONFIG_FILE is empty: set it to the teacher's config file.")
    resolved = _resolve(path)
    if not os.path.isfile(resolved):
        raise FileNotFoundError(f"MODEL.TEACHER.CONFIG_FILE not found: {path}")
    tcfg = add_tid_config(get_cfg())
    tcfg.merge_from_file(resolved)
    tcfg.merge_from_list(list(cfg.MODEL.TEACHER.OPTS))
    tcfg.MODEL.DEVICE = cfg.MODEL.DEVICE
    if tcfg.MODEL.META_ARCHITECTURE == "TeacherStudent":
        raise ValueError(f"the teacher config {path} is itself a TeacherStudent; give a detector config")
    return tcfg


def load_teacher(teacher: nn.Module, weights: str) -> nn.Module:
    """Load teacher weights strictly (see `load_weights`); a TeacherStudent training checkpoint gives
    its student's weights."""
    if not weights:
        raise ValueError("MODEL.TEACHER.WEIGHTS is empty: a distillation teacher must be trained first.")
    return load_weights(teacher, weights, key="MODEL.TEACHER.WEIGHTS", source="MODEL.TEACHER.CONFIG_FILE")


def check_compatible(teacher: nn.Module, student: nn.Module) -> DistillLayout:
    """Teacher and student must be `DistillableDetector`s that agree on classes and FPN strides
    (features are compared per level); returns their `DistillLayout`, what distillers are built
    from."""
    for m, who in ((teacher, "teacher"), (student, "student")):
        if not hasattr(m, "forward_distill"):
            raise TypeError(
                f"the {who} {type(m).__name__} is not a DistillableDetector (README: "
                "'Distilling your own detector')"
            )
    if teacher.num_classes != student.num_classes:
        raise ValueError(
            f"teacher has {teacher.num_classes} classes but the student has {student.num_classes}: "
            "distill between detectors trained on the same label set"
        )
    if list(teacher.strides) != list(student.strides):
        raise ValueError(
            f"teacher FPN strides {list(teacher.strides)} differ from the student's "
            f"{list(student.strides)}: use the same head IN_FEATURES"
        )
    return DistillLayout(
        teacher_channels=teacher.feature_channels,
        student_channels=student.feature_channels,
        strides=tuple(student.strides),
        num_classes=student.num_classes,
        box_distributions=bool(teacher.has_box_distributions and student.has_box_distributions),
        teacher_tower_channels=getattr(teacher, "tower_channels", 0),
        student_tower_channels=getattr(student, "tower_channels", 0),
        teacher_tower_blocks=getattr(teacher, "tower_blocks", 0),
        student_tower_blocks=getattr(student, "tower_blocks", 0),
        dense_class_head=bool(
            getattr(teacher, "has_dense_class_head", True) and getattr(student, "has_dense_class_head", True)
        ),
    )


def _parts(model: nn.Module) -> Dict[str, Dict[str, torch.Tensor]]:
    """The neck (the FPN: the backbone minus its `bottom_up` network) and the head of a detector
    (`DistillableDetector.inheritable_parts`), as state dicts."""
    parts = model.inheritable_parts()
    neck = {k: v for k, v in parts["neck"].state_dict().items() if not k.startswith("bottom_up.")}
    return {"neck": neck, "head": parts["head"].state_dict()}


def inherit_from_teacher(student: nn.Module, teacher: nn.Module, mode: str) -> List[str]:
    """
    Copy the teacher's trained neck (mode "neck") or neck and head ("neck+head") into the student,
    as FGD, PGD and ICD start their students. Every tensor must exist with the same shape on both
    sides (same FPN width, bottom-up output widths, head convs and classes), else a ValueError names
    the first differences. Returns the parts copied.
    """
    mode = str(mode).lower()
    if mode not in INHERIT_MODES:
        raise ValueError(f"MODEL.DISTILL.INHERIT must be one of {sorted(INHERIT_MODES)}, got '{mode}'")
    s_parts, t_parts = _parts(student), _parts(teacher)
    for part in INHERIT_MODES[mode]:
        s_sd, t_sd = s_parts[part], t_parts[part]
        bad = [
            f"{k}: student {tuple(v.shape)}, teacher {tuple(t_sd[k].shape) if k in t_sd else 'missing'}"
            for k, v in s_sd.items()
            if k not in t_sd or t_sd[k].shape != v.shape
        ] + [f"{k}: only in the teacher" for k in t_sd if k not in s_sd]
        if bad:
            raise ValueError(
                f"MODEL.DISTILL.INHERIT={mode}: the teacher's {part} does not fit the student's "
                f"({len(bad)} tensors differ, e.g. {'; '.join(bad[:3])}). Inheriting needs the same "
                "FPN OUT_CHANNELS, bottom-up output widths and head layout; use INHERIT none"
            )
        student.inheritable_parts()[part].load_state_dict(t_sd, strict=False)
        logger.info("MODEL.DISTILL.INHERIT: the student starts from the teacher's %s (%d tensors)", part, len(t_sd))
    return list(INHERIT_MODES[mode])


@META_ARCH_REGISTRY.register()
class TeacherStudent(nn.Module):
    """
    Holds a trainable student and a frozen teacher. The teacher is kept out of `parameters()`,
    `state_dict()` and DDP (it is not a registered submodule): it never trains, never enters the
    optimizer and is never written into checkpoints. Training returns the student's detection losses
    plus every distiller's losses; inference is the student alone. Each model gets the images in its
    own channel order (INPUT.FORMAT of each) and normalizes them with its own pixel statistics.
    """

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: nn.Module,
        distillers: Union[nn.ModuleDict, Callable[[DistillLayout], nn.ModuleDict]],
        inherit: str = "none",
    ):
        """
        Args:
            student, teacher: `DistillableDetector`s (checked here, once: `check_compatible`).
            distillers: methods by name, or a function of the pair's `DistillLayout` that builds
                them (`build_distillers` bound to MODEL.DISTILL, `distillers_builder`).
            inherit: MODEL.DISTILL.INHERIT, the teacher's parts copied into the student
                (`inherit_from_teacher`).
        """
        super().__init__()
        layout = check_compatible(teacher, student)
        inherit_from_teacher(student, teacher, inherit)
        if isinstance(distillers, nn.Module):
            for d in distillers.values():
                check_applicable(d, layout)
        else:
            distillers = distillers(layout)
        formats = {teacher.input_format, student.input_format}
        if not formats <= {"BGR", "RGB"}:
            raise ValueError(f"TeacherStudent supports INPUT.FORMAT BGR and RGB, got {sorted(formats)}")
        self.student = student
        self.distillers = distillers
        teacher.eval().requires_grad_(False)
        object.__setattr__(self, "_teacher", teacher)
        for d in distillers.values():
            d.attach(teacher, student)

    @classmethod
    def from_config(cls, cfg):
        scfg = cfg.clone()
        scfg.defrost()
        scfg.MODEL.META_ARCHITECTURE = cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
        student = build_model(scfg)
        teacher = load_teacher(build_model(build_teacher_cfg(cfg)), cfg.MODEL.TEACHER.WEIGHTS)
        return {
            "inherit": cfg.MODEL.DISTILL.INHERIT,
            "student": student,
            "teacher": teacher,
            "distillers": functools.partial(build_distillers, cfg.MODEL.DISTILL),
        }

    @property
    def teacher(self) -> nn.Module:
        return self._teacher

    @property
    def device(self):
        return self.student.device

    @property
    def num_classes(self) -> int:
        return self.student.num_classes

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self._teacher.eval()
        return self

    def teacher_inputs(self, batched_inputs: List[Dict]) -> List[Dict]:
        """The batch in the teacher's channel order (the same dicts when the formats agree)."""
        if self._teacher.input_format == self.student.input_format:
            return batched_inputs
        return [dict(x, image=x["image"].flip(0)) for x in batched_inputs]

    def forward(self, batched_inputs: List[Dict]):
        """
        Training: {student detection losses, distillation losses}. Inference: the student's
        outputs, exactly as the plain student gives them.
        """
        if not self.training:
            return self.student(batched_inputs)
        losses, student_out = self.student.forward_distill(batched_inputs)
        targets = self.student.gt_instances(batched_inputs)
        if self._teacher.training:
            self._teacher.eval()
        with torch.no_grad():
            teacher_out = self._teacher.dense_outputs(self.teacher_inputs(batched_inputs), targets)
        for distiller in self.distillers.values():
            losses.update(distiller(teacher_out, student_out, targets))
        storage = current_storage()
        if storage is not None:
            image, input_format = batched_inputs[0]["image"], self.student.input_format
            for distiller in self.distillers.values():
                distiller.record(image, input_format, teacher_out, student_out, targets)
        return losses
