"""`AtomicCheckpointer`: a DetectionCheckpointer whose files appear whole or not at all."""
import os

import torch

from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicCheckpointer", "atomic_write"]


def atomic_write(path: str, write, mode: str = "wb") -> None:
    """Call `write(f)` on a temporary file next to `path`, then rename it to `path`: the file
    appears whole or not at all."""
    tmp = f"{path}.tmp.{os.getpid()}"
    try:
        with open(tmp, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class AtomicCheckpointer(DetectionCheckpointer):
    """DetectionCheckpointer that writes each checkpoint and the `last_checkpoint` tag to a temporary
    file and renames it, so a run killed mid-save never leaves a truncated file as the latest one."""

    def save(self, name: str, **kwargs) -> None:
        if not self.save_dir or not self.save_to_disk:
            return
        if "://" in self.save_dir:  # non-local storage: keep fvcore's behaviour
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        data.update({k: obj.state_dict() for k, obj in self.checkpointables.items()})
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f), "wb")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if "://" in self.save_dir:
            return super().tag_last_checkpoint(last_filename_basename)
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(path, lambda f: f.write(last_filename_basename), "w")
