"""Faults that must not pass silently: a training set without annotations, boxes Detectron2 drops,
training and dataset-generation progress without a terminal, and a stability matrix that records divergence."""
import io
import json
import logging
import math
import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.engine import SimpleTrainer

from tid_d2.data.dataset_report import DROPPED_BOX_WARN_FRACTION, report_datasets
from tid_d2.engine import TIDTrainer
from tid_d2.engine.progress import ProgressHook, draws_a_bar

from conftest import REPO, quickstart_cfg
from test_benchmark import _load_tool

SIZE = 64  # side of the test images


def _register_coco(tmp_path, name, boxes_per_image, num_images=4):
    """A COCO dataset of `num_images` black SIZExSIZE images; image i holds boxes_per_image[i]
    (XYWH lists; json writes NaN/Infinity as such). Returns the json path."""
    images, annotations = [], []
    for i in range(num_images):
        file_name = f"{name}_{i}.png"
        Image.fromarray(np.zeros((SIZE, SIZE, 3), np.uint8)).save(tmp_path / file_name)
        images.append({"id": i + 1, "file_name": file_name, "height": SIZE, "width": SIZE})
        for box in boxes_per_image[i] if i < len(boxes_per_image) else []:
            annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "category_id": 1,
                                "bbox": box, "area": 1.0, "iscrowd": 0})
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "thing"}]}))
    if name in DatasetCatalog:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    register_coco_instances(name, {}, str(path), str(tmp_path))
    return str(path)


def test_dataset_without_annotations_is_an_error(tmp_path):
    json_file = _register_coco(tmp_path, "faults_no_annotations", [])
    with pytest.raises(ValueError, match="'faults_no_annotations'.*has no annotations") as e:
        report_datasets(["faults_no_annotations"], filter_empty=False)
    assert json_file in str(e.value)
    # the trainer checks before it builds its loader
    cfg = quickstart_cfg("GFL-student", "DATASETS.TRAIN", "('faults_no_annotations',)")
    with pytest.raises(ValueError, match=f"faults_no_annotations.*{re.escape(json_file)}"):
        TIDTrainer.build_train_loader(cfg)


def test_dataset_whose_boxes_are_all_dropped_is_an_error(tmp_path):
    _register_coco(tmp_path, "faults_all_dropped", [[[5, 5, 0, 10]], [[100, 100, 5, 5]]])
    with pytest.raises(ValueError, match="faults_all_dropped.*no usable box.*2 boxes dropped"):
        report_datasets(["faults_all_dropped"])


def test_dropped_boxes_by_reason_as_detectron2_drops_them(tmp_path, caplog):
    good = [[4, 4, 10, 10], [20, 20, 30, 12], [40, 2, 20, 50]]
    bad = [[10, 10, 0, 5],  # zero width
           [10, 10, 5, -3],  # negative height
           [SIZE + 5, 10, 8, 8],  # right of the image
           [float("nan"), 10, 8, 8],  # non-finite: dropped
           [10, 10, float("inf"), 8]]  # non-finite but clipped to the image: Detectron2 keeps it
    per_image = [good + bad, good, good, []]
    _register_coco(tmp_path, "faults_bad_boxes", per_image)
    _register_coco(tmp_path, "faults_clean_boxes", [good, good])
    with caplog.at_level(logging.INFO, logger="tid_d2.data.dataset_report"):
        bad_report, clean_report = report_datasets(["faults_bad_boxes", "faults_clean_boxes"])
    assert bad_report.dropped == {"non-positive size": 2, "outside the image": 1, "non-finite": 1}
    assert (bad_report.images, bad_report.annotations, bad_report.images_without_annotations) == (4, 14, 1)
    assert bad_report.images_filtered == 1  # FILTER_EMPTY_ANNOTATIONS on
    assert clean_report.num_dropped == 0
    # the counts are what Detectron2's own mapper keeps
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    kept = sum(len(mapper(d)["instances"]) for d in DatasetCatalog.get("faults_bad_boxes"))
    assert kept == bad_report.boxes - bad_report.num_dropped == 10
    table = next(r.getMessage() for r in caplog.records if "Training data" in r.getMessage())
    assert "| faults_bad_boxes " in table and "| faults_clean_boxes " in table
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert bad_report.dropped_fraction > DROPPED_BOX_WARN_FRACTION
    assert len(warnings) == 1 and "'faults_bad_boxes'" in warnings[0]
    assert "4 of its 14 boxes" in warnings[0] and "2 non-positive size" in warnings[0]


def test_the_report_is_said_once_per_process_while_the_data_is_unchanged(tmp_path, caplog):
    """A benchmark builds many trainers on one dataset: its table and warning come once, and again
    when the dataset under that name changes."""
    def said():
        tables = [r for r in caplog.records if "Training data" in r.getMessage()]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        caplog.clear()
        return len(tables), len(warnings)

    boxes = [[[4, 4, 10, 10], [10, 10, 0, 5]], [[4, 4, 10, 10]]]
    _register_coco(tmp_path, "faults_said_once", boxes)
    with caplog.at_level(logging.INFO, logger="tid_d2.data.dataset_report"):
        report_datasets(["faults_said_once"])
        assert said() == (1, 1)
        report_datasets(["faults_said_once"])
        assert said() == (0, 0)
        _register_coco(tmp_path, "faults_said_once", boxes + [[[1, 1, 5, 5]]], num_images=3)
        report_datasets(["faults_said_once"])
        assert said() == (1, 1)


class _ToyModel(torch.nn.Module):
    """One weight; its loss is w**2 + `shift`, NaN from iteration `nan_at` on."""

    def __init__(self, nan_at=None):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(1.0))
        self.nan_at, self.calls = nan_at, 0

    def forward(self, batch):
        self.calls += 1
        loss = self.w ** 2 + 1.0
        if self.nan_at is not None and self.calls > self.nan_at:
            loss = loss * float("nan")
        return {"loss": loss}


def _toy_trainer(model):
    data = iter(lambda: [{}], None)
    return SimpleTrainer(model, data, torch.optim.SGD(model.parameters(), lr=0.0))


class _Clock:
    """A fake clock: one second per call."""

    def __init__(self):
        self.t = 0.0

    def __call__(self):
        self.t += 1.0
        return self.t


def test_progress_lines_without_a_terminal():
    out = io.StringIO()  # not a TTY
    trainer = _toy_trainer(_ToyModel())
    trainer.register_hooks([ProgressHook("toy", file=out, line_percent=25, clock=_Clock())])
    trainer.train(0, 8)
    lines = out.getvalue().splitlines()
    assert [ln.split("  ")[0] for ln in lines[:-1]] == [
        "[progress] toy: iter 1/8 (12%)", "[progress] toy: iter 2/8 (25%)",
        "[progress] toy: iter 4/8 (50%)", "[progress] toy: iter 6/8 (75%)",
        "[progress] toy: iter 8/8 (100%)"]
    assert all(ln.endswith("loss 2") for ln in lines[:-1])
    assert "eta 0:00:06" in lines[1]  # one fake second per iteration, 6 left
    assert lines[-1].startswith("[progress] toy: done, 8 iterations in 0:00:") and "loss 2" in lines[-1]


def test_progress_bar_and_stop():
    out = io.StringIO()
    trainer = _toy_trainer(_ToyModel(nan_at=3))
    trainer.register_hooks([ProgressHook("toy", file=out, interactive=True)])
    with pytest.raises(FloatingPointError):
        trainer.train(0, 10)
    text = out.getvalue()
    assert "3/10" in text and "loss 2" in text  # the tqdm bar, drawn to `file`
    assert text.splitlines()[-1].startswith(
        "[progress] toy: stopped by an exception at iteration 3 of 10")


def test_dataset_generation_logs_lines_without_a_terminal(tmp_path, caplog, capsys):
    """Generating tid_shapes with stderr not a terminal: a log line every 10% and no tqdm bar."""
    from tid_d2.data import shapes

    with caplog.at_level(logging.INFO, logger="tid_d2.data.shapes"):
        shapes.generate_shapes(str(tmp_path), "val", 20, sides=(64, 64), dirname="lines")
    counts = [m for m in caplog.messages if "images (" in m]
    assert counts == [f"tid_shapes: lines/val: {k}/20 images ({5 * k}%)" for k in range(2, 21, 2)]
    assert "\r" not in capsys.readouterr().err


def test_stability_slice(tmp_path, tiny_shapes, capsys):
    """One 2-iteration teacher, batch 2, one seed, GFL: the plain student and FitNet train; FitNet
    at an overflowing loss weight diverges at iteration 0 and is recorded so; a re-run is cached."""
    tool = _load_tool()
    out = str(tmp_path / "stability")
    argv = ["--stability", "--output", out, "--dataset-root", str(tmp_path / "datasets"),
            "--num-images", "16", "--num-val-images", "8", "--image-sides", "128", "192",
            "--archs", "GFL", "--stability-teachers", "2", "--batches", "2", "--seeds", "0",
            "--iters", "2", "--methods", "fitnet", "fitnet[MODEL.DISTILL.FITNET.LOSS_WEIGHT=1e39]",
            "--opts", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
            "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192", "DATALOADER.NUM_WORKERS", "0"]
    res = tool.main(argv)
    status = {c["method"]: (c["status"], c["iteration"]) for c in res["cells"]}
    assert status == {"student": ("trained", 2), "fitnet": ("trained", 2),
                      "fitnet[MODEL.DISTILL.FITNET.LOSS_WEIGHT=1e39]": ("diverged", 0)}
    md = open(os.path.join(out, "stability.md")).read()
    assert "| GFL | 2 (" in md and "| 2 | 0 | trained | trained | diverged at iteration 0 |" in md
    assert "1 of 3 runs diverged" in md and "0 trained with clipped steps" in md
    assert [c["clipped_steps"] for c in res["cells"]] == [0, 0, 0]
    with open(os.path.join(out, "stability.json")) as f:
        assert json.load(f)["cells"] == res["cells"]
    again = tool.main(argv)
    assert [c["cached"] for c in again["cells"]] == [True, True, True]
    assert math.isfinite(again["teachers"]["GFL/2"]["AP"])


def test_stability_slice_fcos(tmp_path, tiny_shapes):
    """The FCOS row of the matrix (FCOS teacher -> FCOS student): TID and CrossKD train; LD, which
    needs box distributions, is not applicable and says so."""
    tool = _load_tool()
    argv = ["--stability", "--output", str(tmp_path / "stability"), "--dataset-root", str(tmp_path / "datasets"),
            "--num-images", "16", "--num-val-images", "8", "--image-sides", "128", "192",
            "--archs", "FCOS", "--stability-teachers", "2", "--batches", "2", "--seeds", "0",
            "--iters", "2", "--methods", "tid", "crosskd", "ld",
            "--opts", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192",
            "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192", "DATALOADER.NUM_WORKERS", "0"]
    res = tool.main(argv)
    status = {c["method"]: c["status"] for c in res["cells"]}
    assert status == {"student": "trained", "tid": "trained", "crosskd": "trained", "ld": "n/a"}
    assert all(c["arch"] == "FCOS" for c in res["cells"]) and "FCOS/2" in res["teachers"]


def test_stability_outcomes_name_clipped_steps():
    from tid_d2.benchmark.stability import describe

    assert describe({"status": "trained", "iteration": 100, "clipped_steps": 0}) == "trained"
    assert describe({"status": "trained", "iteration": 100, "clipped_steps": 95}) == "trained, 95 clipped"
    assert describe({"status": "diverged", "iteration": 7, "clipped_steps": 3}) == "diverged at iteration 7"
    assert describe({"status": "n/a", "iteration": None}) == "n/a"


def test_a_bar_is_drawn_only_on_a_terminal_with_columns(monkeypatch):
    """A file or pipe gets lines; a TTY reporting 0 columns (some CI pseudo-terminals) too."""
    assert not draws_a_bar(io.StringIO())

    class FakeTTY(io.StringIO):
        def isatty(self):
            return True

        def fileno(self):
            return 99

    for columns, expected in ((0, False), (120, True)):
        monkeypatch.setattr(os, "get_terminal_size", lambda fd, c=columns: os.terminal_size((c, 24)))
        assert draws_a_bar(FakeTTY()) is expected


def _load_run_demo():
    """tools/run_demo.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("run_demo", os.path.join(REPO, "tools", "run_demo.py"))
    run_demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(run_demo)
    return run_demo


@pytest.mark.parametrize("iters, steps", [(4, "(3,)"), (2, "(1,)"), (1, "()"), (100, "(75, 92)")])
def test_demo_schedule_is_valid_for_short_runs(iters, steps):
    """tools/run_demo.py --iters N: LR steps strictly increasing and inside the run (N=4 used to
    give (3, 3), which Detectron2's scheduler refuses)."""
    run_demo = _load_run_demo()
    opts = run_demo.schedule(iters)
    assert opts[opts.index("SOLVER.STEPS") + 1] == steps


def test_demo_reference_matches_the_readme_table():
    """What `make demo` prints as the README's reference is the README's demo table (AP column)."""
    run_demo = _load_run_demo()
    readme = open(os.path.join(REPO, "README.md")).read()
    section = readme[readme.index("### Demo results"):]
    rows = {}
    for name in run_demo.README_REFERENCE:
        m = re.search(rf"^\| {name} [^|]*\| \**([0-9.]+)\**", section, flags=re.M)
        assert m, f"README demo table has no '{name}' row"
        rows[name] = float(m.group(1))
    assert rows == run_demo.README_REFERENCE


def test_demo_seed_spread_and_table():
    """tools/run_demo.py --seeds: mean and sample std of both students and of their paired delta; the
    table shows the first seed's run next to the README reference."""
    run_demo = _load_run_demo()
    ap = lambda v: {k: v for k in run_demo.METRICS}  # noqa: E731
    per_seed = {0: {"baseline student": ap(30.0), "TID student": ap(34.0)},
                1: {"baseline student": ap(32.0), "TID student": ap(35.0)}}
    spread = run_demo.seed_spread(per_seed)
    assert spread["baseline student"] == pytest.approx((31.0, 2 ** 0.5))
    assert spread["TID - baseline"] == pytest.approx((3.5, 0.5 ** 0.5))
    results = dict(per_seed[0], teacher=ap(45.0))
    table = run_demo.format_table("GFL", 0, results, {"teacher": None, "TID student": 60.0}, {"teacher": 44.0})
    assert "| teacher | 45.0" in table and "| 44.0 | cached |" in table and "| 1.0 min |" in table
