"""TID on the embedded dataset: the quickstart MaskRCNN teacher -> the quickstart MaskRCNN student, the LazyConfig
twin of configs/quickstart/TID-MaskRCNN.yaml (train the teacher first: mask_rcnn_teacher.py).

    python projects/TID/lazy_train_net.py --config-file configs/lazy/quickstart/tid_mask_rcnn.py
"""
from ..common.models.teacher_student import teacher_student
from .mask_rcnn_student import dataloader, lr_multiplier, optimizer, train
from .mask_rcnn_student import model as student
from .mask_rcnn_teacher import model as teacher

model = teacher_student(
    student, teacher, "output/quickstart/MaskRCNN-teacher/model_final.pth", methods=["TID"], warmup_iters=0
)
train.output_dir = "output/quickstart/TID-MaskRCNN"
train.distill = dict(eval_teacher=False, max_grad_norm=35.0)  # TEST.EVAL_TEACHER, MODEL.DISTILL.MAX_GRAD_NORM
