"""TID: mmdetection's GFL R-101 2x-ms (44.7 AP, converted by tools/convert_mmdet_checkpoint.py) as the
teacher -> a Detectron2-style GFL R-50 1x student on COCO 2017; the LazyConfig twin of
configs/TID-R50-mmdet-teacher.yaml. Each model gets the images in its own format (RGB / BGR).

    python projects/TID/lazy_train_net.py --config-file configs/lazy/tid_gfl_r50_mmdet_teacher.py --num-gpus 8
"""
from .common.models.teacher_student import teacher_student
from .gfl_r50_1x import dataloader, lr_multiplier, optimizer, train
from .gfl_r50_1x import model as student
from .mmdet.gfl_r101_2x_ms import model as teacher

model = teacher_student(student, teacher, "output/mmdet/GFL-R101-2x-ms.pth", methods=["TID"], warmup_iters=0)
train.output_dir = "output/TID-GFL-mmdetR101-R50-1x"
train.distill = dict(eval_teacher=False, max_grad_norm=35.0)  # TEST.EVAL_TEACHER, MODEL.DISTILL.MAX_GRAD_NORM
