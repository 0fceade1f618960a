"""TID for Detectron2: GFL/ATSS detectors, a teacher-student meta-architecture and distillers.

Importing this package registers its meta-architectures (GFL, ATSS, FCOS, TeacherStudent),
backbones, distillers and the embedded `tid_shapes_*` datasets.
"""
from .config import add_tid_config
from . import data, distill, modeling  # noqa: F401  (registration)
from .modeling import teacher_student  # noqa: F401

__version__ = "0.1.0"
__all__ = ["add_tid_config"]
