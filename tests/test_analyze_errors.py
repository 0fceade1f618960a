"""COCO error analysis (`tid_d2.analysis`, `tools/analyze_errors.py`) on hand-built cases."""
import contextlib
import importlib.util
import io
import json
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tid_d2.analysis import STAGES, analyze_errors, load_detections, load_ground_truth, summarize

ROOT = Path(__file__).resolve().parents[1]
CATS = [
    {"id": 1, "name": "cat", "supercategory": "animal"},
    {"id": 2, "name": "dog", "supercategory": "animal"},
    {"id": 3, "name": "car", "supercategory": "vehicle"},
    {"id": 4, "name": "bus", "supercategory": "vehicle"},
]
A = [20, 20, 40, 40]  # medium (1600 px²)
C = [120, 120, 40, 40]  # medium, far from A
# (image, category, box) of every ground-truth object
GT_OBJECTS = [
    (1, 1, A), (2, 1, A), (3, 1, A), (4, 1, A),  # four medium cats (img 4: missed)
    (5, 2, A), (6, 3, A), (7, 4, A), (8, 2, A), (8, 3, C),
    (9, 1, [10, 10, 20, 20]),  # a small cat (400 px²)
    (10, 4, [0, 0, 150, 150]),  # a large bus
]
# The cat detector's errors, one of each type (all other detections are perfect):
CAT_ERRORS = {
    "mislocalized": {"image_id": 2, "category_id": 1, "bbox": [42, 20, 40, 40], "score": 0.8},
    "similar": {"image_id": 5, "category_id": 1, "bbox": A, "score": 0.7},  # on a dog
    "other": {"image_id": 6, "category_id": 1, "bbox": A, "score": 0.6},  # on a car
    "background": {"image_id": 7, "category_id": 1, "bbox": C, "score": 0.5},
    "duplicate": {"image_id": 1, "category_id": 1, "bbox": [21, 20, 40, 40], "score": 0.3},
}
CAT_SCORES = {1: 0.9, 9: 0.85, 3: 0.4}  # perfect cat detections (images 2 and 4: none)


def make_gt():
    anns = []
    for i, (img, cat, box) in enumerate(GT_OBJECTS):
        ann = {"id": i, "image_id": img, "category_id": cat, "bbox": box}  # id 0 on purpose
        if i % 2:  # half without area/iscrowd: the loader fills them in
            ann.update(area=box[2] * box[3], iscrowd=0)
        anns.append(ann)
    images = [{"id": i, "width": 200, "height": 200, "file_name": f"{i}.jpg"} for i in range(1, 11)]
    return {"images": images, "annotations": anns, "categories": CATS}


def perfect_dets():
    return [
        {"image_id": img, "category_id": cat, "bbox": box,
         "score": CAT_SCORES.get(img, 0.95) if cat == 1 else 0.95}
        for img, cat, box in GT_OBJECTS
        if not (cat == 1 and img in (2, 4))
    ]


def flawed_dets(drop=()):
    return perfect_dets() + [d for k, d in CAT_ERRORS.items() if k not in drop]


def write(tmp_path, name, obj):
    path = tmp_path / name
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture
def gt_path(tmp_path):
    return write(tmp_path, "gt.json", make_gt())


def analyze(gt_path, tmp_path, dets, areas=("all",), name="dt.json"):
    gt = load_ground_truth(gt_path)
    return analyze_errors(gt, load_detections(write(tmp_path, name, dets), gt), areas=areas)


def cat_ap(analysis, stage):
    return float(np.nanmean(analysis.precision[STAGES.index(stage), :, 0, 0]))


def coco_ap(tp_flags, n_gt, recall_thrs):
    """COCO's interpolated AP of one ranked list of TP/FP flags, by hand (the expected values)."""
    tp_flags = np.asarray(tp_flags, dtype=bool)
    tp, fp = np.cumsum(tp_flags), np.cumsum(~tp_flags)
    rc, pr = tp / n_gt, np.maximum.accumulate((tp / (tp + fp))[::-1])[::-1]
    idx = np.searchsorted(rc, recall_thrs, side="left")
    return float(np.where(idx < len(pr), pr[np.minimum(idx, len(pr) - 1)], 0.0).mean())


def load_cli():
    path = ROOT / "tools/analyze_errors.py"
    spec = importlib.util.spec_from_file_location("analyze_errors_cli", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stages_monotone_and_fn_is_one(gt_path, tmp_path):
    areas = ("all", "small", "medium", "large")
    summary = summarize(analyze(gt_path, tmp_path, flawed_dets(), areas))
    tables = [summary["overall"], *summary["supercategories"].values()]
    tables += summary["categories"].values()
    checked = 0
    for table in tables:
        for aps in table.values():
            if aps["C75"] is None:
                assert all(aps[s] is None for s in STAGES)
                continue
            values = [aps[s] for s in STAGES]
            assert all(a <= b + 1e-12 for a, b in zip(values, values[1:])), values
            assert aps["FN"] == 1.0
            checked += 1
    assert checked >= 10
    assert summary["overall"]["all"]["C75"] < summary["overall"]["all"]["BG"] < 1.0
    # the small range only holds the perfectly detected small cat, the large one the bus
    assert summary["overall"]["small"]["C75"] == summary["overall"]["large"]["C75"] == 1.0
    assert summary["supercategories"]["vehicle"]["small"]["C75"] is None


def test_perfect_detections_give_one(gt_path, tmp_path):
    complete = [
        {"image_id": i, "category_id": c, "bbox": b, "score": 1.0} for i, c, b in GT_OBJECTS
    ]
    summary = summarize(analyze(gt_path, tmp_path, complete, ("all", "medium")))
    assert summary["overall"]["all"]["C75"] == 1.0
    for table in (summary["overall"], *summary["categories"].values()):
        assert all(v == 1.0 for aps in table.values() for v in aps.values())


def test_each_stage_removes_exactly_its_error(gt_path, tmp_path):
    an = analyze(gt_path, tmp_path, flawed_dets())
    rs = an.recall
    # cat detections by score: .9 TP, .85 TP (small), .8 mislocalized, .7 similar, .6 other,
    # .5 background, .4 TP, .3 duplicate; 5 cat GTs (one missed)
    expected = {
        "C75": coco_ap([1, 1, 0, 0, 0, 0, 1, 0], 5, rs),
        "C50": coco_ap([1, 1, 0, 0, 0, 0, 1, 0], 5, rs),
        "Loc": coco_ap([1, 1, 1, 0, 0, 0, 1, 0], 5, rs),
        "Sim": coco_ap([1, 1, 1, 0, 0, 1, 0], 5, rs),
        "Oth": coco_ap([1, 1, 1, 0, 1, 0], 5, rs),
        "BG": float((rs <= 0.8).mean()),
        "FN": 1.0,
    }
    for stage, value in expected.items():
        assert cat_ap(an, stage) == pytest.approx(value, abs=1e-12), stage
    assert cat_ap(an, "Sim") > cat_ap(an, "Loc") + 0.01
    # equivalently: Sim/Oth = Loc of the detections without the confusions, Loc = C50 once fixed
    no_sim = analyze(gt_path, tmp_path, flawed_dets(drop=("similar",)), name="a.json")
    no_conf = analyze(gt_path, tmp_path, flawed_dets(drop=("similar", "other")), name="b.json")
    fixed = flawed_dets()
    fixed[fixed.index(CAT_ERRORS["mislocalized"])] = dict(CAT_ERRORS["mislocalized"], bbox=A)
    fixed_loc = analyze(gt_path, tmp_path, fixed, name="c.json")
    s = STAGES.index
    np.testing.assert_allclose(an.precision[s("Sim")], no_sim.precision[s("Loc")])
    np.testing.assert_allclose(an.precision[s("Oth")], no_conf.precision[s("Loc")])
    np.testing.assert_allclose(an.precision[s("Loc")], fixed_loc.precision[s("C50")])
    np.testing.assert_array_equal(an.precision[s("BG")], an.precision[s("Oth")] > 0)
    # the confusions only touch the cat: dog, car and bus stay perfect at every stage
    assert np.all(an.precision[:, :, 1:] == 1.0)


def test_c75_c50_match_pycocotools(gt_path, tmp_path):
    gt = load_ground_truth(gt_path)
    dets = load_detections(write(tmp_path, "dt.json", flawed_dets()), gt)
    coco_gt, coco_dt = COCO(), COCO()
    coco_gt.dataset = gt
    coco_dt.dataset = dict(gt, annotations=dets)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt.createIndex()
        coco_dt.createIndex()
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    overall = summarize(analyze_errors(gt, dets))["overall"]["all"]
    assert overall["C50"] == pytest.approx(ev.stats[1], abs=1e-6)
    assert overall["C75"] == pytest.approx(ev.stats[2], abs=1e-6)


def test_cli_outputs_and_comparison(gt_path, tmp_path):
    cli = load_cli()
    base = write(tmp_path, "base.json", flawed_dets())
    dist = write(tmp_path, "dist.json", flawed_dets(drop=("similar", "background")))
    with contextlib.redirect_stdout(io.StringIO()):
        single = cli.main(
            ["--gt", str(gt_path), "--dt", str(base), "--output", str(tmp_path / "one")]
        )
        pair = cli.main(["--gt", str(gt_path), "--dt", str(base), "--dt2", str(dist), "--names",
                         "baseline", "distilled", "--areas", "all", "medium",
                         "--output", str(tmp_path / "two")])
    names = {p.name for p in single["pngs"]}
    assert names == {"overall-all.png", "supercategory-animal-all.png",
                     "supercategory-vehicle-all.png"}
    assert len(pair["pngs"]) == 6
    for report in (single, pair):
        assert report["summary_md"].is_file() and report["summary_json"].is_file()
        assert all(p.is_file() and p.stat().st_size > 10_000 for p in report["pngs"])
    width_one = imread(tmp_path / "one/overall-all.png").shape[1]
    width_two = imread(tmp_path / "two/overall-all.png").shape[1]
    assert width_two == pytest.approx(2 * width_one, rel=0.05)  # side by side

    js = json.loads((tmp_path / "two/summary.json").read_text())
    assert set(js["models"]) == {"baseline", "distilled"} and js["areas"] == ["all", "medium"]
    b, d = (js["models"][n]["overall"]["all"] for n in ("baseline", "distilled"))
    for stage in STAGES:
        assert js["delta"]["overall"]["all"][stage] == pytest.approx(d[stage] - b[stage], abs=1e-6)
    assert js["delta"]["overall"]["all"]["Sim"] > 0 and js["delta"]["overall"]["all"]["FN"] == 0
    one = json.loads((tmp_path / "one/summary.json").read_text())["models"]["detections"]
    assert b == one["overall"]["all"] and js["models"]["baseline"]["detections"] == str(base)
    md = (tmp_path / "two/summary.md").read_text()
    assert "| overall | all |" in md and "→" in md and "supercategory: vehicle" in md


def test_empty_detections_still_plot_zeros(gt_path, tmp_path):
    cli = load_cli()
    empty = write(tmp_path, "empty.json", [])
    with contextlib.redirect_stdout(io.StringIO()):
        report = cli.main(
            ["--gt", str(gt_path), "--dt", str(empty), "--output", str(tmp_path / "o")]
        )
    assert len(report["pngs"]) == 3 and all(p.is_file() for p in report["pngs"])
    overall = report["summary"]["models"]["detections"]["overall"]["all"]
    assert [overall[s] for s in STAGES] == [0, 0, 0, 0, 0, 0, 1.0]


@pytest.mark.parametrize(
    "case, content, message",
    [
        ("missing", None, "detections file not found"),
        ("malformed", '[{"image_id": 1,', "not valid JSON"),
        ("not a list", '{"annotations": []}', "expected a COCO results list"),
        ("unknown image", [{"image_id": 99, "category_id": 1, "bbox": A, "score": 1}], "[99]"),
        ("unknown category", [{"image_id": 1, "category_id": 7, "bbox": A, "score": 1}], "[7]"),
        ("no score", [{"image_id": 1, "category_id": 1, "bbox": A}], "'score'"),
        ("bad box", [{"image_id": 1, "category_id": 1, "bbox": [1, 2], "score": 1}], "'bbox'"),
    ],
)
def test_bad_detections_name_the_file(gt_path, tmp_path, case, content, message):
    path = tmp_path / "bad_dets.json"
    if content is not None:
        path.write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises((ValueError, FileNotFoundError)) as err:
        load_detections(path, load_ground_truth(gt_path), gt_path=gt_path)
    assert str(path) in str(err.value) and message in str(err.value)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("categories"), "'categories'"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0], image_id=42)), "[42]"),
        (lambda d: d["annotations"].append(dict(d["annotations"][0], category_id=9)), "[9]"),
        (lambda d: d["images"].append({"id": 1}), "duplicate image id 1"),
    ],
)
def test_bad_ground_truth_names_the_file(tmp_path, mutate, message):
    data = make_gt()
    mutate(data)
    path = write(tmp_path, "bad_gt.json", data)
    with pytest.raises(ValueError) as err:
        load_ground_truth(path)
    assert str(path) in str(err.value) and message in str(err.value)
    with pytest.raises(FileNotFoundError, match="ground-truth file not found"):
        load_ground_truth(tmp_path / "nope.json")


def test_cli_exits_with_message(gt_path, tmp_path, monkeypatch):
    bad = write(tmp_path, "dets.json", [{"image_id": 1, "category_id": 5, "bbox": A, "score": 1}])
    argv = ["analyze_errors.py", "--gt", str(gt_path), "--dt", str(bad), "--output", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(ROOT / "tools/analyze_errors.py"), run_name="__main__")
    message = str(exit_info.value.code)
    assert message.startswith("error: ") and str(bad) in message and "category_id" in message
