"""The tuning protocol: the same weight grid for every method, the pick rule, and one tiny --tune run."""
import json
import math
import os

import pytest
from detectron2.config import get_cfg

from test_benchmark import _load_tool
from tid_d2.benchmark import parse_method
from tid_d2.benchmark.tuning import DEFAULT_GRID, grid_specs, main_weights, pick_factor
from tid_d2.config import add_tid_config
from tid_d2.distill import registered_methods


def test_every_registered_method_has_main_weights_that_exist():
    cfg = add_tid_config(get_cfg())
    for method in registered_methods():
        keys = main_weights(method)
        assert keys and all(k.startswith(f"MODEL.DISTILL.{method.upper()}.") for k in keys)
    with pytest.raises(KeyError, match=r"tuning names unknown methods \['nope'\]"):
        main_weights("nope")
        for key in keys:
            node = cfg
            for part in key.split("."):
                node = node[part]
            assert float(node) > 0, key


def test_grid_scales_every_main_weight_together_and_keeps_other_overrides():
    cfg = add_tid_config(get_cfg())
    points = grid_specs(parse_method("fgd"), DEFAULT_GRID, cfg)
    assert [f for f, _ in points] == list(DEFAULT_GRID)
    for factor, spec in points:
        opts = dict(zip(spec.opts[::2], spec.opts[1::2]))
        assert spec.name == f"fgd@x{factor:g}" and spec.methods == ("FGD",)
        assert float(opts["MODEL.DISTILL.FGD.ALPHA"]) == pytest.approx(0.001 * factor)
        assert float(opts["MODEL.DISTILL.FGD.LAMBDA"]) == pytest.approx(5e-6 * factor)
    combo = grid_specs(parse_method("tid+ld[MODEL.DISTILL.TID.LOSS_WEIGHT=3,MODEL.DISTILL.TID.ALPHA=1]"), [2.0], cfg)[0][1]
    opts = dict(zip(combo.opts[::2], combo.opts[1::2]))
    assert float(opts["MODEL.DISTILL.TID.LOSS_WEIGHT"]) == 6.0  # the override is the base that is scaled
    assert opts["MODEL.DISTILL.TID.ALPHA"] == "1"  # not a main weight: kept as given
    assert float(opts["MODEL.DISTILL.LD.LOSS_WEIGHT"]) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="> 0"):
        grid_specs(parse_method("tid"), [0.0], cfg)


def test_pick_factor():
    assert pick_factor({0.5: 10.0, 1.0: 12.0, 2.0: 11.0}) == 1.0
    assert pick_factor({0.5: 13.0, 1.0: 12.0, 2.0: None}) == 0.5
    assert pick_factor({0.5: 12.0, 1.0: 12.0, 2.0: 12.0}) == 1.0  # ties: the published weights
    assert pick_factor({0.5: 12.0, 2.0: 12.0, 4.0: math.nan}) == 0.5
    with pytest.raises(ValueError, match="every grid point failed"):
        pick_factor({1.0: None, 2.0: math.nan})


def test_tune_end_to_end_tiny(tmp_path):
    """Grid on the tuning split (its own teacher, seed 0), then the pick on the reported split; cached."""
    tool = _load_tool()
    out = str(tmp_path / "bench")
    argv = ["--tune", "--tune-grid", "0.5", "2", "--output", out, "--dataset-root", str(tmp_path / "datasets"),
            "--num-images", "16", "--num-val-images", "8", "--image-sides", "128", "192", "--iters", "2",
            "--teacher-iters", "2", "--seeds", "0", "--methods", "tid", "fitnet", "--accuracy-only",
            "--opts", "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
            "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192", "DATALOADER.NUM_WORKERS", "0"]
    res = tool.main(argv)
    tuning = res["config"]["tuning"]
    assert set(tuning) == {"tid", "fitnet"}
    for name, t in tuning.items():
        assert set(t["aps"]) == {"0.5", "2"} and t["pick"] in (0.5, 2.0)
        assert t["pick"] == pick_factor({float(f): ap for f, ap in t["aps"].items()})
        assert t["dataset"] != res["config"]["dataset"]["val"]  # tuned on data that is not reported
        assert os.path.isdir(os.path.join(out, "tune", "runs", tool._slug(f"{name}@x{t['pick']:g}"), "seed0"))
        info = res["methods"][name]
        assert info["AP"] is not None
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["config"]["tune_grid"] == [0.5, 2.0]
    assert "## Tuning" in open(os.path.join(out, "results.md")).read()
    again = tool.main(argv)
    assert again["methods"]["tid"]["AP"] == res["methods"]["tid"]["AP"]
    with pytest.raises(SystemExit):
        tool.parse_args(["--tune", "--tune-dataset-seed", "0"])


def test_realistic_size_cost_on_the_cpu(tmp_path, monkeypatch):
    """--realistic-cpu builds the COCO configs (GFL R-101 teacher, R-50 student, random weights) and
    times them on the CPU; a small image keeps the test short (the real run uses 800x1333)."""
    tool = _load_tool()
    monkeypatch.setattr(tool, "REALISTIC_IMAGE_SIZE", (96, 128))
    out = str(tmp_path / "bench")
    res = tool.main(["--cost-only", "--realistic-cpu", "--methods", "tid", "--output", out,
                     "--dataset-root", str(tmp_path / "datasets"), "--num-images", "4", "--num-val-images", "2",
                     "--image-sides", "128", "160", "--cost-iters", "1", "--cost-warmup", "0",
                     "--opts", "SOLVER.IMS_PER_BATCH", "2", "DATALOADER.NUM_WORKERS", "0"])
    real = res["cost"]["cpu-realistic"]
    assert real["batch_image_sizes"] == [[96, 128], [96, 128]]
    assert res["methods"]["tid"]["cost"]["cpu-realistic"]["step_time_s"] > 0 and real["floor"]["peak_mem_bytes"] > 0
    # an R-101 teacher and an R-50 student: far more state than the quickstart pair
    assert real["floor"]["state_bytes"] > 20 * res["cost"]["cpu"]["floor"]["state_bytes"]
    assert "## Cost (cpu-realistic" in open(os.path.join(out, "results.md")).read()
