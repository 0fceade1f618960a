"""
Pure aggregation and reporting for the benchmark: per-seed COCO metrics -> mean ± sample std,
delta vs the baseline and share of the teacher-student gap closed; cost ratios; the results.json
dict (its schema is checked by `validate_results`), results.md and a PNG chart.
"""
import json
import math
import os
import statistics
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

__all__ = [
    "METRICS",
    "REQUIRED_METHOD_KEYS",
    "mean_std",
    "aggregate_seeds",
    "gap_closed",
    "compare_to_baseline",
    "cost_ratios",
    "build_results",
    "validate_results",
    "format_markdown",
    "plot_results",
    "write_results",
]

METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
#: metrics only some detectors give (Mask R-CNN's mask AP): aggregated and shown where present
OPTIONAL_METRICS = ("mask_AP",)
RATIOS = ("step_time_ratio", "step_time_ratio_vs_student", "peak_mem_ratio",
          "peak_mem_ratio_vs_student", "loss_time_frac")
REQUIRED_METHOD_KEYS = ("AP", "AP_std", "AP50", "AP75", "step_time_ratio", "peak_mem_ratio", "loss_time_frac")
#: the cost run whose ratios fill the headline fields (always measured: quickstart size, CPU)
HEADLINE_COST = "cpu"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def mean_std(values: Iterable[Optional[float]]) -> Tuple[Optional[float], Optional[float]]:
    """Mean and sample standard deviation (n - 1; 0 for one value) of the finite values; (None, None)
    when there is none."""
    vals = [float(v) for v in values if _finite(v)]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def aggregate_seeds(per_seed: Mapping[int, Mapping[str, Optional[float]]]) -> Dict:
    """
    {seed: {"AP": ..., ...}} -> {"AP": mean, "AP_std": std, ... for METRICS, "seeds", "per_seed",
    "diverged_seeds"}; a run marked "diverged" (stopped by a non-finite loss) has no metrics and
    the statistics are over the other seeds.
    """
    out = {}
    metrics = METRICS + tuple(m for m in OPTIONAL_METRICS if any(m in r for r in per_seed.values()))
    for m in metrics:
        out[m], out[f"{m}_std"] = mean_std(r.get(m) for r in per_seed.values())
    seeds = sorted(per_seed)
    out["seeds"] = seeds
    out["per_seed"] = {str(s): {m: per_seed[s].get(m) for m in metrics} for s in seeds}
    out["diverged_seeds"] = [s for s in seeds if per_seed[s].get("diverged")]
    return out


def gap_closed(ap_method: Optional[float], ap_baseline: Optional[float], ap_teacher: Optional[float]):
    """(AP_m - AP_base) / (AP_teacher - AP_base); None when undefined (a missing AP, or a teacher
    no better than the baseline)."""
    if not all(_finite(x) for x in (ap_method, ap_baseline, ap_teacher)):
        return None
    gap = ap_teacher - ap_baseline
    return None if gap <= 0 else (ap_method - ap_baseline) / gap


def compare_to_baseline(method: Mapping, baseline: Mapping, teacher_ap: Optional[float]) -> Dict:
    """delta_AP (difference of means), delta_AP_std (sample std of the per-seed paired differences)
    and gap_closed, from two `aggregate_seeds` results."""
    if not (_finite(method.get("AP")) and _finite(baseline.get("AP"))):
        return {"delta_AP": None, "delta_AP_std": None, "gap_closed": None}
    pm, pb = method.get("per_seed", {}), baseline.get("per_seed", {})
    paired = [pm[s]["AP"] - pb[s]["AP"] for s in pm if s in pb and _finite(pm[s].get("AP"))
              and _finite(pb[s].get("AP"))]
    return {
        "delta_AP": method["AP"] - baseline["AP"],
        "delta_AP_std": mean_std(paired)[1],
        "gap_closed": gap_closed(method["AP"], baseline["AP"], teacher_ap),
    }


def cost_ratios(costs: Mapping) -> Dict[str, Dict[str, float]]:
    """Per method of a `measure_costs` result: step time and peak memory over the floor's and the
    plain student's, and the distillation loss's forward + backward time over a student step."""
    s, f = costs["student"], costs["floor"]
    out = {}
    for name, m in costs["methods"].items():
        loss = m.get("loss_time_s")
        out[name] = {
            "step_time_ratio": m["step_time_s"] / f["step_time_s"],
            "step_time_ratio_vs_student": m["step_time_s"] / s["step_time_s"],
            "peak_mem_ratio": m["peak_mem_bytes"] / f["peak_mem_bytes"],
            "peak_mem_ratio_vs_student": m["peak_mem_bytes"] / s["peak_mem_bytes"],
            "loss_time_frac": None if loss is None else loss / s["step_time_s"],
        }
    return out


def build_results(
    *,
    names: Sequence[str],
    teacher: Optional[Mapping] = None,
    baseline_runs: Optional[Mapping[int, Mapping]] = None,
    method_runs: Optional[Mapping[str, Mapping[int, Mapping]]] = None,
    costs: Optional[Mapping[str, Mapping]] = None,
    method_info: Optional[Mapping[str, Mapping]] = None,
    not_applicable: Optional[Mapping[str, str]] = None,
    config: Optional[Mapping] = None,
    reference: str = "tid",
) -> Dict:
    """
    The results.json dict. `teacher`: the teacher's metrics; `baseline_runs` / `method_runs`:
    {seed: metrics} (per method name); `costs`: {"cpu": measure_costs(...), "cuda": ...}, the "cpu"
    one filling the headline ratios; `method_info`: extra fields per method (e.g. its config
    methods and overrides); `reference`: the method every other one is also compared with, paired
    by seed (delta_AP_vs_ref and its std; none when it is not among `names`). Missing
    measurements are None.
    """
    costs = dict(costs or {})
    ratios = {dev: cost_ratios(c) for dev, c in costs.items()}
    teacher_out = dict({m: None for m in METRICS}, **(teacher or {}))
    baseline = aggregate_seeds(baseline_runs or {})
    methods = {}
    for name in names:
        runs = (method_runs or {}).get(name, {})
        entry = aggregate_seeds(runs)
        entry.update(compare_to_baseline(entry, baseline, teacher_out["AP"]))
        head = ratios.get(HEADLINE_COST, {}).get(name, {})
        entry.update({k: head.get(k) for k in RATIOS})
        entry["cost"] = {
            dev: dict(ratios[dev][name], **{k: v for k, v in c["methods"][name].items()})
            for dev, c in costs.items() if name in c["methods"]
        }
        entry.update((method_info or {}).get(name, {}))
        methods[name] = entry
    if reference in methods:
        for name, entry in methods.items():
            if name != reference:
                d = compare_to_baseline(entry, methods[reference], None)
                entry["delta_AP_vs_ref"], entry["delta_AP_vs_ref_std"] = d["delta_AP"], d["delta_AP_std"]
    cost_summary = {dev: {k: v for k, v in c.items() if k != "methods"} for dev, c in costs.items()}
    for dev, c in cost_summary.items():
        c["student_step_time_ratio"] = c["student"]["step_time_s"] / c["floor"]["step_time_s"]
    return _clean({
        "teacher": teacher_out,
        "baseline": baseline,
        "methods": methods,
        "not_applicable": dict(not_applicable or {}),
        "cost": cost_summary,
        "config": dict(config or {}, reference=reference if reference in methods else None),
    })


def _clean(x):
    """JSON-safe copy: non-finite floats -> None, tuples -> lists."""
    if isinstance(x, Mapping):
        return {str(k): _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def validate_results(results: Mapping) -> None:
    """Check the results.json schema other tools rely on; a ValueError names the faulty key."""
    for key in ("teacher", "baseline", "methods", "config"):
        if not isinstance(results.get(key), Mapping):
            got = type(results.get(key)).__name__
            raise ValueError(f"results.json: '{key}' must be an object, got {got}")
    checks = [("teacher", results["teacher"], ("AP",)), ("baseline", results["baseline"], ("AP", "AP_std"))]
    checks += [(f"methods.{n}", m, REQUIRED_METHOD_KEYS) for n, m in results["methods"].items()]
    for where, entry, keys in checks:
        if not isinstance(entry, Mapping):
            raise ValueError(f"results.json: '{where}' must be an object")
        for k in keys:
            if k not in entry:
                raise ValueError(f"results.json: '{where}' lacks '{k}'")
            v = entry[k]
            if v is not None and not _finite(v):
                raise ValueError(f"results.json: '{where}.{k}' must be a finite number or null, got {v!r}")
            if k in RATIOS and v is not None and v <= 0:
                raise ValueError(f"results.json: '{where}.{k}' must be > 0, got {v}")


# ----------------------------------------------------------------------------------------------
# results.md
# ----------------------------------------------------------------------------------------------
def _num(v, digits=1, signed=False) -> str:
    if not _finite(v):
        return "–"
    return f"{v:+.{digits}f}" if signed else f"{v:.{digits}f}"


def _pm(entry: Mapping, key: str, signed=False) -> str:
    """'mean ± std' of entry[key] / entry[key_std] (the std shown only over several seeds)."""
    mean, std = entry.get(key), entry.get(f"{key}_std")
    several = len(entry.get("seeds", [])) > 1
    if not _finite(mean) and entry.get("diverged_seeds"):
        return "diverged"
    shown = _finite(mean) and _finite(std) and several
    return _num(mean, signed=signed) + (f" ± {std:.1f}" if shown else "")


def _ratio(v) -> str:
    return f"{v:.2f}×" if _finite(v) else "–"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> List[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _accuracy_section(results: Mapping) -> List[str]:
    base, teacher = results["baseline"], results["teacher"]
    if not (_finite(teacher.get("AP")) or _finite(base.get("AP"))):
        return []
    ref = results["config"].get("reference")
    extra = [f"ΔAP vs {ref}"] if ref else []

    def per_seed(entry):
        return " / ".join(_num(r.get("AP")) for r in entry.get("per_seed", {}).values())

    entries = [teacher, base, *results["methods"].values()]
    metrics = METRICS + tuple(k for k in OPTIONAL_METRICS if any(_finite(e.get(k)) for e in entries))
    rows = [["teacher"] + [_num(teacher.get(m)) for m in metrics] + ["", ""] + [""] * len(extra) + [""],
            ["baseline (student)"] + [_pm(base, m) for m in metrics] + ["", ""] + [""] * len(extra)
            + [per_seed(base)]]
    for name, m in results["methods"].items():
        delta = {k: m.get(k) for k in ("delta_AP", "delta_AP_std", "seeds")}
        vs_ref = {"d": m.get("delta_AP_vs_ref"), "d_std": m.get("delta_AP_vs_ref_std"), "seeds": m.get("seeds")}
        gap = m.get("gap_closed")
        rows.append([name] + [_pm(m, k) for k in metrics]
                    + [_pm(delta, "delta_AP", signed=True), f"{100 * gap:.0f}%" if _finite(gap) else "–"]
                    + ([_pm(vs_ref, "d", signed=True) if name != ref else ""] if ref else []) + [per_seed(m)])
    vs = f"; ΔAP vs {ref} the same, paired with {ref}'s seeds" if ref else ""
    return ["## Accuracy (COCO bbox AP)", "",
            "mean ± sample std over seeds; ΔAP vs the baseline student (± std of the per-seed paired "
            f"differences){vs}; gap closed = (AP − AP_base) / (AP_teacher − AP_base); AP per seed.",
            ""] + _table(["method", *metrics, "ΔAP", "gap closed", *extra, "AP per seed"], rows) + [""]


def _cost_row(name: str, c: Mapping, floor: Mapping, student: Mapping) -> List[str]:
    frac = c.get("loss_time_frac")
    return [name,
            _ratio(c["step_time_s"] / floor["step_time_s"]),
            _ratio(c["step_time_s"] / student["step_time_s"]),
            _ratio(c["peak_mem_bytes"] / floor["peak_mem_bytes"]),
            _ratio(c["peak_mem_bytes"] / student["peak_mem_bytes"]),
            f"{100 * frac:.1f}%" if _finite(frac) else "–",
            f"{1000 * c['step_time_s']:.1f}", f"{c['peak_mem_bytes'] / 2**20:.1f}"]


def _cost_section(results: Mapping, dev: str, c: Mapping) -> List[str]:
    sizes = sorted({tuple(s) for s in c.get("batch_image_sizes", [])})
    s, f = c["student"], c["floor"]
    rows = [_cost_row("student", s, f, s), _cost_row("floor", f, f, s)]
    rows += [_cost_row(name, m["cost"][dev], f, s) for name, m in results["methods"].items()
             if dev in m.get("cost", {})]
    lines = [f"## Cost ({dev}: {len(c.get('batch_image_sizes', []))} images of "
             f"{', '.join(f'{h}x{w}' for h, w in sizes)})", "",
             "Ratios to the floor (student step + teacher no-grad forward) and to the plain student "
             "step; loss = the distillers' own forward + backward over a student step. Median of "
             f"{c.get('iters')} steps after {c.get('warmup')} warm-up steps. "
             f"Memory: {c.get('memory_measure')}.",
             ""]
    lines += _table(["method", "step time / floor", "/ student", "peak mem / floor", "/ student",
                     "loss time / student step", "step ms", "peak MiB"], rows) + [""]
    ncpu = results["config"].get("machine", {}).get("cpu_count")
    loads = [x[0] for x in (c.get("load_before"), c.get("load_after")) if x]
    if dev == "cpu" and ncpu and loads and max(loads) > ncpu:
        lines += [f"**Timings contended**: load average {' / '.join(map(str, loads))} (before / after) "
                  f"on {ncpu} CPUs.", ""]
    return lines


def format_markdown(results: Mapping) -> str:
    """results.md: accuracy table (mean ± sample std over seeds), one cost table per device, notes."""
    cfg = results["config"]
    data = cfg.get("dataset", {})
    seeds = results["baseline"].get("seeds") or cfg.get("seeds") or []
    lines = [f"# Distillation benchmark: {cfg.get('arch', '?')} on {data.get('train', '?')}", ""]
    if cfg.get("command"):
        lines += [f"`{cfg['command']}`" + (f" ({cfg['date']})" if cfg.get("date") else ""), ""]
    lines += [f"Student iterations {cfg.get('iters', '?')}, "
              f"teacher iterations {cfg.get('teacher_iters', '?')}, "
              f"seeds {' '.join(map(str, seeds)) or '–'}; val set {data.get('val', '?')}.", ""]
    lines += _accuracy_section(results)
    if cfg.get("tuning"):
        lines += [tuning_markdown(cfg["tuning"])]
    for dev, c in results.get("cost", {}).items():
        lines += _cost_section(results, dev, c)
    notes = [f"- {name}: not applicable ({why})" for name, why in results.get("not_applicable", {}).items()]
    entries = [("baseline", results["baseline"])] + list(results["methods"].items())
    for name, e in entries:
        bad = e.get("diverged_seeds") or []
        if bad:
            rest = "its statistics are over the other seeds" if len(bad) < len(e["seeds"]) else "no result"
            notes.append(f"- {name}: diverged (non-finite loss) with seed {', '.join(map(str, bad))} "
                         f"({len(bad)} of {len(e['seeds'])} seeds); {rest}")
    notes += [f"- {n}" for n in cfg.get("notes", [])]
    if notes:
        lines += ["## Notes", ""] + notes + [""]
    return "\n".join(lines)


def tuning_markdown(tuning: Mapping[str, Mapping]) -> str:
    """The tuning table: AP on the tuning split of every method at every factor, and its pick."""
    if not tuning:
        return ""
    factors = sorted({float(f) for t in tuning.values() for f in t["aps"]})
    head = "| method | " + " | ".join(f"x{f:g}" for f in factors) + " | pick |"
    lines = ["## Tuning (seed 0, tuning split)", "",
             "Main loss weights scaled together by each factor of the published values; AP on the "
             "tuning split's val images; each method is reported at its pick.", "",
             head, "|" + "---|" * (len(factors) + 2)]
    for name, t in tuning.items():
        aps = {float(f): v for f, v in t["aps"].items()}
        cells = [("–" if aps.get(f) is None else f"{aps[f]:.1f}") for f in factors]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | x{float(t['pick']):g} |")
    return "\n".join(lines + [""])


# ----------------------------------------------------------------------------------------------
# Chart
# ----------------------------------------------------------------------------------------------
def plot_results(results: Mapping, path: str) -> str:
    """PNG: AP per method (mean, sample-std error bars; baseline and teacher as lines) and, when
    measured, step-time and peak-memory ratios to the floor."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    methods, base, teacher = results["methods"], results["baseline"], results["teacher"]
    names = list(methods)
    has_ap = any(_finite(methods[n].get("AP")) for n in names) or _finite(base.get("AP"))
    has_cost = any(_finite(methods[n].get("step_time_ratio")) for n in names)
    panels = [p for p, ok in (("ap", has_ap), ("cost", has_cost)) if ok] or ["ap"]
    fig = Figure(figsize=(max(6.0, 0.9 * len(names) + 3), 4.2 * len(panels)), tight_layout=True)
    FigureCanvasAgg(fig)
    x = list(range(len(names)))
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, i + 1)
        if panel == "ap":
            ap = [methods[n].get("AP") if _finite(methods[n].get("AP")) else 0.0 for n in names]
            err = [methods[n].get("AP_std") if _finite(methods[n].get("AP_std")) else 0.0 for n in names]
            ax.bar(x, ap, yerr=err, capsize=4, color="tab:blue", label="distilled student")
            for k, n in enumerate(names):
                if not _finite(methods[n].get("AP")):
                    why = "diverged" if methods[n].get("diverged_seeds") else "no result"
                    ax.text(k, 0, why, rotation=90, ha="center", va="bottom", color="tab:red")
            if _finite(base.get("AP")):
                std = base.get("AP_std") or 0.0
                ax.axhline(base["AP"], color="tab:gray", ls="--", label=f"baseline {base['AP']:.1f}")
                ax.axhspan(base["AP"] - std, base["AP"] + std, color="tab:gray", alpha=0.15)
            if _finite(teacher.get("AP")):
                ax.axhline(teacher["AP"], color="tab:red", label=f"teacher {teacher['AP']:.1f}")
            top = max([v + e for v, e in zip(ap, err)] + [teacher.get("AP") or 0.0, base.get("AP") or 0.0])
            ax.set_ylim(0, max(1.0, 1.15 * top))
            ax.set_ylabel("COCO AP")
            ax.set_title(f"{results['config'].get('arch', '')} student AP (mean ± std over seeds)")
        else:
            w = 0.38
            st = [methods[n].get("step_time_ratio") or 0.0 for n in names]
            pm = [methods[n].get("peak_mem_ratio") or 0.0 for n in names]
            ax.bar([v - w / 2 for v in x], st, w, label="step time / floor", color="tab:orange")
            ax.bar([v + w / 2 for v in x], pm, w, label="peak memory / floor", color="tab:green")
            ax.axhline(1.0, color="k", lw=0.8)
            ax.set_ylabel("ratio to floor")
            ax.set_title("Training cost (CPU, quickstart size)")
        ax.set_xlim(-0.75, len(names) - 0.25)
        ax.set_xticks(x)
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=110)
    return path


def write_results(results: Mapping, output_dir: str) -> Dict[str, str]:
    """Validate, then write results.json, results.md and results.png into `output_dir`."""
    validate_results(results)
    os.makedirs(output_dir, exist_ok=True)
    paths = {k: os.path.join(output_dir, f"results.{k}") for k in ("json", "md", "png")}
    with open(paths["json"], "w") as f:
        json.dump(results, f, indent=2, allow_nan=False)
    with open(paths["md"], "w") as f:
        f.write(format_markdown(results))
    plot_results(results, paths["png"])
    return paths
