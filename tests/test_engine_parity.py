"""One engine for YAML and LazyConfig: the same quickstart distillation through both entry points
gives the same iteration-0 losses for the same seed, and both resume exactly."""
import os

import pytest
import torch

from detectron2.config import LazyConfig
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from conftest import REPO, quickstart_cfg
from test_lazy_config import tiny_lazy_args
from tid_d2.engine import TIDTrainer
from tid_d2.engine.lazy import build_lazy_trainer

PATHS = ("yaml", "lazy")


class _Losses(HookBase):
    """Records every iteration's losses (before the optimizer step changes anything)."""

    def __init__(self):
        self.per_iter = {}

    def after_step(self):
        hist = self.trainer.storage.histories()
        self.per_iter[self.trainer.iter] = {
            k: h.latest() for k, h in hist.items() if k.startswith("loss_")
        }


class _Stop(RuntimeError):
    pass


class _StopAfter(HookBase):
    def __init__(self, at):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise _Stop()


def _run(path, teacher, out, tiny_shapes, max_iter, resume=False, stop_at=None):
    """Train TID-GFL quickstart (tiny data, 2 images per batch) through one entry point; returns
    (recorded losses per iteration, final state dict)."""
    seed_all_rng(0)
    hooks = [_Losses()] + ([_StopAfter(stop_at)] if stop_at is not None else [])
    if path == "yaml":
        cfg = quickstart_cfg(
            "TID-GFL",
            "MODEL.TEACHER.WEIGHTS", teacher,
            "OUTPUT_DIR", str(out),
            "SOLVER.MAX_ITER", str(max_iter),
            "SOLVER.CHECKPOINT_PERIOD", "1",
            "SOLVER.BASE_LR", "0.02",
            "DATASETS.TEST", "()",
            "SEED", "0",
        )
        trainer = TIDTrainer(cfg)
        trainer.resume_or_load(resume=resume)
        trainer.register_hooks(hooks)
        run = trainer.train
    else:
        args = tiny_lazy_args("tid_gfl.py", out, tiny_shapes)[2:]
        lz = LazyConfig.load(os.path.join(REPO, "configs", "lazy", "quickstart", "tid_gfl.py"))
        lz = LazyConfig.apply_overrides(lz, args + [
            f"model.teacher.weights={teacher}",
            f"train.max_iter={max_iter}",
            "train.checkpointer.period=1",
            "train.eval_period=0",
            "train.seed=0",
            "dataloader.evaluator=null",
        ])
        trainer, start = build_lazy_trainer(lz, resume)
        trainer.register_hooks(hooks)
        run = lambda: trainer.train(start, max_iter)  # noqa: E731
    try:
        run()
    except _Stop:
        pass
    state = {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}
    return hooks[0].per_iter, state


def test_yaml_and_lazy_give_the_same_iteration_zero_losses(teachers, tiny_shapes, tmp_path):
    teacher = teachers["GFL-teacher"]
    losses = {p: _run(p, teacher, tmp_path / p, tiny_shapes, max_iter=1)[0][0] for p in PATHS}
    assert losses["yaml"].keys() == losses["lazy"].keys()
    assert {"loss_tid_key", "loss_gfl_cls"} <= set(losses["yaml"])
    for k, v in losses["yaml"].items():
        assert v == pytest.approx(losses["lazy"][k], rel=1e-6, abs=1e-9), k


@pytest.mark.parametrize("path", PATHS)
def test_both_paths_resume_exactly(path, teachers, tiny_shapes, tmp_path):
    teacher = teachers["GFL-teacher"]
    _, want = _run(path, teacher, tmp_path / "full", tiny_shapes, max_iter=4)
    out = tmp_path / "cut"
    _run(path, teacher, out, tiny_shapes, max_iter=4, stop_at=1)
    assert (out / "last_checkpoint").read_text().strip() == "model_0000001.pth"
    per_iter, got = _run(path, teacher, out, tiny_shapes, max_iter=4, resume=True)
    assert sorted(per_iter) == [2, 3]
    assert got.keys() == want.keys() and "distillers.tid.adapter.weight" in got
    for k in want:
        assert torch.equal(got[k], want[k]), k
