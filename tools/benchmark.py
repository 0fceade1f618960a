#!/usr/bin/env python
"""
The distillation benchmark, accuracy and cost in one harness, on the embedded tid_shapes dataset.

Accuracy: trains the teacher (once; reused while its config is unchanged), the baseline student and
one student per method for every seed, in this process with TIDTrainer, and evaluates each on the
val split (COCO bbox AP). Cost: per method, training-step time and peak memory over the floor
(student step + teacher no-grad forward) and over the plain student, and the distillation loss's
forward + backward time over a student step; at the quickstart size on the CPU always, and at the
realistic size (R-101 teacher, R-50 student, 2 images of 800x1333) too with --device cuda.

    python tools/benchmark.py --quick                  (about a minute on an idle 2-core CPU)
    python tools/benchmark.py --methods tid fitnet fgd pkd cwd ld --seeds 0 1 2
    python tools/benchmark.py --arch ATSS --methods tid tid+fitnet --ablations standard
    python tools/benchmark.py --ablations tasks=cls ldam=off alpha=2 tasks=reg,ldam=off
    python tools/benchmark.py --tune --methods tid fitnet fgd pgd crosskd   (the tuning protocol)
    python tools/benchmark.py --cost-only --device cuda
    python tools/benchmark.py --stability              (the stability matrix: trained or diverged)
    python tools/benchmark.py --stability --archs GFL --stability-teachers 20 --batches 4 --seeds 5 \
        --methods fitnet tid

Writes OUTPUT/results.json, results.md and results.png (--stability: OUTPUT/stability.json and
stability.md, default OUTPUT output/stability). Runs live in OUTPUT/teacher and
OUTPUT/runs/<method>/seed<k>; a finished run whose config is unchanged is reused (--no-cache: retrain).
The library is `tid_d2.benchmark`.
"""
import argparse
import copy
import dataclasses
import datetime
import json
import logging
import os
import re
import shlex
import sys
from typing import Dict, Tuple

import torch

from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

from tid_d2.benchmark import (
    default_methods,
    STANDARD_ABLATIONS,
    DatasetSpec,
    build_results,
    build_run_cfg,
    config_hash,
    expand_ablations,
    format_markdown,
    machine_info,
    measure_costs,
    not_applicable_reason,
    parse_ablation,
    parse_method,
    register_benchmark_datasets,
    train_and_evaluate,
    write_results,
)
from tid_d2.benchmark.accuracy import ARCHS, DENSE_ARCHS, MethodSpec, config_file
from tid_d2.benchmark.tuning import DEFAULT_GRID, grid_specs, pick_factor
from tid_d2.config import add_tid_config
from tid_d2.benchmark.stability import (
    DEFAULT_BATCHES,
    DEFAULT_SEEDS,
    DEFAULT_TEACHER_ITERS,
    format_stability_markdown,
    run_stability,
    stability_grid,
)
from tid_d2.data.shapes import DEFAULT_SIDES

logger = logging.getLogger("benchmark")

TEACHER_SEED = 0
# Random weights: the ResNets use BN instead of FrozenBN (an identity at random init, through which a
# random R-101 overflows to non-finite boxes); teacher and student alike, so the floor carries it too.
# LR 0: the optimizer step costs the same, and repeated steps of random weights on one batch cannot diverge.
REALISTIC_OPTS = ["MODEL.WEIGHTS", "", "SOLVER.IMS_PER_BATCH", "2", "MODEL.RESNETS.NORM", "BN", "SOLVER.BASE_LR", "0.0",
                  "INPUT.MIN_SIZE_TRAIN", "(800,)", "INPUT.MAX_SIZE_TRAIN", "1333"]
REALISTIC_IMAGE_SIZE = (800, 1333)
# defaults of the knobs left unset: a full run, or --quick
FULL = dict(num_images=800, num_val_images=200, sides=list(DEFAULT_SIDES), iters=None, teacher_iters=None,
            seeds=[0, 1, 2], methods=None, cost_iters=20, cost_warmup=5, opts=[])
QUICK = dict(num_images=64, num_val_images=32, sides=[128, 192], iters=30, teacher_iters=150, seeds=[0],
             methods=["tid", "fitnet"], cost_iters=5, cost_warmup=2,
             opts=["SOLVER.IMS_PER_BATCH", "4", "INPUT.MIN_SIZE_TRAIN", "(128, 160)",
                   "INPUT.MAX_SIZE_TRAIN", "256", "INPUT.MIN_SIZE_TEST", "160",
                   "INPUT.MAX_SIZE_TEST", "256", "DATALOADER.NUM_WORKERS", "0"])


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a tiny run: 64 train / 32 val images of 128-192 px, batch 4, 30 student and "
                        "150 teacher iterations, seed 0, methods tid fitnet, 5 timed steps (explicit "
                        "flags still win)")
    p.add_argument("--arch", default="GFL", choices=ARCHS,
                   help="detector of teacher and student (default GFL)")
    p.add_argument("--methods", nargs="+",
                   help=f"methods, '+' combines (tid+ld); default: {' '.join(default_methods())}")
    p.add_argument("--ablations", nargs="*", default=[],
                   help="TID variants KEY=VALUE[,KEY=VALUE] with KEY in tasks (both|cls|reg), thresholds "
                        "(assigner|fixed), ldam (on|off), soft (on|off), precedence (weak|key), normalize "
                        "(all|area), alpha, beta, gamma, lambda, tau_k, tau_w, min_pos (numbers); "
                        f"'standard' = {' '.join(STANDARD_ABLATIONS)}")
    p.add_argument("--seeds", nargs="+", type=int, help="training seeds (default 0 1 2)")
    p.add_argument("--iters", type=int, help="student iterations (default: the quickstart config's)")
    p.add_argument("--teacher-iters", type=int, help="teacher iterations (default: the quickstart config's)")
    p.add_argument("--output", help="output directory (default output/benchmark/<ARCH>[-quick])")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="device of the trainings; cuda also measures cost at the realistic size")
    g = p.add_argument_group("dataset (a tid_shapes variant, registered under its own name)")
    g.add_argument("--num-images", type=int, help="train images (default 800)")
    g.add_argument("--num-val-images", type=int, help="val images (default 200)")
    g.add_argument("--difficulty", type=float, default=1.0,
                   help="clutter/small-object knob in [0, 3] (default 1)")
    g.add_argument("--dataset-seed", type=int, default=0, help="seed of the generated images (default 0)")
    g.add_argument("--image-sides", nargs=2, type=int, metavar=("MIN", "MAX"),
                   help=f"range of image height/width (default {DEFAULT_SIDES[0]} {DEFAULT_SIDES[1]})")
    g.add_argument("--dataset-root",
                   help="where datasets are generated (default $TID_DATASETS or ./datasets)")
    g = p.add_argument_group("what to measure")
    mode = g.add_mutually_exclusive_group()
    mode.add_argument("--cost-only", action="store_true", help="no training: cost only")
    mode.add_argument("--accuracy-only", action="store_true", help="no cost measurement")
    g.add_argument("--cost-iters", type=int, help="timed steps per model (default 20)")
    g.add_argument("--cost-warmup", type=int, help="untimed warm-up steps per model (default 5)")
    g.add_argument("--realistic-cpu", action="store_true",
                   help="also measure the realistic size (R-101 teacher, R-50 student, 2 images of 800x1333, "
                        "random weights) on the CPU, reported as 'cpu-realistic' (slow: seconds per step)")
    g = p.add_argument_group("stability matrix (--stability: train only, each run trained or diverged)")
    g.add_argument("--stability", action="store_true",
                   help="teachers x batches x seeds x archs x methods, plus the plain students")
    g.add_argument("--stability-teachers", nargs="+", type=int, default=list(DEFAULT_TEACHER_ITERS),
                   help="teacher iterations (default %(default)s)")
    g.add_argument("--batches", nargs="+", type=int, default=list(DEFAULT_BATCHES),
                   help="student SOLVER.IMS_PER_BATCH (default %(default)s)")
    g.add_argument("--archs", nargs="+", choices=ARCHS, default=list(DENSE_ARCHS),
                   help="detectors (default %(default)s; --arch is ignored)")
    g = p.add_argument_group("tuning protocol (--tune: the same weight search for every method)")
    g.add_argument("--tune", action="store_true",
                   help="search each method's main loss weights (scaled together) over --tune-grid on seed 0 "
                        "of the tuning split (--tune-dataset-seed), then run --seeds at each pick on the "
                        "reported split; runs are cached under OUTPUT/tune")
    g.add_argument("--tune-grid", nargs="+", type=float, default=list(DEFAULT_GRID),
                   help=f"factors of the published weights (default {' '.join(map(str, DEFAULT_GRID))})")
    g.add_argument("--tune-dataset-seed", type=int, default=1,
                   help="dataset seed of the tuning split, a tid_shapes variant never reported (default 1)")
    p.add_argument("--no-cache", action="store_true", help="retrain runs (teacher included) even if finished")
    p.add_argument("--verbose", action="store_true", help="show Detectron2's training logs")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                   help="KEY VALUE config overrides for every run (teacher included), applied last")
    args = p.parse_args(argv)
    if args.stability and args.seeds is None:
        args.seeds = list(DEFAULT_SEEDS)
    preset = QUICK if args.quick else dict(FULL, methods=list(default_methods()))
    for key, value in preset.items():
        if key == "opts":
            args.opts = list(value) + list(args.opts)
        elif getattr(args, "image_sides" if key == "sides" else key) is None:
            setattr(args, "image_sides" if key == "sides" else key, value)
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is available")
    if args.output is None and args.stability:
        args.output = os.path.join("output", "stability" + ("-quick" if args.quick else ""))
    if args.output is None:
        args.output = os.path.join("output", "benchmark", args.arch + ("-quick" if args.quick else ""))
    for key in ("iters", "teacher_iters", "cost_iters", "num_images", "num_val_images"):
        if getattr(args, key) is not None and getattr(args, key) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    for key in ("stability_teachers", "batches"):
        if min(getattr(args, key)) < 1:
            p.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.tune and args.tune_dataset_seed == args.dataset_seed:
        p.error("--tune-dataset-seed must differ from --dataset-seed: tune on data you do not report on")
    if args.tune and (args.stability or args.cost_only or args.ablations):
        p.error("--tune runs methods only (no --stability, --cost-only or --ablations)")
    if len(set(args.seeds)) != len(args.seeds):
        p.error(f"--seeds repeats a seed: {args.seeds}")
    return args


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for name in ("benchmark", "tid_d2"):
        logging.getLogger(name).setLevel(logging.INFO)
    setup_logger()  # the call DefaultTrainer would make (cached): it then leaves our level alone
    logging.getLogger("detectron2").setLevel(logging.INFO if verbose else logging.WARNING)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9+=.-]+", "_", name).strip("_")


def select_specs(args) -> Tuple[list, Dict[str, str]]:
    """Method and ablation specs that apply to --arch, and {name: why} for those that do not."""
    specs = [parse_method(m) for m in args.methods]
    specs += [parse_ablation(a) for a in expand_ablations(args.ablations)]
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise ValueError(f"--methods/--ablations name an entry twice: {names}")
    ok, skipped = [], {}
    for s in specs:
        why = not_applicable_reason(s, args.arch)
        if why:
            skipped[s.name] = why
        else:
            ok.append(s)
    return ok, skipped


def run_accuracy(args, specs, datasets) -> Dict:
    """Teacher once, then per seed the baseline student and every method."""
    out, cache = os.path.abspath(args.output), not args.no_cache
    common = dict(datasets=datasets, device=args.device, opts=args.opts)
    tcfg = build_run_cfg(args.arch, "teacher", seed=TEACHER_SEED, output_dir=os.path.join(out, "teacher"),
                         iters=args.teacher_iters, **common)
    thash = config_hash(tcfg)
    total, done = 1 + len(args.seeds) * (1 + len(specs)), 0

    def run(name, cfg, key) -> Dict:
        """One run's bbox metrics, "diverged": True when a non-finite loss stopped it."""
        nonlocal done
        res = train_and_evaluate(cfg, key, use_cache=cache, progress=f"[{done + 1}/{total}] {name}")
        done += 1
        how = "cached" if res["cached"] else f"{res['run_seconds']:.0f} s"
        if res.get("diverged"):
            logger.warning(f"[{done}/{total}] {name}: diverged ({how}): {res['diverged']}")
            return dict(res["bbox"], diverged=True)
        logger.info(f"[{done}/{total}] {name}: AP {res['bbox']['AP']:.2f} ({how})")
        return dict(res["bbox"], cached=res["cached"])

    teacher = run("teacher", tcfg, thash)
    if teacher.get("diverged"):
        raise ValueError(f"the teacher diverged (see {tcfg.OUTPUT_DIR}); change --teacher-iters or --opts")
    weights = os.path.join(out, "teacher", "model_final.pth")
    baseline, methods = {}, {s.name: {} for s in specs}
    for seed in args.seeds:
        scfg = build_run_cfg(args.arch, "student", seed=seed, iters=args.iters,
                             output_dir=os.path.join(out, "runs", "baseline", f"seed{seed}"), **common)
        baseline[seed] = run(f"baseline seed {seed}", scfg, config_hash(scfg))
        for s in specs:
            dcfg = build_run_cfg(args.arch, "distill", seed=seed, iters=args.iters, spec=s,
                                 teacher_weights=weights,
                                 output_dir=os.path.join(out, "runs", _slug(s.name), f"seed{seed}"), **common)
            methods[s.name][seed] = run(f"{s.name} seed {seed}", dcfg, config_hash(dcfg, extra=thash))
    teacher_out = dict(teacher, config_hash=thash, seed=TEACHER_SEED, iters=tcfg.SOLVER.MAX_ITER)
    return {"teacher": teacher_out, "baseline_runs": baseline, "method_runs": methods}


def run_tuned(args, specs, dataset, datasets) -> Dict:
    """The tuning protocol: every method's grid on seed 0 of the tuning split (OUTPUT/tune), then
    every method at its pick over --seeds on the reported split. Adds "tuning" and "picked_specs"."""
    tune_datasets = register_benchmark_datasets(dataclasses.replace(dataset, seed=args.tune_dataset_seed))
    defaults = add_tid_config(get_cfg())
    grid = {s.name: grid_specs(s, args.tune_grid, defaults) for s in specs}
    targs = copy.copy(args)
    targs.output, targs.seeds = os.path.join(args.output, "tune"), [0]
    logger.info(f"Tuning: {len(specs)} methods x {len(args.tune_grid)} weights on {tune_datasets[1]}")
    tuned = run_accuracy(targs, [g for points in grid.values() for _, g in points], tune_datasets)
    tuning, picked = {}, []
    for s in specs:
        runs = {f: tuned["method_runs"][g.name][0] for f, g in grid[s.name]}
        aps = {f: (None if r.get("diverged") else r["AP"]) for f, r in runs.items()}
        factor = pick_factor(aps)
        tuning[s.name] = {"aps": {f"{f:g}": a for f, a in aps.items()}, "pick": factor, "keys": sorted(set(dict(grid[s.name])[factor].opts[::2])),
                          "baseline_AP": tuned["baseline_runs"][0].get("AP"), "dataset": tune_datasets[1]}
        chosen = dict(grid[s.name])[factor]
        picked.append(MethodSpec(s.name, chosen.methods, chosen.opts))
        logger.info(f"Tuning: {s.name} picks x{factor:g} (AP " + ", ".join(
            f"x{f:g} {'–' if a is None else f'{a:.1f}'}" for f, a in aps.items()) + ")")
    accuracy = run_accuracy(args, picked, datasets)
    return dict(accuracy, tuning=tuning, picked_specs=picked)


def run_cost(args, specs, datasets) -> Dict:
    """Cost at the quickstart size on the CPU, and with --device cuda at the realistic size too."""
    out = os.path.abspath(args.output)
    kw = dict(warmup=args.cost_warmup, iters=args.cost_iters, log=logger.info)
    costs = {}

    def quickstart(role, spec):
        d = os.path.join(out, "cost", "cpu")
        return build_run_cfg(args.arch, role, seed=0, output_dir=d, datasets=datasets, spec=spec,
                             device="cpu", iters=args.iters, opts=args.opts,
                             teacher_weights=os.path.join(d, "random_teacher.pth"))

    costs["cpu"] = measure_costs(quickstart, specs, **kw)

    def realistic(device):
        def make(role, spec):
            d = os.path.join(out, "cost", f"{device}-realistic")
            return build_run_cfg(args.arch, role, seed=0, output_dir=d, datasets=datasets, spec=spec,
                                 device=device, size="realistic", opts=REALISTIC_OPTS,
                                 teacher_weights=os.path.join(d, "random_teacher.pth"))
        return make

    if args.realistic_cpu:
        costs["cpu-realistic"] = measure_costs(realistic("cpu"), specs, image_size=REALISTIC_IMAGE_SIZE, **kw)
    if args.device == "cuda":
        costs["cuda"] = measure_costs(realistic("cuda"), specs, image_size=REALISTIC_IMAGE_SIZE, **kw)
    return costs


def _command(argv) -> str:
    words = [sys.argv[0]] + list(sys.argv[1:] if argv is None else argv)
    return " ".join(shlex.quote(w) for w in words)


def _config_iters(arch: str, role: str) -> int:
    from tid_d2.engine.defaults import setup_cfg

    return setup_cfg(config_file(arch, role)).SOLVER.MAX_ITER


def main_stability(args, datasets, argv=None) -> Dict:
    """The stability matrix: writes OUTPUT/stability.json and stability.md and prints the table."""
    specs = {s.name: s for s in (parse_method(m) for m in args.methods)}
    cells = stability_grid(args.archs, args.stability_teachers, args.batches, args.seeds, list(specs))
    logger.info(f"Stability matrix: {len(cells)} runs (teachers {args.stability_teachers}) in {args.output}")
    results = run_stability(cells, specs, output_dir=os.path.abspath(args.output), datasets=datasets,
                            iters=args.iters, device=args.device, opts=args.opts,
                            use_cache=not args.no_cache, log=logger.info)
    results["config"] = {"command": _command(argv), "iters": args.iters, "opts": list(args.opts),
                         "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}
    os.makedirs(args.output, exist_ok=True)
    table = format_stability_markdown(results)
    with open(os.path.join(args.output, "stability.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(args.output, "stability.md"), "w") as f:
        f.write(table)
    print(table)
    logger.info(f"Wrote {os.path.join(args.output, 'stability.md')} and stability.json")
    return results


def main(argv=None) -> Dict:
    args = parse_args(argv)
    _setup_logging(args.verbose)
    specs, not_applicable = select_specs(args)
    dataset = DatasetSpec(num_images=args.num_images, num_val_images=args.num_val_images,
                          difficulty=args.difficulty, seed=args.dataset_seed,
                          sides=tuple(args.image_sides), root=args.dataset_root)
    datasets = register_benchmark_datasets(dataset)
    if args.stability:
        return main_stability(args, datasets, argv)
    for name, why in not_applicable.items():
        logger.warning(f"{name} is not applicable to {args.arch} and is left out: {why}")
    if args.tune:
        accuracy = run_tuned(args, specs, dataset, datasets)
        specs = accuracy["picked_specs"]
    else:
        accuracy = {} if args.cost_only else run_accuracy(args, specs, datasets)
    costs = {} if args.accuracy_only else run_cost(args, specs, datasets)
    notes = ["cost: random-init weights on one fixed batch; the headline ratios (step_time_ratio, "
             "peak_mem_ratio, loss_time_frac) are the CPU ones at the quickstart size"]
    if args.cost_only:
        notes.append("--cost-only: no accuracy measured")
    if args.accuracy_only:
        notes.append("--accuracy-only: no cost measured")
    sizes = {"cpu": "quickstart (the run configs' input size and batch)"}
    if args.realistic_cpu:
        sizes["cpu-realistic"] = "realistic: R-101 teacher, R-50 student, 2 images of 800x1333, on the CPU"
    if args.device == "cuda":
        sizes["cuda"] = "realistic: R-101 teacher, R-50 student, 2 images of 800x1333"
    config = {
        "arch": args.arch,
        "methods": [s.name for s in specs],
        "requested_methods": list(args.methods),
        "ablations": expand_ablations(args.ablations),
        "seeds": list(args.seeds),
        "iters": args.iters or _config_iters(args.arch, "student"),
        "teacher_iters": args.teacher_iters or _config_iters(args.arch, "teacher"),
        "teacher_seed": TEACHER_SEED,
        "device": args.device,
        "quick": args.quick,
        "dataset": {"train": datasets[0], "val": datasets[1], "num_images": dataset.num_images,
                    "num_val_images": dataset.num_val_images, "difficulty": dataset.difficulty,
                    "seed": dataset.seed, "sides": list(dataset.sides), "root": dataset.root},
        "opts": list(args.opts),
        "cost": {"warmup": args.cost_warmup, "iters": args.cost_iters, "sizes": sizes},
        "command": _command(argv),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "notes": notes,
    }
    if args.tune:
        config["tuning"] = accuracy["tuning"]
        config["tune_grid"] = list(args.tune_grid)
    results = build_results(
        names=[s.name for s in specs],
        teacher=accuracy.get("teacher"),
        baseline_runs=accuracy.get("baseline_runs"),
        method_runs=accuracy.get("method_runs"),
        costs=costs,
        method_info={s.name: {"distill_methods": list(s.methods), "overrides": list(s.opts)} for s in specs},
        not_applicable=not_applicable,
        config=config,
    )
    teacher_ap, base_ap = results["teacher"]["AP"], results["baseline"]["AP"]
    if teacher_ap is not None and base_ap is not None and teacher_ap <= base_ap:
        results["config"]["notes"].append(
            f"gap closed undefined: teacher AP {teacher_ap:.2f} <= baseline AP {base_ap:.2f}")
    paths = write_results(results, args.output)
    print(format_markdown(results))
    logger.info("Wrote " + ", ".join(paths.values()))
    return results


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
