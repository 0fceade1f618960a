"""
The pieces both entry points share (the YAML `TIDTrainer` and the LazyConfig `engine.lazy`), as free
functions in the manner of Detectron2's engine/defaults.py: config set-up, DDP on CPU or GPU, the
evaluator of a dataset, checked weight loading and an exact resume.
"""
import argparse
import logging
import os
import time
from typing import List, Optional

import torch

from detectron2.config import CfgNode, get_cfg
from detectron2.data import MetadataCatalog
from detectron2.engine.defaults import create_ddp_model as _d2_create_ddp_model
from detectron2.evaluation import COCOEvaluator, PascalVOCDetectionEvaluator
from detectron2.modeling import build_model

from ..checkpoint import load_weights, read_error
from ..config import add_tid_config
from .hooks import unwrap

__all__ = [
    "add_config_opts",
    "build_eval_model",
    "build_evaluator",
    "check_amp_device",
    "config_opts",
    "create_ddp_model",
    "load_initial_weights",
    "resume_or_load",
    "setup_cfg",
    "skip_batches",
    "student_cfg",
]

logger = logging.getLogger(__name__)


def add_config_opts(parser) -> None:
    """Config overrides as Detectron2's tools take them, trailing `KEY VALUE ...` (`--opts KEY VALUE`
    also works); read them with `config_opts(args)`."""
    parser.add_argument("--opts", dest="flag_opts", nargs=argparse.REMAINDER, default=[], help=argparse.SUPPRESS)
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")


def config_opts(args) -> List[str]:
    """The overrides given to a parser set up by `add_config_opts`."""
    return [o for o in list(args.opts) + list(args.flag_opts) if o != "--"]


def setup_cfg(config_file: str, opts: Optional[List[str]] = None, freeze: bool = True) -> CfgNode:
    """Detectron2 defaults + this project's keys + a YAML file + command-line overrides."""
    import tid_d2  # noqa: F401  (registers models and datasets)

    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file not found: {config_file}")
    cfg = add_tid_config(get_cfg())
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts or []))
    except (KeyError, AssertionError) as e:
        # yacs: KeyError for a YAML key, AssertionError for a command-line one (and bad opts)
        if isinstance(e, AssertionError) and "Non-existent key" not in str(e):
            raise ValueError(f"{config_file}: bad config overrides {list(opts or [])}: {e}") from None
        if "was renamed" in str(e):
            raise KeyError(f"{config_file}: {e.args[0]}") from None
        raise KeyError(
            f"{config_file}: unknown config key {e}. Keys this project adds are listed in "
            "tid_d2/config.py (MODEL.GFL/ATSS/FCOS/TEACHER/DISTILL) and, for each method's "
            "MODEL.DISTILL.<NAME>, in its `config` (tid_d2/distill/<name>.py)"
        ) from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("no CUDA device: MODEL.DEVICE cuda -> cpu")
        cfg.MODEL.DEVICE = "cpu"
    if freeze:
        cfg.freeze()
    return cfg


def student_cfg(cfg: CfgNode) -> CfgNode:
    """The plain student's config of a TeacherStudent config (the config itself otherwise)."""
    if cfg.MODEL.META_ARCHITECTURE != "TeacherStudent":
        return cfg
    out = cfg.clone()
    out.defrost()
    out.MODEL.META_ARCHITECTURE = cfg.MODEL.DISTILL.STUDENT_META_ARCHITECTURE
    out.freeze()
    return out


def build_eval_model(cfg: CfgNode, weights: str, key: str = "MODEL.WEIGHTS") -> torch.nn.Module:
    """The model to evaluate: the plain student (the teacher is not needed) loaded strictly from a
    training or exported checkpoint; with empty `weights`, the freshly initialized model."""
    model = build_model(student_cfg(cfg))
    if weights:
        load_weights(model, weights, key=key)
    return model.eval()


def check_amp_device(amp: bool, device: str, key: str = "SOLVER.AMP.ENABLED") -> None:
    """Mixed precision needs CUDA: say so before any model is built."""
    if amp and not str(device).startswith("cuda"):
        raise ValueError(f"{key}=True needs a CUDA device (device {device}); set it False to train on the CPU")


def create_ddp_model(model, **kwargs):
    """Detectron2's create_ddp_model, with device_ids=None for CPU (GLOO) processes."""
    if next(model.parameters()).device.type != "cuda":
        kwargs["device_ids"] = None
    return _d2_create_ddp_model(model, **kwargs)


def build_evaluator(dataset_name: str, output_dir: Optional[str] = None):
    """COCOEvaluator for COCO-format datasets (box AP, and mask AP when the model predicts masks: the
    tasks follow the predictions), PascalVOCDetectionEvaluator for VOC ones."""
    kind = MetadataCatalog.get(dataset_name).get("evaluator_type", "coco")
    if kind == "pascal_voc":
        return PascalVOCDetectionEvaluator(dataset_name)
    if kind != "coco":
        raise ValueError(f"dataset {dataset_name} has evaluator_type {kind!r}; expected coco or pascal_voc")
    try:
        from detectron2 import _C  # noqa: F401

        fast = True
    except ImportError:
        fast = False
    return COCOEvaluator(dataset_name, output_dir=output_dir, use_fast_impl=fast)


def load_initial_weights(model, path: str, key: str) -> None:
    """Initialize from `path` (MODEL.WEIGHTS, train.init_checkpoint): into the student when
    distilling; ImageNet, detector, exported and TeacherStudent checkpoints all work, and a file that
    does not even fit the backbone is an error naming it."""
    model = unwrap(model)
    target = getattr(model, "student", model)
    load_weights(target, path, key=key, source="the config", strict=False)


def resume_or_load(checkpointer, weights: str, *, resume: bool, key: str) -> int:
    """
    With `resume` and a checkpoint in the checkpointer's directory: restore everything it holds
    (model, optimizer, scheduler, iteration) and return the next iteration. Otherwise initialize from
    `weights` (if any, see `load_initial_weights`) and return 0.
    """
    if resume and checkpointer.has_checkpoint():
        path = checkpointer.get_checkpoint_file()
        try:
            checkpoint = checkpointer.load(path)
        except Exception as e:
            raise ValueError(
                f"--resume: the last checkpoint {path} cannot be read ({read_error(e)}); delete it "
                f"or point {os.path.join(checkpointer.save_dir, 'last_checkpoint')} at an earlier one"
            ) from None
        return checkpoint.get("iteration", -1) + 1
    if weights:
        load_initial_weights(checkpointer.model, weights, key)
    return 0


def skip_batches(step_trainer, num_batches: int) -> None:
    """Draw (and drop) the first `num_batches` training batches, so that a resumed run sees the data
    an uninterrupted one would (the sampler's order is a function of the seed), then put back the
    checkpoint's random state for the training step (`restore_rng`)."""
    start = time.perf_counter()
    data_iter = step_trainer._data_loader_iter
    for _ in range(num_batches):
        next(data_iter)
    if hasattr(step_trainer, "restore_rng"):
        step_trainer.restore_rng()
    logger.info(f"skipped {num_batches} consumed training batches in {time.perf_counter() - start:.1f} s")
