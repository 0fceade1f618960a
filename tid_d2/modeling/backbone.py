"""FPN backbones: P3-P7 with P6/P7 from P5 (FCOS family) or C5 (RetinaNet), P2-P6 with P6 max-pooled from
P5 (R-CNN), and a tiny ResNet for CPU runs."""
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN, ResNet, build_resnet_backbone
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem

__all__ = [
    "build_tid_resnet_fpn_backbone",
    "build_tiny_resnet_fpn_backbone",
    "LastLevelP6P7NoReLU",
    "TinyResNet",
]


class LastLevelP6P7NoReLU(LastLevelP6P7):
    """
    P6 = conv(x), P7 = conv(P6) with no ReLU in between: mmdetection's FPN extra convs
    (`add_extra_convs="on_output"`, `relu_before_extra_convs=False`, as in its GFL/ATSS configs),
    where Detectron2's `LastLevelP6P7` applies ReLU to P6 before P7. Same parameter names (p6, p7),
    so checkpoints move between the two.
    """

    def forward(self, x):
        p6 = self.p6(x)
        return [p6, self.p7(p6)]


def _fpn_with_p6p7(cfg, bottom_up) -> FPN:
    """FPN on `MODEL.FPN.IN_FEATURES` plus, by `MODEL.FPN.TOP_BLOCK_IN`, P6/P7 from P5 (GFL/ATSS/FCOS),
    from C5 (RetinaNet), or P6 max-pooled from P5 ("maxpool": Detectron2's R-CNN FPN); `MODEL.FPN.P7_RELU`
    False drops the ReLU between P6 and P7 (mmdetection's layout)."""
    out_channels = cfg.MODEL.FPN.OUT_CHANNELS
    top_in = cfg.MODEL.FPN.TOP_BLOCK_IN
    block = LastLevelP6P7 if cfg.MODEL.FPN.P7_RELU else LastLevelP6P7NoReLU
    if top_in == "p5":
        top_block = block(out_channels, out_channels, in_feature="p5")
    elif top_in == "res5":
        top_block = block(bottom_up.output_shape()["res5"].channels, out_channels)
    elif top_in == "maxpool":
        top_block = LastLevelMaxPool()
    else:
        raise ValueError(f"MODEL.FPN.TOP_BLOCK_IN must be 'p5', 'res5' or 'maxpool', got {top_in!r}")
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=out_channels,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_tid_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's ResNet (MODEL.RESNETS.*) + FPN P3-P7, the backbone of GFL/ATSS/FCOS papers."""
    return _fpn_with_p6p7(cfg, build_resnet_backbone(cfg, input_shape))


class TinyResNet(ResNet):
    """A narrow ResNet of basic blocks (res2..res5, strides 4..32) for CPU-sized experiments."""

    def __init__(self, in_channels, stem_width, widths, depths, norm="BN", out_features=None):
        if len(widths) != 4 or len(depths) != 4:
            raise ValueError(f"TINY_RESNET.WIDTHS/DEPTHS need 4 stages, got {widths} / {depths}")
        stem = BasicStem(in_channels, stem_width, norm=norm)
        stages, prev = [], stem_width
        for i, (w, d) in enumerate(zip(widths, depths)):
            first_stride = 1 if i == 0 else 2
            stages.append(
                ResNet.make_stage(
                    BasicBlock,
                    d,
                    stride_per_block=[first_stride] + [1] * (d - 1),
                    in_channels=prev,
                    out_channels=w,
                    norm=norm,
                )
            )
            prev = w
        super().__init__(stem, stages, out_features=out_features or ["res3", "res4", "res5"])


@BACKBONE_REGISTRY.register()
def build_tiny_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """`TinyResNet` (MODEL.TINY_RESNET.*) + FPN (P3-P7, or P2-P6 with TOP_BLOCK_IN "maxpool")."""
    c = cfg.MODEL.TINY_RESNET
    bottom_up = TinyResNet(
        input_shape.channels,
        c.STEM_WIDTH,
        list(c.WIDTHS),
        list(c.DEPTHS),
        norm=c.NORM,
        out_features=cfg.MODEL.FPN.IN_FEATURES,
    )
    return _fpn_with_p6p7(cfg, bottom_up)
