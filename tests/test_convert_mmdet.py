"""tools/convert_mmdet_checkpoint.py on mmdetection 3.3.0's own GFL R-50 (random weights, saved in
mmdetection's 2.x and 3.x file layouts): conversion, the strict check against a configs/mmdet/
config, named errors for every bad input, and train_net.py evaluating and distilling from the result."""
import json
import os
import subprocess
import sys

import pytest
import torch

from detectron2.modeling import build_model

from _mmdet_ref import import_mmdet, mmdet_model_cfg, perturb
from conftest import REPO, tiny_run_opts
from test_lazy_config import copypaste_numbers, run_script
from tid_d2.engine.defaults import setup_cfg

sys.path.insert(0, os.path.join(REPO, "tools"))
import convert_mmdet_checkpoint as tool  # noqa: E402

NUM_CLASSES = 6  # the embedded dataset's
GFL_CFG = os.path.join(REPO, "configs", "mmdet", "GFL-R50-1x.yaml")
CLASSES = ("circle", "square", "triangle", "cross", "ring", "bar")


@pytest.fixture(scope="module")
def mmdet_gfl(tmp_path_factory):
    """mmdetection's GFL R-50 state dict (6 classes, perturbed random weights) and a folder."""
    MODELS, ConfigDict = import_mmdet()
    torch.manual_seed(0)
    ref = MODELS.build(ConfigDict(mmdet_model_cfg("GFL", NUM_CLASSES)))
    ref.init_weights()
    perturb(ref, torch.Generator().manual_seed(1))
    return ref.state_dict(), tmp_path_factory.mktemp("convert")


def _save(state, path, layout="3.x", **extra):
    """A checkpoint as mmdetection writes it: 2.x (legacy serialization, meta with CLASSES and the
    config text, the optimizer) or 3.x (zip, meta with dataset_meta)."""
    if layout == "2.x":
        meta = {"mmdet_version": "2.25.0", "CLASSES": CLASSES, "config": "model = dict(type='GFL')",
                "epoch": 12, "iter": 87960}
        ckpt = {"meta": meta, "state_dict": state, "optimizer": {"state": {}, "param_groups": []}}
        torch.save({**ckpt, **extra}, path, _use_new_zipfile_serialization=False)
    else:
        meta = {"mmdet_version": "3.3.0", "dataset_meta": {"classes": CLASSES}, "epoch": 12}
        torch.save({"meta": meta, "state_dict": state, **extra}, path)
    return str(path)


def _convert(*argv):
    return tool.convert(tool.parse_args(list(argv)))


def _classes_opts():
    return ["MODEL.GFL.NUM_CLASSES", str(NUM_CLASSES)]


@pytest.mark.parametrize("layout", ["2.x", "3.x"])
def test_cli_converts_and_checks_both_layouts(mmdet_gfl, layout):
    state, folder = mmdet_gfl
    src = _save(state, folder / f"gfl_{layout}.pth", layout)
    out = folder / f"converted_{layout}.pth"
    cmd = [sys.executable, os.path.join(REPO, "tools", "convert_mmdet_checkpoint.py"), "--input", src,
           "--config-file", GFL_CFG, "--output", str(out), *_classes_opts()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = proc.stdout + proc.stderr
    assert f"found GFL R-50 FPN, {NUM_CLASSES} classes" in log
    # per-part summary: 3 laterals + 5 output convs; 2 towers x 4 x (conv, GN w/b) + cls/reg + 5 scales
    assert "314 tensors (backbone 265, neck 16, head 33, ignored 54)" in log
    assert "with no missing or unexpected keys" in log
    converted = torch.load(out, weights_only=True)["model"]
    model = build_model(setup_cfg(GFL_CFG, _classes_opts() + ["MODEL.DEVICE", "cpu"]))
    assert set(converted) == set(model.state_dict())
    assert torch.equal(converted["head.cls_score.weight"], state["bbox_head.gfl_cls.weight"])
    assert torch.equal(
        converted["backbone.bottom_up.res4.5.conv2.norm.running_var"],
        state["backbone.layer3.5.bn2.running_var"],
    )


def test_output_defaults_to_the_configs_weights(mmdet_gfl):
    state, folder = mmdet_gfl
    src = _save(state, folder / "gfl.pth")
    target = folder / "by_config" / "gfl.pth"
    out = _convert("--input", src, "--config-file", GFL_CFG, *_classes_opts(), "MODEL.WEIGHTS", str(target))
    assert out == str(target) and target.is_file()


def _bad(mmdet_gfl, name, mutate):
    state, folder = mmdet_gfl
    bad = dict(state)
    mutate(bad)
    return _save(bad, folder / name)


@pytest.mark.parametrize(
    "name, mutate, message",
    [
        (
            "faster_rcnn.pth",
            lambda s: [s.pop(k) for k in list(s) if k.startswith("bbox_head")]
            and s.update({"rpn_head.rpn_cls.weight": torch.zeros(3, 256, 1, 1),
                          "roi_head.bbox_head.fc_cls.weight": torch.zeros(81, 1024)}),
            r"neither a GFL .* nor an ATSS .* heads: \['roi_head.bbox_head', 'rpn_head.rpn_cls'\]",
        ),
        (
            "extra_key.pth",
            lambda s: s.update({"bbox_head.extra_conv.weight": torch.zeros(1)}),
            r"1 keys are not part of an mmdetection GFL/ATSS .* \['bbox_head.extra_conv.weight'\]",
        ),
        (
            "distill.pth",
            lambda s: s.update({"teacher.bbox_head.gfl_cls.weight": torch.zeros(1)}),
            r"distillation checkpoint \(keys such as \['teacher.bbox_head.gfl_cls.weight'\]\)",
        ),
        (
            "r34_blocks.pth",
            lambda s: [s.pop(k) for k in list(s) if k.startswith("backbone.layer3.5.")],
            r"not a ResNet-50/101/152: blocks per stage \(3, 4, 5, 3\)",
        ),
    ],
    ids=["another-detector", "unmapped-key", "distillation", "unknown-depth"],
)
def test_wrong_contents_are_named_errors(mmdet_gfl, name, mutate, message):
    src = _bad(mmdet_gfl, name, mutate)
    out = mmdet_gfl[1] / f"out_{name}"
    with pytest.raises(ValueError, match=message):
        _convert("--input", src, "--config-file", GFL_CFG, "--output", str(out), *_classes_opts())
    assert not out.exists()


def test_unreadable_files_are_named_errors(mmdet_gfl):
    state, folder = mmdet_gfl
    src = _save(state, folder / "whole.pth")
    truncated = folder / "truncated.pth"
    truncated.write_bytes(open(src, "rb").read()[: os.path.getsize(src) // 2])
    text = folder / "notes.pth"
    text.write_text("not a checkpoint\n")
    with pytest.raises(ValueError, match=rf"{truncated} cannot be read as a torch checkpoint.*truncated"):
        _convert("--input", str(truncated), "--output", str(folder / "x.pth"))
    with pytest.raises(ValueError, match=rf"{text} cannot be read .* neither a zip nor a pickle file"):
        _convert("--input", str(text), "--output", str(folder / "x.pth"))
    legacy = _save(state, folder / "legacy.pth", "2.x")
    cut = folder / "legacy_truncated.pth"
    cut.write_bytes(open(legacy, "rb").read()[: os.path.getsize(legacy) // 2])
    with pytest.raises(ValueError, match=rf"{cut} cannot be read as a torch checkpoint.*truncated"):
        _convert("--input", str(cut), "--output", str(folder / "x.pth"))
    with pytest.raises(FileNotFoundError, match="mmdetection checkpoint not found: .*missing.pth"):
        _convert("--input", str(folder / "missing.pth"), "--output", str(folder / "x.pth"))
    empty = _save({}, folder / "empty.pth")
    with pytest.raises(ValueError, match="holds no mmdetection state_dict"):
        _convert("--input", empty, "--output", str(folder / "x.pth"))
    assert not (folder / "x.pth").exists()


@pytest.mark.parametrize(
    "config, opts, message",
    [
        ("mmdet/GFL-R101-2x-ms.yaml", _classes_opts(), r"ResNet-50 backbone but the config has MODEL.RESNETS.DEPTH 101"),
        ("mmdet/ATSS-R50-1x.yaml", ["MODEL.ATSS.NUM_CLASSES", "6"], r"holds a GFL detector but the config builds ATSS"),
        ("mmdet/GFL-R50-1x.yaml", [], r"has 6 classes but the config's MODEL.GFL.NUM_CLASSES is 80"),
        ("GFL-R50-1x.yaml", _classes_opts(), r"not in mmdetection's layout: INPUT.FORMAT 'BGR' \(needs 'RGB'\), "
         r"MODEL.RESNETS.STRIDE_IN_1X1 True \(needs False\), MODEL.FPN.P7_RELU True"),
        ("quickstart/TID-GFL.yaml", [], r"builds TeacherStudent; give a plain GFL or ATSS config"),
    ],
    ids=["depth", "detector", "classes", "detectron2-layout", "distillation-config"],
)
def test_file_and_config_mismatches_are_named_errors(mmdet_gfl, config, opts, message):
    state, folder = mmdet_gfl
    src = _save(state, folder / "gfl.pth")
    out = folder / "mismatch.pth"
    with pytest.raises(ValueError, match=message):
        _convert("--input", src, "--config-file", os.path.join(REPO, "configs", config),
                 "--output", str(out), *opts)
    assert not out.exists()


def test_a_missing_tensor_fails_the_strict_load_and_leaves_no_file(mmdet_gfl):
    src = _bad(mmdet_gfl, "no_scale.pth", lambda s: s.pop("bbox_head.scales.4.scale"))
    out = mmdet_gfl[1] / "incomplete.pth"
    with pytest.raises(ValueError, match=r"--output=.*incomplete.pth does not fit .* missing in file: \['head.scales.4.scale'\]"):
        _convert("--input", src, "--config-file", GFL_CFG, "--output", str(out), *_classes_opts())
    assert not out.exists()


def test_python_objects_in_meta_need_trust_pickle(mmdet_gfl):
    state, folder = mmdet_gfl
    src = _save(state, folder / "pickled.pth", message_hub=CustomMeta())
    out = folder / "pickled_out.pth"
    with pytest.raises(ValueError, match="rerun with --trust-pickle"):
        _convert("--input", src, "--output", str(out))
    _convert("--input", src, "--output", str(out), "--trust-pickle")
    assert out.is_file()


class CustomMeta:
    """Stands for mmengine's MessageHub: an object only an unrestricted unpickler rebuilds."""


def test_main_exits_with_the_message(mmdet_gfl, capsys):
    folder = mmdet_gfl[1]
    with pytest.raises(SystemExit, match="convert_mmdet_checkpoint: error: mmdetection checkpoint not found"):
        tool.main(["--input", str(folder / "nothing.pth"), "--output", str(folder / "y.pth")])
    with pytest.raises(ValueError, match="is the --input file"):
        _convert("--input", str(folder / "same.pth"), "--output", str(folder / "same.pth"))


def _tiny_run_args(tiny_shapes, out):
    return [*tiny_run_opts(*tiny_shapes), "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(out)]


@pytest.fixture(scope="module")
def converted_gfl(mmdet_gfl):
    state, folder = mmdet_gfl
    out = folder / "teacher.pth"
    _convert("--input", _save(state, folder / "teacher_mmdet.pth"), "--config-file", GFL_CFG,
             "--output", str(out), *_classes_opts())
    return str(out)


def test_train_net_evaluates_a_converted_checkpoint(converted_gfl, tiny_shapes, tmp_path):
    out = tmp_path / "eval"
    args = ["--eval-only", "--config-file", GFL_CFG, "MODEL.WEIGHTS", converted_gfl,
            *_classes_opts(), *_tiny_run_args(tiny_shapes, out)]
    log = run_script("train_net.py", args, tiny_shapes, tmp_path)
    assert len(copypaste_numbers(log)) == 1
    results = out / "inference" / tiny_shapes[1] / "coco_instances_results.json"
    detections = json.loads(results.read_text())
    assert detections and {d["category_id"] for d in detections} <= set(range(1, NUM_CLASSES + 1))


def test_train_net_distills_from_a_converted_teacher(converted_gfl, tiny_shapes, tmp_path):
    """The RGB, torchvision-normalized R-50 teacher distils into the BGR quickstart student."""
    out = tmp_path / "distill"
    args = [
        "--config-file", os.path.join(REPO, "configs", "quickstart", "TID-GFL.yaml"),
        "MODEL.TEACHER.CONFIG_FILE", GFL_CFG,
        "MODEL.TEACHER.WEIGHTS", converted_gfl,
        "MODEL.TEACHER.OPTS", str(_classes_opts()),
        "SOLVER.MAX_ITER", "2",
        "TEST.EVAL_PERIOD", "0",
        *_tiny_run_args(tiny_shapes, out),
    ]
    log = run_script("train_net.py", args, tiny_shapes, tmp_path)
    assert "loss_tid" in log
    assert (out / "model_final.pth").is_file()
