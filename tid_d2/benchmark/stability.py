"""
The stability matrix: does distillation train, or diverge, across weak and strong teachers?

Grid: teacher iterations x student batch x seed x detector x method. A teacher is trained once per
(detector, iterations) and reused; every cell trains one student (no evaluation) and becomes
"trained" or "diverged at iteration N" (the trainer's FloatingPointError on a non-finite loss or
box, or fvcore's "bad box"). The plain student of each (detector, batch, seed) is a cell too, so a
divergence can be told apart from one the student has anyway. Each cell's outcome is cached in its
run folder under its config hash, so an interrupted matrix resumes where it stopped.
"""
import gc
import json
import os
import re
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from detectron2.config import CfgNode

from .accuracy import (
    MethodSpec,
    _is_divergence,
    build_run_cfg,
    config_hash,
    not_applicable_reason,
    seeded_trainer,
    train_and_evaluate,
)

__all__ = [
    "DEFAULT_TEACHER_ITERS",
    "DEFAULT_BATCHES",
    "DEFAULT_SEEDS",
    "STUDENT",
    "StabilityCell",
    "stability_grid",
    "train_only",
    "run_stability",
    "describe",
    "format_stability_markdown",
]

DEFAULT_TEACHER_ITERS = (20, 30, 100, 600)
DEFAULT_BATCHES = (4, 8)
DEFAULT_SEEDS = (0, 1)
#: the name of the plain-student column (no teacher, no distillation).
STUDENT = "student"
TEACHER_SEED = 0
RESULT_FILE = "stability_result.json"


@dataclass(frozen=True)
class StabilityCell:
    """One student training of the matrix; `teacher_iters` is None for the plain student."""

    arch: str
    teacher_iters: Optional[int]
    batch: int
    seed: int
    method: str

    @property
    def row(self) -> Tuple[str, Optional[int], int, int]:
        return (self.arch, self.teacher_iters, self.batch, self.seed)


def stability_grid(
    archs: Sequence[str],
    teacher_iters: Sequence[int],
    batches: Sequence[int],
    seeds: Sequence[int],
    methods: Sequence[str],
) -> List[StabilityCell]:
    """Every cell, plain students first (one per detector, batch and seed, not per teacher)."""
    cells = [StabilityCell(a, None, b, s, STUDENT) for a in archs for b in batches for s in seeds]
    cells += [StabilityCell(a, t, b, s, m) for a in archs for t in teacher_iters for b in batches
              for s in seeds for m in methods]
    return cells


def train_only(cfg: CfgNode, key: str, use_cache: bool = True, progress: Optional[str] = None) -> Dict:
    """
    Train `cfg` (seeded with cfg.SEED) without evaluating it. Returns {"status": "trained" |
    "diverged", "iteration" (where it diverged, else the iterations trained), "error",
    "clipped_steps" (steps whose gradient norm MODEL.DISTILL.MAX_GRAD_NORM clipped), "config_hash",
    "run_seconds", "cached"}; the outcome is written to cfg.OUTPUT_DIR and reused while `key` is
    unchanged.
    """
    path = os.path.join(cfg.OUTPUT_DIR, RESULT_FILE)
    if use_cache and os.path.isfile(path):
        with open(path) as f:
            cached = json.load(f)
        if cached.get("config_hash") == key:
            return dict(cached, cached=True)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    start = time.perf_counter()
    trainer = seeded_trainer(cfg, progress)
    out = {"config_hash": key, "status": "trained", "iteration": cfg.SOLVER.MAX_ITER, "error": None}
    try:
        trainer.train()
    except (FloatingPointError, AssertionError) as e:
        if not _is_divergence(e):
            raise
        out.update(status="diverged", iteration=int(trainer.iter), error=f"{type(e).__name__}: {e}")
    out["clipped_steps"] = int(getattr(trainer._trainer, "clipped_steps", 0))
    out["run_seconds"] = time.perf_counter() - start
    with open(path, "w") as f:
        json.dump(out, f, indent=2)
    del trainer
    gc.collect()
    return dict(out, cached=False)


def _cell_dir(root: str, cell: StabilityCell) -> str:
    teacher = "no-teacher" if cell.teacher_iters is None else f"teacher{cell.teacher_iters}"
    return os.path.join(root, cell.arch, teacher, f"batch{cell.batch}", f"seed{cell.seed}",
                        re.sub(r"[^A-Za-z0-9+=.-]+", "_", cell.method).strip("_"))


def run_stability(
    cells: Sequence[StabilityCell],
    specs: Dict[str, MethodSpec],
    *,
    output_dir: str,
    datasets: Tuple[str, str],
    iters: Optional[int] = None,
    device: str = "cpu",
    opts: Sequence[str] = (),
    use_cache: bool = True,
    log: Callable[[str], None] = print,
) -> Dict:
    """
    Train every cell (teachers first, each once and evaluated for its AP) and return
    {"teachers": {"<arch>/<iters>": {"AP", "diverged"}}, "cells": [cell fields + outcome]}.

    Args:
        specs: method name (as in the cells) -> its MethodSpec.
        iters: student iterations (None: the config's), the LR schedule scaled as the benchmark does.
        opts: KEY VALUE overrides of every run, teachers included, applied last.
    """
    teachers, rows = {}, []
    common = dict(datasets=datasets, device=device)
    for arch, t_iters in sorted({(c.arch, c.teacher_iters) for c in cells if c.teacher_iters}):
        tcfg = build_run_cfg(arch, "teacher", seed=TEACHER_SEED, iters=t_iters, opts=opts,
                             output_dir=os.path.join(output_dir, arch, f"teacher{t_iters}", "model"),
                             **common)
        res = train_and_evaluate(tcfg, config_hash(tcfg), use_cache, progress=f"{arch} teacher {t_iters}")
        teachers[f"{arch}/{t_iters}"] = {"AP": res["bbox"].get("AP"), "diverged": res.get("diverged"),
                                         "config_hash": res["config_hash"],
                                         "weights": os.path.join(tcfg.OUTPUT_DIR, "model_final.pth")}
    for k, cell in enumerate(cells):
        name = (f"[{k + 1}/{len(cells)}] {cell.arch} teacher {cell.teacher_iters or '-'} batch "
                f"{cell.batch} seed {cell.seed} {cell.method}")
        outcome = _run_cell(cell, specs, teachers, output_dir, iters, opts, use_cache, name, common)
        log(f"{name}: {describe(outcome)}")
        rows.append(dict(vars(cell), **outcome))
    return {"teachers": teachers, "cells": rows}


def _run_cell(cell, specs, teachers, output_dir, iters, opts, use_cache, name, common) -> Dict:
    """The outcome of one cell: n/a (method or teacher unusable), or `train_only`'s result."""
    run_opts = list(opts) + ["SOLVER.IMS_PER_BATCH", str(cell.batch), "DATASETS.TEST", "()"]
    out_dir = _cell_dir(output_dir, cell)
    if cell.method == STUDENT:
        cfg = build_run_cfg(cell.arch, "student", seed=cell.seed, iters=iters, output_dir=out_dir,
                            opts=run_opts, **common)
        return train_only(cfg, config_hash(cfg), use_cache, progress=name)
    spec = specs[cell.method]
    why = not_applicable_reason(spec, cell.arch)
    teacher = teachers[f"{cell.arch}/{cell.teacher_iters}"]
    if why or teacher["diverged"]:
        return {"status": "n/a", "error": why or "the teacher diverged", "iteration": None}
    cfg = build_run_cfg(cell.arch, "distill", seed=cell.seed, iters=iters, spec=spec, output_dir=out_dir,
                        teacher_weights=teacher["weights"], opts=run_opts, **common)
    return train_only(cfg, config_hash(cfg, extra=teacher["config_hash"]), use_cache, progress=name)


def describe(outcome: Dict) -> str:
    """'trained', 'trained, N clipped' (N steps held by the gradient-norm bound), 'diverged at
    iteration N' or 'n/a'."""
    if outcome["status"] == "diverged":
        return f"diverged at iteration {outcome['iteration']}"
    if outcome["status"] == "trained" and outcome.get("clipped_steps"):
        return f"trained, {outcome['clipped_steps']} clipped"
    return outcome["status"]


def format_stability_markdown(results: Dict) -> str:
    """One row per (detector, teacher, batch, seed), one column per method (plain student first)."""
    cells = results["cells"]
    methods = [STUDENT] + sorted({c["method"] for c in cells if c["method"] != STUDENT},
                                 key=[c["method"] for c in cells].index)
    by_key = {(c["arch"], c["teacher_iters"], c["batch"], c["seed"], c["method"]): c for c in cells}
    rows = sorted({(c["arch"], c["teacher_iters"], c["batch"], c["seed"]) for c in cells
                   if c["teacher_iters"] is not None})
    lines = ["| detector | teacher iters (AP) | batch | seed | " + " | ".join(methods) + " |",
             "|---" * (4 + len(methods)) + "|"]
    for arch, t_iters, batch, seed in rows:
        ap = results["teachers"].get(f"{arch}/{t_iters}", {}).get("AP")
        teacher = f"{t_iters} ({'-' if ap is None else f'{ap:.1f}'})"
        entries = []
        for m in methods:
            cell = by_key.get((arch, None if m == STUDENT else t_iters, batch, seed, m))
            entries.append("" if cell is None else describe(cell))
        lines.append(f"| {arch} | {teacher} | {batch} | {seed} | " + " | ".join(entries) + " |")
    diverged = [c for c in cells if c["status"] == "diverged"]
    clipped = [c for c in cells if c["status"] == "trained" and c.get("clipped_steps")]
    lines += ["", f"{len(diverged)} of {len(cells)} runs diverged "
              f"({sum(c['status'] == 'n/a' for c in cells)} not applicable); {len(clipped)} trained with "
              "clipped steps (\"trained, N clipped\": N of the run's steps had their gradient norm bounded "
              "by MODEL.DISTILL.MAX_GRAD_NORM)."]
    return "\n".join(lines) + "\n"
