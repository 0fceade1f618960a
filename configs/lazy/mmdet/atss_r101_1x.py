"""configs/lazy/atss_r101_1x.py in mmdetection's layout, the LazyConfig twin of configs/mmdet/ATSS-R101-1x.yaml:
evaluate or distil from mmdetection's checkpoint once converted by tools/convert_mmdet_checkpoint.py.

    python projects/TID/lazy_train_net.py --config-file configs/lazy/mmdet/atss_r101_1x.py --eval-only \
        train.init_checkpoint=output/mmdet/ATSS-R101-1x.pth
"""
from ..atss_r101_1x import dataloader, lr_multiplier, model, optimizer, train
from ..common.models.mmdet_layout import mmdet_layout

mmdet_layout(model, dataloader, optimizer)
train.init_checkpoint = "output/mmdet/ATSS-R101-1x.pth"
train.output_dir = "output/mmdet/ATSS-R101-1x"
