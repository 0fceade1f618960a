"""TID: Mask R-CNN R-101 FPN 3x teacher -> Mask R-CNN R-50 FPN 1x student on COCO 2017, the LazyConfig twin
of configs/TID-MaskRCNN-R101-R50.yaml. Train the teacher first (mask_rcnn_r101_fpn_3x.py) and point
model.teacher.weights at it.

    python projects/TID/lazy_train_net.py --config-file configs/lazy/tid_mask_rcnn_r101_r50_1x.py --num-gpus 8 \\
        model.teacher.weights=output/MaskRCNN-R101-FPN-3x/model_final.pth
"""
from .common.models.teacher_student import teacher_student
from .mask_rcnn_r101_fpn_3x import model as teacher
from .mask_rcnn_r50_fpn_1x import dataloader, lr_multiplier, optimizer, train
from .mask_rcnn_r50_fpn_1x import model as student

model = teacher_student(
    student, teacher, "output/MaskRCNN-R101-FPN-3x/model_final.pth", methods=["TID"], warmup_iters=0
)
train.output_dir = "output/TID-MaskRCNN-R101-R50-1x"
train.distill = dict(eval_teacher=False, max_grad_norm=35.0)  # TEST.EVAL_TEACHER, MODEL.DISTILL.MAX_GRAD_NORM
