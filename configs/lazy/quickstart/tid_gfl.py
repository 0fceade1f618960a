"""TID on the embedded dataset: the quickstart GFL teacher -> the quickstart GFL student, the
LazyConfig twin of configs/quickstart/TID-GFL.yaml (train the teacher first: gfl_teacher.py).

    python projects/TID/lazy_train_net.py --config-file configs/lazy/quickstart/tid_gfl.py
"""
from ..common.models.teacher_student import teacher_student
from .gfl_student import dataloader, lr_multiplier, optimizer, train
from .gfl_student import model as student
from .gfl_teacher import model as teacher

model = teacher_student(
    student, teacher, "output/quickstart/GFL-teacher/model_final.pth", methods=["TID"], warmup_iters=0
)
train.output_dir = "output/quickstart/TID-GFL"
train.distill = dict(eval_teacher=False, max_grad_norm=35.0)  # TEST.EVAL_TEACHER, MODEL.DISTILL.MAX_GRAD_NORM
