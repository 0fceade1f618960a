"""`TIDTrainer`: Detectron2's DefaultTrainer with the TID hook, COCO/VOC evaluators, CPU DDP, a
named non-finite-loss check and an exact resume (weights, optimizer, scheduler, iteration, data)."""
import logging
import os
import time
import weakref
from typing import Mapping
from unittest import mock

import torch

import detectron2.engine.defaults as d2_defaults
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog, build_detection_test_loader, build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

from ..data.checked_loading import FileNamingDatasetMapper, naming_annotation_errors
from ..data.dataset_report import report_datasets
from ..modeling.teacher_student import TeacherStudent
from .checkpoint import AtomicCheckpointer
from .hooks import TIDHook, unwrap

__all__ = [
    "TIDTrainer", "build_evaluator", "check_finite_losses", "FiniteLossSimpleTrainer",
    "FiniteLossAMPTrainer",
]

logger = logging.getLogger(__name__)


def _has_fast_coco_eval() -> bool:
    try:
        from detectron2 import _C  # noqa: F401

        return True
    except ImportError:
        return False


def build_evaluator(cfg, dataset_name: str, output_folder=None):
    """COCOEvaluator for COCO-format datasets, PascalVOCDetectionEvaluator for VOC ones."""
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    if kind == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if kind != "coco":
        raise ValueError(f"dataset {dataset_name} has evaluator_type {kind!r}; expected coco or pascal_voc")
    output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    return COCOEvaluator(
        dataset_name, tasks=("bbox",), output_dir=output_folder, use_fast_impl=_has_fast_coco_eval()
    )


def check_finite_losses(
    loss_dict: Mapping[str, torch.Tensor], iteration: int
) -> Mapping[str, torch.Tensor]:
    """
    Raise FloatingPointError naming every NaN/Inf loss and the iteration; else return the losses
    as 0-d CPU tensors. One `isfinite` over the stacked losses and one device-to-host copy, which
    Detectron2's metric writer then reuses instead of syncing once per loss.
    """
    values = torch.stack([v.detach().float().reshape(()) for v in loss_dict.values()]).cpu()
    finite = torch.isfinite(values)
    if not bool(finite.all()):
        bad = {k: float(v) for k, v, ok in zip(loss_dict, values, finite) if not ok}
        every = {k: round(float(v), 6) for k, v in zip(loss_dict, values)}
        raise FloatingPointError(
            f"non-finite loss at iteration {iteration}: {bad}; training stopped before the "
            f"optimizer step. All losses: {every}"
        )
    return dict(zip(loss_dict, values))


class _FiniteLossMixin:
    """Checks the losses of every iteration (before the optimizer step) with `check_finite_losses`;
    a FloatingPointError raised inside the step (e.g. by the GIoU loss) gets the iteration added."""

    def run_step(self):
        try:
            super().run_step()
        except FloatingPointError as e:
            if "iteration" in str(e):
                raise
            raise FloatingPointError(f"{e} (at iteration {self.iter})") from e

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        iter = self.iter if iter is None else iter
        super()._write_metrics(check_finite_losses(loss_dict, iter), data_time, prefix, iter)


class FiniteLossSimpleTrainer(_FiniteLossMixin, SimpleTrainer):
    """SimpleTrainer that stops on a NaN/Inf loss, naming it."""


class FiniteLossAMPTrainer(_FiniteLossMixin, AMPTrainer):
    """AMPTrainer that stops on a NaN/Inf loss, naming it."""


def _create_ddp_model(model, **kwargs):
    """Detectron2's create_ddp_model, with device_ids=None for CPU (GLOO) processes."""
    if next(model.parameters()).device.type != "cuda":
        kwargs["device_ids"] = None
    return _D2_CREATE_DDP(model, **kwargs)


_D2_CREATE_DDP = d2_defaults.create_ddp_model


class TIDTrainer(DefaultTrainer):
    """DefaultTrainer for plain detectors and `TeacherStudent` distillation alike."""

    def __init__(self, cfg):
        if cfg.SOLVER.AMP.ENABLED and not str(cfg.MODEL.DEVICE).startswith("cuda"):
            raise ValueError(
                f"SOLVER.AMP.ENABLED=True needs a CUDA device (MODEL.DEVICE={cfg.MODEL.DEVICE}); "
                "set SOLVER.AMP.ENABLED False to train on the CPU"
            )
        with mock.patch.multiple(
            d2_defaults,
            create_ddp_model=_create_ddp_model,
            SimpleTrainer=FiniteLossSimpleTrainer,
            AMPTrainer=FiniteLossAMPTrainer,
        ):
            super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        with naming_annotation_errors(cfg.DATASETS.TRAIN):
            report_datasets(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS)
            return build_detection_train_loader(cfg, mapper=FileNamingDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        with naming_annotation_errors([dataset_name]):
            return build_detection_test_loader(
                cfg, dataset_name, mapper=FileNamingDatasetMapper(cfg, False)
            )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    def build_hooks(self):
        self.checkpointer = AtomicCheckpointer(
            self.model, self.cfg.OUTPUT_DIR, trainer=weakref.proxy(self)
        )
        hooks = super().build_hooks()
        if isinstance(unwrap(self.model), TeacherStudent):
            def eval_teacher(teacher):
                return type(self).test(self.cfg, teacher)

            hooks.insert(1, TIDHook.from_config(self.cfg, eval_teacher_fn=eval_teacher))
        return hooks

    def resume_or_load(self, resume=True):
        """
        Resume everything from OUTPUT_DIR's last checkpoint (student, distiller adapters,
        optimizer, scheduler, iteration) and skip the training batches that run already consumed,
        so that the resumed run sees the data an uninterrupted one would. Otherwise start from
        MODEL.WEIGHTS (loaded into the student when distilling, so ImageNet or detector weights
        work unchanged).
        """
        model = unwrap(self.model)
        if (resume and self.checkpointer.has_checkpoint()) or not isinstance(model, TeacherStudent):
            super().resume_or_load(resume=resume)
        elif self.cfg.MODEL.WEIGHTS:
            DetectionCheckpointer(model.student).load(self.cfg.MODEL.WEIGHTS)
        if self.start_iter > 0:
            self._skip_batches(self.start_iter)

    def _skip_batches(self, num_batches: int) -> None:
        """Draw (and drop) the first `num_batches` training batches: data is read, not trained on."""
        start = time.perf_counter()
        data_iter = self._trainer._data_loader_iter
        for _ in range(num_batches):
            next(data_iter)
        logger.info(
            f"Resuming at iteration {self.start_iter}: skipped {num_batches} consumed training "
            f"batches in {time.perf_counter() - start:.1f} s"
        )
