"""The distiller template, its registry and the two builders (YAML config, LazyConfig).

A method is one class in one file: it declares its registry name (the class name), its config node
MODEL.DISTILL.<NAME> with defaults (`config`), the keys the tuning protocol scales (`main_weights`)
and how it is built from that node plus a `DistillLayout` (`from_config`). Everything else
(`add_tid_config`, the tuning protocol, the benchmark's method list, `distillers_builder`) reads
the registry.
"""
import functools
import re
from typing import Any, Dict, List, Mapping, Sequence, Tuple

import torch
from detectron2.config import CfgNode
from detectron2.structures import Instances
from detectron2.utils.events import get_event_storage
from detectron2.utils.registry import Registry
from torch import Tensor, nn

from ..structures import DenseOutputs, DistillLayout
from .helpers import check_feature_norm

__all__ = [
    "DISTILLER_REGISTRY",
    "Distiller",
    "build_distillers",
    "check_applicable",
    "check_loss_weights",
    "current_storage",
    "distillers_builder",
    "distill_node",
    "lookup_methods",
    "registered_methods",
    "warmup_factor",
]

DISTILLER_REGISTRY = Registry("DISTILLER")
DISTILLER_REGISTRY.__doc__ = """
Registry of distillation methods (`Distiller` subclasses), by class name. A registered class is
built as `cls(cfg.MODEL.DISTILL, layout)` and is an `nn.Module` (it may own trainable adapters,
which train with the student).
"""

#: the shared MODEL.DISTILL keys every method receives as `Distiller` arguments
_BASE_ARGS = ("WARMUP_ITERS", "LOG_PERIOD", "FEATURE_NORM")
#: the shared keys LazyConfig (and `from_defaults`) take as lower-case overrides, for all methods
_SHARED_OVERRIDES = tuple(k.lower() for k in _BASE_ARGS + ("ADAPTER",))
_KEY = re.compile(r"^[A-Z][A-Z0-9_]*$")


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
    The template of a distillation method. A subclass declares

    - `config`: its keys under MODEL.DISTILL.<NAME> (NAME: the class name, also its registry name
      and, lower-case, `name`), each `KEY: (default, "what it is")`;
    - `main_weights`: the keys of `config` the tuning protocol scales together;
    - `needs_box_distributions`: whether it needs GFL box distributions (checked at build time);
    - `needs_dense_class_head`: whether it needs per-class dense predictions or the dense head's
      class towers, which a two-stage detector's RPN does not have (checked at build time);

    and implements `losses`. `from_config` passes every key of `config` lower-case to the
    constructor with the `Distiller` arguments; a method that builds modules (adapters) from the
    `DistillLayout` extends it. `forward` then

    - names each loss term `loss_<name>_<term>` (`loss_<name>` for the term ""),
    - multiplies every term by the warm-up factor of the current `EventStorage` iteration,
    - keeps the detached diagnostics of the call in `self.diagnostics` and writes their means to
      `EventStorage` every `log_period` iterations (and "distill/weight" while warming up).

    `record` may keep detached data for visualization hooks (`TeacherStudent` calls it after every
    training forward). The teacher's tensors carry no gradient.
    """

    name: str = "distiller"
    config: Mapping[str, Tuple[Any, str]] = {}
    main_weights: Tuple[str, ...] = ()
    needs_box_distributions: bool = False
    needs_dense_class_head: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in vars(cls) and vars(cls)["name"] != cls.__name__.lower():
            raise TypeError(f"{cls.__name__}: a distiller's name is its class name in lower case; drop `name`")
        cls.name = cls.__name__.lower()

    def __init__(self, *, warmup_iters: int, log_period: int, feature_norm: str):
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
                f"{type(self).__name__}: MODEL.DISTILL.WARMUP_ITERS must be >= 0 and LOG_PERIOD "
                f">= 1, got {warmup_iters} / {log_period}"
            )
        check_feature_norm(feature_norm)
        self.warmup_iters = int(warmup_iters)
        self.log_period = int(log_period)
        self.feature_norm = feature_norm
        self.diagnostics: Dict[str, Tensor] = {}

    @classmethod
    def from_config(cls, cfg: CfgNode, layout: DistillLayout) -> Dict[str, Any]:
        """Constructor arguments from MODEL.DISTILL (`cfg`): the method's own node, lower-case, and
        the shared `Distiller` arguments. `layout` sizes what a subclass builds."""
        node = cfg[cls.__name__.upper()]
        own = {k.lower(): node[k] for k in cls.config}
        return {**own, **{k.lower(): cfg[k] for k in _BASE_ARGS}}

    @classmethod
    def default_node(cls) -> CfgNode:
        """MODEL.DISTILL.<NAME> at its defaults (`add_tid_config` calls it for every registered
        method, so a wrong declaration fails when the first config is made)."""
        bad = [k for k in cls.config if not _KEY.match(k)]
        bad += [k for k in cls.main_weights if k not in cls.config]
        if bad:
            raise TypeError(
                f"distiller {cls.__name__}: config keys must be upper-case names and main_weights keys "
                f"of config; wrong: {bad}"
            )
        return CfgNode({k: v for k, (v, _) in cls.config.items()})

    @classmethod
    def from_defaults(cls, layout: DistillLayout, **overrides) -> "Distiller":
        """The method at its config defaults, `overrides` by lower-case key (own or shared)."""
        shared = {k: overrides.pop(k) for k in list(overrides) if k in _SHARED_OVERRIDES}
        node = distill_node([cls.__name__], {**shared, cls.name: overrides}, f"{cls.__name__}.from_defaults")
        return build_distillers(node, layout)[cls.name]

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

    def attach(self, teacher: nn.Module, student: nn.Module) -> None:
        """Called once by `TeacherStudent` with its frozen teacher and its student (both
        `DistillableDetector`s), for methods that run parts of their heads (CrossKD, PGD on head
        towers; `models`). Kept as plain attributes `_teacher`, `_student`: never trained, saved or
        moved by this module (the student is the TeacherStudent's, the teacher frozen)."""
        object.__setattr__(self, "_teacher", teacher)
        object.__setattr__(self, "_student", student)

    def models(self) -> Tuple[nn.Module, nn.Module]:
        """(teacher, student) given to `attach`; a RuntimeError outside a TeacherStudent."""
        teacher, student = getattr(self, "_teacher", None), getattr(self, "_student", None)
        if teacher is None or student is None:
            raise RuntimeError(
                f"{type(self).__name__} runs parts of the detectors' heads: build it inside "
                "TeacherStudent (MODEL.DISTILL.METHODS), which attaches both models"
            )
        return teacher, student

    def record(
        self,
        image: Tensor,
        input_format: str,
        teacher: DenseOutputs,
        student: DenseOutputs,
        targets: List[Instances],
    ) -> None:
        """Called after every training forward with the batch's first image (`image` [3, h, w],
        channels in `input_format`): a method may keep detached data for a visualization hook
        (default: nothing). It draws nothing itself."""

    def _write(self, storage, scale: float) -> None:
        if self.warmup_iters > 0:
            storage.put_scalar("distill/weight", scale, smoothing_hint=False)
        if (storage.iter + 1) % self.log_period or not self.diagnostics:
            return
        tensors = {k: v.float().mean() for k, v in self.diagnostics.items() if torch.is_tensor(v)}
        values = {k: float(v) for k, v in self.diagnostics.items() if not torch.is_tensor(v)}
        if tensors:  # one device-to-host copy for all of them
            values.update(zip(tensors, torch.stack(list(tensors.values())).tolist()))
        storage.put_scalars(**values, smoothing_hint=False)


def registered_methods() -> Dict[str, type]:
    """Every registered method by lower-case name, in registration order."""
    return {name.lower(): cls for name, cls in DISTILLER_REGISTRY}


def lookup_methods(names: Sequence[str], key: str) -> List[type]:
    """The registered classes of `names` (case-insensitive); a KeyError naming `key` and the known ones."""
    known = registered_methods()
    unknown = [str(m).lower() for m in names if str(m).lower() not in known]
    if unknown:
        raise KeyError(f"{key} names unknown methods {unknown}; known: {sorted(known)}")
    return [known[str(m).lower()] for m in names]


def check_applicable(method, layout: DistillLayout) -> None:
    """A ValueError when `method` (a Distiller class or instance) cannot distill this pair."""
    if method.needs_dense_class_head and not layout.dense_class_head:
        raise ValueError(
            f"distillation method '{method.name}' needs a dense classification head (per-class scores "
            "at every location, and the head's class towers) in teacher and student; a two-stage "
            "detector's dense head is its class-agnostic RPN. Use fitnet, fgd, pkd, cwd or tid"
        )
    if method.needs_box_distributions and not layout.box_distributions:
        raise ValueError(
            f"distillation method '{method.name}' needs GFL box distributions in teacher and student "
            "(DenseOutputs.box_logits), which this teacher/student pair does not give"
        )


def build_distillers(distill: CfgNode, layout: DistillLayout) -> nn.ModuleDict:
    """
    The builder: every method of `distill.METHODS` (case-insensitive registry names), each built
    as `cls(**cls.from_config(distill, layout))` from MODEL.DISTILL (`distill`) and the `layout` of
    the two detectors, by lower-case name.
    """
    out = nn.ModuleDict()
    for cls in lookup_methods(distill.METHODS, "MODEL.DISTILL.METHODS"):
        check_applicable(cls, layout)
        if cls.name in out:
            raise ValueError(f"MODEL.DISTILL.METHODS names '{cls.name}' twice")
        out[cls.name] = cls(**cls.from_config(distill, layout))
    return out


def distill_node(
    methods: Sequence[str], overrides: Mapping[str, Any], caller: str = "distillers_builder"
) -> CfgNode:
    """
    MODEL.DISTILL at its defaults with METHODS = `methods` and lower-case `overrides`: the shared
    `warmup_iters`, `log_period`, `feature_norm`, `adapter`, and per method by lower-case name a
    dict of its own lower-case keys (e.g. `tid=dict(alpha=1.0)`; a trailing "_" is dropped, so
    `lambda_` names LAMBDA). An unknown key is a KeyError naming the known ones.
    """
    from ..config import add_tid_config  # the registry-built defaults; config imports this package
    from detectron2.config import get_cfg

    distill = add_tid_config(get_cfg()).MODEL.DISTILL
    classes = lookup_methods(methods, f"{caller}(methods=...)")
    distill.METHODS = [cls.__name__ for cls in classes]
    per_method = {cls.name: cls for cls in classes}
    for key, value in overrides.items():
        if key in _SHARED_OVERRIDES:
            distill[key.upper()] = value
        elif key in per_method:
            node, own = distill[key.upper()], per_method[key].config
            for k, v in dict(value).items():
                upper = k.rstrip("_").upper()
                if k in _SHARED_OVERRIDES:
                    raise KeyError(
                        f"'{k}' is a MODEL.DISTILL key all methods share: pass it as {k}=... next to the "
                        f"methods, not inside {key}=dict(...)"
                    )
                if upper not in own:
                    raise KeyError(
                        f"'{k}' is not a key of MODEL.DISTILL.{key.upper()}; known (lower-case): "
                        f"{sorted(x.lower() for x in own)}"
                    )
                node[upper] = v
        else:
            raise KeyError(
                f"override '{key}' is neither a shared key {sorted(_SHARED_OVERRIDES)} nor a method in "
                f"{methods}"
            )
    return distill


def distillers_builder(methods: Sequence[str] = ("TID",), **overrides):
    """
    The LazyConfig builder: a function of the `DistillLayout` that `TeacherStudent` calls once it
    has both detectors. Methods start from their MODEL.DISTILL.* defaults; `overrides` as in
    `distill_node` (e.g. `warmup_iters=100, tid=dict(alpha=1.0)`).
    """
    return functools.partial(build_distillers, distill_node(list(methods), overrides))
