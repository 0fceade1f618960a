"""Exact resumption: a training sampler that can start anywhere in its index stream, and a
checkpointer whose files appear whole or not at all."""
import itertools
import os

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data.samplers import TrainingSampler

__all__ = ["ResumableTrainingSampler", "AtomicCheckpointer"]


class ResumableTrainingSampler(TrainingSampler):
    """
    Detectron2's TrainingSampler whose infinite stream is a pure function of (seed, position): epoch e
    is a permutation seeded by (seed, e). Setting `start` (a position in the global stream, i.e.
    iterations done x total batch size) before iteration begins continues exactly where an
    uninterrupted run would be, without replaying the data.
    """

    def __init__(self, size: int, shuffle: bool = True, seed=None):
        super().__init__(size, shuffle=shuffle, seed=seed)
        self.start = 0

    def _epoch(self, epoch: int):
        if not self._shuffle:
            return torch.arange(self._size).tolist()
        g = torch.Generator()
        g.manual_seed((self._seed * 1_000_003 + epoch) % (2**63))
        return torch.randperm(self._size, generator=g).tolist()

    def _infinite_indices(self):
        epoch, offset = divmod(self.start, self._size)
        yield from self._epoch(epoch)[offset:]
        for e in itertools.count(epoch + 1):
            yield from self._epoch(e)


def _atomic_write(path: str, write, mode: str) -> None:
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
        _atomic_write(path, lambda f: torch.save(data, f), "wb")
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if "://" in self.save_dir:
            return super().tag_last_checkpoint(last_filename_basename)
        path = os.path.join(self.save_dir, "last_checkpoint")
        _atomic_write(path, lambda f: f.write(last_filename_basename), "w")
