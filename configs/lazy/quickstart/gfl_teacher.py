"""The quickstart GFL teacher on tid_shapes (CPU): the LazyConfig twin of
configs/quickstart/GFL-teacher.yaml."""
from ..common.models.gfl import model
from ..common.models.tiny import tiny_resnet_fpn
from ..common.quickstart import dataloader, lr_multiplier, optimizer, quickstart_model, train

# TINY_RESNET.{STEM_WIDTH, WIDTHS, DEPTHS}, FPN.OUT_CHANNELS of quickstart/Teacher-backbone.yaml
quickstart_model(model, tiny_resnet_fpn(32, [32, 64, 128, 256], [2, 2, 2, 2], out_channels=64))
train.output_dir = "output/quickstart/GFL-teacher"
