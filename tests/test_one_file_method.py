"""Adding a method is one file: examples/cosine_kd.py, named in TID_D2_DISTILLERS and edited
nowhere else, trains through train_net.py (YAML), lazy_train_net.py and the benchmark's --tune."""
import json
import os
import pkgutil
import subprocess
import sys

import pytest

import tid_d2.distill
from conftest import REPO

TINY = ["DATASETS.TRAIN", "('tid_shapes_tiny_train',)", "DATASETS.TEST", "()", "SOLVER.MAX_ITER", "2",
        "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.WARMUP_ITERS", "0", "SOLVER.STEPS", "()"]


def _env(tmp_path):
    path = os.pathsep.join(filter(None, [os.path.join(REPO, "examples"), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=path, TID_D2_DISTILLERS="cosine_kd", OMP_NUM_THREADS="1",
                TID_TINY_ROOT=str(tmp_path / "datasets"))


def _run(cmd, env):
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _losses(out_dir):
    records = [json.loads(line) for line in open(os.path.join(out_dir, "metrics.json"))]
    return [r for r in records if "total_loss" in r][-1]


def test_the_package_imports_every_method_module():
    """A module saved in tid_d2/distill/ is imported (so registered) with the package: no list to edit."""
    modules = {m.name for m in pkgutil.iter_modules(tid_d2.distill.__path__)}
    assert {"tid", "fitnet", "fgd"} <= modules
    assert all(f"tid_d2.distill.{m}" in sys.modules for m in modules)


def test_an_unimportable_plugin_is_a_clear_error():
    env = dict(os.environ, TID_D2_DISTILLERS="no_such_distiller_module")
    proc = subprocess.run([sys.executable, "-c", "import tid_d2"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "TID_D2_DISTILLERS names the module 'no_such_distiller_module'" in proc.stderr


@pytest.mark.parametrize("entry", ["yaml", "lazy"])
def test_a_one_file_method_trains_through_both_entry_points(entry, teachers, tmp_path):
    out = str(tmp_path / "out")
    if entry == "yaml":
        args = ["--config-file", os.path.join(REPO, "configs", "quickstart", "TID-GFL.yaml"),
                "MODEL.TEACHER.WEIGHTS", teachers["GFL-teacher"], "MODEL.DISTILL.METHODS", "['COSINEKD']",
                "MODEL.DISTILL.COSINEKD.LOSS_WEIGHT", "3.0", "OUTPUT_DIR", out, *TINY]
    else:
        args = ["--config-file", os.path.join(REPO, "configs", "lazy", "quickstart", "tid_gfl.py"),
                f"model.teacher.weights={teachers['GFL-teacher']}", "model.distillers.methods=[COSINEKD]",
                "+model.distillers.cosinekd.loss_weight=3.0", "train.max_iter=2", f"train.output_dir={out}",
                "train.eval_period=0", "dataloader.train.dataset.names=tid_shapes_tiny_train",
                "dataloader.train.num_workers=0", "dataloader.train.total_batch_size=2",
                "dataloader.test.dataset.names=tid_shapes_tiny_val", "dataloader.test.num_workers=0"]
    _run([sys.executable, os.path.join(REPO, "tests", "_train_tiny.py"), *args], _env(tmp_path))
    losses = _losses(out)
    assert losses["iteration"] == 1
    assert 0 < losses["loss_cosinekd"] <= 3.0 * 2  # weight 3 x a cosine distance in [0, 2]
    assert not any(k.startswith("loss_tid") for k in losses)


def test_a_one_file_method_goes_through_the_tuning_protocol(tmp_path):
    out = str(tmp_path / "bench")
    cmd = [sys.executable, os.path.join(REPO, "tools", "benchmark.py"), "--tune", "--tune-grid", "0.5", "2",
           "--methods", "cosinekd", "--output", out, "--dataset-root", str(tmp_path / "datasets"),
           "--num-images", "16", "--num-val-images", "8", "--image-sides", "128", "192", "--iters", "2",
           "--teacher-iters", "2", "--seeds", "0", "--accuracy-only",
           "--opts", "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
           "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192", "DATALOADER.NUM_WORKERS", "0"]
    _run(cmd, _env(tmp_path))
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    tuning = results["config"]["tuning"]["cosinekd"]
    assert set(tuning["aps"]) == {"0.5", "2"} and tuning["pick"] in (0.5, 2.0)
    assert "cosinekd" in results["methods"]
