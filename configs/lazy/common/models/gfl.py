"""GFL V1, ResNet-50 FPN P3-P7 (P6/P7 from P5): the LazyConfig twin of configs/Base-GFL.yaml."""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import FPN, BasicStem, ResNet
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from tid_d2.modeling import GFL
from tid_d2.modeling.heads import DenseTowerHead

model = L(GFL)(
    backbone=L(FPN)(
        bottom_up=L(ResNet)(
            stem=L(BasicStem)(in_channels=3, out_channels=64, norm="FrozenBN"),
            stages=L(ResNet.make_default_stages)(depth=50, stride_in_1x1=True, norm="FrozenBN"),
            out_features=["res3", "res4", "res5"],
            freeze_at=2,
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=256,
        # P6/P7 from P5 (GFL/ATSS/FCOS), not from C5 (RetinaNet)
        top_block=L(LastLevelP6P7)(
            in_channels="${..out_channels}", out_channels="${..out_channels}", in_feature="p5"
        ),
    ),
    head=L(DenseTowerHead)(
        input_shape=[ShapeSpec(channels=256)] * 5,
        num_classes="${..num_classes}",
        conv_dims=[256, 256, 256, 256],
        reg_channels=4 * (16 + 1),  # 4 * (reg_max + 1): change with model.reg_max
        with_centerness=False,
        norm="GN",
        prior_prob=0.01,
    ),
    head_in_features=["p3", "p4", "p5", "p6", "p7"],
    num_classes=80,
    reg_max=16,
    anchor_scale=8.0,
    atss_topk=9,
    qfl_beta=2.0,
    loss_cls_weight=1.0,
    loss_dfl_weight=0.25,
    loss_box_weight=2.0,
    test_score_thresh=0.05,
    test_topk_candidates=1000,
    test_nms_thresh=0.6,
    max_detections_per_image=100,
    # MSRA (caffe) ImageNet weights: std is folded into conv1
    pixel_mean=[103.530, 116.280, 123.675],
    pixel_std=[1.0, 1.0, 1.0],
    input_format="BGR",
)
