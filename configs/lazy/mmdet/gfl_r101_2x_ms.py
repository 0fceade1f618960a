"""configs/lazy/gfl_r101_2x_ms.py in mmdetection's layout, the LazyConfig twin of configs/mmdet/GFL-R101-2x-ms.yaml:
evaluate or distil from mmdetection's checkpoint once converted by tools/convert_mmdet_checkpoint.py.

    python projects/TID/lazy_train_net.py --config-file configs/lazy/mmdet/gfl_r101_2x_ms.py --eval-only \
        train.init_checkpoint=output/mmdet/GFL-R101-2x-ms.pth
"""
from ..gfl_r101_2x_ms import dataloader, lr_multiplier, model, optimizer, train
from ..common.models.mmdet_layout import mmdet_layout

mmdet_layout(model, dataloader, optimizer)
train.init_checkpoint = "output/mmdet/GFL-R101-2x-ms.pth"
train.output_dir = "output/mmdet/GFL-R101-2x-ms"
# mmdetection's RandomResize [(1333, 480), (1333, 800)]: any short side in 480..800
dataloader.train.mapper.augmentations[0].short_edge_length = (480, 800)
dataloader.train.mapper.augmentations[0].sample_style = "range"
