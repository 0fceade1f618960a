"""`TIDHook`: checks the teacher/student pair, ramps the distillation weight, logs diagnostics."""
import logging
from typing import Callable, Dict, Optional

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import HookBase
from detectron2.evaluation.testing import flatten_results_dict

__all__ = ["TIDHook", "unwrap", "warmup_factor"]

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
    evaluates the teacher once (TEST.EVAL_TEACHER), sets every distiller's `loss_scale` to the
    warm-up factor of the coming iteration (MODEL.DISTILL.WARMUP_ITERS) and writes every
    distiller's diagnostics to EventStorage every `log_period` iterations and at the last one
    (so they reach metrics.json with the writers' default period of 20).
    The teacher's eval mode is kept by `TeacherStudent.train` itself.
    """

    def __init__(
        self,
        warmup_iters: int = 0,
        eval_teacher_fn: Optional[Callable[[torch.nn.Module], Dict]] = None,
        log_period: int = 20,
    ):
        """
        Args:
            warmup_iters: MODEL.DISTILL.WARMUP_ITERS (0: full weight from the first iteration).
            eval_teacher_fn: evaluates the teacher once before training (None: it is not evaluated).
            log_period: how often diagnostics go to EventStorage.
        """
        self.warmup_iters = int(warmup_iters)
        self.eval_teacher_fn = eval_teacher_fn
        self.log_period = log_period

    @classmethod
    def from_config(cls, cfg, eval_teacher_fn=None, log_period: int = 20) -> "TIDHook":
        """The hook of a yacs config: MODEL.DISTILL.WARMUP_ITERS, and TEST.EVAL_TEACHER gates the
        teacher evaluation."""
        return cls(
            warmup_iters=cfg.MODEL.DISTILL.WARMUP_ITERS,
            eval_teacher_fn=eval_teacher_fn if cfg.TEST.EVAL_TEACHER else None,
            log_period=log_period,
        )

    @property
    def model(self):
        return unwrap(self.trainer.model)

    def before_train(self):
        from ..modeling.teacher_student import check_compatible

        check_compatible(self.model.teacher, self.model.student)
        if self.eval_teacher_fn is not None:
            results = flatten_results_dict(self.eval_teacher_fn(self.model.teacher) or {})
            flat = {f"teacher/{k}": float(v) for k, v in results.items()}
            logger.info(f"Teacher evaluation: {flat}")
            if flat:
                self.trainer.storage.put_scalars(**flat, smoothing_hint=False)

    def before_step(self):
        scale = warmup_factor(self.trainer.iter, self.warmup_iters)
        for distiller in self.model.distillers.values():
            distiller.loss_scale = scale
        if self.warmup_iters > 0:
            self.trainer.storage.put_scalar("distill/weight", scale, smoothing_hint=False)

    def after_step(self):
        it = self.trainer.iter
        if (it + 1) % self.log_period and it != self.trainer.max_iter - 1:
            return
        values, tensors = {}, {}
        for distiller in self.model.distillers.values():
            for k, v in distiller.diagnostics.items():
                if torch.is_tensor(v):
                    tensors[k] = v.detach().float().mean()
                else:
                    values[k] = float(v)
        if tensors:  # one device-to-host copy for all of them
            values.update(zip(tensors, torch.stack(list(tensors.values())).tolist()))
        if values:
            self.trainer.storage.put_scalars(**values, smoothing_hint=False)
