"""`TIDTrainer`: Detectron2's DefaultTrainer for plain detectors and TeacherStudent distillation, with
the pieces of `engine.defaults`: CPU DDP, named non-finite losses, data errors naming their file,
atomic checkpoints, checked weight loads and an exact resume (weights, optimizer, scheduler,
iteration, data)."""
import logging
import os
import weakref

from detectron2.data import build_detection_test_loader, build_detection_train_loader
from detectron2.engine import DefaultTrainer, TrainerBase
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import AtomicCheckpointer
from ..data.checked_loading import FileNamingDatasetMapper, naming_annotation_errors
from ..data.dataset_report import report_datasets
from ..modeling.teacher_student import TeacherStudent
from .defaults import build_evaluator, check_amp_device, create_ddp_model, resume_or_load, skip_batches
from .hooks import TeacherEvalHook, unwrap
from .train_loop import build_step_trainer, gradient_norm_bound

__all__ = ["TIDTrainer", "distill_max_grad_norm"]


def distill_max_grad_norm(cfg):
    """MODEL.DISTILL.MAX_GRAD_NORM of a TeacherStudent config (None when 0 or not distilling): the
    bound on the joint gradient norm of all trainable parameters at every step."""
    if cfg.MODEL.META_ARCHITECTURE != "TeacherStudent":
        return None
    return gradient_norm_bound(cfg.MODEL.DISTILL.MAX_GRAD_NORM, "MODEL.DISTILL.MAX_GRAD_NORM")


class TIDTrainer(DefaultTrainer):
    """DefaultTrainer whose constructor builds this project's step trainer, DDP wrapper and
    checkpointer (Detectron2's builds them inline; the rest of DefaultTrainer is unchanged)."""

    def __init__(self, cfg):
        check_amp_device(cfg.SOLVER.AMP.ENABLED, cfg.MODEL.DEVICE)
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        self._trainer = build_step_trainer(
            model, data_loader, optimizer, cfg.SOLVER.AMP.ENABLED, distill_max_grad_norm(cfg)
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg):
        with naming_annotation_errors(cfg.DATASETS.TRAIN):
            report_datasets(cfg.DATASETS.TRAIN, cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS, cfg.MODEL.MASK_ON)
            return build_detection_train_loader(cfg, mapper=FileNamingDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        with naming_annotation_errors([dataset_name]):
            return build_detection_test_loader(
                cfg, dataset_name, mapper=FileNamingDatasetMapper(cfg, False)
            )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_evaluator(
            dataset_name, output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        )

    def build_hooks(self):
        hooks = super().build_hooks()
        if isinstance(unwrap(self.model), TeacherStudent) and self.cfg.TEST.EVAL_TEACHER:
            hooks.insert(1, TeacherEvalHook(lambda teacher: type(self).test(self.cfg, teacher)))
        return hooks

    def resume_or_load(self, resume=True):
        """
        Resume everything from OUTPUT_DIR's last checkpoint and skip the training batches that run
        already consumed, so that the resumed run sees the data an uninterrupted one would.
        Otherwise start from MODEL.WEIGHTS (into the student when distilling).
        """
        self.start_iter = resume_or_load(
            self.checkpointer, self.cfg.MODEL.WEIGHTS, resume=resume, key="MODEL.WEIGHTS"
        )
        if self.start_iter > 0:
            skip_batches(self._trainer, self.start_iter)
