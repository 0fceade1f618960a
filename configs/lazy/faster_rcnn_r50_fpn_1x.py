"""Faster R-CNN R-50 FPN, 1x schedule on COCO 2017 (Detectron2 model zoo: 37.9 box AP) as a DistillableRCNN:
the LazyConfig twin of configs/FasterRCNN-R50-FPN-1x.yaml, the student of tid_faster_rcnn_r101_r50_1x.py.

    python projects/TID/lazy_train_net.py --config-file configs/lazy/faster_rcnn_r50_fpn_1x.py --num-gpus 8
"""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .common.data.coco import dataloader
from .common.models.rcnn import faster_rcnn_fpn
from .common.optim import SGD as optimizer
from .common.schedule import warmup_multi_step
from .common.train import train

model = faster_rcnn_fpn()
dataloader.train.mapper.augmentations = [  # INPUT.MIN_SIZE_TRAIN of configs/Base-RCNN-FPN.yaml
    L(T.ResizeShortestEdge)(short_edge_length=(640, 672, 704, 736, 768, 800), max_size=1333, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
optimizer.lr = 0.02
lr_multiplier = warmup_multi_step(90000, (60000, 80000), warmup_iters=1000)
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "output/FasterRCNN-R50-FPN-1x"
