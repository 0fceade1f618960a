"""Data structures and box operations shared by detectors and distillers."""
from .box_ops import batched_iou
from .dense_outputs import DenseOutputs

__all__ = ["DenseOutputs", "batched_iou"]
