"""The quickstart FasterRCNN student on tid_shapes (CPU): the LazyConfig twin of
configs/quickstart/FasterRCNN-student.yaml.

    python projects/TID/lazy_train_net.py --config-file configs/lazy/quickstart/faster_rcnn_student.py
"""
from ..common.models.rcnn_quickstart import quickstart_rcnn
from ..common.quickstart import dataloader, lr_multiplier, optimizer, train

# TINY_RESNET.{STEM_WIDTH, WIDTHS, DEPTHS}, FPN.OUT_CHANNELS of quickstart/FasterRCNN-student.yaml
model = quickstart_rcnn(16, [16, 32, 64, 128], [1, 1, 1, 1], 32)
optimizer.lr = 0.01  # SOLVER.BASE_LR and SOLVER.CLIP_GRADIENTS of Base-RCNN-quickstart.yaml
train.clip_gradients = dict(clip_type="norm", clip_value=10.0)
train.output_dir = "output/quickstart/FasterRCNN-student"
