"""mmdetection's layout for a lazy GFL/ATSS: what configs/mmdet/*.yaml change on top of the
Detectron2-style models, so converted mmdetection checkpoints load and compute as in mmdetection."""
from tid_d2.modeling import ATSS
from tid_d2.modeling.backbone import LastLevelP6P7NoReLU


def mmdet_layout(model, dataloader, optimizer):
    """Edit a lazy GFL/ATSS `model` (and its recipe) in place: pytorch-style ResNet (stride in the
    3x3 conv), RGB input with torchvision's statistics, no ReLU before P7, boxes clipped before NMS,
    batch padding ignored in training, ATSS scored class then class x centerness, GN weights
    decayed."""
    model.backbone.bottom_up.stages.stride_in_1x1 = False
    model.backbone.top_block._target_ = LastLevelP6P7NoReLU
    model.pixel_mean = [123.675, 116.28, 103.53]
    model.pixel_std = [58.395, 57.12, 57.375]
    model.input_format = "RGB"
    model.test_clip_boxes = True
    model.ignore_batch_padding = True
    if model._target_ is ATSS:
        model.test_score_mode = "class_then_product"
    dataloader.train.mapper.image_format = "RGB"
    optimizer.params.weight_decay_norm = 1e-4
