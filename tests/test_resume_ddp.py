"""--resume continues a TID run exactly; 2-process CPU (GLOO) DDP training matches one process."""
import json
import os
import subprocess
import sys

import pytest
import torch

from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from conftest import REPO, quickstart_cfg
import tid_d2.engine.trainer
from tid_d2.engine import TIDTrainer


@pytest.fixture(scope="module")
def teacher(teachers):
    """conftest's random quickstart GFL teacher checkpoint."""
    return teachers["GFL-teacher"]


class Interrupted(RuntimeError):
    pass


class _Interrupt(HookBase):
    """Stops training with an error after iteration `at` (after that iteration's checkpoint)."""

    def __init__(self, at: int):
        self.at = at

    def after_step(self):
        if self.trainer.iter == self.at:
            raise Interrupted(f"interrupted after iteration {self.at}")


def _train(cfg, resume=False, interrupt_at=None) -> TIDTrainer:
    seed_all_rng(0)  # model init, sampler seed and augmentation draws
    trainer = TIDTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    if interrupt_at is not None:
        trainer.register_hooks([_Interrupt(interrupt_at)])
    trainer.train()
    return trainer


def _final_state(trainer):
    return {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}


def test_resume_gives_the_weights_of_an_uninterrupted_run(teacher, tmp_path, monkeypatch):
    opts = [
        "MODEL.TEACHER.WEIGHTS", teacher,
        "SOLVER.CHECKPOINT_PERIOD", "2",
        "SOLVER.WARMUP_ITERS", "2",  # the LR changes every iteration: the scheduler must resume
        "SOLVER.STEPS", "(3,)",
        "MODEL.DISTILL.WARMUP_ITERS", "3",  # and so does the distillation weight
        "DATASETS.TEST", "()",
    ]
    full = _train(quickstart_cfg("TID-GFL", *opts, "OUTPUT_DIR", str(tmp_path / "full")))
    want = _final_state(full)
    assert "distillers.tid.adapter.weight" in want

    out = str(tmp_path / "resumed")
    cfg = quickstart_cfg("TID-GFL", *opts, "OUTPUT_DIR", out)
    with pytest.raises(Interrupted):
        _train(cfg, interrupt_at=1)
    assert open(os.path.join(out, "last_checkpoint")).read().strip() == "model_0000001.pth"
    resumed = _train(cfg, resume=True)
    assert resumed.start_iter == 2 and resumed.iter == 4
    got = _final_state(resumed)
    assert got.keys() == want.keys()
    for k in want:
        assert torch.allclose(got[k].float(), want[k].float(), rtol=0, atol=1e-6), k
    ckpt = torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 3
    opt_want = full.optimizer.state_dict()["state"]
    opt_got = resumed.optimizer.state_dict()["state"]
    assert opt_got.keys() == opt_want.keys()
    for i, state in opt_want.items():
        assert torch.allclose(opt_got[i]["momentum_buffer"], state["momentum_buffer"], atol=1e-6)
    assert resumed.scheduler.state_dict() == full.scheduler.state_dict()

    # the test can fail: resuming without restoring the data order gives other weights
    monkeypatch.setattr(tid_d2.engine.trainer, "skip_batches", lambda trainer, n: None)
    with open(os.path.join(out, "last_checkpoint"), "w") as f:
        f.write("model_0000001.pth")
    stale = _final_state(_train(cfg, resume=True))
    assert not all(torch.allclose(stale[k].float(), want[k].float(), atol=1e-6) for k in want)


# ----- DDP ----------------------------------------------------------------------------------------
DDP_OPTS = [
    "DATASETS.TRAIN", "('tid_shapes_tiny_train',)",
    "DATASETS.TEST", "()",
    "INPUT.MIN_SIZE_TRAIN", "(128,)",
    "INPUT.MAX_SIZE_TRAIN", "192",
    "INPUT.RANDOM_FLIP", "none",  # rank r draws its augmentations from seed SEED + r
    "DATALOADER.ASPECT_RATIO_GROUPING", "False",
    "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "4",
    "SOLVER.MAX_ITER", "2",
    "SOLVER.WARMUP_ITERS", "0",
    "SOLVER.STEPS", "()",
    # batch statistics over the whole batch in both runs
    "MODEL.TINY_RESNET.NORM", "naiveSyncBN",
    # GFL clamps its box-loss normalizer (the summed quality weights) at 1, as mmdetection does;
    # at the default 0.01 prior a random model sums to < 1 per process, so the clamp, not the data,
    # would set the loss scale and differ between 1 and 2 processes
    "MODEL.GFL.PRIOR_PROB", "0.3",
    # with MODEL.DISTILL.TID.NORMALIZE "area", TID's area means over each process's own areas differ from
    # the pooled mean unless every process's area has the same size; without LDAM a random
    # teacher has no key area, so the check holds in both normalizations
    "MODEL.DISTILL.TID.LDAM", "False",
]


def _run_train_net(num_procs: int, teacher: str, out: str, root: str):
    env = dict(os.environ, TID_TINY_ROOT=root, TID_TINY_SIDES="128,128", OMP_NUM_THREADS="1")
    cmd = [
        sys.executable, os.path.join(REPO, "tests", "_train_tiny.py"),
        "--num-gpus", str(num_procs), "--dist-url", "auto",
        "--config-file", os.path.join(REPO, "configs", "quickstart", "TID-GFL.yaml"),
        "MODEL.TEACHER.WEIGHTS", teacher, "OUTPUT_DIR", out, *DDP_OPTS,
    ]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    records = [json.loads(line) for line in open(os.path.join(out, "metrics.json"))]
    return [r for r in records if "total_loss" in r][-1]


def test_ddp_two_cpu_processes_match_one_process(teacher, tmp_path):
    """
    2 GLOO processes x 2 images vs 1 process x 4 images, the same 4 images per iteration (same
    size, so the same padding), 2 iterations; metrics.json holds the median over both iterations.
    Detection losses are normalized by counts reduced over processes (GFL's reduce_mean), TID's
    area means here cover equal-size areas in both processes (see DDP_OPTS), and Detectron2
    averages the logged losses over processes: every logged loss matches up to float error
    (summation order, GLOO all-reduce), rtol 1e-4. The second iteration runs on weights after one
    step, so this also checks that DDP averages the gradients as one process sums them.
    """
    root = str(tmp_path / "datasets")
    ddp = _run_train_net(2, teacher, str(tmp_path / "ddp"), root)
    single = _run_train_net(1, teacher, str(tmp_path / "single"), root)
    assert ddp["iteration"] == single["iteration"] == 1
    for k in ("loss_gfl_cls", "loss_gfl_box", "loss_gfl_dfl"):
        assert ddp[k] == pytest.approx(single[k], rel=1e-4), k
    for k in ("loss_tid_key", "loss_tid_weak", "loss_tid_other", "total_loss"):
        assert ddp[k] == pytest.approx(single[k], rel=1e-4, abs=1e-7), k
    assert single["loss_tid_other"] > 0

    ckpt = torch.load(tmp_path / "ddp" / "model_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["iteration"] == 1
    assert not any(k.startswith(("teacher", "module.")) for k in ckpt["model"])
    assert "distillers.tid.adapter.weight" in ckpt["model"]


# ----- SIGKILL, then --resume, on both entry points -------------------------------------------------
RUNS = {  # (entry point, model) -> the quickstart config and its overrides (+ YAML_OPTS or LAZY_OPTS)
    ("yaml", "plain"): ("configs/quickstart/GFL-student.yaml", []),
    ("yaml", "TID"): ("configs/quickstart/TID-GFL.yaml", ["MODEL.TEACHER.WEIGHTS", "{teacher}"]),
    ("lazy", "plain"): ("configs/lazy/quickstart/gfl_student.py", []),
    ("lazy", "TID"): ("configs/lazy/quickstart/tid_gfl.py", ["model.teacher.weights={teacher}"]),
}
YAML_OPTS = ["SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()",
             "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", "{out}"]
LAZY_OPTS = ["train.max_iter=6", "train.checkpointer.period=2", "train.output_dir={out}",
             "dataloader.train.dataset.names=tid_shapes_tiny_train", "dataloader.train.num_workers=0",
             "dataloader.test.dataset.names=tid_shapes_tiny_val", "dataloader.test.num_workers=0"]


def _train_net_cmd(run, teacher: str, out: str, resume: bool = False):
    """tests/_train_tiny.py (train_net.py or lazy_train_net.py on the tiny dataset) for `run`."""
    config, opts = RUNS[run]
    opts = opts + (YAML_OPTS if run[0] == "yaml" else LAZY_OPTS)
    return [
        sys.executable, os.path.join(REPO, "tests", "_train_tiny.py"),
        *(["--resume"] if resume else []), "--config-file", os.path.join(REPO, config),
        *(o.format(teacher=teacher, out=out) for o in opts),
    ]


@pytest.mark.parametrize("run", list(RUNS), ids=["-".join(r) for r in RUNS])
def test_sigkill_after_a_checkpoint_then_resume_is_bit_identical(run, teacher, tmp_path):
    """A real training process (plain student or TID, YAML or LazyConfig entry point) killed with
    SIGKILL right after a checkpoint, then `--resume`d, ends with bit for bit the weights of an
    uninterrupted run; the latest checkpoint is always a complete file."""
    import signal
    import time

    root = str(tmp_path / "datasets")
    env = dict(os.environ, TID_TINY_ROOT=root, TID_TINY_SIDES="128,128", OMP_NUM_THREADS="1")
    full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
    subprocess.run(_train_net_cmd(run, teacher, full), cwd=REPO, env=env, check=True,
                   capture_output=True, timeout=400)

    proc = subprocess.Popen(_train_net_cmd(run, teacher, killed), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tag = os.path.join(killed, "last_checkpoint")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(tag) and open(tag).read().strip() == "model_0000003.pth":
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert not os.path.exists(os.path.join(killed, "model_final.pth"))
    latest = os.path.join(killed, open(tag).read().strip())
    resume_at = torch.load(latest, map_location="cpu", weights_only=False)["iteration"] + 1  # complete

    log = subprocess.run(_train_net_cmd(run, teacher, killed, resume=True), cwd=REPO, env=env,
                         check=True, capture_output=True, text=True, timeout=400)
    assert f"Starting training from iteration {resume_at}" in log.stdout + log.stderr  # not from 0
    want = torch.load(os.path.join(full, "model_final.pth"), map_location="cpu", weights_only=False)
    got = torch.load(os.path.join(killed, "model_final.pth"), map_location="cpu", weights_only=False)
    assert got["iteration"] == want["iteration"] == 5
    assert got["model"].keys() == want["model"].keys()
    assert any(k.startswith("distillers.") for k in want["model"]) == (run[1] == "TID")
    for k, v in want["model"].items():
        assert torch.equal(got["model"][k], v), k
