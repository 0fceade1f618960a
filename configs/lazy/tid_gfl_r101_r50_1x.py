"""TID: GFL R-101 2x-ms teacher -> GFL R-50 1x student on COCO 2017, the LazyConfig twin of
configs/TID-R50.yaml. Train the teacher first (configs/lazy/gfl_r101_2x_ms.py) and point
model.teacher.weights at it.

    python projects/TID/lazy_train_net.py --config-file configs/lazy/tid_gfl_r101_r50_1x.py --num-gpus 8 \
        model.teacher.weights=output/GFL-R101-2x-ms/model_final.pth
"""
from .common.models.teacher_student import teacher_student
from .gfl_r101_2x_ms import model as teacher
from .gfl_r50_1x import dataloader, lr_multiplier, optimizer, train
from .gfl_r50_1x import model as student

model = teacher_student(
    student, teacher, "output/GFL-R101-2x-ms/model_final.pth", methods=["TID"], warmup_iters=0
)
train.output_dir = "output/TID-GFL-R101-R50-1x"
# train.init_checkpoint goes into the student
train.distill = dict(eval_teacher=False, max_grad_norm=35.0)  # TEST.EVAL_TEACHER, MODEL.DISTILL.MAX_GRAD_NORM
