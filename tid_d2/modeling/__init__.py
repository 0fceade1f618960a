"""Detectors (registered in Detectron2's META_ARCH_REGISTRY on import) and their building blocks."""
from . import backbone  # noqa: F401  (registers the backbones)
from .atss import ATSS
from .distillable import DistillableDetector
from .fcos import FCOS
from .gfl import GFL
from .rcnn import DistillableRCNN
from .retinanet import DistillableRetinaNet

__all__ = ["ATSS", "DistillableDetector", "DistillableRCNN", "DistillableRetinaNet", "FCOS", "GFL"]
