"""Distillation methods; importing this package registers them in DISTILLER_REGISTRY."""
from .base import DISTILLER_REGISTRY, Distiller, build_distillers, distiller_dict, distillers_builder
from . import crosskd, cwd, fgd, fitnet, ld, pgd, pkd, tid  # noqa: F401  (registration)

__all__ = ["DISTILLER_REGISTRY", "Distiller", "build_distillers", "distiller_dict", "distillers_builder"]
