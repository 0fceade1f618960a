"""Faster R-CNN R-101 FPN, 3x schedule on COCO 2017 (Detectron2 model zoo: 42.0 box AP): the LazyConfig twin of
configs/FasterRCNN-R101-FPN-3x.yaml, the teacher of tid_faster_rcnn_r101_r50_1x.py."""
from .common.models.rcnn import set_depth
from .common.schedule import warmup_multi_step
from .faster_rcnn_r50_fpn_1x import dataloader, model, optimizer, train

set_depth(model, 101)
lr_multiplier = warmup_multi_step(270000, (210000, 250000), warmup_iters=1000)
train.max_iter = 270000
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.output_dir = "output/FasterRCNN-R101-FPN-3x"
