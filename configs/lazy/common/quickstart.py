"""What the quickstart LazyConfigs share (configs/quickstart/Base-quickstart.yaml): tid_shapes,
CPU, SGD lr 0.02 for 600 iterations (steps 450, 550; 100 warm-up), checkpoints every 200, seed 0."""
from detectron2.layers import ShapeSpec

from .data.shapes import dataloader
from .optim import SGD as optimizer
from .schedule import warmup_multi_step
from .train import train

optimizer.lr = 0.02
lr_multiplier = warmup_multi_step(600, (450, 550), warmup_iters=100)
train.max_iter = 600
train.checkpointer.period = 200
train.device = "cpu"
train.seed = 0


def quickstart_model(model, backbone, num_convs=2, num_classes=6):
    """Put a quickstart backbone and head size into a full-size model config (in place)."""
    channels = backbone.out_channels
    model.backbone = backbone
    model.head.input_shape = [ShapeSpec(channels=channels)] * len(model.head_in_features)
    model.head.conv_dims = [channels] * num_convs
    model.num_classes = num_classes
    # the tiny backbones train from scratch: ImageNet std, as in Base-quickstart.yaml
    model.pixel_std = [57.375, 57.120, 58.395]
    return model
