"""The resumable sampler continues an uninterrupted stream exactly; checkpoints are written atomically."""
import itertools
import os

import pytest
import torch
from torch import nn

from tid_d2.engine.resumable import AtomicCheckpointer, ResumableTrainingSampler


def _take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


@pytest.mark.parametrize("start", [0, 1, 7, 10, 23])
def test_sampler_resumes_where_the_stream_was(start):
    full = _take(ResumableTrainingSampler(10, seed=5), 40)
    resumed = ResumableTrainingSampler(10, seed=5)
    resumed.start = start
    assert _take(resumed, 40 - start) == full[start:]


def test_sampler_epochs_are_permutations_and_seeded():
    a = _take(ResumableTrainingSampler(10, seed=1), 30)
    b = _take(ResumableTrainingSampler(10, seed=2), 30)
    for e in range(3):
        assert sorted(a[e * 10:(e + 1) * 10]) == list(range(10))
    assert a != b
    assert a[:10] != a[10:20]


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
