"""
The tuning protocol: every method gets the same budget. Its main loss weights (all scaled together
by one factor, so the published ratios between them stay) are searched over one fixed grid of
factors around the published values, on seed 0 of a tuning split that is not the reported one;
each method then runs at its pick on the reported split. `tools/benchmark.py --tune` drives it.
"""
import math
from typing import List, Mapping, Sequence, Tuple

from detectron2.config import CfgNode

from ..distill.base import lookup_methods
from .accuracy import MethodSpec

__all__ = ["DEFAULT_GRID", "grid_specs", "main_weights", "pick_factor"]

#: factors of the published weights searched for every method (the same points for everyone)
DEFAULT_GRID = (0.5, 1.0, 2.0)

def main_weights(method: str) -> Tuple[str, ...]:
    """The config keys of a registered method's main loss weights (its `Distiller.main_weights`),
    scaled together by the tuning factor. A method that declares none is a KeyError."""
    (cls,) = lookup_methods([method], "tuning")
    if not cls.main_weights:
        raise KeyError(f"{method} declares no main loss weights (Distiller.main_weights): it cannot be tuned")
    return tuple(f"MODEL.DISTILL.{cls.__name__.upper()}.{key}" for key in cls.main_weights)


def _get(cfg: CfgNode, key: str) -> float:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return float(node)


def grid_specs(spec: MethodSpec, factors: Sequence[float], defaults: CfgNode) -> List[Tuple[float, MethodSpec]]:
    """
    One entry per factor: `spec` with every main weight of each of its methods set to factor x its
    value in `defaults` (the method's published weights, or the spec's own override). Named
    '<name>@x<factor>'. A method without main weights is a KeyError.
    """
    if not factors or any(not (math.isfinite(f) and f > 0) for f in factors):
        raise ValueError(f"--tune-grid: factors must be finite and > 0, got {list(factors)}")
    own = dict(zip(spec.opts[::2], spec.opts[1::2]))
    out = []
    for factor in factors:
        opts = dict(own)
        for method in spec.methods:
            for key in main_weights(method):
                base = float(own[key]) if key in own else _get(defaults, key)
                opts[key] = repr(base * float(factor))
        flat = tuple(x for kv in opts.items() for x in kv)
        out.append((float(factor), MethodSpec(f"{spec.name}@x{factor:g}", spec.methods, flat)))
    return out


def pick_factor(aps: Mapping[float, float]) -> float:
    """The factor with the highest AP; diverged or missing runs (None / NaN) never win; ties go to
    the factor closest to 1 (the published weights). A ValueError when every run failed."""
    ok = {f: ap for f, ap in aps.items() if ap is not None and math.isfinite(ap)}
    if not ok:
        raise ValueError(f"tuning: every grid point failed ({dict(aps)})")
    best = max(ok.values())
    return min((f for f, ap in ok.items() if ap == best), key=lambda f: (abs(math.log(f)), f))
