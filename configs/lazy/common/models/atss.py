"""ATSS, ResNet-50 FPN P3-P7 (P6/P7 from P5): the LazyConfig twin of configs/Base-ATSS.yaml."""

from tid_d2.modeling import ATSS

from .gfl import model

model._target_ = ATSS
for _key in ("reg_max", "qfl_beta", "loss_cls_weight", "loss_dfl_weight"):
    del model[_key]
model.focal_loss_alpha = 0.25
model.focal_loss_gamma = 2.0
model.loss_box_weight = 2.0
model.loss_centerness_weight = 1.0
model.head.reg_channels = 4
model.head.with_centerness = True
