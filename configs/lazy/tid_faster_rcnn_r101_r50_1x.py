"""TID: Faster R-CNN R-101 FPN 3x teacher -> Faster R-CNN R-50 FPN 1x student on COCO 2017, the LazyConfig twin
of configs/TID-FasterRCNN-R101-R50.yaml. Train the teacher first (faster_rcnn_r101_fpn_3x.py) and point
model.teacher.weights at it.

    python projects/TID/lazy_train_net.py --config-file configs/lazy/tid_faster_rcnn_r101_r50_1x.py --num-gpus 8 \\
        model.teacher.weights=output/FasterRCNN-R101-FPN-3x/model_final.pth
"""
from .common.models.teacher_student import teacher_student
from .faster_rcnn_r101_fpn_3x import model as teacher
from .faster_rcnn_r50_fpn_1x import dataloader, lr_multiplier, optimizer, train
from .faster_rcnn_r50_fpn_1x import model as student

model = teacher_student(
    student, teacher, "output/FasterRCNN-R101-FPN-3x/model_final.pth", methods=["TID"], warmup_iters=0
)
train.output_dir = "output/TID-FasterRCNN-R101-R50-1x"
train.distill = dict(eval_teacher=False, max_grad_norm=35.0)  # TEST.EVAL_TEACHER, MODEL.DISTILL.MAX_GRAD_NORM
