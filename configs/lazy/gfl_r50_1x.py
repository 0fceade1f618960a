"""GFL R-50 FPN, 1x schedule on COCO 2017: the LazyConfig twin of configs/GFL-R50-1x.yaml.

    python projects/TID/lazy_train_net.py --config-file configs/lazy/gfl_r50_1x.py --num-gpus 8
"""
from .common.data.coco import dataloader
from .common.models.gfl import model
from .common.optim import SGD as optimizer
from .common.schedule import lr_multiplier_1x as lr_multiplier
from .common.train import train

train.init_checkpoint = "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
train.output_dir = "output/GFL-R50-1x"
