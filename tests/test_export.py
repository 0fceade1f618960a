"""tools/export_student.py: a TID training checkpoint becomes a plain student checkpoint with the
same detections and AP; eval-only on a TeacherStudent config needs no teacher."""
import copy
import importlib.util
import math
import os

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.engine import default_argument_parser
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.modeling import build_model
from detectron2.utils.env import seed_all_rng

from conftest import REPO, TINY_VAL, quickstart_cfg
from tid_d2.engine import TIDTrainer
from tid_d2.checkpoint import load_weights

# a random student detects nothing at the default 0.05
LOW_THRESH = ("MODEL.GFL.SCORE_THRESH_TEST", "0.0")


def _load_script(path: str, name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


export_tool = _load_script("tools/export_student.py", "export_student")
train_net = _load_script("projects/TID/train_net.py", "tid_train_net")


@pytest.fixture(scope="module")
def trained(teachers, tmp_path_factory):
    """(TID-GFL cfg, its 2-iteration training checkpoint) with conftest's random quickstart teacher."""
    out = tmp_path_factory.mktemp("tid_run")
    cfg = quickstart_cfg(
        "TID-GFL",
        "MODEL.TEACHER.WEIGHTS", teachers["GFL-teacher"],
        "OUTPUT_DIR", str(out / "train"),
        "SOLVER.MAX_ITER", "2",
        "DATASETS.TEST", "()",
        *LOW_THRESH,
    )
    seed_all_rng(0)
    trainer = TIDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    return cfg, str(out / "train" / "model_final.pth")


def _detections(model, cfg, dataset):
    mapper = DatasetMapper(cfg, is_train=False)
    data = [mapper(copy.deepcopy(d)) for d in DatasetCatalog.get(dataset)[:4]]
    model.eval()
    with torch.no_grad():
        return [r["instances"] for r in model(data)]


def test_export_round_trip_gives_identical_detections(trained, tiny_shapes, tmp_path):
    cfg, ckpt = trained
    output = str(tmp_path / "exported" / "student.pth")
    export_tool.main(["--config-file", os.path.join(REPO, "configs", "quickstart", "TID-GFL.yaml"),
                      "--weights", ckpt, "--output", output,
                      "MODEL.TEACHER.WEIGHTS", "/nonexistent/teacher.pth"])

    training = torch.load(ckpt, map_location="cpu", weights_only=False)["model"]
    exported = torch.load(output, map_location="cpu", weights_only=False)["model"]
    assert any(k.startswith("distillers.") for k in training)
    assert not any(k.startswith(("student.", "distillers.", "teacher")) for k in exported)
    assert set(exported) == {k[len("student."):] for k in training if k.startswith("student.")}
    assert all(torch.equal(v, training["student." + k]) for k, v in exported.items())

    plain_cfg = quickstart_cfg("GFL-student", *LOW_THRESH)
    plain = build_model(plain_cfg)
    assert set(plain.state_dict()) == set(exported)  # no missing, no unexpected keys
    load_weights(plain, output)

    distilled = build_model(cfg)
    DetectionCheckpointer(distilled).load(ckpt)
    got = _detections(distilled, cfg, tiny_shapes[1])
    want = _detections(plain, plain_cfg, tiny_shapes[1])
    assert sum(len(x) for x in want) > 0
    for g, w in zip(got, want):
        assert torch.equal(g.pred_boxes.tensor, w.pred_boxes.tensor)
        assert torch.equal(g.scores, w.scores)
        assert torch.equal(g.pred_classes, w.pred_classes)


def test_export_with_the_wrong_student_config_is_an_error(trained, tmp_path):
    _, ckpt = trained
    atss = quickstart_cfg("ATSS-student")
    with pytest.raises(ValueError, match="model_final.pth does not fit the ATSS"):
        export_tool.export_student(atss, ckpt, str(tmp_path / "x.pth"))
    assert not os.path.exists(tmp_path / "x.pth")


def _eval_only(config_file: str, out: str, *opts):
    args = default_argument_parser().parse_args(
        ["--config-file", config_file, "--eval-only", "OUTPUT_DIR", out,
         "DATASETS.TEST", f"('{TINY_VAL}',)",
         "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192", "MODEL.DEVICE", "cpu",
         *LOW_THRESH, *opts]
    )
    return train_net.main(args)


def test_eval_only_needs_no_teacher_and_matches_the_exported_student(trained, tmp_path):
    _, ckpt = trained
    exported = str(tmp_path / "student.pth")
    export_tool.main(["--config-file", os.path.join(REPO, "configs", "quickstart", "TID-GFL.yaml"),
                      "--weights", ckpt, "--output", exported])
    quick = os.path.join(REPO, "configs", "quickstart")
    distilled = _eval_only(
        os.path.join(quick, "TID-GFL.yaml"), str(tmp_path / "tid"),
        "MODEL.WEIGHTS", ckpt,
        "MODEL.TEACHER.WEIGHTS", "/nonexistent/teacher.pth",
        "MODEL.TEACHER.CONFIG_FILE", "/nonexistent/teacher.yaml",
    )
    plain = _eval_only(os.path.join(quick, "GFL-student.yaml"), str(tmp_path / "plain"),
                       "MODEL.WEIGHTS", exported)
    assert not math.isnan(distilled["bbox"]["AP"]), "no AP: the student gave no detections"
    got, want = flatten_results_dict(distilled), flatten_results_dict(plain)
    assert got.keys() == want.keys() and len(got) > 6
    for k in want:  # identical, NaN (no GT of that size) included
        assert got[k] == want[k] or (math.isnan(got[k]) and math.isnan(want[k])), k
