"""The quickstart GFL student on tid_shapes (CPU): the LazyConfig twin of
configs/quickstart/GFL-student.yaml.

    python projects/TID/lazy_train_net.py --config-file configs/lazy/quickstart/gfl_student.py
"""
from ..common.models.gfl import model
from ..common.models.tiny import tiny_resnet_fpn
from ..common.quickstart import dataloader, lr_multiplier, optimizer, quickstart_model, train

# TINY_RESNET.{STEM_WIDTH, WIDTHS, DEPTHS}, FPN.OUT_CHANNELS of quickstart/Student-backbone.yaml
quickstart_model(model, tiny_resnet_fpn(16, [16, 32, 64, 128], [1, 1, 1, 1], out_channels=32))
train.output_dir = "output/quickstart/GFL-student"
