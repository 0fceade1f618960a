"""GFL R-101 FPN, 2x schedule, multi-scale 480-800 training on COCO 2017 (the usual GFL teacher):
the LazyConfig twin of configs/GFL-R101-2x-ms.yaml."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .common.data.coco import dataloader
from .common.models.gfl import model
from .common.optim import SGD as optimizer
from .common.schedule import lr_multiplier_2x as lr_multiplier
from .common.train import train

model.backbone.bottom_up.stages.depth = 101
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(
        short_edge_length=tuple(range(480, 801, 32)), max_size=1333, sample_style="choice"
    ),
    L(T.RandomFlip)(horizontal=True),
]
train.max_iter = 180000
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.output_dir = "output/GFL-R101-2x-ms"
