"""TID on the embedded dataset: the quickstart FasterRCNN teacher -> the quickstart FasterRCNN student, the LazyConfig
twin of configs/quickstart/TID-FasterRCNN.yaml (train the teacher first: faster_rcnn_teacher.py).

    python projects/TID/lazy_train_net.py --config-file configs/lazy/quickstart/tid_faster_rcnn.py
"""
from ..common.models.teacher_student import teacher_student
from .faster_rcnn_student import dataloader, lr_multiplier, optimizer, train
from .faster_rcnn_student import model as student
from .faster_rcnn_teacher import model as teacher

model = teacher_student(
    student, teacher, "output/quickstart/FasterRCNN-teacher/model_final.pth", methods=["TID"], warmup_iters=0
)
train.output_dir = "output/quickstart/TID-FasterRCNN"
train.distill = dict(eval_teacher=False, max_grad_norm=35.0)  # TEST.EVAL_TEACHER, MODEL.DISTILL.MAX_GRAD_NORM
