"""`TinyResNet` FPN backbones of the quickstart configs (configs/quickstart/*-backbone.yaml)."""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from tid_d2.modeling.backbone import TinyResNet


def tiny_resnet_fpn(stem_width, widths, depths, out_channels):
    """TinyResNet (res3-res5, BN) + FPN P3-P7 with P6/P7 from P5."""
    return L(FPN)(
        bottom_up=L(TinyResNet)(
            in_channels=3,
            stem_width=stem_width,
            widths=list(widths),
            depths=list(depths),
            norm="BN",
            out_features=["res3", "res4", "res5"],
        ),
        in_features=["res3", "res4", "res5"],
        out_channels=out_channels,
        top_block=L(LastLevelP6P7)(
            in_channels="${..out_channels}", out_channels="${..out_channels}", in_feature="p5"
        ),
    )
