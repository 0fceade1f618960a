"""Visual tools: `tid_d2.visualization` on hand-made maps, `tools/visualize_areas.py` and
`tools/demo.py` end to end on tiny images with random weights."""
import importlib.util
import runpy
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from PIL import Image

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.modeling import build_model

from conftest import REPO, quickstart_cfg
from tid_d2.visualization import (
    AREA_ALPHAS,
    AREA_COLORS,
    area_fractions,
    area_overlay,
    area_sheet,
    importance_heatmap,
    level_to_image,
    tid_area_sheet_for_tensorboard,
)

ROOT = Path(__file__).resolve().parents[1]
LEVELS = ["p3", "p4", "p5", "p6", "p7"]


def blend(base, name):
    """The overlay colour of one area over a base grey value."""
    a = AREA_ALPHAS[name]
    return np.rint((1 - a) * base + a * np.asarray(AREA_COLORS[name], np.float64)).astype(np.uint8)


def thirds(h=6, w=9):
    """Disjoint key / weak / other masks: left, middle and right thirds of an h x w grid."""
    cols = np.arange(w)[None, :].repeat(h, 0)
    return cols < w // 3, (cols >= w // 3) & (cols < 2 * w // 3), cols >= 2 * w // 3


def fake_level(h, w, key_value=4.0):
    """One level of `TID.areas`-style maps for one image: key on the top row, weak on the left
    column below it, other elsewhere."""
    key = np.zeros((h, w), bool)
    key[0] = True
    weak = np.zeros((h, w), bool)
    weak[1:, 0] = True
    score_t = np.where(key, key_value, np.where(weak, 2.0, 0.16))
    score_s = np.where(weak, 0.16, score_t)
    return dict(key=key, weak=weak, other=~(key | weak), score_t=score_t, score_s=score_s,
                delta=score_t - score_s)


# ----- library ---------------------------------------------------------------------------------


def test_area_overlay_disjoint_areas_get_their_colours():
    image = np.full((6, 9, 3), 100, np.uint8)
    key, weak, other = thirds()
    out = area_overlay(image, key, weak, other)
    assert out.shape == image.shape and out.dtype == np.uint8
    for name, mask in (("key", key), ("weak", weak), ("other", other)):
        assert (out[mask] == blend(100, name)).all(), name
    assert len({tuple(blend(100, n)) for n in AREA_COLORS}) == 3  # distinct colours


def test_area_overlay_uncovered_pixels_unchanged_and_key_wins():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    key = np.zeros((4, 4), bool)
    key[0, 0] = True
    other = np.zeros((4, 4), bool)
    other[0, :2] = True  # overlaps key at (0, 0)
    out = area_overlay(image, key, np.zeros_like(key), other)
    a = AREA_ALPHAS["key"]
    expect = np.rint((1 - a) * image[0, 0] + a * np.asarray(AREA_COLORS["key"])).astype(np.uint8)
    assert (out[0, 0] == expect).all()
    assert (out[1:] == image[1:]).all()
    assert not (out[0, 1] == image[0, 1]).all()


def test_area_overlay_resizes_level_masks_to_the_image():
    image = np.zeros((4, 6, 3), np.uint8)
    key = np.array([[True, False], [False, False]])
    out = area_overlay(image, key, np.zeros_like(key), ~key)
    assert (out[:2, :3] == blend(0, "key")).all()
    assert (out[2:] == blend(0, "other")).all() and (out[:2, 3:] == blend(0, "other")).all()
    with pytest.raises(ValueError, match="RGB image"):
        area_overlay(image[..., 0], key, key, key)


def test_level_to_image_maps_locations_to_nearest_pixels():
    m = np.arange(4 * 6).reshape(4, 6)  # stride 8 over a 32 x 48 input
    out = level_to_image(m, (64, 96), stride=8, input_hw=(32, 48))  # image = 2x the input
    assert out.shape == (64, 96)
    # offset 0: location i sits at input row 8 i; input row 4 (image row 8) is nearer to i = 1
    assert out[7, 0] == m[0, 0] and out[8, 0] == m[1, 0] and out[8, 8] == m[1, 1]
    assert out[63, 95] == m[3, 5]
    half = level_to_image(m, (64, 96), stride=8, input_hw=(32, 48), offset=0.5)
    assert half[15, 0] == m[0, 0] and half[16, 0] == m[1, 0]  # cell centres at 8 i + 4
    plain = level_to_image(m, (8, 12))  # no stride: the map spans the image
    assert (plain[::2, ::2] == m).all() and (plain[1::2, 1::2] == m).all()
    with pytest.raises(ValueError, match="does not cover"):
        level_to_image(m, (64, 96), stride=4, input_hw=(32, 48))


def test_area_fractions():
    key, weak, other = thirds(2, 6)
    assert area_fractions(key, weak, other) == {"key": 1 / 3, "weak": 1 / 3, "other": 1 / 3}
    f = area_fractions(*(torch.as_tensor(m) for m in (key, np.zeros_like(key), ~key)))
    assert f == {"key": 1 / 3, "weak": 0.0, "other": 2 / 3}


def test_importance_heatmap_uses_the_fixed_scale():
    values = np.array([[0.0, 2.0], [4.0, 9.0]])
    out = importance_heatmap(values, vmin=0.0, vmax=4.0, cmap="inferno")
    cmap = colormaps["inferno"]
    rgb = lambda x: np.rint(np.asarray(cmap(x)[:3]) * 255).astype(np.uint8)  # noqa: E731
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    assert (out[0, 0] == rgb(0.0)).all() and (out[1, 0] == rgb(1.0)).all()
    assert (out[1, 1] == out[1, 0]).all()  # clipped above vmax
    image = np.full((4, 4, 3), 200, np.uint8)
    over = importance_heatmap(values, image, vmin=0.0, vmax=4.0, alpha=1.0)
    assert over.shape == (4, 4, 3) and (over[:2, :2] == out[0, 0]).all()
    faint = importance_heatmap(values, image, vmin=0.0, vmax=4.0, alpha=0.0)
    assert (faint == image).all()
    with pytest.raises(ValueError, match="vmax"):
        importance_heatmap(values, vmin=1.0, vmax=1.0)


def test_area_sheet_shows_every_level_and_area():
    image = np.zeros((32, 48, 3), np.uint8)  # black: area pixels are exactly alpha * colour
    maps = [fake_level(4, 6), fake_level(2, 3)]
    sheet = area_sheet(image, maps, ["p3", "p4"], gt_boxes=[[2, 2, 20, 20]])
    one = area_sheet(image, maps[:1], ["p3"])
    assert sheet.ndim == 3 and sheet.shape[2] == 3 and sheet.dtype == np.uint8
    assert sheet.shape[0] > one.shape[0] * 1.5 and sheet.shape[1] == one.shape[1]
    for name in ("key", "weak", "other"):
        hits = (np.abs(one.astype(int) - blend(0, name)).max(axis=2) <= 2).sum()
        assert hits > 200, name
    with pytest.raises(KeyError, match="delta"):
        area_sheet(image, [{k: v for k, v in maps[0].items() if k != "delta"}], ["p3"])
    with pytest.raises(ValueError, match="level names"):
        area_sheet(image, maps, ["p3"])


def test_tid_area_sheet_for_tensorboard_is_chw_uint8():
    areas = {
        lvl: {k: torch.as_tensor(np.stack([v, v])) for k, v in fake_level(h, w).items()}
        for lvl, (h, w) in zip(("p3", "p4"), ((4, 6), (2, 3)))
    }
    bgr = torch.zeros(3, 32, 48)
    bgr[0] = 255.0  # blue in BGR
    out = tid_area_sheet_for_tensorboard(bgr, areas, index=1, gt_boxes=torch.tensor([[0, 0, 9, 9]]))
    assert out.ndim == 3 and out.shape[0] == 3 and out.dtype == np.uint8
    assert out.shape[1] > 100 and out.shape[2] > 100
    with pytest.raises(ValueError, match=r"\[3, h, w\]"):
        tid_area_sheet_for_tensorboard(bgr[0], areas)


# ----- command-line tools ----------------------------------------------------------------------


def load_tool(name):
    spec = importlib.util.spec_from_file_location(f"{name}_cli", ROOT / "tools" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tiny_opts(tiny_shapes, *extra):
    train, val = tiny_shapes
    return [
        "DATASETS.TRAIN", f"('{train}',)", "DATASETS.TEST", f"('{val}',)",
        "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192", "MODEL.DEVICE", "cpu", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def teacher_weights(tiny_shapes, tmp_path_factory):
    """A randomly initialized quickstart GFL teacher, saved as a checkpoint."""
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("teacher")
    DetectionCheckpointer(build_model(quickstart_cfg("GFL-teacher")), str(out)).save("teacher")
    return str(out / "teacher.pth")


@pytest.fixture(scope="module")
def val_dicts(tiny_shapes):
    return DatasetCatalog.get(tiny_shapes[1])


def test_visualize_areas_end_to_end(tiny_shapes, teacher_weights, val_dicts, tmp_path, capsys):
    opts = ["MODEL.TEACHER.WEIGHTS", teacher_weights]
    model = build_model(quickstart_cfg("TID-GFL", *opts))
    DetectionCheckpointer(model, str(tmp_path)).save("tid")  # student.* + distillers.* keys
    in_dataset = val_dicts[0]["file_name"]
    outside = str(tmp_path / "outside.jpg")
    shutil.copy(val_dicts[1]["file_name"], outside)
    out_dir = tmp_path / "vis"
    summary = load_tool("visualize_areas").main([
        "--config-file", str(ROOT / "configs/quickstart/TID-GFL.yaml"),
        "--weights", str(tmp_path / "tid.pth"), "--input", in_dataset, outside,
        "--output", str(out_dir), "--opts", *tiny_opts(tiny_shapes, *opts),
    ])  # fmt: skip
    printed = capsys.readouterr().out
    assert summary[in_dataset]["gt_source"] == f"dataset {tiny_shapes[1]}"
    assert summary[in_dataset]["num_gt"] == len(val_dicts[0]["annotations"]) > 0
    assert summary[outside]["gt_source"] == "none" and summary[outside]["num_gt"] == 0
    for path, stem in ((in_dataset, "000000"), (outside, "outside")):
        fractions = summary[path]["fractions"]
        assert list(fractions) == LEVELS
        for f in fractions.values():
            assert sum(f.values()) == pytest.approx(1.0)
        files = [out_dir / f"{stem}_{lvl}.png" for lvl in LEVELS] + [out_dir / f"{stem}_areas.png"]
        assert summary[path]["files"] == [str(f) for f in files]
        sizes = [Image.open(f).size for f in files]
        assert len(set(sizes[:-1])) == 1 and sizes[-1][1] > 3 * sizes[0][1]  # rows vs sheet
        assert f"{path}: " in printed
    assert (out_dir / "summary.json").is_file()
    assert printed.count("  p3: key ") == 2 and "no ground truth found" in printed


def test_tensorboard_sheet_from_a_training_batch(tiny_shapes, teacher_weights, val_dicts):
    """What the TID hook does with MODEL.DISTILL.TID.VIS_PERIOD > 0: areas of a training batch -> CHW."""
    cfg = quickstart_cfg("TID-GFL", "MODEL.TEACHER.WEIGHTS", teacher_weights)
    model = build_model(cfg)
    batch = [DatasetMapper(cfg, is_train=True)(dict(d)) for d in val_dicts[:2]]
    targets = model.student.gt_instances(batch)
    with torch.no_grad():
        student_out = model.student.dense_outputs(batch, targets)
        teacher_out = model.teacher.dense_outputs(batch, targets)
        areas = model.distillers["tid"].areas(teacher_out, student_out, targets)
    image = tid_area_sheet_for_tensorboard(
        batch[1]["image"], areas, index=1, input_format=cfg.INPUT.FORMAT,
        gt_boxes=targets[1].gt_boxes.tensor, strides=model.student.strides,
        offset=model.student.anchor_generator.offset, title="iter 0",
    )  # fmt: skip
    # EventStorage.put_image wants RGB [3, H, W] uint8
    assert image.dtype == np.uint8 and image.shape[0] == 3 and min(image.shape[1:]) > 200


def test_visualize_areas_gt_json_and_errors(tiny_shapes, teacher_weights, val_dicts, tmp_path):
    outside = str(tmp_path / "000002.jpg")
    shutil.copy(val_dicts[2]["file_name"], outside)
    cli = load_tool("visualize_areas")
    args = [
        "--config-file", str(ROOT / "configs/quickstart/TID-GFL.yaml"), "--output",
        str(tmp_path / "vis"), "--opts", *tiny_opts(tiny_shapes, "MODEL.TEACHER.WEIGHTS",
                                                    teacher_weights),
    ]  # fmt: skip
    gt_json = MetadataCatalog.get(tiny_shapes[1]).json_file
    summary = cli.main(["--input", outside, "--gt-json", gt_json, *args])
    assert summary[outside]["gt_source"] == "gt-json"
    assert summary[outside]["num_gt"] == len(val_dicts[2]["annotations"])
    missing = str(tmp_path / "nope.jpg")
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        cli.main(["--input", outside, missing, *args])
    with pytest.raises(ValueError, match="TeacherStudent"):
        cli.main(["--input", outside, "--config-file",
                  str(ROOT / "configs/quickstart/GFL-student.yaml"), *args[2:]])  # fmt: skip


@pytest.mark.parametrize("config", ["TID-GFL", "GFL-student"])
def test_demo_end_to_end(config, tiny_shapes, val_dicts, tmp_path):
    inputs = [val_dicts[0]["file_name"], val_dicts[1]["file_name"]]
    counts = load_tool("demo").main([
        "--config-file", str(ROOT / f"configs/quickstart/{config}.yaml"), "--input", *inputs,
        "--output", str(tmp_path), "--confidence-threshold", "0.0", "--opts",
        *tiny_opts(tiny_shapes, "MODEL.TEACHER.WEIGHTS", "/no/teacher/needed.pth"),
    ])  # fmt: skip
    assert list(counts) == [str(tmp_path / "000000.png"), str(tmp_path / "000001.png")]
    for d, out in zip(val_dicts, counts):
        assert Image.open(out).size == (d["width"], d["height"])


def test_demo_bad_images_are_named(tiny_shapes, tmp_path, monkeypatch, capsys):
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg at all")
    base = ["--config-file", str(ROOT / "configs/quickstart/GFL-student.yaml"),
            "--output", str(tmp_path / "out"), "--opts", *tiny_opts(tiny_shapes)]  # fmt: skip
    demo = load_tool("demo")
    with pytest.raises(ValueError, match="corrupt.jpg"):
        demo.main(["--input", str(corrupt), *base])
    monkeypatch.setattr(sys, "argv", ["demo.py", "--input", str(tmp_path / "missing.png"), *base])
    with pytest.raises(SystemExit, match="input image not found: .*missing.png"):
        runpy.run_path(str(ROOT / "tools/demo.py"), run_name="__main__")
    assert not (tmp_path / "out").exists()


def _metrics_file(path, weak_start):
    """A metrics.json as TID writes it: two levels, the weak fraction falling over 3 log points."""
    import json

    with open(path, "w") as f:
        for i, it in enumerate((19, 39, 59)):
            rec = {"iteration": it, "loss_tid_key": 1.0}
            for lvl in ("p3", "p4"):
                weak = weak_start / (i + 1)
                rec.update({f"tid/{lvl}/frac_weak": weak, f"tid/{lvl}/frac_key": 0.01 * (i + 1),
                            f"tid/{lvl}/frac_other": 1 - weak - 0.01 * (i + 1)})
            f.write(json.dumps(rec) + "\n")
        f.write(json.dumps({"iteration": 60, "loss_tid_key": 1.0}) + "\n")  # a line without TID scalars


def test_plot_area_dynamics_means_levels_and_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("plot_area_dynamics", str(Path(REPO) / "tools" / "plot_area_dynamics.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    _metrics_file(a, 0.04)
    _metrics_file(b, 0.02)
    out = tmp_path / "curve.png"
    summary = tool.main([str(a), str(b), "--output", str(out)])
    assert list(summary["frac_weak"]["iters"]) == [19, 39, 59]
    assert summary["frac_weak"]["mean"] == pytest.approx([0.03, 0.015, 0.01])
    assert summary["frac_weak"]["std"][0] == pytest.approx(0.01)
    assert summary["frac_key"]["mean"] == pytest.approx([0.01, 0.02, 0.03])
    assert out.stat().st_size > 0 and Image.open(out).size[0] > 100
    assert "frac_weak: 3.00% at iter 19 -> 1.00% at iter 59" in capsys.readouterr().out
    bad = tmp_path / "plain.json"
    bad.write_text('{"iteration": 1, "loss_gfl_cls": 1.0}\n')
    with pytest.raises(ValueError, match="no tid/<level>/frac_key"):
        tool.main([str(bad), "--output", str(out)])
