"""
Training and evaluation from a LazyConfig with the same pieces as `TIDTrainer` (engine.defaults):
CPU DDP, named non-finite losses, data errors naming their file, atomic checkpoints, checked weight
loads, exact resume, COCO/VOC evaluators and the teacher evaluation. The twin of Detectron2's
tools/lazyconfig_train_net.py.
"""
import logging

import torch

from detectron2.config import CfgNode, get_cfg, instantiate
from detectron2.engine import default_writers, hooks
from detectron2.solver.build import maybe_add_gradient_clipping
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.utils import comm
from detectron2.utils.registry import locate

from ..checkpoint import AtomicCheckpointer, load_weights
from ..config import add_tid_config
from ..data.checked_loading import naming_annotation_errors
from ..data.dataset_report import report_datasets
from ..modeling.teacher_student import TeacherStudent
from .defaults import check_amp_device, create_ddp_model, resume_or_load, skip_batches
from .hooks import TeacherEvalHook, unwrap
from .train_loop import build_step_trainer, gradient_norm_bound

__all__ = [
    "build_lazy_eval_model", "build_lazy_trainer", "check_config", "do_test", "do_train", "resolve_device",
    "with_gradient_clipping",
]

logger = logging.getLogger("detectron2")

#: what a config needs for training; evaluation needs model, dataloader.test/evaluator and train
REQUIRED_KEYS = ("model", "dataloader", "optimizer", "lr_multiplier", "train")
#: the keys of train.distill
DISTILL_KEYS = ("eval_teacher", "max_grad_norm")
#: train.distill.max_grad_norm when a TeacherStudent config leaves it out: MODEL.DISTILL.MAX_GRAD_NORM's default
DEFAULT_MAX_GRAD_NORM = add_tid_config(get_cfg()).MODEL.DISTILL.MAX_GRAD_NORM


def check_config(cfg, config_file: str, eval_only: bool) -> None:
    """Fail early, naming the config file and the missing or unknown entries."""
    keys = ("model", "dataloader", "train") if eval_only else REQUIRED_KEYS
    missing = [k for k in keys if k not in cfg]
    loaders = ("test", "evaluator") if eval_only else ("train",)
    if "dataloader" in cfg:
        missing += [f"dataloader.{k}" for k in loaders if k not in cfg.dataloader]
    if missing:
        raise KeyError(
            f"{config_file} does not define {missing}; configs/lazy/gfl_r50_1x.py is a complete "
            "config (model, dataloader.train/test/evaluator, optimizer, lr_multiplier, train)"
        )
    unknown = set(cfg.train.get("distill", {}) or {}) - set(DISTILL_KEYS)
    if unknown:
        raise KeyError(
            f"{config_file}: train.distill has unknown keys {sorted(unknown)}; known: "
            f"{list(DISTILL_KEYS)} (the warm-up is an argument of each distiller, see "
            "configs/lazy/common/models/teacher_student.py)"
        )


def resolve_device(cfg) -> str:
    """`train.device`, falling back to the CPU (with a warning) when CUDA is unavailable."""
    device = cfg.train.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("no CUDA device: train.device cuda -> cpu")
        device = cfg.train.device = "cpu"
    check_amp_device(cfg.train.amp.enabled, device, key="train.amp.enabled")
    return device


def _max_grad_norm(cfg, model):
    """train.distill.max_grad_norm of a TeacherStudent (default DEFAULT_MAX_GRAD_NORM; 0 or None:
    no clipping); None for a plain detector."""
    if not isinstance(model, TeacherStudent):
        return None
    value = (cfg.train.get("distill", {}) or {}).get("max_grad_norm", DEFAULT_MAX_GRAD_NORM)
    return gradient_norm_bound(value, "train.distill.max_grad_norm")


def with_gradient_clipping(optimizer, clip_gradients=None):
    """`optimizer` with Detectron2's gradient clipping (`maybe_add_gradient_clipping`) as
    `train.clip_gradients` asks, the twin of SOLVER.CLIP_GRADIENTS: a dict of its keys in lower case
    (clip_type, clip_value, norm_type); None or empty: unchanged."""
    if not clip_gradients:
        return optimizer
    node = get_cfg().SOLVER.CLIP_GRADIENTS
    unknown = set(clip_gradients) - {k.lower() for k in node if k != "ENABLED"}
    if unknown:
        raise KeyError(f"train.clip_gradients has unknown keys {sorted(unknown)}; known: clip_type, clip_value, norm_type")
    cfg = CfgNode({"SOLVER": {"CLIP_GRADIENTS": dict(node, ENABLED=True, **{k.upper(): v for k, v in clip_gradients.items()})}})
    return maybe_add_gradient_clipping(cfg, optimizer)


def _dataset_names(loader_cfg):
    names = loader_cfg.get("dataset", {}).get("names", ())
    return [names] if isinstance(names, str) else list(names)


def do_test(cfg, model):
    """Evaluate `model` on `dataloader.test` with `dataloader.evaluator` (none: no evaluation)."""
    if cfg.dataloader.get("evaluator") is None:
        return {}
    with naming_annotation_errors(_dataset_names(cfg.dataloader.test)):
        loader = instantiate(cfg.dataloader.test)
    ret = inference_on_dataset(model, loader, instantiate(cfg.dataloader.evaluator))
    if comm.is_main_process():
        print_csv_format(ret)
    return ret


def _is_teacher_student(model_cfg) -> bool:
    target = model_cfg.get("_target_")
    return (locate(target) if isinstance(target, str) else target) is TeacherStudent


def build_lazy_eval_model(cfg):
    """The model to evaluate, loaded strictly from train.init_checkpoint (empty: as initialized); a
    TeacherStudent config gives its student alone (no teacher needed)."""
    model_cfg = cfg.model.student if _is_teacher_student(cfg.model) else cfg.model
    model = instantiate(model_cfg).to(cfg.train.device)
    if cfg.train.init_checkpoint:
        load_weights(model, cfg.train.init_checkpoint, key="train.init_checkpoint")
    return model.eval()


def build_lazy_trainer(cfg, resume: bool):
    """
    The step trainer of a LazyConfig with its hooks registered and its weights loaded (resumed from
    train.output_dir, else train.init_checkpoint into the student when distilling): returns
    (trainer, start_iter), consumed batches already skipped.
    """
    model = instantiate(cfg.model)
    logger.info("Model:\n{}".format(model))
    model.to(cfg.train.device)
    cfg.optimizer.params.model = model
    optim = with_gradient_clipping(instantiate(cfg.optimizer), cfg.train.get("clip_gradients"))
    with naming_annotation_errors(_dataset_names(cfg.dataloader.train)):
        filter_empty = cfg.dataloader.train.get("dataset", {}).get("filter_empty", True)
        masks = cfg.dataloader.train.get("mapper", {}).get("use_instance_mask", False)
        report_datasets(_dataset_names(cfg.dataloader.train), filter_empty, masks)
        train_loader = instantiate(cfg.dataloader.train)

    model = create_ddp_model(model, **cfg.train.ddp)
    trainer = build_step_trainer(
        model, train_loader, optim, cfg.train.amp.enabled, _max_grad_norm(cfg, unwrap(model))
    )
    checkpointer = AtomicCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    eval_teacher = (cfg.train.get("distill", {}) or {}).get("eval_teacher", False)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            TeacherEvalHook(lambda teacher: do_test(cfg, teacher))
            if eval_teacher and isinstance(unwrap(model), TeacherStudent)
            else None,
            hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
            hooks.PeriodicCheckpointer(checkpointer, **cfg.train.checkpointer)
            if comm.is_main_process()
            else None,
            hooks.EvalHook(cfg.train.eval_period, lambda: do_test(cfg, model)),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, cfg.train.max_iter),
                period=cfg.train.log_period,
            )
            if comm.is_main_process()
            else None,
        ]
    )
    start_iter = resume_or_load(
        checkpointer, cfg.train.init_checkpoint, resume=resume, key="train.init_checkpoint"
    )
    if start_iter > 0:
        skip_batches(trainer, start_iter)
    return trainer, start_iter


def do_train(cfg, resume: bool = False) -> None:
    """Train from a LazyConfig (see `build_lazy_trainer`)."""
    trainer, start_iter = build_lazy_trainer(cfg, resume)
    trainer.train(start_iter, cfg.train.max_iter)
