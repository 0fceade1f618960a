"""Converters from other detection codebases' checkpoints to this project's state dict names."""
from .mmdet import (
    convert_mmdet_checkpoint,
    convert_mmdet_state_dict,
    mmdet_architecture,
    mmdet_num_classes,
    mmdet_resnet_depth,
    read_mmdet_state_dict,
)

__all__ = [
    "convert_mmdet_checkpoint",
    "convert_mmdet_state_dict",
    "mmdet_architecture",
    "mmdet_num_classes",
    "mmdet_resnet_depth",
    "read_mmdet_state_dict",
]
