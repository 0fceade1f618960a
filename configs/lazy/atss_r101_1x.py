"""ATSS R-101 FPN, 1x schedule on COCO 2017 (the usual ATSS teacher): the LazyConfig twin of
configs/ATSS-R101-1x.yaml."""
from .common.data.coco import dataloader
from .common.models.atss import model
from .common.optim import SGD as optimizer
from .common.schedule import lr_multiplier_1x as lr_multiplier
from .common.train import train

model.backbone.bottom_up.stages.depth = 101
train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-101.pkl"
train.output_dir = "output/ATSS-R101-1x"
