"""The accuracy side of the benchmark: what to train (method specs, TID ablations, dataset variants),
each run's config, and one in-process training + COCO evaluation, cached by config hash."""
import gc
import hashlib
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from detectron2.config import CfgNode
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.utils.env import seed_all_rng

from ..data.shapes import DEFAULT_SIDES, register_shapes, shapes_paths, variant_dirname
from ..distill.base import DISTILLER_REGISTRY, registered_methods
from ..engine.defaults import setup_cfg
from .report import METRICS

__all__ = [
    "PROJECT_ROOT",
    "ARCHS",
    "default_methods",
    "STANDARD_ABLATIONS",
    "MethodSpec",
    "FLOOR",
    "parse_method",
    "parse_ablation",
    "expand_ablations",
    "not_applicable_reason",
    "DatasetSpec",
    "register_benchmark_datasets",
    "config_file",
    "build_run_cfg",
    "config_hash",
    "bbox_metrics",
    "train_and_evaluate",
]

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: dense detectors, and two-stage ones (Detectron2's Faster / Mask R-CNN made distillable)
DENSE_ARCHS = ("GFL", "ATSS", "FCOS")
TWO_STAGE_ARCHS = ("FasterRCNN", "MaskRCNN")
ARCHS = DENSE_ARCHS + TWO_STAGE_ARCHS
#: --arch -> its META_ARCHITECTURE, where the two differ
_META_ARCHS = {"FasterRCNN": "DistillableRCNN", "MaskRCNN": "DistillableRCNN"}


#: the order of the built-in methods in the benchmark's runs and tables (TID, then the peers)
_TABLE_ORDER = ("tid", "fitnet", "fgd", "pkd", "cwd", "ld", "pgd", "crosskd")


def default_methods() -> Tuple[str, ...]:
    """Every registered method: the built-in ones in table order, then any other (a plugin) in
    registration order."""
    names = tuple(registered_methods())
    return tuple(sorted(names, key=lambda n: _TABLE_ORDER.index(n) if n in _TABLE_ORDER else len(_TABLE_ORDER)))


#: `--ablations standard`: one TID switch at a time (docs/method.md, "Ablation switches").
STANDARD_ABLATIONS = (
    "tasks=cls", "tasks=reg", "thresholds=fixed", "ldam=off", "soft=on",
    "alpha=0.5", "beta=0.5", "gamma=0", "gamma=0.5", "precedence=key", "min_pos=0",
)
#: the first reading of LDAM (key areas first, tau_K = mid x mid, no floor under assigner thresholds)
TID_V1_ABLATION = "precedence=key,tau_k=2.25,tau_w=0.4,min_pos=0"
METRIC_FILE = "benchmark_metrics.json"

# ablation key -> (config key, allowed values -> config value, or a converter for numbers)
_ABLATION_KEYS = {
    "tasks": ("MODEL.DISTILL.TID.TASKS", {"both": "both", "cls": "cls", "reg": "reg"}),
    "thresholds": ("MODEL.DISTILL.TID.THRESHOLD_MODE", {"assigner": "assigner", "fixed": "fixed"}),
    "ldam": ("MODEL.DISTILL.TID.LDAM", {"on": True, "off": False}),
    "soft": ("MODEL.DISTILL.TID.SOFT_WEIGHTS", {"on": True, "off": False}),
    "alpha": ("MODEL.DISTILL.TID.ALPHA", float),
    "beta": ("MODEL.DISTILL.TID.BETA", float),
    "gamma": ("MODEL.DISTILL.TID.GAMMA", float),
    "lambda": ("MODEL.DISTILL.TID.LOSS_WEIGHT", float),
    "precedence": ("MODEL.DISTILL.TID.AREA_PRECEDENCE", {"weak": "weak", "key": "key"}),
    "tau_k": ("MODEL.DISTILL.TID.KEY_THRESH", float),
    "tau_w": ("MODEL.DISTILL.TID.WEAK_THRESH", float),
    "min_pos": ("MODEL.DISTILL.TID.POS_THRESH", float),  # the floor under assigner thresholds
    "normalize": ("MODEL.DISTILL.TID.NORMALIZE", {"all": "all", "area": "area"}),
}

# (size, arch) -> config file of each role; "realistic" is the COCO setting, used for cost only.
_CONFIG_FILES = {
    ("quickstart", "GFL"): ("quickstart/GFL-teacher", "quickstart/GFL-student", "quickstart/TID-GFL"),
    ("quickstart", "ATSS"): ("quickstart/ATSS-teacher", "quickstart/ATSS-student", "quickstart/TID-ATSS"),
    ("quickstart", "FCOS"): ("quickstart/FCOS-teacher", "quickstart/FCOS-student", "quickstart/TID-FCOS"),
    ("quickstart", "FasterRCNN"): ("quickstart/FasterRCNN-teacher", "quickstart/FasterRCNN-student",
                                   "quickstart/TID-FasterRCNN"),
    ("quickstart", "MaskRCNN"): ("quickstart/MaskRCNN-teacher", "quickstart/MaskRCNN-student",
                                 "quickstart/TID-MaskRCNN"),
    ("realistic", "GFL"): ("GFL-R101-2x-ms", "GFL-R50-1x", "TID-R50"),
    ("realistic", "ATSS"): ("ATSS-R101-1x", "ATSS-R50-1x", "TID-ATSS-R50"),
    ("realistic", "FasterRCNN"): ("FasterRCNN-R101-FPN-3x", "FasterRCNN-R50-FPN-1x", "TID-FasterRCNN-R101-R50"),
    ("realistic", "MaskRCNN"): ("MaskRCNN-R101-FPN-3x", "MaskRCNN-R50-FPN-1x", "TID-MaskRCNN-R101-R50"),
}
_ROLES = ("teacher", "student", "distill")


@dataclass(frozen=True)
class MethodSpec:
    """One benchmark entry: its results.json name, MODEL.DISTILL.METHODS and extra config overrides
    (a flat KEY VALUE list, as on a command line)."""

    name: str
    methods: Tuple[str, ...]
    opts: Tuple[str, ...] = ()


#: student training + teacher no-grad forward with no distiller: what every method costs at least.
FLOOR = MethodSpec("floor", ())


def parse_method(text: str) -> MethodSpec:
    """'tid' -> MethodSpec('tid', ('TID',)); 'tid+ld' combines methods (names case-insensitive);
    'fgd[MODEL.DISTILL.FGD.ALPHA=1e-4,...]' adds MODEL.DISTILL overrides to the entry."""
    head, bracket, rest = str(text).partition("[")
    opts = []
    if bracket:
        if not rest.endswith("]") or not rest[:-1].strip():
            raise ValueError(f"--methods: {text!r} must read METHOD[KEY=VALUE,...]")
        for item in rest[:-1].split(","):
            key, eq, value = (x.strip() for x in item.partition("="))
            if not eq or not value or not key.upper().startswith("MODEL.DISTILL."):
                raise ValueError(f"--methods: cannot read {item!r} in {text!r}; use "
                                 "KEY=VALUE with KEY under MODEL.DISTILL")
            opts += [key.upper(), value]
    known = {name: cls.__name__ for name, cls in registered_methods().items()}
    parts = [p.strip().lower() for p in head.split("+")]
    bad = [p for p in parts if p not in known]
    if bad or not parts:
        raise ValueError(f"--methods: unknown method {bad or text!r} in {text!r}; known: {sorted(known)} "
                         "(combine with '+', e.g. tid+ld)")
    if len(set(parts)) != len(parts):
        raise ValueError(f"--methods: {text!r} names a method twice")
    name = "+".join(parts) + (f"[{','.join(f'{k}={v}' for k, v in zip(opts[::2], opts[1::2]))}]" if opts else "")
    return MethodSpec(name, tuple(known[p].upper() for p in parts), tuple(opts))


def _ablation_value(key: str, value: str):
    cfg_key, allowed = _ABLATION_KEYS[key]
    if isinstance(allowed, dict):
        if value not in allowed:
            raise ValueError(f"--ablations: {key}={value} is not one of {key}={'|'.join(allowed)}")
        return cfg_key, allowed[value], value
    try:
        number = allowed(value)
    except ValueError:
        raise ValueError(f"--ablations: {key}={value} needs a number, e.g. {key}=0.5") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"--ablations: {key}={value} must be a finite number >= 0")
    return cfg_key, number, f"{number:g}"


def parse_ablation(text: str) -> MethodSpec:
    """'tasks=cls' or 'tasks=cls,ldam=off' -> TID with MODEL.DISTILL.TID overrides, named 'tid[tasks=cls]'."""
    opts, shown = [], []
    for item in str(text).split(","):
        key, sep, value = item.strip().partition("=")
        key, value = key.strip().lower(), value.strip().lower()
        if not sep or key not in _ABLATION_KEYS:
            raise ValueError(f"--ablations: cannot read {item!r} in {text!r}; use KEY=VALUE with KEY in "
                             f"{sorted(_ABLATION_KEYS)}, or 'standard'")
        cfg_key, cfg_value, canonical = _ablation_value(key, value)
        if cfg_key in opts:
            raise ValueError(f"--ablations: {text!r} sets {key} twice")
        opts += [cfg_key, str(cfg_value)]
        shown.append(f"{key}={canonical}")
    return MethodSpec(f"tid[{','.join(shown)}]", ("TID",), tuple(opts))


def expand_ablations(names: Sequence[str]) -> List[str]:
    """'standard' -> STANDARD_ABLATIONS; other names unchanged (order kept, duplicates dropped)."""
    out = []
    for n in names:
        for x in STANDARD_ABLATIONS if n == "standard" else [n]:
            if x not in out:
                out.append(x)
    return out


def not_applicable_reason(spec: MethodSpec, arch: str) -> Optional[str]:
    """Why `spec` cannot distill `arch` detectors (e.g. LD needs GFL box distributions), or None."""
    detector = META_ARCH_REGISTRY.get(_META_ARCHS.get(arch, arch))
    dense = [m for m in spec.methods if DISTILLER_REGISTRY.get(m).needs_dense_class_head]
    if dense and not getattr(detector, "has_dense_class_head", True):
        return (f"{'+'.join(n.lower() for n in dense)} needs a dense classification head; {arch}'s dense "
                "head is its class-agnostic RPN")
    needs = [m for m in spec.methods if DISTILLER_REGISTRY.get(m).needs_box_distributions]
    if needs and not getattr(detector, "has_box_distributions", False):
        return (f"{'+'.join(n.lower() for n in needs)} distills GFL box-side distributions; "
                f"{arch} predicts none")
    opts = dict(zip(spec.opts[::2], spec.opts[1::2]))
    no_floor = "MODEL.DISTILL.TID.POS_THRESH" in opts and float(opts["MODEL.DISTILL.TID.POS_THRESH"]) == 0
    if no_floor and opts.get("MODEL.DISTILL.TID.THRESHOLD_MODE", "assigner") != "fixed" and not getattr(
        detector, "gives_pos_thresholds", False
    ):
        return f"TID without a floor takes the assigner's own IoU thresholds; {arch}'s assigner gives none"
    return None


@dataclass(frozen=True)
class DatasetSpec:
    """A tid_shapes variant (see tid_d2/data/shapes.py); root None: $TID_DATASETS or ./datasets."""

    num_images: int = 800
    num_val_images: int = 200
    difficulty: float = 1.0
    seed: int = 0
    sides: Tuple[int, int] = DEFAULT_SIDES
    root: Optional[str] = None


def register_benchmark_datasets(spec: DatasetSpec) -> Tuple[str, str]:
    """Register the train/val splits of `spec` (named after their params); returns their names."""
    names = []
    for split, n in (("train", spec.num_images), ("val", spec.num_val_images)):
        dirname = variant_dirname(split, n, spec.seed, spec.difficulty, tuple(spec.sides))
        name = f"bench_{dirname}_{split}"
        json_file = shapes_paths(spec.root, split, dirname)[0]
        if name in DatasetCatalog and MetadataCatalog.get(name).get("json_file") != json_file:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        if name not in DatasetCatalog:
            register_shapes(name, split, root=spec.root, num_images=n, difficulty=spec.difficulty,
                            seed=spec.seed, sides=tuple(spec.sides))
        names.append(name)
    return names[0], names[1]


def config_file(arch: str, role: str, size: str = "quickstart") -> str:
    """The config file of `role` (teacher | student | distill) for `arch` at `size`."""
    if (size, arch) not in _CONFIG_FILES:
        have = [a for (z, a) in _CONFIG_FILES if z == size]
        raise ValueError(f"no {size} configs for --arch {arch}; {size} configs exist for {have}")
    if role not in _ROLES:
        raise ValueError(f"role must be one of {_ROLES}, got {role!r}")
    name = _CONFIG_FILES[(size, arch)][_ROLES.index(role)]
    return os.path.join(PROJECT_ROOT, "configs", f"{name}.yaml")


def _scale_schedule(cfg: CfgNode, iters: int) -> None:
    """MAX_ITER = iters, with LR steps and warm-up scaled from the config's own schedule."""
    if iters < 1:
        raise ValueError(f"SOLVER.MAX_ITER (--iters / --teacher-iters) must be >= 1, got {iters}")
    f = iters / cfg.SOLVER.MAX_ITER
    cfg.SOLVER.STEPS = tuple(sorted({max(1, round(s * f)) for s in cfg.SOLVER.STEPS if round(s * f) < iters}))
    cfg.SOLVER.WARMUP_ITERS = int(round(cfg.SOLVER.WARMUP_ITERS * f))
    cfg.SOLVER.MAX_ITER = int(iters)
    cfg.SOLVER.CHECKPOINT_PERIOD = 10**9  # model_final.pth only


def build_run_cfg(
    arch: str,
    role: str,
    *,
    seed: int,
    output_dir: str,
    datasets: Tuple[str, str],
    spec: Optional[MethodSpec] = None,
    iters: Optional[int] = None,  # SOLVER.MAX_ITER; None: the config's
    device: str = "cpu",
    teacher_weights: str = "",
    size: str = "quickstart",
    opts: Sequence[str] = (),
) -> CfgNode:
    """
    The frozen config of one benchmark run: `role` teacher | student | distill (the latter with
    `spec`'s methods and overrides, the teacher read from `teacher_weights`). `opts` (KEY VALUE ...)
    are applied last, to the teacher inside a distill config too.
    """
    cfg = setup_cfg(config_file(arch, role, size), freeze=False)
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (datasets[0],), (datasets[1],)
    cfg.MODEL.DEVICE = device
    cfg.SEED = int(seed)
    cfg.OUTPUT_DIR = output_dir
    _scale_schedule(cfg, cfg.SOLVER.MAX_ITER if iters is None else iters)
    if role == "distill":
        if spec is None:
            raise ValueError("a distill config needs a MethodSpec")
        cfg.MODEL.DISTILL.METHODS = list(spec.methods)
        cfg.MODEL.TEACHER.WEIGHTS = teacher_weights
        cfg.MODEL.TEACHER.OPTS = list(cfg.MODEL.TEACHER.OPTS) + list(opts)
        _merge(cfg, spec.opts, f"overrides of {spec.name}")
    _merge(cfg, opts, "--opts")
    cfg.freeze()
    return cfg


def _merge(cfg: CfgNode, opts: Sequence[str], what: str) -> None:
    if len(opts) % 2:
        raise ValueError(f"{what} must be KEY VALUE pairs, got an odd number of items: {list(opts)}")
    try:
        cfg.merge_from_list(list(opts))
    except (KeyError, ValueError, AssertionError) as e:
        raise ValueError(f"{what}: cannot apply {list(opts)}: {e}") from None


def config_hash(cfg: CfgNode, extra: str = "") -> str:
    """A digest of everything a run's result depends on (OUTPUT_DIR and the teacher's path left out:
    pass the teacher's own hash in `extra`). A plain detector's digest leaves the distillation keys
    out, so that changing a distillation default keeps the cached teacher and baselines; a distilled
    run's leaves out the nodes of the methods it does not use, so that a change to one method keeps
    the others' cached runs."""
    c = cfg.clone()
    c.defrost()
    c.OUTPUT_DIR = ""
    c.MODEL.TEACHER.WEIGHTS = ""
    if c.MODEL.META_ARCHITECTURE != "TeacherStudent":
        for key in ("TEACHER", "DISTILL"):
            c.MODEL.pop(key, None)
    else:
        used = {str(m).upper() for m in c.MODEL.DISTILL.METHODS}
        for name in registered_methods():
            if name.upper() not in used:
                c.MODEL.DISTILL.pop(name.upper(), None)
    return hashlib.sha1((c.dump() + extra).encode()).hexdigest()[:16]


def mask_ap(results: Dict) -> Optional[float]:
    """COCOEvaluator's segm AP (Mask R-CNN) from `TIDTrainer.test` results, or None without masks."""
    if "segm" not in results and len(results) == 1:
        results = next(iter(results.values()))
    if not isinstance(results.get("segm"), dict):
        return None
    ap = float(results["segm"].get("AP", float("nan")))
    return 0.0 if math.isnan(ap) else ap


def bbox_metrics(results: Dict) -> Dict[str, Optional[float]]:
    """
    COCOEvaluator's bbox metrics from `TIDTrainer.test` results ({"bbox": {...}}, or one such dict
    per dataset). A metric COCO leaves undefined (no GT of that size) becomes None; when every
    metric is undefined the model made no detection, and its AP is 0 (`no_detections` is set).
    """
    if "bbox" not in results and len(results) == 1:
        results = next(iter(results.values()))
    if "bbox" not in results:
        raise ValueError(f"evaluation results have no 'bbox' entry: {list(results)}")
    raw = {k: float(v) for k, v in results["bbox"].items() if k.startswith("AP")}
    if not raw:
        raise ValueError(f"bbox results hold no AP metric: {results['bbox']}")
    if all(math.isnan(v) for v in raw.values()):
        out = {k: 0.0 for k in raw}
        out["no_detections"] = True
        return out
    return {k: (None if math.isnan(v) else v) for k, v in raw.items()}


def _read_cache(run_dir: str, key: str) -> Optional[Dict]:
    """The recorded result of a finished (or diverged) run with this config hash, else None."""
    path = os.path.join(run_dir, METRIC_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        cached = json.load(f)
    finished = cached.get("diverged") or os.path.isfile(os.path.join(run_dir, "model_final.pth"))
    return cached if finished and cached.get("config_hash") == key else None


def seeded_trainer(cfg: CfgNode, progress: Optional[str] = None):
    """A fresh `TIDTrainer` of `cfg` seeded with cfg.SEED (model init, sampler, augmentation), with a
    `ProgressHook` named `progress` (None: no progress shown)."""
    from ..engine import TIDTrainer
    from ..engine.progress import ProgressHook

    seed_all_rng(cfg.SEED)
    trainer = TIDTrainer(cfg)
    if progress is not None:
        trainer.register_hooks([ProgressHook(progress)])
    trainer.resume_or_load(resume=False)
    return trainer


def _is_divergence(e: BaseException) -> bool:
    """The trainer's non-finite-loss check, or fvcore's GIoU assertion on NaN predicted boxes."""
    return isinstance(e, FloatingPointError) or "bad box" in str(e)


def train_and_evaluate(
    cfg: CfgNode, key: str, use_cache: bool = True, progress: Optional[str] = None
) -> Dict:
    """
    Train `cfg` in this process with `TIDTrainer` (seeded with cfg.SEED), evaluate it on
    DATASETS.TEST and return {"bbox": metrics, "config_hash", "run_seconds" (training and
    evaluation), "cached"}. A run stopped by non-finite losses or boxes is a result too: its
    metrics are None and "diverged" holds the error. A finished run in cfg.OUTPUT_DIR with the same `key` is
    reused. `progress`: the run's name on a `ProgressHook` bar (None: no progress shown).
    """
    from ..engine import TIDTrainer

    run_dir = cfg.OUTPUT_DIR
    cached = _read_cache(run_dir, key) if use_cache else None
    if cached is not None:
        return dict(cached, cached=True)
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "config.yaml"), "w") as f:
        f.write(cfg.dump())
    start = time.perf_counter()
    trainer = seeded_trainer(cfg, progress)
    try:
        trainer.train()
        results = getattr(trainer, "_last_eval_results", None) or TIDTrainer.test(cfg, trainer.model)
        out = {"config_hash": key, "bbox": bbox_metrics(results)}
        segm = mask_ap(results)
        if segm is not None:
            out["bbox"]["mask_AP"] = segm
    except (FloatingPointError, AssertionError) as e:
        if not _is_divergence(e):
            raise
        out = {"config_hash": key, "bbox": {m: None for m in METRICS}, "diverged": f"{type(e).__name__}: {e}"}
    out["run_seconds"] = time.perf_counter() - start
    with open(os.path.join(run_dir, METRIC_FILE), "w") as f:
        json.dump(out, f, indent=2)
    del trainer
    gc.collect()
    return dict(out, cached=False)
