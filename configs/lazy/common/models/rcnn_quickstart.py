"""Quickstart R-CNNs (configs/quickstart/Base-RCNN-quickstart.yaml): a TinyResNet FPN P2-P6, anchors for
tid_shapes' small objects, lighter ROI heads, 6 classes, from scratch (ImageNet std)."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from tid_d2.modeling.backbone import TinyResNet

from .rcnn import faster_rcnn_fpn, mask_rcnn_fpn


def quickstart_rcnn(stem_width, widths, depths, out_channels, mask: bool = False):
    """The quickstart Faster R-CNN (mask=False) or Mask R-CNN on a TinyResNet of these sizes."""
    model = mask_rcnn_fpn() if mask else faster_rcnn_fpn()
    stages = ["res2", "res3", "res4", "res5"]
    model.backbone = L(FPN)(
        bottom_up=L(TinyResNet)(
            in_channels=3, stem_width=stem_width, widths=list(widths), depths=list(depths), norm="BN",
            out_features=stages,
        ),
        in_features=stages,
        out_channels=out_channels,
        top_block=L(LastLevelMaxPool)(),
    )
    rpn = model.proposal_generator
    rpn.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
    rpn.head.in_channels = out_channels
    rpn.pre_nms_topk, rpn.post_nms_topk = (1000, 500), (500, 300)
    heads = model.roi_heads
    heads.num_classes = 6
    heads.batch_size_per_image = 128
    heads.box_head.input_shape = ShapeSpec(channels=out_channels, height=7, width=7)
    heads.box_head.fc_dims = [256, 256]
    heads.box_predictor.input_shape = ShapeSpec(channels=256)
    heads.box_predictor.num_classes = 6
    if mask:
        heads.mask_head.input_shape = ShapeSpec(channels=out_channels, width=14, height=14)
        heads.mask_head.conv_dims = [64, 64, 64]  # NUM_CONV 2 convs, then the deconv (CONV_DIM 64)
        heads.mask_head.num_classes = 6
    model.pixel_std = [57.375, 57.120, 58.395]
    return model
