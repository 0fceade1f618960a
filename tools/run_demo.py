#!/usr/bin/env python
"""
The embedded demo (`make demo`): on tid_shapes, train the quickstart teacher (cached for later runs),
the baseline student and the TID student, evaluate all three and print an AP table.

    python tools/run_demo.py [--arch GFL|ATSS] [--output output/demo] [--iters N] [--teacher-iters N]
    python tools/run_demo.py --seeds 0 1 2     (one teacher, the two students on each seed: the seed spread)
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

from tid_d2.benchmark.report import mean_std

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_NET = os.path.join(REPO, "projects", "TID", "train_net.py")
METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]
#: the README's demo table (AP), printed next to what this run measured; tests/test_faults.py checks
#: that it matches README.md
README_REFERENCE = {"teacher": 43.1, "baseline student": 34.8, "TID student": 38.8}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="GFL", choices=["GFL", "ATSS"])
    p.add_argument("--output", default=os.path.join("output", "demo"), help="root of all outputs")
    p.add_argument("--iters", type=int, default=None, help="student iterations (default: the config's)")
    p.add_argument("--teacher-iters", type=int, default=None, help="teacher iterations")
    p.add_argument("--seed", type=int, default=0, help="seed of the teacher (and of the students without --seeds)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="train both students on each of these seeds and report mean and std over them")
    p.add_argument("--retrain-teacher", action="store_true", help="ignore a cached teacher")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for all three runs")
    return p.parse_args(argv)


def schedule(iters):
    """Overrides for a shorter/longer run with the quickstart LR shape (drops at 75% and 92%)."""
    if iters is None:
        return []
    steps = sorted({s for s in (int(iters * 0.75), int(iters * 0.92)) if 0 < s < iters})
    return ["SOLVER.MAX_ITER", str(iters), "SOLVER.STEPS", str(tuple(steps)),
            "SOLVER.CHECKPOINT_PERIOD", str(max(iters // 3, 1))]


def final_ap(output_dir):
    """bbox AP metrics of the last evaluation written to metrics.json, or None."""
    path = os.path.join(output_dir, "metrics.json")
    if not os.path.isfile(path):
        return None
    last = None
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if "bbox/AP" in rec:
                last = rec
    return None if last is None else {k: last[f"bbox/{k}"] for k in METRICS}


def run(name, config, opts, log_path):
    """
    Run train_net.py with its progress hook and return the wall time in s. On a terminal the
    child draws its live progress bar there (its stderr is ours) and its log goes to `log_path`;
    otherwise both go to the log and its "[progress]" lines (every few percent) are echoed.
    """
    cmd = [sys.executable, TRAIN_NET, "--progress", "--config-file", config] + opts
    print(f"\n=== {name}: {' '.join(cmd[1:])}\n    full log: {log_path}", flush=True)
    start = time.time()
    live = sys.stderr.isatty()
    with open(log_path, "w") as log:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
            stderr=None if live else subprocess.STDOUT, text=True,
        )
        for line in proc.stdout:
            log.write(line)
            if line.startswith("[progress]") or "copypaste:" in line or "Error" in line:
                print("   ", line.rstrip()[-160:], flush=True)
        if proc.wait() != 0:
            sys.exit(f"{name} failed (exit {proc.returncode}); see {log_path}")
    return time.time() - start


def config_key(paths, opts):
    h = hashlib.sha1()
    for p in paths:
        with open(p, "rb") as f:
            h.update(f.read())
    h.update(" ".join(opts).encode())
    return h.hexdigest()[:16]


def format_table(arch, seed, results, times, reference):
    """The demo's markdown AP table: teacher and both students (seed `seed`), the README's AP beside each."""
    lines = [f"| model ({arch}, tid_shapes_val, seed {seed}) | " + " | ".join(METRICS) + " | README AP | train time |",
             "|---" * (len(METRICS) + 3) + "|"]
    for name in ("teacher", "baseline student", "TID student"):
        r, t = results[name], times.get(name)
        t = "cached" if t is None else f"{t / 60:.1f} min"
        ref = f"{reference[name]:.1f}" if name in reference else "–"
        lines.append(f"| {name} | " + " | ".join(f"{r[k]:.1f}" for k in METRICS) + f" | {ref} | {t} |")
    return "\n".join(lines)


def seed_spread(per_seed):
    """{seed: {"baseline student": ap, "TID student": ap}} -> (mean, sample std) of both APs and their delta,
    over the seeds where they are finite ((None, None) where none is)."""
    aps = {"baseline student": [], "TID student": [], "TID - baseline": []}
    for r in per_seed.values():
        b, t = r["baseline student"]["AP"], r["TID student"]["AP"]
        aps["baseline student"].append(b)
        aps["TID student"].append(t)
        aps["TID - baseline"].append(t - b)
    return {k: mean_std(v) for k, v in aps.items()}


def main(argv=None):
    args = parse_args(argv)
    out = os.path.abspath(args.output)
    os.makedirs(out, exist_ok=True)
    qs = os.path.join(REPO, "configs", "quickstart")
    common = ["SEED", str(args.seed)] + list(args.opts)
    teacher_cfg = os.path.join(qs, f"{args.arch}-teacher.yaml")
    teacher_dir = os.path.join(out, f"{args.arch}-teacher")
    teacher_weights = os.path.join(teacher_dir, "model_final.pth")
    teacher_opts = common + schedule(args.teacher_iters) + ["OUTPUT_DIR", teacher_dir]
    bases = [teacher_cfg, os.path.join(qs, "Teacher-backbone.yaml"), os.path.join(qs, "Base-quickstart.yaml")]
    key = config_key(bases, teacher_opts)
    key_file = os.path.join(teacher_dir, "demo_cache_key.txt")
    results, times = {}, {}

    cached = (
        not args.retrain_teacher and os.path.isfile(teacher_weights) and os.path.isfile(key_file)
        and open(key_file).read().strip() == key and final_ap(teacher_dir) is not None
    )
    if cached:
        print(f"=== teacher: cached {teacher_weights} (delete it or pass --retrain-teacher to retrain)")
        times["teacher"] = None
    else:
        times["teacher"] = run("teacher", teacher_cfg, teacher_opts, os.path.join(out, f"{args.arch}-teacher.log"))
        with open(key_file, "w") as f:
            f.write(key)
    results["teacher"] = final_ap(teacher_dir)

    seeds = args.seeds or [args.seed]
    per_seed = {}
    runs = [
        ("baseline student", f"{args.arch}-student.yaml", f"{args.arch}-student", []),
        ("TID student", f"TID-{args.arch}.yaml", f"TID-{args.arch}", ["MODEL.TEACHER.WEIGHTS", teacher_weights]),
    ]
    for seed in seeds:
        suffix = "" if seed == args.seed else f"-seed{seed}"
        student_opts = ["SEED", str(seed)] + list(args.opts) + schedule(args.iters)
        for name, cfg, dirname, extra in runs:
            run_dir = os.path.join(out, dirname + suffix)
            opts = student_opts + extra + ["OUTPUT_DIR", run_dir]
            elapsed = run(f"{name}, seed {seed}", os.path.join(qs, cfg), opts,
                          os.path.join(out, f"{dirname}{suffix}.log"))
            per_seed.setdefault(seed, {})[name] = final_ap(run_dir)
            if seed == seeds[0]:
                times[name] = elapsed
    results.update(per_seed[seeds[0]])

    reference = README_REFERENCE if args.arch == "GFL" else {}
    table = format_table(args.arch, seeds[0], results, times, reference)
    spread = seed_spread(per_seed) if len(seeds) > 1 else None
    delta = results["TID student"]["AP"] - results["baseline student"]["AP"]
    summary = {"arch": args.arch, "results": results, "train_seconds": times, "tid_delta_AP": delta,
               "seeds": seeds, "per_seed": {str(s): r for s, r in per_seed.items()}, "seed_spread": spread}
    with open(os.path.join(out, "demo_results.json"), "w") as f:
        json.dump(summary, f, indent=2)
    with open(os.path.join(out, "demo_results.md"), "w") as f:
        f.write(table + "\n")
    print("\n" + table)
    print(f"\nTID vs baseline student: {delta:+.1f} AP (seed {seeds[0]})")
    if spread:
        print(f"Over seeds {' '.join(map(str, seeds))}: " + "; ".join(
            f"{k} n/a" if m is None else f"{k} {m:.1f} +- {sd:.1f}" for k, (m, sd) in spread.items()))
    if reference:
        print(f"README reference: TID {reference['TID student'] - reference['baseline student']:+.1f} AP over the "
              "baseline (README.md, 'Demo results', with the seed spread measured there)")
    print(f"Outputs: {out} (demo_results.md/json, one folder and .log per run, TensorBoard: "
          f"tensorboard --logdir {out})")


if __name__ == "__main__":
    main()
