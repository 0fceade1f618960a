"""Mask R-CNN R-101 FPN, 3x schedule on COCO 2017 (Detectron2 model zoo: 42.9 box AP, 38.6 mask AP): the LazyConfig
twin of configs/MaskRCNN-R101-FPN-3x.yaml, the teacher of tid_mask_rcnn_r101_r50_1x.py."""
from .common.data.shapes import with_masks
from .common.models.rcnn import mask_rcnn_fpn, set_depth
from .faster_rcnn_r101_fpn_3x import dataloader, lr_multiplier, optimizer, train

model = set_depth(mask_rcnn_fpn(), 101)
with_masks(dataloader, "polygon")
train.output_dir = "output/MaskRCNN-R101-FPN-3x"
