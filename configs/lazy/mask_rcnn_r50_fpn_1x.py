"""Mask R-CNN R-50 FPN, 1x schedule on COCO 2017 (Detectron2 model zoo: 38.6 box AP, 35.2 mask AP): the LazyConfig
twin of configs/MaskRCNN-R50-FPN-1x.yaml, the student of tid_mask_rcnn_r101_r50_1x.py."""
from .common.data.shapes import with_masks
from .common.models.rcnn import mask_rcnn_fpn
from .faster_rcnn_r50_fpn_1x import dataloader, lr_multiplier, optimizer, train

model = mask_rcnn_fpn()
with_masks(dataloader, "polygon")
train.output_dir = "output/MaskRCNN-R50-FPN-1x"
