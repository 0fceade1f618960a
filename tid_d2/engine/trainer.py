"""`TIDTrainer`: Detectron2's DefaultTrainer with the TID hook, COCO/VOC evaluators and CPU DDP."""
import logging
import os
from unittest import mock

import detectron2.engine.defaults as d2_defaults
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator

from ..modeling.teacher_student import TeacherStudent
from .hooks import TIDHook, unwrap

__all__ = ["TIDTrainer", "build_evaluator"]

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


def _create_ddp_model(model, **kwargs):
    """Detectron2's create_ddp_model, with device_ids=None for CPU (GLOO) processes."""
    if next(model.parameters()).device.type != "cuda":
        kwargs["device_ids"] = None
    return _D2_CREATE_DDP(model, **kwargs)


_D2_CREATE_DDP = d2_defaults.create_ddp_model


class TIDTrainer(DefaultTrainer):
    """DefaultTrainer for plain detectors and `TeacherStudent` distillation alike."""

    def __init__(self, cfg):
        with mock.patch.object(d2_defaults, "create_ddp_model", _create_ddp_model):
            super().__init__(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(cfg, dataset_name, output_folder)

    def build_hooks(self):
        hooks = super().build_hooks()
        if isinstance(unwrap(self.model), TeacherStudent):
            def eval_teacher(teacher):
                return type(self).test(self.cfg, teacher)

            hooks.insert(1, TIDHook(self.cfg, eval_teacher_fn=eval_teacher))
        return hooks

    def resume_or_load(self, resume=True):
        """Resume everything from OUTPUT_DIR, or start from MODEL.WEIGHTS (loaded into the student
        when distilling, so ImageNet or detector weights work unchanged)."""
        model = unwrap(self.model)
        if (resume and self.checkpointer.has_checkpoint()) or not isinstance(model, TeacherStudent):
            return super().resume_or_load(resume=resume)
        if self.cfg.MODEL.WEIGHTS:
            DetectionCheckpointer(model.student).load(self.cfg.MODEL.WEIGHTS)
