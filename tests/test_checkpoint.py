"""Checkpoints are written atomically: a save killed midway leaves the previous one as the latest."""
import os

import pytest
import torch
from torch import nn

from tid_d2.checkpoint import AtomicCheckpointer


def test_atomic_checkpoint_keeps_latest_complete(tmp_path, monkeypatch):
    model = nn.Linear(3, 2)
    ckp = AtomicCheckpointer(model, save_dir=str(tmp_path))
    ckp.save("model_0000001")
    assert ckp.get_checkpoint_file().endswith("model_0000001.pth")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        ckp.save("model_0000002")
    monkeypatch.undo()
    assert not os.path.exists(tmp_path / "model_0000002.pth")
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert ckp.get_checkpoint_file().endswith("model_0000001.pth")
    fresh = nn.Linear(3, 2)
    AtomicCheckpointer(fresh, save_dir=str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(fresh.weight, model.weight)
