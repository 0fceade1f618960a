"""TID: mmdetection's ATSS R-101 1x (41.5 AP, converted by tools/convert_mmdet_checkpoint.py) as the
teacher -> a Detectron2-style ATSS R-50 1x student on COCO 2017; the LazyConfig twin of
configs/TID-ATSS-R50-mmdet-teacher.yaml.

    python projects/TID/lazy_train_net.py --config-file configs/lazy/tid_atss_r50_mmdet_teacher.py --num-gpus 8
"""
from .atss_r50_1x import dataloader, lr_multiplier, optimizer, train
from .atss_r50_1x import model as student
from .common.models.teacher_student import teacher_student
from .mmdet.atss_r101_1x import model as teacher

model = teacher_student(student, teacher, "output/mmdet/ATSS-R101-1x.pth", methods=["TID"], warmup_iters=0)
train.output_dir = "output/TID-ATSS-mmdetR101-R50-1x"
train.distill = dict(eval_teacher=False, max_grad_norm=35.0)  # TEST.EVAL_TEACHER, MODEL.DISTILL.MAX_GRAD_NORM
