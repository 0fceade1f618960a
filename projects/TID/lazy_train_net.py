#!/usr/bin/env python
"""
Train or evaluate a GFL/ATSS detector, or distill a teacher into a student, from a LazyConfig
(configs/lazy/*.py), in the manner of Detectron2's tools/lazyconfig_train_net.py; also on the CPU
(`train.device=cpu`, GLOO processes).

    python projects/TID/lazy_train_net.py --config-file configs/lazy/gfl_r50_1x.py --num-gpus 8
    python projects/TID/lazy_train_net.py --config-file configs/lazy/tid_gfl_r101_r50_1x.py --num-gpus 8
    python projects/TID/lazy_train_net.py --config-file configs/lazy/quickstart/gfl_student.py
    python projects/TID/lazy_train_net.py --config-file CFG --eval-only train.init_checkpoint=X.pth
"""
import logging
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import torch  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.config import LazyConfig, instantiate  # noqa: E402
from detectron2.engine import (  # noqa: E402
    default_argument_parser,
    default_setup,
    default_writers,
    hooks,
    launch,
)
from detectron2.engine.defaults import create_ddp_model  # noqa: E402
from detectron2.evaluation import inference_on_dataset, print_csv_format  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.registry import locate  # noqa: E402

import tid_d2  # noqa: E402,F401  (registers models and the tid_shapes datasets)
from tid_d2.engine import FiniteLossAMPTrainer, FiniteLossSimpleTrainer, TIDHook  # noqa: E402
from tid_d2.engine.hooks import unwrap  # noqa: E402
from tid_d2.modeling.teacher_student import TeacherStudent  # noqa: E402
from tid_d2.tools_common import load_weights_strict  # noqa: E402

logger = logging.getLogger("detectron2")

#: what a config needs for training; evaluation needs model, dataloader.test/evaluator and train
REQUIRED_KEYS = ("model", "dataloader", "optimizer", "lr_multiplier", "train")


def check_config(cfg, config_file: str, eval_only: bool) -> None:
    """Fail early, naming the config file and the missing entries."""
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


def resolve_device(cfg) -> str:
    """`train.device`, falling back to the CPU (with a warning) when CUDA is unavailable."""
    device = cfg.train.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("no CUDA device: train.device cuda -> cpu")
        device = cfg.train.device = "cpu"
    if cfg.train.amp.enabled and device == "cpu":
        raise ValueError("train.amp.enabled=True needs a CUDA device; set train.amp.enabled=False")
    return device


def ddp(model, **kwargs):
    """Detectron2's create_ddp_model; CPU (GLOO) processes need device_ids=None."""
    if next(model.parameters()).device.type != "cuda":
        kwargs["device_ids"] = None
    return create_ddp_model(model, **kwargs)


def do_test(cfg, model):
    """Evaluate `model` on `dataloader.test` with `dataloader.evaluator` (none: no evaluation)."""
    if cfg.dataloader.get("evaluator") is None:
        return {}
    ret = inference_on_dataset(
        model, instantiate(cfg.dataloader.test), instantiate(cfg.dataloader.evaluator)
    )
    if comm.is_main_process():
        print_csv_format(ret)
    return ret


def build_eval_model(cfg):
    """The model to evaluate, loaded from train.init_checkpoint: a TeacherStudent config gives its
    student alone (no teacher needed), loaded strictly from a training or exported checkpoint."""
    target = cfg.model.get("_target_")
    if (locate(target) if isinstance(target, str) else target) is TeacherStudent:  # str: a saved config
        model = instantiate(cfg.model.student).to(cfg.train.device)
        if cfg.train.init_checkpoint:
            load_weights_strict(model, cfg.train.init_checkpoint, key="train.init_checkpoint")
    else:
        model = instantiate(cfg.model).to(cfg.train.device)
        DetectionCheckpointer(model).load(cfg.train.init_checkpoint)
    return model.eval()


def tid_hook(cfg, model):
    """The TID hook for a TeacherStudent model (None otherwise), from `train.distill`:
    warmup_iters (the distillation weight's linear ramp) and eval_teacher (evaluate it once)."""
    if not isinstance(unwrap(model), TeacherStudent):
        return None
    distill = cfg.train.get("distill", {})
    unknown = set(distill) - {"warmup_iters", "eval_teacher"}
    if unknown:
        raise KeyError(f"train.distill has unknown keys {sorted(unknown)}; known: warmup_iters, eval_teacher")
    eval_teacher = (lambda teacher: do_test(cfg, teacher)) if distill.get("eval_teacher", False) else None
    return TIDHook(warmup_iters=distill.get("warmup_iters", 0), eval_teacher_fn=eval_teacher)


def load_initial_weights(checkpointer, model, init_checkpoint: str, resume: bool) -> None:
    """Resume from train.output_dir, else load train.init_checkpoint: into the student when
    distilling (ImageNet or detector weights fit it unchanged)."""
    student = getattr(unwrap(model), "student", None)
    if student is None or (resume and checkpointer.has_checkpoint()):
        checkpointer.resume_or_load(init_checkpoint, resume=resume)
    elif init_checkpoint:
        DetectionCheckpointer(student).load(init_checkpoint)


def do_train(args, cfg):
    """SimpleTrainer (AMPTrainer with train.amp.enabled) with LR schedule, checkpoint, evaluation
    and writer hooks, and the TID hook for a TeacherStudent model; a NaN/Inf loss stops training
    naming the loss; resumes from train.output_dir with --resume."""
    model = instantiate(cfg.model)
    logger.info("Model:\n{}".format(model))
    model.to(cfg.train.device)

    cfg.optimizer.params.model = model
    optim = instantiate(cfg.optimizer)
    train_loader = instantiate(cfg.dataloader.train)

    model = ddp(model, **cfg.train.ddp)
    trainer_cls = FiniteLossAMPTrainer if cfg.train.amp.enabled else FiniteLossSimpleTrainer
    trainer = trainer_cls(model, train_loader, optim)
    checkpointer = DetectionCheckpointer(model, cfg.train.output_dir, trainer=trainer)
    trainer.register_hooks(
        [
            hooks.IterationTimer(),
            tid_hook(cfg, model),
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

    load_initial_weights(checkpointer, model, cfg.train.init_checkpoint, args.resume)
    # a checkpoint stores the iteration that just finished: continue with the next one
    start_iter = trainer.iter + 1 if args.resume and checkpointer.has_checkpoint() else 0
    trainer.train(start_iter, cfg.train.max_iter)


def main(args):
    cfg = LazyConfig.load(args.config_file)
    cfg = LazyConfig.apply_overrides(cfg, args.opts)
    check_config(cfg, args.config_file, args.eval_only)
    resolve_device(cfg)
    default_setup(cfg, args)

    if args.eval_only:
        return do_test(cfg, ddp(build_eval_model(cfg)))
    do_train(args, cfg)


def invoke_main() -> None:
    args = default_argument_parser().parse_args()
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


if __name__ == "__main__":
    invoke_main()
