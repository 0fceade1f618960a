"""`TeacherStudent`: the meta-architecture that distills a frozen teacher into a trainable student."""
import logging
import os
from typing import Dict, List

import torch
from torch import nn

from detectron2.config import configurable, get_cfg
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from detectron2.utils.events import get_event_storage

from ..distill.base import build_distillers
from .dense_base import level_names

__all__ = ["TeacherStudent", "load_teacher", "build_teacher_cfg", "check_compatible"]

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
    from ..config import add_tid_config

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
    """
    Load teacher weights strictly with DetectionCheckpointer: a missing file is a FileNotFoundError,
    weights whose keys or shapes do not fit the teacher a ValueError naming the file and the first
    mismatching keys. A TeacherStudent training checkpoint gives its student's weights.
    """
    from ..tools_common import load_weights_strict

    if not weights:
        raise ValueError("MODEL.TEACHER.WEIGHTS is empty: a distillation teacher must be trained first.")
    return load_weights_strict(
        teacher, weights, key="MODEL.TEACHER.WEIGHTS", source="MODEL.TEACHER.CONFIG_FILE"
    )


def check_compatible(teacher: nn.Module, student: nn.Module) -> None:
    """Teacher and student must agree on classes and FPN strides (features are compared per level)."""
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
    for m, who in ((teacher, "teacher"), (student, "student")):
        if not hasattr(m, "forward_distill"):
            raise TypeError(f"the {who} {type(m).__name__} does not expose DenseOutputs (see README)")


@META_ARCH_REGISTRY.register()
class TeacherStudent(nn.Module):
    """
    Holds a trainable student and a frozen teacher. The teacher is kept out of `parameters()`,
    `state_dict()` and DDP (it is not a registered submodule): it never trains, never enters the
    optimizer and is never written into checkpoints. Training returns the student's detection losses
    plus every distiller's losses; inference is the student alone.
    """

    @configurable
    def __init__(
        self,
        *,
        student: nn.Module,
        teacher: nn.Module,
        distillers: nn.ModuleDict,
        vis_period: int = 0,
    ):
        """vis_period > 0: every vis_period iterations, put TID's area sheet of the batch's first
        image into EventStorage (TensorBoard image "tid/areas")."""
        super().__init__()
        self.vis_period = vis_period
        check_compatible(teacher, student)
        for name, d in distillers.items():
            if d.needs_box_distributions and not (
                getattr(teacher, "has_box_distributions", False)
                and getattr(student, "has_box_distributions", False)
            ):
                raise ValueError(
                    f"distillation method '{name}' needs GFL box distributions in teacher and student; "
                    f"got {type(teacher).__name__} -> {type(student).__name__}"
                )
        self.student = student
        self.distillers = distillers
        teacher.eval().requires_grad_(False)
        object.__setattr__(self, "_teacher", teacher)

    @classmethod
    def from_config(cls, cfg):
        scfg = cfg.clone()
        scfg.defrost()
        scfg.MODEL.META_ARCHITECTURE = cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
        student = build_model(scfg)
        tcfg = build_teacher_cfg(cfg)
        teacher = load_teacher(build_model(tcfg), cfg.MODEL.TEACHER.WEIGHTS)
        check_compatible(teacher, student)
        channels = lambda m: m.backbone.output_shape()[m.head_in_features[0]].channels  # noqa: E731
        return {
            "student": student,
            "teacher": teacher,
            "distillers": build_distillers(cfg, channels(teacher), channels(student)),
            "vis_period": cfg.MODEL.TID.VIS_PERIOD,
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

    @property
    def level_names(self) -> List[str]:
        return level_names(self.student.strides)

    def _apply(self, fn, *args, **kwargs):
        super()._apply(fn, *args, **kwargs)
        self._teacher._apply(fn, *args, **kwargs)
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self._teacher.eval()
        return self

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
            teacher_out = self._teacher.dense_outputs(batched_inputs, targets)
        for distiller in self.distillers.values():
            losses.update(distiller(teacher_out, student_out, targets))
        if self.vis_period > 0 and "tid" in self.distillers:
            storage = get_event_storage()
            if storage.iter % self.vis_period == 0:
                self._put_area_sheet(storage, batched_inputs, teacher_out, student_out, targets)
        return losses

    def _put_area_sheet(self, storage, batched_inputs, teacher_out, student_out, targets) -> None:
        from ..visualization import tid_area_sheet_for_tensorboard

        tid = self.distillers["tid"]
        areas = tid.areas(teacher_out, student_out, targets)
        sheet = tid_area_sheet_for_tensorboard(
            batched_inputs[0]["image"],
            areas,
            index=0,
            input_format=getattr(self.student, "input_format", "BGR"),
            gt_boxes=targets[0].gt_boxes.tensor,
            strides=list(self.student.strides),
            offset=self.student.anchor_generator.offset,
            score_max=max(tid.score_levels) ** 2,
            title=f"iter {storage.iter}",
        )
        storage.put_image("tid/areas", sheet)
