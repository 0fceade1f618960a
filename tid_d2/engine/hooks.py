"""`TIDHook`: keeps the teacher frozen, ramps the distillation weight and logs distiller diagnostics."""
import logging

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import HookBase

__all__ = ["TIDHook", "unwrap"]

logger = logging.getLogger(__name__)


def unwrap(model):
    """The model inside DistributedDataParallel, if wrapped."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def warmup_factor(it: int, warmup_iters: int) -> float:
    """Linear ramp of the distillation weight: (it + 1) / warmup_iters, capped at 1."""
    return 1.0 if warmup_iters <= 0 else min(1.0, (it + 1) / warmup_iters)


class TIDHook(HookBase):
    """
    For a `TeacherStudent` model: checks teacher/student compatibility before training, optionally
    evaluates the teacher once, keeps the teacher in eval mode, applies the distillation warm-up and
    writes every distiller's diagnostics to EventStorage every `log_period` iterations.
    """

    def __init__(self, cfg, eval_teacher_fn=None, log_period: int = 20):
        self.warmup_iters = cfg.MODEL.DISTILL.WARMUP_ITERS
        self.eval_teacher = cfg.TEST.EVAL_TEACHER
        self.eval_teacher_fn = eval_teacher_fn
        self.log_period = log_period

    @property
    def model(self):
        return unwrap(self.trainer.model)

    def before_train(self):
        from ..modeling.teacher_student import check_compatible

        check_compatible(self.model.teacher, self.model.student)
        if self.eval_teacher and self.eval_teacher_fn is not None:
            results = self.eval_teacher_fn(self.model.teacher)
            flat = {
                f"teacher/{task}/{k}": v
                for task, res in (results or {}).items()
                for k, v in res.items()
            }
            logger.info(f"Teacher evaluation: {flat}")
            if flat:
                self.trainer.storage.put_scalars(**flat, smoothing_hint=False)

    def before_step(self):
        model = self.model
        if model.teacher.training:
            model.teacher.eval()
        scale = warmup_factor(self.trainer.iter, self.warmup_iters)
        for distiller in model.distillers.values():
            distiller.loss_scale = scale
        if self.warmup_iters > 0:
            self.trainer.storage.put_scalar("distill/weight", scale, smoothing_hint=False)

    def after_step(self):
        it = self.trainer.iter
        if (it + 1) % self.log_period and it != self.trainer.max_iter - 1:
            return
        values = {}
        for distiller in self.model.distillers.values():
            for k, v in distiller.diagnostics.items():
                values[k] = float(v.float().mean()) if torch.is_tensor(v) else float(v)
        if values:
            self.trainer.storage.put_scalars(**values, smoothing_hint=False)
