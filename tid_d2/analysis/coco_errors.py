"""
COCO error analysis: the Hoiem-style false-positive breakdown of cocoapi's `CocoEval.analyze`.

For every category, seven cumulative PR curves are computed with pycocotools' `COCOeval`:

  C75  PR at IoU .75                        C50  PR at IoU .5
  Loc  PR at IoU .1: localization errors ignored (duplicate detections still count)
  Sim  Loc after removing supercategory false positives: GTs of the other categories of the same
       supercategory are ignore regions, so a detection matched to one of them at IoU .1 is removed
  Oth  likewise with the GTs of all other categories (all class confusions removed)
  BG   all background false positives removed: precision 1 up to Oth's maximum recall
  FN   1: what is left are missed objects (false negatives)

Curves are averaged over the categories of a scope (all categories, or one supercategory) that have
ground truth in the area range, as COCO's AP does. Only boxes are analyzed (iouType "bbox").
"""
import contextlib
import io
import json
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

__all__ = [
    "AREA_RANGES",
    "STAGES",
    "ErrorAnalysis",
    "analyze_errors",
    "load_detections",
    "load_ground_truth",
    "plot_breakdown",
    "save_breakdown_png",
    "scope_curves",
    "scope_masks",
    "summarize",
    "summary_markdown",
    "write_report",
]

logger = logging.getLogger(__name__)

STAGES: Tuple[str, ...] = ("C75", "C50", "Loc", "Sim", "Oth", "BG", "FN")
#: COCO's object area ranges (pixels²), as in pycocotools' `Params`.
AREA_RANGES: Dict[str, Tuple[float, float]] = {
    "all": (0.0, 1e10),
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, 1e10),
}
#: Stage colours of the original plots (C75/C50 in two light greys to tell them apart).
STAGE_COLORS: Tuple[Tuple[float, float, float], ...] = (
    (0.92, 0.92, 0.92),
    (0.72, 0.72, 0.72),
    (0.31, 0.51, 0.74),
    (0.75, 0.31, 0.30),
    (0.36, 0.90, 0.38),
    (0.50, 0.39, 0.64),
    (1.00, 0.60, 0.00),
)
_IGNORE_REGION = "_analysis_ignore_region"


@dataclass(frozen=True, eq=False)
class ErrorAnalysis:
    """
    The seven stage PR curves of every category for one detection set.

    Attributes:
        recall: (R,) COCO's recall thresholds.
        precision: (S=7, R, K, A) interpolated precision per stage/recall/category/area; NaN where
            category k has no (non-crowd) ground truth in area range a.
        category_ids, category_names, supercategories: (K,) sorted by category id.
        areas: (A,) area range names (keys of AREA_RANGES).
    """

    recall: np.ndarray
    precision: np.ndarray
    category_ids: Tuple[int, ...]
    category_names: Tuple[str, ...]
    supercategories: Tuple[str, ...]
    areas: Tuple[str, ...]


# ----------------------------------------------------------------------------------------------
# Input
# ----------------------------------------------------------------------------------------------
def _read_json(path, what: str):
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{what} file {path} is not valid JSON: {e}") from None


def _numeric_column(rows: Sequence[dict], key: str, path, what: str, width: int = 0) -> np.ndarray:
    """Stack `row[key]` of all rows into a float array, (N,) or (N, width); errors name the row."""
    shape = (len(rows), width) if width else (len(rows),)
    if not rows:
        return np.zeros(shape)
    try:
        col = np.asarray([r[key] for r in rows], dtype=np.float64)
        ok = col.shape == shape
    except (KeyError, TypeError, ValueError):
        ok = False
    if ok and np.isfinite(col).all():
        return col
    for i, r in enumerate(rows):
        v = r.get(key) if isinstance(r, dict) else None
        shape_ok = (isinstance(v, (list, tuple)) and len(v) == width) if width else np.isscalar(v)
        try:
            good = shape_ok and np.isfinite(np.asarray(v, dtype=np.float64)).all()
        except (TypeError, ValueError):
            good = False
        if not good:
            want = f"a list of {width} numbers" if width else "a number"
            raise ValueError(
                f"{path}: {what} {i} has no valid '{key}' (expected {want}), got {r!r}"
            )
    raise ValueError(f"{path}: '{key}' of the {what}s could not be read")


def load_ground_truth(path) -> dict:
    """
    Read and check a COCO-format ground-truth json. Returns a COCO dataset dict whose annotations
    keep only what box evaluation needs (ids renumbered 1..N: pycocotools reads id 0 as "no match"),
    with `area` (default w*h) and `iscrowd` (default 0) filled in, and categories sorted by id, each
    with a `supercategory` (default: the category's own name).
    """
    data = _read_json(path, "ground-truth")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a COCO dict with 'images', 'annotations', 'categories'")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise ValueError(f"{path}: key '{key}' is missing or not a list")
    if not data["images"] or not data["categories"]:
        raise ValueError(f"{path}: 'images' and 'categories' must not be empty")
    try:
        img_ids = np.array([int(im["id"]) for im in data["images"]], dtype=np.int64)
        cats = sorted(
            (
                {"id": int(c["id"]), "name": str(c["name"]),
                 "supercategory": str(c.get("supercategory") or c["name"])}
                for c in data["categories"]
            ),
            key=lambda c: c["id"],
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: every image needs an integer 'id' and every category an "
                         f"integer 'id' and a 'name' ({type(e).__name__}: {e})") from None
    cat_ids = np.array([c["id"] for c in cats], dtype=np.int64)
    for name, ids in (("image", img_ids), ("category", cat_ids)):
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            raise ValueError(f"{path}: duplicate {name} id {int(uniq[counts > 1][0])}")

    anns = data["annotations"]
    if not all(isinstance(a, dict) for a in anns):
        raise ValueError(f"{path}: every annotation must be a dict")
    a_img = _numeric_column(anns, "image_id", path, "annotation").astype(np.int64)
    a_cat = _numeric_column(anns, "category_id", path, "annotation").astype(np.int64)
    boxes = _numeric_column(anns, "bbox", path, "annotation", width=4)
    _check_known_ids(a_img, img_ids, path, "annotation", "image_id", "its 'images'")
    _check_known_ids(a_cat, cat_ids, path, "annotation", "category_id", "its 'categories'")
    areas = np.array([a.get("area", np.nan) for a in anns], dtype=np.float64).reshape(-1)
    areas = np.where(np.isfinite(areas), areas, boxes[:, 2] * boxes[:, 3])
    crowd = np.array([int(bool(a.get("iscrowd", 0))) for a in anns], dtype=np.int64)
    if not anns:
        logger.warning("%s has no annotations: every AP will be undefined (n/a).", path)
    annotations = [
        {"id": i + 1, "image_id": int(im), "category_id": int(c), "bbox": b, "area": float(ar),
         "iscrowd": int(cr)}
        for i, (im, c, b, ar, cr) in enumerate(
            zip(a_img, a_cat, boxes.tolist(), areas, crowd)
        )
    ]
    images = [{"id": int(i)} for i in img_ids]
    return {"images": images, "annotations": annotations, "categories": cats}


def _check_known_ids(ids: np.ndarray, known: np.ndarray, path, what: str, key: str, where: str):
    unknown = ~np.isin(ids, known)
    if unknown.any():
        bad = np.unique(ids[unknown])
        raise ValueError(
            f"{path}: {int(unknown.sum())} {what}(s) reference {key} values not in {where}: "
            f"{bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}"
        )


def load_detections(path, gt: dict, gt_path="the ground truth") -> List[dict]:
    """
    Read and check a COCO results json (`[{"image_id", "category_id", "bbox", "score"}, ...]`, as
    Detectron2's COCOEvaluator writes `coco_instances_results.json`) against `gt`
    (from `load_ground_truth`). Returns annotation dicts for pycocotools (ids 1..N, area = w*h).
    """
    dets = _read_json(path, "detections")
    if not isinstance(dets, list):
        raise ValueError(f"{path}: expected a COCO results list [{{image_id, category_id, bbox, "
                         f"score}}, ...], got a {type(dets).__name__}")
    if not all(isinstance(d, dict) for d in dets):
        raise ValueError(f"{path}: every detection must be a dict")
    if not dets:
        logger.warning("%s holds no detections: every AP except FN will be 0.", path)
    d_img = _numeric_column(dets, "image_id", path, "detection").astype(np.int64)
    d_cat = _numeric_column(dets, "category_id", path, "detection").astype(np.int64)
    boxes = _numeric_column(dets, "bbox", path, "detection", width=4)
    scores = _numeric_column(dets, "score", path, "detection")
    img_ids = np.array([im["id"] for im in gt["images"]], dtype=np.int64)
    cat_ids = np.array([c["id"] for c in gt["categories"]], dtype=np.int64)
    _check_known_ids(d_img, img_ids, path, "detection", "image_id", f"the images of {gt_path}")
    _check_known_ids(d_cat, cat_ids, path, "detection", "category_id",
                     f"the categories of {gt_path}")
    return [
        {"id": i + 1, "image_id": int(im), "category_id": int(c), "bbox": b, "score": float(s),
         "area": float(b[2] * b[3]), "iscrowd": 0}
        for i, (im, c, b, s) in enumerate(zip(d_img, d_cat, boxes.tolist(), scores))
    ]


# ----------------------------------------------------------------------------------------------
# Analysis
# ----------------------------------------------------------------------------------------------
class _RegionIgnoringCOCOeval(COCOeval):
    """COCOeval that keeps GTs flagged `_IGNORE_REGION` as ignore regions (its `_prepare` rewrites
    `ignore` from `iscrowd` alone)."""

    def _prepare(self):
        super()._prepare()
        for gts in self._gts.values():
            for g in gts:
                g["ignore"] = bool(g["ignore"] or g.get(_IGNORE_REGION, 0))


def _coco(dataset: dict) -> COCO:
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


def _precision(
    gt: dict, dt: dict, iou_thrs: Sequence[float], areas: Sequence[str], max_dets: int
) -> Tuple[np.ndarray, np.ndarray]:
    """COCOeval's accumulated precision: (T, R, K, A), -1 where a category has no GT; and (R,)."""
    gt = dict(gt, annotations=[dict(a) for a in gt["annotations"]])  # COCOeval writes into them
    ev = _RegionIgnoringCOCOeval(_coco(gt), _coco(dt), "bbox")
    ev.params.iouThrs = np.asarray(iou_thrs, dtype=np.float64)
    ev.params.maxDets = [max_dets]
    ev.params.areaRng = [list(AREA_RANGES[a]) for a in areas]
    ev.params.areaRngLbl = list(areas)
    with contextlib.redirect_stdout(io.StringIO()):
        ev.evaluate()
        ev.accumulate()
    return ev.eval["precision"][..., 0], np.asarray(ev.params.recThrs)


def _confusion_ignore_regions(gt: dict, dets: List[dict], same_super_only: bool) -> List[dict]:
    """
    Copies of other-category GTs relabelled as category k and flagged as ignore regions, for every
    (image, k) that has detections of k: evaluating k against them with COCOeval is the original
    per-category re-evaluation (dt of k only, GTs of the other categories ignored).
    """
    anns = gt["annotations"]
    if not anns or not dets:
        return []
    cat_ids = np.array([c["id"] for c in gt["categories"]])
    _, sup_of_cat = np.unique([c["supercategory"] for c in gt["categories"]], return_inverse=True)
    g_img = np.array([a["image_id"] for a in anns])
    g_cat = np.searchsorted(cat_ids, [a["category_id"] for a in anns])
    pairs = np.unique(
        np.array([[d["image_id"], d["category_id"]] for d in dets], dtype=np.int64), axis=0
    )
    p_img, p_cat = pairs[:, 0], np.searchsorted(cat_ids, pairs[:, 1])

    # join every (image, k) pair with the GTs of its image
    order = np.argsort(g_img, kind="stable")
    starts = np.searchsorted(g_img[order], p_img, side="left")
    counts = np.searchsorted(g_img[order], p_img, side="right") - starts
    pair_idx = np.repeat(np.arange(len(pairs)), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    gt_idx = order[np.repeat(starts, counts) + offsets]

    keep = g_cat[gt_idx] != p_cat[pair_idx]
    if same_super_only:
        keep &= sup_of_cat[g_cat[gt_idx]] == sup_of_cat[p_cat[pair_idx]]
    gt_idx, new_cat = gt_idx[keep], cat_ids[p_cat[pair_idx[keep]]]
    first_id = len(anns) + 1
    return [
        dict(anns[g], id=first_id + i, category_id=int(c), **{_IGNORE_REGION: 1})
        for i, (g, c) in enumerate(zip(gt_idx.tolist(), new_cat))
    ]


def analyze_errors(
    gt: dict, detections: List[dict], areas: Sequence[str] = ("all",), max_dets: int = 100
) -> ErrorAnalysis:
    """
    The seven-stage breakdown of `detections` (from `load_detections`) against `gt`
    (from `load_ground_truth`), with three COCOeval runs: IoU {.75, .5, .1}; IoU .1 with the
    same-supercategory GTs as ignore regions (Sim); IoU .1 with all other GTs as ignore regions
    (Oth).
    """
    unknown = [a for a in areas if a not in AREA_RANGES]
    if unknown or not areas:
        raise ValueError(f"unknown area range(s) {unknown}; choose from {list(AREA_RANGES)}")
    areas = tuple(areas)
    dt = {"images": gt["images"], "categories": gt["categories"], "annotations": detections}
    base, recall = _precision(gt, dt, (0.75, 0.5, 0.1), areas, max_dets)
    stages = [base]
    for same_super_only in (True, False):
        extra = _confusion_ignore_regions(gt, detections, same_super_only)
        gt_ig = dict(gt, annotations=gt["annotations"] + extra)
        stages.append(_precision(gt_ig, dt, (0.1,), areas, max_dets)[0])
    prec = np.concatenate(stages, axis=0)  # (5, R, K, A): C75 C50 Loc Sim Oth
    prec = np.concatenate([prec, prec[4:5] > 0, np.ones_like(prec[:1])], axis=0)
    valid = base[0, 0] >= 0  # (K, A): COCOeval marks categories without GT with -1
    prec = np.where(valid[None, None], prec, np.nan)
    cats = gt["categories"]
    return ErrorAnalysis(
        recall=recall,
        precision=prec,
        category_ids=tuple(c["id"] for c in cats),
        category_names=tuple(c["name"] for c in cats),
        supercategories=tuple(c["supercategory"] for c in cats),
        areas=areas,
    )


def scope_masks(analysis: ErrorAnalysis) -> Dict[str, np.ndarray]:
    """(K,) boolean masks: "overall" and one per supercategory (sorted by name)."""
    sup = np.array(analysis.supercategories)
    masks = {"overall": np.ones(len(sup), dtype=bool)}
    masks.update({f"supercategory:{s}": sup == s for s in sorted(set(sup.tolist()))})
    return masks


def scope_curves(analysis: ErrorAnalysis, mask: np.ndarray) -> np.ndarray:
    """(S, R, A) stage curves averaged over the categories in `mask` that have GT (NaN if none)."""
    p = analysis.precision[:, :, mask]  # (S, R, k, A)
    n = np.isfinite(p).sum(axis=2)
    total = np.nan_to_num(p).sum(axis=2)
    return np.divide(total, n, out=np.full(total.shape, np.nan), where=n > 0)


def _aps(curves: np.ndarray) -> np.ndarray:
    """(S, R, A) -> (S, A): AP = mean precision over the recall thresholds."""
    return curves.mean(axis=1)


def summarize(analysis: ErrorAnalysis) -> dict:
    """
    {"overall": {area: {stage: AP}}, "supercategories": {name: ...}, "categories": {name: ...}};
    AP is None where the scope has no ground truth in that area.
    """

    def table(aps: np.ndarray) -> dict:
        return {
            area: {s: (None if math.isnan(v) else round(float(v), 6)) for s, v in zip(STAGES, col)}
            for area, col in zip(analysis.areas, aps.T)
        }

    out = {"overall": None, "supercategories": {}, "categories": {}}
    for scope, mask in scope_masks(analysis).items():
        t = table(_aps(scope_curves(analysis, mask)))
        if scope == "overall":
            out["overall"] = t
        else:
            out["supercategories"][scope.split(":", 1)[1]] = t
    per_cat = _aps(analysis.precision)  # (S, K, A)
    for k, name in enumerate(analysis.category_names):
        out["categories"][name] = table(per_cat[:, k])
    return out


# ----------------------------------------------------------------------------------------------
# Output
# ----------------------------------------------------------------------------------------------
def _ap_label(ap: float) -> str:
    if math.isnan(ap):
        return "[n/a]"
    return "[1.00]" if round(ap * 1000) >= 1000 else f"[.{round(ap * 1000):03d}]"


def plot_breakdown(ax, recall: np.ndarray, curves: np.ndarray, title: str) -> None:
    """
    Stacked-area PR breakdown on a matplotlib Axes. curves: (S, R) stage curves; band s spans
    curve s-1 .. curve s (a running max keeps the bands non-negative), legend "[.512] C75".
    """
    aps = curves.mean(axis=1)
    drawn = np.maximum.accumulate(np.nan_to_num(curves), axis=0)
    lower = np.vstack([np.zeros_like(recall), drawn[:-1]])
    handles = [
        ax.fill_between(recall, lo, hi, facecolor=c, edgecolor="k", linewidth=0.4,
                        label=f"{_ap_label(ap)} {s}")
        for lo, hi, c, ap, s in zip(lower, drawn, STAGE_COLORS, aps, STAGES)
    ]
    if np.isnan(curves).all():
        ax.text(0.5, 0.5, "no ground truth", ha="center", va="center", fontsize=12)
    ax.legend(handles=handles, loc="lower left", fontsize=9, framealpha=0.9)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="recall", ylabel="precision", title=title)


def save_breakdown_png(
    path, recall: np.ndarray, curves: Sequence[np.ndarray], titles: Sequence[str]
) -> Path:
    """Write one PNG with a breakdown panel per (S, R) curve set, side by side (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.2 * len(curves), 4.8), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(curves), squeeze=False)[0]
    for ax, c, t in zip(axes, curves, titles):
        plot_breakdown(ax, recall, c, t)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    return path


def _fmt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def summary_markdown(summaries: Mapping[str, dict], sources: Mapping[str, str]) -> str:
    """
    Markdown tables of the stage APs per scope and area, for one model or two (then each cell reads
    "first → second (delta)").
    """
    names = list(summaries)
    lines = ["# COCO error analysis", ""]
    lines += [f"- **{n}**: `{sources[n]}`" for n in names]
    lines += [
        "",
        "Cumulative stages: C75/C50 = AP at IoU .75/.5; Loc = AP at IoU .1 (localization errors "
        "ignored); Sim = supercategory confusions removed; Oth = all class confusions removed; "
        "BG = background false positives removed; FN = 1 (the rest are missed objects).",
        "",
        "| scope | area | " + " | ".join(STAGES) + " |",
        "|---|---|" + "---:|" * len(STAGES),
    ]

    def scope_tables(summary: dict) -> List[Tuple[str, dict]]:
        sups = summary["supercategories"].items()
        return [("overall", summary["overall"])] + [(f"supercategory: {k}", t) for k, t in sups]

    per_model = [scope_tables(summaries[n]) for n in names]
    for (label, table), *others in zip(*per_model):
        for area, aps in table.items():
            cells = []
            for stage in STAGES:
                b = aps[stage]
                if not others:
                    cells.append(_fmt(b))
                    continue
                d = others[0][1][area][stage]
                delta = "n/a" if b is None or d is None else f"{d - b:+.3f}"
                cells.append(f"{_fmt(b)} → {_fmt(d)} ({delta})")
            lines.append(f"| {label} | {area} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _deltas(first: dict, second: dict) -> dict:
    def sub(a: dict, b: dict) -> dict:
        return {
            area: {s: (None if a[area][s] is None or b[area][s] is None
                       else round(b[area][s] - a[area][s], 6)) for s in STAGES}
            for area in a
        }

    return {
        "overall": sub(first["overall"], second["overall"]),
        "supercategories": {
            s: sub(t, second["supercategories"][s]) for s, t in first["supercategories"].items()
        },
        "categories": {c: sub(t, second["categories"][c]) for c, t in first["categories"].items()},
    }


def _file_stem(scope: str, area: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{scope.replace(':', '-')}-{area}")


def write_report(
    output_dir, analyses: Mapping[str, ErrorAnalysis], sources: Mapping[str, str]
) -> Dict[str, object]:
    """
    Write `<scope>-<area>.png` for "overall" and every supercategory (one panel per model, side by
    side when two are given), `summary.md` and `summary.json` (with "delta" = second - first when
    two). Returns {"pngs": [...], "summary_md": path, "summary_json": path, "summary": dict}.
    """
    names = list(analyses)
    if not 1 <= len(names) <= 2:
        raise ValueError(f"write_report compares one or two detection sets, got {len(names)}")
    first = analyses[names[0]]
    for other in list(analyses.values())[1:]:
        if other.category_ids != first.category_ids or other.areas != first.areas:
            raise ValueError("analyses to compare must share categories and area ranges")
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)

    pngs = []
    for scope, mask in scope_masks(first).items():
        curves = {n: scope_curves(a, mask) for n, a in analyses.items()}  # (S, R, A) each
        for ai, area in enumerate(first.areas):
            label = f"{scope.replace('supercategory:', '')} ({area})"
            titles = [f"{n}: {label}" if len(names) > 1 else label for n in names]
            pngs.append(save_breakdown_png(
                out / f"{_file_stem(scope, area)}.png", first.recall,
                [c[..., ai] for c in curves.values()], titles,
            ))

    summaries = {n: summarize(a) for n, a in analyses.items()}
    report = {
        "stages": list(STAGES),
        "areas": list(first.areas),
        "models": {n: dict(detections=str(sources[n]), **summaries[n]) for n in names},
    }
    if len(names) == 2:
        report["delta"] = _deltas(summaries[names[0]], summaries[names[1]])
    md_path, json_path = out / "summary.md", out / "summary.json"
    md_path.write_text(summary_markdown(summaries, {n: str(sources[n]) for n in names}))
    json_path.write_text(json.dumps(report, indent=2))
    return {"pngs": pngs, "summary_md": md_path, "summary_json": json_path, "summary": report}
