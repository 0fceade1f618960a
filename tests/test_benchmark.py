"""The benchmark: aggregation and report on hand-made per-seed numbers, method/ablation specs, run
configs, the CPU memory measure, and one tiny end-to-end run of tools/benchmark.py."""
import importlib.util
import json
import math
import os

import pytest
import torch

from tid_d2.benchmark import (
    FLOOR,
    STANDARD_ABLATIONS,
    aggregate_seeds,
    build_results,
    build_run_cfg,
    compare_to_baseline,
    config_hash,
    cost_ratios,
    expand_ablations,
    format_markdown,
    gap_closed,
    mean_std,
    not_applicable_reason,
    parse_ablation,
    parse_method,
    plot_results,
    validate_results,
)
from tid_d2.benchmark.accuracy import bbox_metrics
from tid_d2.benchmark.cost import saved_tensor_bytes

from conftest import REPO

BASE = {0: {"AP": 10.0, "AP50": 20.0, "AP75": 8.0, "APs": None}, 1: {"AP": 12.0, "AP50": 22.0, "AP75": 9.0,
        "APs": None}, 2: {"AP": 14.0, "AP50": 24.0, "AP75": 10.0, "APs": None}}
TID = {0: {"AP": 12.0, "AP50": 23.0}, 1: {"AP": 13.0, "AP50": 23.0}, 2: {"AP": 17.0, "AP50": 26.0}}
FITNET = {0: {"AP": 11.0}, 1: {"AP": 15.0}, 2: {"AP": 17.0}}  # vs TID per seed: -1, +2, 0
TEACHER = {"AP": 20.0, "AP50": 30.0}
COSTS = {
    "student": {"step_time_s": 0.5, "peak_mem_bytes": 100},
    "floor": {"step_time_s": 1.0, "peak_mem_bytes": 200},
    "methods": {"tid": {"step_time_s": 1.5, "peak_mem_bytes": 300, "loss_time_s": 0.1},
                "fitnet": {"step_time_s": 1.1, "peak_mem_bytes": 220, "loss_time_s": 0.05}},
}


def _results():
    return build_results(names=["tid", "fitnet"], teacher=TEACHER, baseline_runs=BASE,
                         method_runs={"tid": TID, "fitnet": FITNET}, costs={"cpu": COSTS},
                         not_applicable={"ld": "needs GFL"}, config={"arch": "GFL", "seeds": [0, 1, 2]})


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)  # sample std
    assert mean_std([5.0]) == (5.0, 0.0)
    assert mean_std([1.0, None, float("nan"), 3.0]) == (2.0, math.sqrt(2.0))
    assert mean_std([None, float("nan")]) == (None, None)


def test_aggregate_delta_gap_exact():
    base, tid = aggregate_seeds(BASE), aggregate_seeds(TID)
    assert (base["AP"], base["AP_std"]) == (12.0, 2.0)
    assert tid["AP"] == 14.0 and tid["AP_std"] == pytest.approx(math.sqrt(7.0), abs=1e-12)
    assert base["APs"] is None and base["APs_std"] is None
    assert base["seeds"] == [0, 1, 2] and base["per_seed"]["1"]["AP75"] == 9.0
    cmp = compare_to_baseline(tid, base, TEACHER["AP"])
    assert cmp["delta_AP"] == 2.0
    assert cmp["delta_AP_std"] == 1.0  # paired differences 2, 1, 3
    assert cmp["gap_closed"] == 0.25  # (14 - 12) / (20 - 12)


def test_gap_closed_undefined():
    assert gap_closed(15.0, 12.0, 20.0) == 3 / 8
    assert gap_closed(11.0, 12.0, 20.0) == -1 / 8
    assert gap_closed(15.0, 12.0, 12.0) is None  # no gap
    assert gap_closed(15.0, 12.0, 10.0) is None  # teacher below the baseline
    assert gap_closed(None, 12.0, 20.0) is None


def test_cost_ratios_exact():
    r = cost_ratios(COSTS)
    assert r["tid"] == {"step_time_ratio": 1.5, "step_time_ratio_vs_student": 3.0, "peak_mem_ratio": 1.5,
                        "peak_mem_ratio_vs_student": 3.0, "loss_time_frac": 0.2}
    assert r["fitnet"]["loss_time_frac"] == 0.1


def test_results_schema_json_and_errors():
    res = _results()
    validate_results(res)
    m = res["methods"]["tid"]
    assert (m["AP"], m["delta_AP"], m["gap_closed"], m["step_time_ratio"]) == (14.0, 2.0, 0.25, 1.5)
    assert m["cost"]["cpu"]["step_time_s"] == 1.5 and res["cost"]["cpu"]["student_step_time_ratio"] == 0.5
    assert res["teacher"]["AP"] == 20.0 and res["not_applicable"] == {"ld": "needs GFL"}
    f = res["methods"]["fitnet"]
    assert f["delta_AP_vs_ref"] == pytest.approx(1 / 3) and f["delta_AP_vs_ref_std"] == pytest.approx(1.5275, abs=1e-4)
    assert "delta_AP_vs_ref" not in m and res["config"]["reference"] == "tid"
    assert build_results(names=["fitnet"], method_runs={"fitnet": FITNET}, config={})["config"]["reference"] is None
    json.dumps(res, allow_nan=False)
    bad = json.loads(json.dumps(res))
    del bad["methods"]["fitnet"]["peak_mem_ratio"]
    with pytest.raises(ValueError, match="methods.fitnet.*peak_mem_ratio"):
        validate_results(bad)
    bad = json.loads(json.dumps(res))
    bad["methods"]["tid"]["step_time_ratio"] = 0.0
    with pytest.raises(ValueError, match="step_time_ratio"):
        validate_results(bad)
    with pytest.raises(ValueError, match="baseline"):
        validate_results({"teacher": {"AP": 1.0}, "methods": {}, "config": {}})
    # no measurement at all: every number null, still valid
    empty = build_results(names=["tid"], config={})
    validate_results(empty)
    assert empty["methods"]["tid"]["AP"] is None and empty["methods"]["tid"]["step_time_ratio"] is None


def test_markdown_and_chart(tmp_path):
    res = _results()
    md = format_markdown(res)
    assert "| tid | 14.0 ± 2.6 |" in md and "+2.0 ± 1.0 | 25% |" in md
    assert "| baseline (student) | 12.0 ± 2.0 |" in md and "| teacher | 20.0 |" in md
    assert "| ΔAP | gap closed | ΔAP vs tid | AP per seed |" in md
    assert "| +2.0 ± 1.0 | 25% |  | 12.0 / 13.0 / 17.0 |" in md  # tid: no delta with itself
    assert "| +2.3 ± 1.2 | 29% | +0.3 ± 1.5 | 11.0 / 15.0 / 17.0 |" in md
    assert "| tid | 1.50× | 3.00× | 1.50× | 3.00× | 20.0% |" in md
    assert "ld: not applicable (needs GFL)" in md
    path = plot_results(res, str(tmp_path / "chart.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_bbox_metrics_nan():
    nan = float("nan")
    assert bbox_metrics({"bbox": {"AP": 5.0, "APs": nan}}) == {"AP": 5.0, "APs": None}
    none = bbox_metrics({"val": {"bbox": {"AP": nan, "AP50": nan}}})  # no detection at all
    assert none == {"AP": 0.0, "AP50": 0.0, "no_detections": True}
    with pytest.raises(ValueError, match="bbox"):
        bbox_metrics({"segm": {}})


def test_method_and_ablation_specs():
    s = parse_method("TID+ld")
    assert (s.name, s.methods, s.opts) == ("tid+ld", ("TID", "LD"), ())
    with pytest.raises(ValueError, match="unknown method"):
        parse_method("tid+kd")
    with pytest.raises(ValueError, match="twice"):
        parse_method("tid+tid")
    f = parse_method("fgd[model.distill.fgd.alpha=1e-4, MODEL.DISTILL.FGD.BETA=5e-5]")
    assert f.name == "fgd[MODEL.DISTILL.FGD.ALPHA=1e-4,MODEL.DISTILL.FGD.BETA=5e-5]"
    assert f.methods == ("FGD",)
    assert f.opts == ("MODEL.DISTILL.FGD.ALPHA", "1e-4", "MODEL.DISTILL.FGD.BETA", "5e-5")
    for bad in ("fgd[SOLVER.BASE_LR=1]", "fgd[MODEL.DISTILL.FGD.ALPHA]", "fgd[]", "fgd[MODEL.DISTILL.TID.ALPHA=1"):
        with pytest.raises(ValueError, match="--methods"):
            parse_method(bad)
    a = parse_ablation("tasks=cls, ldam=off,alpha=2")
    assert a.name == "tid[tasks=cls,ldam=off,alpha=2]" and a.methods == ("TID",)
    assert a.opts == ("MODEL.DISTILL.TID.TASKS", "cls", "MODEL.DISTILL.TID.LDAM", "False", "MODEL.DISTILL.TID.ALPHA", "2.0")
    decoupled = parse_ablation("normalize=area,lambda=0.075,min_pos=0")
    assert decoupled.opts == ("MODEL.DISTILL.TID.NORMALIZE", "area", "MODEL.DISTILL.TID.LOSS_WEIGHT", "0.075",
                              "MODEL.DISTILL.TID.POS_THRESH", "0.0")
    for bad, msg in (("tasks=box", "tasks=both|cls|reg"), ("gamma=x", "number"), ("foo=1", "KEY=VALUE"),
                     ("normalize=mean", "normalize=all|area"),
                     ("tasks=cls,tasks=reg", "twice")):
        with pytest.raises(ValueError, match=msg):
            parse_ablation(bad)
    assert expand_ablations(["standard", "ldam=off"]) == list(STANDARD_ABLATIONS)  # duplicate dropped
    assert expand_ablations(["alpha=3", "standard"]) == ["alpha=3"] + list(STANDARD_ABLATIONS)
    assert not_applicable_reason(parse_method("ld"), "GFL") is None
    assert "ld" in not_applicable_reason(parse_method("tid+ld"), "ATSS")
    no_floor = parse_ablation("min_pos=0")  # the assigner's own thresholds: FCOS's assigner gives none
    assert not_applicable_reason(no_floor, "GFL") is None
    assert "FCOS's assigner gives none" in not_applicable_reason(no_floor, "FCOS")
    assert not_applicable_reason(parse_ablation("min_pos=0,thresholds=fixed"), "FCOS") is None
    assert not_applicable_reason(parse_method("tid"), "ATSS") is None


def test_run_cfg_and_hash():
    ds = ("tid_shapes_train", "tid_shapes_val")
    cfg = build_run_cfg("GFL", "distill", seed=3, output_dir="/x", datasets=ds, iters=30,
                        spec=parse_ablation("tasks=reg,soft=on"), teacher_weights="/t.pth",
                        opts=["SOLVER.IMS_PER_BATCH", "2"])
    assert cfg.MODEL.META_ARCHITECTURE == "TeacherStudent" and cfg.MODEL.DISTILL.METHODS == ["TID"]
    assert (cfg.MODEL.DISTILL.TID.TASKS, cfg.MODEL.DISTILL.TID.SOFT_WEIGHTS, cfg.SEED) == ("reg", True, 3)
    assert (cfg.SOLVER.MAX_ITER, tuple(cfg.SOLVER.STEPS), cfg.SOLVER.WARMUP_ITERS) == (30, (22, 28), 5)
    assert cfg.SOLVER.IMS_PER_BATCH == 2 and cfg.MODEL.TEACHER.OPTS[-2:] == ["SOLVER.IMS_PER_BATCH", "2"]
    assert cfg.DATASETS.TRAIN == ("tid_shapes_train",) and cfg.MODEL.TEACHER.WEIGHTS == "/t.pth"
    floor = build_run_cfg("ATSS", "distill", seed=0, output_dir="/x", datasets=ds, spec=FLOOR)
    assert floor.MODEL.DISTILL.METHODS == [] and floor.MODEL.DISTILL.STUDENT_META_ARCHITECTURE == "ATSS"
    fcos = build_run_cfg("FCOS", "distill", seed=0, output_dir="/x", datasets=ds, spec=parse_method("tid"))
    assert fcos.MODEL.DISTILL.STUDENT_META_ARCHITECTURE == "FCOS"
    assert fcos.MODEL.TEACHER.CONFIG_FILE.endswith("quickstart/FCOS-teacher.yaml")
    with pytest.raises(ValueError, match=r"no realistic configs for --arch FCOS; realistic configs exist for \['GFL', 'ATSS', 'FasterRCNN', 'MaskRCNN'\]"):
        build_run_cfg("FCOS", "student", seed=0, output_dir="/x", datasets=ds, size="realistic")
    a = build_run_cfg("GFL", "student", seed=0, output_dir="/a", datasets=ds)
    b = build_run_cfg("GFL", "student", seed=0, output_dir="/b", datasets=ds)
    c = build_run_cfg("GFL", "student", seed=1, output_dir="/a", datasets=ds)
    assert config_hash(a) == config_hash(b) != config_hash(c)
    assert config_hash(a, extra="teacher1") != config_hash(a, extra="teacher2")
    a.defrost()
    a.MODEL.DISTILL.TID.LOSS_WEIGHT = 5.0  # no effect on a plain student: its cached run stays valid
    assert config_hash(a) == config_hash(b)
    d = build_run_cfg("GFL", "distill", seed=0, output_dir="/d", datasets=ds, spec=parse_method("tid"))
    e = d.clone()
    e.defrost()
    e.MODEL.DISTILL.TID.LOSS_WEIGHT = 5.0
    assert config_hash(d) != config_hash(e)
    f = d.clone()
    f.defrost()
    f.MODEL.DISTILL.FITNET.LOSS_WEIGHT = 5.0  # a method the run does not use: its cache stays valid
    assert config_hash(d) == config_hash(f)
    with pytest.raises(ValueError, match="--opts"):
        build_run_cfg("GFL", "student", seed=0, output_dir="/a", datasets=ds, opts=["SOLVER.NOPE", "1"])


def test_saved_tensor_bytes():
    x = torch.randn(1000, requires_grad=True)
    assert saved_tensor_bytes(lambda: x.exp().sum()) == 4000  # exp saves its output
    assert saved_tensor_bytes(lambda: (x * x).sum()) == 4000  # x saved twice, counted once
    assert saved_tensor_bytes(lambda: (x * x).sum(), exclude=[x]) == 0
    assert saved_tensor_bytes(lambda: (x * 2.0).sum()) == 0  # nothing saved


def _load_tool():
    path = os.path.join(REPO, "tools", "benchmark.py")
    spec = importlib.util.spec_from_file_location("benchmark_tool", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    return tool


def test_end_to_end_tiny(tmp_path):
    """Teacher, baseline and TID for 3 iterations on 16 images, cost of 2 steps; then a cached re-run."""
    tool = _load_tool()
    out = str(tmp_path / "bench")
    base = ["--output", out, "--dataset-root", str(tmp_path / "datasets"), "--num-images", "16",
            "--num-val-images", "8", "--image-sides", "128", "192", "--iters", "3", "--teacher-iters", "3",
            "--seeds", "0", "--methods", "tid", "--cost-iters", "2", "--cost-warmup", "0"]
    opts = ["--opts", "SOLVER.IMS_PER_BATCH", "2", "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN",
            "192", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "192", "DATALOADER.NUM_WORKERS", "0"]
    argv = base + opts
    res = tool.main(argv)
    for ext in ("json", "md", "png"):
        assert os.path.getsize(os.path.join(out, f"results.{ext}")) > 0
    with open(os.path.join(out, "results.json")) as f:
        on_disk = json.load(f)
    validate_results(on_disk)
    assert list(on_disk["methods"]) == ["tid"] and on_disk["config"]["seeds"] == [0]
    tid = on_disk["methods"]["tid"]
    for key in ("step_time_ratio", "step_time_ratio_vs_student", "peak_mem_ratio", "loss_time_frac"):
        assert math.isfinite(tid[key]) and tid[key] > 0, key
    assert tid["peak_mem_ratio"] >= 1.0  # the floor is the same model without the distiller
    assert tid["AP"] is not None and on_disk["baseline"]["AP"] is not None
    assert os.path.isfile(os.path.join(out, "teacher", "model_final.pth"))
    assert "| tid |" in open(os.path.join(out, "results.md")).read()
    again = tool.main(base + ["--accuracy-only"] + opts)
    assert again["teacher"]["cached"] is True and again["teacher"]["AP"] == res["teacher"]["AP"]
    assert again["methods"]["tid"]["AP"] == res["methods"]["tid"]["AP"]
    assert again["methods"]["tid"]["step_time_ratio"] is None


def test_diverged_runs_are_results(tiny_shapes, tmp_path):
    """A run stopped by a non-finite loss is recorded (and cached) as diverged, not a crash; the
    statistics skip it and the report says so."""
    from tid_d2.benchmark import train_and_evaluate

    opts = ["SOLVER.IMS_PER_BATCH", "2", "SOLVER.BASE_LR", "1e12", "DATALOADER.NUM_WORKERS", "0",
            "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "192"]
    cfg = build_run_cfg("GFL", "student", seed=0, output_dir=str(tmp_path / "run"), datasets=tiny_shapes,
                        iters=4, opts=opts)
    first = train_and_evaluate(cfg, "k1")
    assert first["diverged"] and first["bbox"]["AP"] is None and not first["cached"]
    again = train_and_evaluate(cfg, "k1")
    assert again["cached"] and again["diverged"] == first["diverged"]
    agg = aggregate_seeds({0: dict(first["bbox"], diverged=True), 1: {"AP": 12.0}})
    assert (agg["AP"], agg["AP_std"], agg["diverged_seeds"]) == (12.0, 0.0, [0])
    res = build_results(names=["tid"], baseline_runs={0: {"AP": 10.0}},
                        method_runs={"tid": {0: dict(first["bbox"], diverged=True)}}, config={})
    validate_results(res)
    md = format_markdown(res)
    assert "| tid | diverged |" in md
    assert "tid: diverged (non-finite loss) with seed 0 (1 of 1 seeds); no result" in md


def test_bench_detectors_times_every_architecture(tiny_shapes):
    import importlib.util

    from conftest import REPO, TINY_TRAIN

    spec = importlib.util.spec_from_file_location(
        "bench_detectors", os.path.join(REPO, "tools", "bench_detectors.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    result = tool.main([
        "--images", "2", "--rounds", "1", "--warmup", "0", "--opts",
        "DATASETS.TRAIN", f"('{TINY_TRAIN}',)", "INPUT.MIN_SIZE_TRAIN", "(128,)",
        "INPUT.MAX_SIZE_TRAIN", "192", "MODEL.DEVICE", "cpu",
    ])
    assert set(result) == {"FCOS", "GFL", "ATSS"}
    assert result["FCOS"]["ratio_to_fcos"] == 1.0
    assert all(r["step_time_s"] > 0 for r in result.values())
