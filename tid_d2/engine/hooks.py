"""`TeacherEvalHook`: evaluates a TeacherStudent's teacher once before training."""
import logging
from typing import Callable, Dict

import torch
from torch.nn.parallel import DistributedDataParallel

from detectron2.engine import HookBase
from detectron2.evaluation.testing import flatten_results_dict

__all__ = ["TeacherEvalHook", "unwrap"]

logger = logging.getLogger(__name__)


def unwrap(model):
    """The model inside DistributedDataParallel, if wrapped."""
    return model.module if isinstance(model, DistributedDataParallel) else model


class TeacherEvalHook(HookBase):
    """Before training, evaluates the teacher of the trainer's TeacherStudent with `eval_fn` and puts
    its metrics into EventStorage as teacher/<metric> (TEST.EVAL_TEACHER, train.distill.eval_teacher):
    a weak or wrongly loaded teacher is seen before a long run, not after."""

    def __init__(self, eval_fn: Callable[[torch.nn.Module], Dict]):
        self.eval_fn = eval_fn

    def before_train(self):
        results = flatten_results_dict(self.eval_fn(unwrap(self.trainer.model).teacher) or {})
        flat = {f"teacher/{k}": float(v) for k, v in results.items()}
        logger.info(f"Teacher evaluation: {flat}")
        if flat:
            self.trainer.storage.put_scalars(**flat, smoothing_hint=False)
