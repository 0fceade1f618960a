"""Config set-up and model loading shared by train_net.py, the tools and the teacher."""
import logging
import os
from typing import Callable, Dict, List, Optional

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model

from .config import add_tid_config

__all__ = [
    "setup_cfg",
    "student_cfg",
    "student_state_dict",
    "load_weights_strict",
    "build_eval_model",
]

StateDict = Dict[str, torch.Tensor]


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
            raise ValueError(
                f"{config_file}: bad config overrides {list(opts or [])}: {e}"
            ) from None
        raise KeyError(
            f"{config_file}: unknown config key {e}. Keys this project adds are listed in "
            "tid_d2/config.py (MODEL.GFL/ATSS/FCOS/TEACHER/DISTILL/TID)"
        ) from None
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logging.getLogger(__name__).warning("no CUDA device: MODEL.DEVICE cuda -> cpu")
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


def student_state_dict(model_state: StateDict) -> StateDict:
    """Student weights from a TeacherStudent state dict ("student." prefix dropped, adapters and
    other distiller modules left out); a plain detector's state dict is returned unchanged."""
    if not any(k.startswith("student.") for k in model_state):
        return dict(model_state)
    return {k[len("student."):]: v for k, v in model_state.items() if k.startswith("student.")}


class _StrictCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer that maps the file's state dict first and records what did not fit."""

    def __init__(
        self, model: torch.nn.Module, transform: Optional[Callable[[StateDict], StateDict]]
    ):
        super().__init__(model, save_to_disk=False)
        self.transform = transform
        self.incompatible = None

    def _load_model(self, checkpoint):
        if self.transform is not None:
            checkpoint["model"] = self.transform(checkpoint["model"])
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def load_weights_strict(
    model: torch.nn.Module,
    path: str,
    *,
    key: str = "MODEL.WEIGHTS",
    source: str = "the config",
    transform: Optional[Callable[[StateDict], StateDict]] = student_state_dict,
) -> torch.nn.Module:
    """
    Load `path` into `model` with DetectionCheckpointer, strictly: a missing file raises
    FileNotFoundError; keys missing from the file, keys the model lacks or shapes that differ raise
    ValueError naming the file and the first mismatching keys. `transform` maps the file's state
    dict first (default: a TeacherStudent checkpoint becomes its student's weights).
    """
    if not path:
        raise ValueError(f"{key} is empty: give a checkpoint file")
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {key}={path}")
    ckp = _StrictCheckpointer(model, transform)
    ckp.load(path, checkpointables=[])
    bad = ckp.incompatible
    problems = []
    if bad.incorrect_shapes:
        shown = ", ".join(
            f"{k} {tuple(a)} in file vs {tuple(b)} in model" for k, a, b in bad.incorrect_shapes[:3]
        )
        problems.append(f"shape mismatch: {shown}")
    if bad.missing_keys:
        problems.append(f"missing in file: {bad.missing_keys[:5]}")
    if bad.unexpected_keys:
        problems.append(f"not in the model: {bad.unexpected_keys[:5]}")
    if problems:
        raise ValueError(
            f"{key}={path} does not fit the {type(model).__name__} built from {source} "
            "(different architecture, width or number of classes?): " + "; ".join(problems)
        )
    return model


def build_eval_model(cfg: CfgNode, weights: str) -> torch.nn.Module:
    """The model to evaluate: the plain student (the teacher is not needed) loaded strictly from a
    training or exported checkpoint; with empty `weights`, the freshly initialized model."""
    model = build_model(student_cfg(cfg))
    if weights:
        load_weights_strict(model, weights)
    model.eval()
    return model
