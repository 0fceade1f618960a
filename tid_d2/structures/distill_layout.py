"""`DistillLayout`: what a distiller may know of the two detectors when it is built."""
from dataclasses import dataclass
from typing import Tuple

__all__ = ["DistillLayout"]


@dataclass(frozen=True)
class DistillLayout:
    """
    The static layout shared by a teacher and a student, taken once from the two built detectors
    (`teacher_student.check_compatible`): a method sizes its adapters and per-level modules from it
    instead of reading detector config keys.

    Attributes:
        teacher_channels, student_channels: FPN feature channels of the head inputs of each model.
        strides: the FPN stride of each distilled level (the same in both models).
        num_classes: classes both models predict.
        box_distributions: whether both models hand GFL box-side distributions
            (`DenseOutputs.box_logits`).
        teacher_tower_channels, student_tower_channels: output channels of the first block of each
            model's head towers (0: a head without conv towers), for methods that read the towers.
        teacher_tower_blocks, student_tower_blocks: blocks (conv, norm, activation) in each model's
            head towers (0: none).
        dense_class_head: whether both models predict per-class scores at every location (False when
            either is a two-stage detector, whose dense head is its class-agnostic RPN).
    """

    teacher_channels: int
    student_channels: int
    strides: Tuple[int, ...] = (8, 16, 32, 64, 128)
    num_classes: int = 80
    box_distributions: bool = False
    teacher_tower_channels: int = 0
    student_tower_channels: int = 0
    teacher_tower_blocks: int = 0
    student_tower_blocks: int = 0
    dense_class_head: bool = True

    def __post_init__(self):
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        if min(self.teacher_channels, self.student_channels) < 1 or not self.strides:
            raise ValueError(f"DistillLayout needs channels >= 1 and at least one level, got {self}")

    @property
    def num_levels(self) -> int:
        return len(self.strides)
