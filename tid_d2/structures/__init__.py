"""Data structures and box operations shared by detectors and distillers."""
from .box_ops import batched_iou
from .dense_outputs import DenseOutputs
from .distill_layout import DistillLayout

__all__ = ["DenseOutputs", "DistillLayout", "batched_iou"]
