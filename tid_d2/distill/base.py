"""The distiller template and its registry: one method = one class = one file."""
import functools
from typing import Dict, List, Sequence, Tuple

import torch
from detectron2.config import get_cfg
from detectron2.structures import Instances
from detectron2.utils.events import EventStorage, get_event_storage
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..structures import DenseOutputs
from .helpers import check_feature_norm

__all__ = [
    "DISTILLER_REGISTRY",
    "Distiller",
    "build_distillers",
    "check_loss_weights",
    "current_storage",
    "distiller_base_config",
    "distiller_dict",
    "distillers_builder",
    "warmup_factor",
]

DISTILLER_REGISTRY = Registry("DISTILLER")
DISTILLER_REGISTRY.__doc__ = """
Registry for distillation methods. A registered class is built as `cls(cfg, teacher_channels,
student_channels)` and is an `nn.Module` (it may own trainable adapters, which train with the student).
"""


def check_loss_weights(prefix: str, **weights: float) -> None:
    """Every loss weight `prefix.KEY` must be >= 0: a negative one rewards the student for moving
    away from the teacher, and the total loss then has no lower bound."""
    for key, v in weights.items():
        if not v >= 0:
            raise ValueError(
                f"{prefix}.{key} must be >= 0 (a negative weight pushes the student away from the "
                f"teacher), got {v}"
            )


def warmup_factor(it: int, warmup_iters: int) -> float:
    """Linear ramp of the distillation weight: (it + 1) / warmup_iters, capped at 1."""
    return 1.0 if warmup_iters <= 0 else min(1.0, (it + 1) / warmup_iters)


def current_storage():
    """The EventStorage of the running trainer, or None outside one."""
    try:
        return get_event_storage()
    except AssertionError:  # outside a trainer
        return None


class Distiller(nn.Module):
    """
    The template of a distillation method. A method implements only `losses`; `forward` then

    - names each loss term `loss_<name>_<term>` (`loss_<name>` for the term ""),
    - multiplies every term by the warm-up factor of the current `EventStorage` iteration
      (`warmup_iters`: a linear ramp over the first iterations; 1 outside a trainer),
    - keeps the detached diagnostics of the call in `self.diagnostics` and writes their means to
      `EventStorage` every `log_period` iterations (and "distill/weight" while warming up).

    `visualize` may put pictures into `EventStorage` (`TeacherStudent` calls it after every
    training forward). The teacher's tensors carry no gradient.
    """

    name: str = "base"
    #: whether the method needs `DenseOutputs.box_logits` (GFL distributions); checked at build time.
    needs_box_distributions: bool = False

    def __init__(self, *, warmup_iters: int = 0, log_period: int = 20, feature_norm: str = "none"):
        """
        Args:
            warmup_iters: MODEL.DISTILL.WARMUP_ITERS (0: full weight from the first iteration).
            log_period: MODEL.DISTILL.LOG_PERIOD, iterations between two diagnostics writes.
            feature_norm: MODEL.DISTILL.FEATURE_NORM, the scale on which a method compares FPN
                features (`helpers.normalize_feature_pairs`); pass it to `feature_pairs`.
        """
        super().__init__()
        if warmup_iters < 0 or log_period < 1:
            raise ValueError(
                f"{type(self).__name__}: warmup_iters must be >= 0 and log_period >= 1, got "
                f"{warmup_iters} / {log_period}"
            )
        check_feature_norm(feature_norm)
        self.warmup_iters = int(warmup_iters)
        self.log_period = int(log_period)
        self.feature_norm = feature_norm
        self.diagnostics: Dict[str, Tensor] = {}

    def losses(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Tuple[Dict[str, Tensor], Dict[str, Tensor]]:
        """The method: (weighted loss terms by term name, diagnostics by name)."""
        raise NotImplementedError

    @property
    def loss_scale(self) -> float:
        """The warm-up factor of the current iteration."""
        return self._scale(current_storage())

    def _scale(self, storage) -> float:
        return 1.0 if storage is None else warmup_factor(storage.iter, self.warmup_iters)

    def forward(
        self, teacher: DenseOutputs, student: DenseOutputs, targets: List[Instances]
    ) -> Dict[str, Tensor]:
        terms, diagnostics = self.losses(teacher, student, targets)
        self.diagnostics = {k: v.detach() if torch.is_tensor(v) else v for k, v in diagnostics.items()}
        storage = current_storage()
        scale = self._scale(storage)
        if storage is not None:
            self._write(storage, scale)
        prefix = f"loss_{self.name}"
        return {(f"{prefix}_{t}" if t else prefix): v * scale for t, v in terms.items()}

    def attach_teacher(self, teacher: nn.Module) -> None:
        """Called once by `TeacherStudent` with its frozen teacher (a `DistillableDetector`). Default:
        nothing; a method that runs the teacher's head on student features (CrossKD) keeps it,
        without registering it as a submodule."""

    def visualize(
        self,
        storage: EventStorage,
        image: Tensor,
        input_format: str,
        teacher: DenseOutputs,
        student: DenseOutputs,
        targets: List[Instances],
    ) -> None:
        """Called at every training step: may put pictures of the batch's first image (`image`
        [3, h, w], channels in `input_format`) into `storage` (default: nothing)."""

    def _write(self, storage: EventStorage, scale: float) -> None:
        if self.warmup_iters > 0:
            storage.put_scalar("distill/weight", scale, smoothing_hint=False)
        if (storage.iter + 1) % self.log_period or not self.diagnostics:
            return
        tensors = {k: v.float().mean() for k, v in self.diagnostics.items() if torch.is_tensor(v)}
        values = {k: float(v) for k, v in self.diagnostics.items() if not torch.is_tensor(v)}
        if tensors:  # one device-to-host copy for all of them
            values.update(zip(tensors, torch.stack(list(tensors.values())).tolist()))
        storage.put_scalars(**values, smoothing_hint=False)


def distiller_base_config(cfg) -> Dict:
    """The `Distiller` arguments every method's `from_config` passes on."""
    return {
        "warmup_iters": cfg.MODEL.DISTILL.WARMUP_ITERS,
        "log_period": cfg.MODEL.DISTILL.LOG_PERIOD,
        "feature_norm": cfg.MODEL.DISTILL.FEATURE_NORM,
    }


def build_distillers(
    cfg, teacher_channels: int, student_channels: int, methods=None, **method_args
) -> nn.ModuleDict:
    """
    Build every method named in `methods` (default cfg.MODEL.DISTILL.METHODS; case-insensitive
    registry names) from `cfg`; `method_args[<lower-case name>]` overrides a method's arguments.
    """
    names = [m.lower() for m in (cfg.MODEL.DISTILL.METHODS if methods is None else methods)]
    known = {k.lower(): k for k, _ in DISTILLER_REGISTRY}
    unknown = sorted(set(method_args) - set(names))
    if unknown:
        raise KeyError(f"arguments given for methods {unknown} that are not in {names}")
    out = nn.ModuleDict()
    for m in names:
        if m not in known:
            raise KeyError(
                f"MODEL.DISTILL.METHODS names unknown method '{m}'; known: {sorted(known)}"
            )
        cls = DISTILLER_REGISTRY.get(known[m])
        out[m] = cls(cfg, teacher_channels, student_channels, **method_args.get(m, {}))
    return out


def distillers_builder(methods: Sequence[str] = ("TID",), **method_args):
    """
    For LazyConfig: a function (teacher_channels, student_channels) -> distillers that
    `TeacherStudent` calls with its models' channels. Methods start from their config defaults
    (MODEL.DISTILL.*, MODEL.TID.*); `method_args` are the shared `warmup_iters` / `log_period` /
    `feature_norm` and
    per-method overrides by lower-case name, e.g. `tid=dict(alpha=1.0)`.
    """
    from ..config import add_tid_config

    base = {k: method_args.pop(k) for k in ("warmup_iters", "log_period", "feature_norm") if k in method_args}
    names = [m.lower() for m in methods]
    per_method = {m: {**base, **method_args.get(m, {})} for m in names}
    unknown = sorted(set(method_args) - set(names))
    if unknown:
        raise KeyError(f"distillers_builder: arguments for {unknown}, which are not in {names}")
    cfg = add_tid_config(get_cfg())
    return functools.partial(build_distillers, cfg, methods=names, **per_method)


def distiller_dict(**methods: Distiller) -> nn.ModuleDict:
    """The distillers of a TeacherStudent from keyword arguments (LazyConfig: `L(distiller_dict)(
    tid=L(TID)(...))`); keys are the methods' lower-case names, as `build_distillers` gives them."""
    for key, d in methods.items():
        if not isinstance(d, Distiller) or key != d.name:
            raise ValueError(f"distiller_dict: '{key}' must be a Distiller named '{key}', got {d!r:.80}")
    return nn.ModuleDict(methods)
