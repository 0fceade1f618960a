"""`load_weights`: the one way this project reads model weights (teacher, initialization, evaluation,
export), so that no load can silently leave a model at random initialization."""
import os
from typing import Callable, Dict, Optional

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["load_weights", "read_error", "student_state_dict"]

StateDict = Dict[str, torch.Tensor]


def read_error(e: BaseException, limit: int = 200) -> str:
    """`e` as "Type: message", cut at the last sentence end within `limit` characters (torch's
    unreadable-file messages run on for lines)."""
    text = " ".join(str(e).split())
    if len(text) > limit:
        end = text.rfind(". ", 0, limit)
        text = text[: end + 1] if end > 0 else text[:limit] + "..."
    return f"{type(e).__name__}: {text}"


def student_state_dict(model_state: StateDict) -> StateDict:
    """Student weights from a TeacherStudent state dict ("student." prefix dropped, adapters and
    other distiller modules left out); a plain detector's state dict is returned unchanged."""
    if not any(k.startswith("student.") for k in model_state):
        return dict(model_state)
    return {k[len("student."):]: v for k, v in model_state.items() if k.startswith("student.")}


class _MappingCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer that maps the file's state dict first and records what did not fit."""

    def __init__(self, model: torch.nn.Module, transform: Optional[Callable[[StateDict], StateDict]]):
        super().__init__(model, save_to_disk=False)
        self.transform = transform
        self.incompatible = None

    def _load_model(self, checkpoint):
        if self.transform is not None:
            checkpoint["model"] = self.transform(checkpoint["model"])
        self.incompatible = super()._load_model(checkpoint)
        return self.incompatible


def _backbone_keys(model: torch.nn.Module):
    """Parameter names of the backbone's bottom-up network (the whole backbone without one)."""
    backbone = getattr(model, "backbone", None)
    if backbone is None:
        return set()
    prefix = "backbone.bottom_up." if hasattr(backbone, "bottom_up") else "backbone."
    return {k for k, _ in model.named_parameters() if k.startswith(prefix)}


def load_weights(
    model: torch.nn.Module,
    path: str,
    *,
    key: str = "MODEL.WEIGHTS",
    source: str = "the config",
    strict: bool = True,
    transform: Optional[Callable[[StateDict], StateDict]] = student_state_dict,
) -> torch.nn.Module:
    """
    Load `path` into `model` with DetectionCheckpointer (.pth, Detectron2 .pkl, URLs).

    Errors name `key` (the config key or flag the path came from) and the file: an empty path or a
    missing file; a file that cannot be read as a checkpoint (truncated, a directory, not a
    checkpoint). `strict`: keys missing from the file, keys the model lacks or shapes that differ are
    an error (teacher, evaluation); otherwise (initialization, e.g. ImageNet weights) the file must at
    least fit the whole backbone. `transform` maps the file's state dict first (default: a
    TeacherStudent checkpoint gives its student's weights).
    """
    if not path:
        raise ValueError(f"{key} is empty: give a checkpoint file")
    if "://" not in path:
        if os.path.isdir(path):
            raise ValueError(f"{key}={path} is a directory; expected a checkpoint file (.pth/.pkl)")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"checkpoint not found: {key}={path}")
    ckp = _MappingCheckpointer(model, transform)
    try:
        ckp.load(path, checkpointables=[])
    except Exception as e:  # torch/pickle raise many types for unreadable files
        raise ValueError(
            f"{key}={path} cannot be read as a checkpoint ({read_error(e)}); "
            "expected a file written by torch.save / DetectionCheckpointer (.pth) or a Detectron2 "
            ".pkl. Is it truncated (an interrupted copy or download)?"
        ) from None
    bad = ckp.incompatible
    if bad is None:
        raise ValueError(f"{key}={path} holds no model weights")
    problems = []
    if bad.incorrect_shapes:
        shown = ", ".join(
            f"{k} {tuple(a)} in file vs {tuple(b)} in model" for k, a, b in bad.incorrect_shapes[:3]
        )
        problems.append(f"shape mismatch: {shown}")
    missing = set(bad.missing_keys) | {k for k, _, _ in bad.incorrect_shapes}
    if strict:
        if bad.missing_keys:
            problems.append(f"missing in file: {bad.missing_keys[:5]}")
        if bad.unexpected_keys:
            problems.append(f"not in the model: {bad.unexpected_keys[:5]}")
    else:
        unfit = sorted(_backbone_keys(model) & missing)
        problems = [f"backbone weights missing or of another shape: {unfit[:5]}"] if unfit else []
    if problems:
        raise ValueError(
            f"{key}={path} does not fit the {type(model).__name__} built from {source} "
            "(different architecture, width or number of classes?): " + "; ".join(problems)
        )
    return model
