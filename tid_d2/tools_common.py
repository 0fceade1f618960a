"""Config set-up and model loading shared by train_net.py and the tools."""
import logging
import os
from typing import Dict, List, Optional

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import CfgNode, get_cfg
from detectron2.modeling import build_model

from .config import add_tid_config

__all__ = ["setup_cfg", "student_cfg", "student_state_dict", "build_eval_model"]


def setup_cfg(config_file: str, opts: Optional[List[str]] = None, freeze: bool = True) -> CfgNode:
    """Detectron2 defaults + this project's keys + a YAML file + command-line overrides."""
    import tid_d2  # noqa: F401  (registers models and datasets)

    if not os.path.isfile(config_file):
        raise FileNotFoundError(f"config file not found: {config_file}")
    cfg = add_tid_config(get_cfg())
    try:
        cfg.merge_from_file(config_file)
        cfg.merge_from_list(list(opts or []))
    except KeyError as e:
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


def student_state_dict(model_state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Student weights from a TeacherStudent state dict ("student." prefix dropped, adapters and
    other distiller modules left out); a plain detector's state dict is returned unchanged."""
    if not any(k.startswith("student.") for k in model_state):
        return dict(model_state)
    return {k[len("student."):]: v for k, v in model_state.items() if k.startswith("student.")}


def build_eval_model(cfg: CfgNode, weights: str) -> torch.nn.Module:
    """The model to evaluate: the plain student (no teacher needed) loaded from a training or
    exported checkpoint."""
    model = build_model(student_cfg(cfg))
    model.eval()
    if weights:
        ckp = DetectionCheckpointer(model)
        if not os.path.isfile(weights) and "://" not in weights:
            raise FileNotFoundError(f"MODEL.WEIGHTS not found: {weights}")
        checkpoint = ckp._load_file(ckp.path_manager.get_local_path(weights))
        checkpoint["model"] = student_state_dict(checkpoint["model"])
        incompatible = ckp._load_model(checkpoint)
        bad = incompatible.missing_keys or incompatible.incorrect_shapes
        if bad:
            raise ValueError(f"{weights} does not fit the model of this config: {bad[:5]}")
    return model
