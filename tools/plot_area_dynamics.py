#!/usr/bin/env python
"""
TID's learning dynamics: the fractions of locations in the key, weak and other areas over training,
averaged over FPN levels, mean and spread over runs (e.g. seeds), from the runs' metrics.json.

    python tools/plot_area_dynamics.py output/benchmark/GFL/runs/tid/seed*/metrics.json \
        --output docs/images/tid_area_dynamics.png

Reads the `tid/<level>/frac_key|frac_weak|frac_other` scalars TID writes every MODEL.DISTILL.LOG_PERIOD
iterations; writes the PNG and prints, per area, the mean fraction at the first and last logged
iteration.
"""
import argparse
import json
import re
import sys
from typing import Dict, List

import numpy as np

AREAS = ("frac_key", "frac_weak", "frac_other")
_KEY = re.compile(r"^tid/([^/]+)/(frac_key|frac_weak|frac_other)$")


def read_curves(path: str) -> Dict[str, Dict[int, float]]:
    """{area: {iteration: mean over levels}} of one metrics.json (one JSON object per line)."""
    curves: Dict[str, Dict[int, float]] = {a: {} for a in AREAS}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            record = json.loads(line)
            per_area: Dict[str, List[float]] = {a: [] for a in AREAS}
            for key, value in record.items():
                m = _KEY.match(key)
                if m:
                    per_area[m.group(2)].append(float(value))
            for area, values in per_area.items():
                if values:
                    curves[area][int(record["iteration"])] = float(np.mean(values))
    if not curves["frac_key"]:
        raise ValueError(f"{path}: no tid/<level>/frac_key scalars; is it a TID run's metrics.json?")
    return curves


def summarize(runs: List[Dict[str, Dict[int, float]]]) -> Dict[str, Dict[str, np.ndarray]]:
    """Per area: the iterations logged by every run and the mean / std over runs there."""
    out = {}
    for area in AREAS:
        iters = sorted(set.intersection(*(set(r[area]) for r in runs)))
        values = np.array([[r[area][i] for i in iters] for r in runs])  # [runs, iters]
        out[area] = {"iters": np.array(iters), "mean": values.mean(0), "std": values.std(0)}
    return out


def plot(summary, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, areas in zip(axes, (("frac_key", "frac_weak"), ("frac_other",))):
        for area in areas:
            s = summary[area]
            ax.plot(s["iters"], 100 * s["mean"], label=area.replace("frac_", ""))
            ax.fill_between(s["iters"], 100 * (s["mean"] - s["std"]), 100 * (s["mean"] + s["std"]), alpha=0.25)
        ax.set_xlabel("iteration")
        ax.set_ylabel("% of locations (mean over levels)")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None) -> Dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("metrics", nargs="+", help="metrics.json of TID runs (one curve each; mean and std over them)")
    p.add_argument("--output", required=True, help="PNG to write")
    p.add_argument("--title", default="TID areas over training", help="figure title")
    args = p.parse_args(argv)
    summary = summarize([read_curves(m) for m in args.metrics])
    plot(summary, args.output, f"{args.title} ({len(args.metrics)} runs, mean ± std)")
    for area in AREAS:
        s = summary[area]
        print(f"{area}: {100 * s['mean'][0]:.2f}% at iter {s['iters'][0]} -> "
              f"{100 * s['mean'][-1]:.2f}% at iter {s['iters'][-1]}")
    return summary


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, ValueError) as e:
        sys.exit(f"error: {e}")
