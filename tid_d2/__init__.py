"""TID for Detectron2: GFL/ATSS detectors, a teacher-student meta-architecture and distillers.

Importing this package registers its meta-architectures, backbones, distillers and datasets.
"""
from .config import add_tid_config  # noqa: F401

__version__ = "0.1.0"
