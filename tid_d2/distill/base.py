"""The distiller interface and its registry: one method = one class = one file."""
from typing import Dict, List

from detectron2.structures import Instances
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..modeling.outputs import DenseOutputs

__all__ = ["DISTILLER_REGISTRY", "Distiller", "build_distillers", "distiller_dict"]

DISTILLER_REGISTRY = Registry("DISTILLER")
DISTILLER_REGISTRY.__doc__ = """
Registry for distillation methods. A registered class is built as `cls(cfg, teacher_channels,
student_channels)` and is an `nn.Module` (it may own trainable adapters, which train with the student).
"""


class Distiller(nn.Module):
    """
    One distillation method. `forward(teacher, student, targets)` returns a dict of named losses
    `loss_<method>_<term>` (already weighted); the teacher's tensors carry no gradient.
    After each forward, `self.diagnostics` holds detached scalars/tensors for hooks and visualizers.
    """

    name: str = "base"
    #: whether the method needs `DenseOutputs.box_logits` (GFL distributions); checked at build time.
    needs_box_distributions: bool = False

    def __init__(self):
        super().__init__()
        self.diagnostics: Dict[str, Tensor] = {}
        self.loss_scale: float = 1.0  # set by the trainer's warm-up schedule

    def forward(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Dict[str, Tensor]:
        raise NotImplementedError


def build_distillers(cfg, teacher_channels: int, student_channels: int) -> nn.ModuleDict:
    """Build every method named in cfg.MODEL.DISTILL.METHODS (case-insensitive registry names)."""
    methods = [m.lower() for m in cfg.MODEL.DISTILL.METHODS]
    known = {k.lower(): k for k, _ in DISTILLER_REGISTRY}
    out = nn.ModuleDict()
    for m in methods:
        if m not in known:
            raise KeyError(
                f"MODEL.DISTILL.METHODS names unknown method '{m}'; known: {sorted(known)}"
            )
        out[m] = DISTILLER_REGISTRY.get(known[m])(cfg, teacher_channels, student_channels)
    return out


def distiller_dict(**methods: Distiller) -> nn.ModuleDict:
    """The distillers of a TeacherStudent from keyword arguments (LazyConfig: `L(distiller_dict)(
    tid=L(TID)(...))`); keys are the methods' lower-case names, as `build_distillers` gives them."""
    for key, d in methods.items():
        if not isinstance(d, Distiller) or key != d.name:
            raise ValueError(f"distiller_dict: '{key}' must be a Distiller named '{key}', got {d!r:.80}")
    return nn.ModuleDict(methods)
