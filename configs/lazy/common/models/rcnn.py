"""Detectron2's Faster / Mask R-CNN R-50 FPN (its model zoo's common/models/mask_rcnn_fpn.py) as a
DistillableRCNN: the LazyConfig twins of configs/Base-RCNN-FPN.yaml with MASK_ON False / True."""
from detectron2 import model_zoo

from tid_d2.modeling import DistillableRCNN


def mask_rcnn_fpn():
    """A fresh lazy Mask R-CNN R-50 FPN (80 classes) that can teach and learn."""
    model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
    model._target_ = DistillableRCNN
    model.backbone.bottom_up.freeze_at = 2  # MODEL.BACKBONE.FREEZE_AT, as Detectron2's *_FPN_1x.py set it
    return model


def faster_rcnn_fpn():
    """A fresh lazy Faster R-CNN R-50 FPN: the Mask R-CNN without its mask branch."""
    model = mask_rcnn_fpn()
    heads = model.roi_heads
    heads.mask_in_features, heads.mask_pooler, heads.mask_head = None, None, None
    return model


def set_depth(model, depth: int):
    """The ResNet depth of a lazy R-CNN's backbone (50, 101, ...), in place."""
    model.backbone.bottom_up.stages.depth = depth
    return model
