"""
Distillation methods. Importing this package registers in DISTILLER_REGISTRY every method module
of this package (a new `tid_d2/distill/<name>.py` needs no other edit) and every module named in
the environment variable TID_D2_DISTILLERS (comma-separated importable modules: methods kept
outside this package).
"""
import importlib
import os
import pkgutil

from .base import DISTILLER_REGISTRY, Distiller, build_distillers, distillers_builder, registered_methods

__all__ = ["DISTILLER_REGISTRY", "Distiller", "build_distillers", "distillers_builder", "registered_methods"]

#: environment variable naming extra method modules to import
PLUGINS_ENV = "TID_D2_DISTILLERS"

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    importlib.import_module(f"{__name__}.{_module}")
for _module in filter(None, (m.strip() for m in os.environ.get(PLUGINS_ENV, "").split(","))):
    try:
        importlib.import_module(_module)
    except ImportError as e:
        raise ImportError(f"{PLUGINS_ENV} names the module '{_module}', which cannot be imported: {e}") from e
