#!/usr/bin/env python
"""
TID's key / weak / other areas and the teacher's and student's importance maps on images (the TID
paper's Figure 4), for a TeacherStudent config.

    python tools/visualize_areas.py --config-file configs/quickstart/TID-GFL.yaml
        --weights output/quickstart/TID-GFL/model_final.pth --input IMG [IMG ...] --output DIR
        [--gt-json COCO.json] [--opts KEY VALUE ...]                                 (one line)

--weights: a TeacherStudent training checkpoint (or an exported student); empty: a fresh student.
The teacher is the config's MODEL.TEACHER.CONFIG_FILE + MODEL.TEACHER.WEIGHTS. DIEM needs ground
truth: an image's GT comes from --gt-json (matched by the json's file_name), else from
cfg.DATASETS.TEST[0] (matched by path); an image with none is scored as all background.

Writes per image DIR/<name>_<level>.png (one row: areas, teacher importance, student importance,
delta), DIR/<name>_areas.png (all levels) and DIR/summary.json (area fractions per level). The
pictures are drawn by `tid_d2.visualization`.
"""

import argparse
import copy
import json
import logging
import os
import sys
import zlib
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data.datasets import load_coco_json
from detectron2.modeling import build_model
from detectron2.structures import BoxMode
from detectron2.utils.env import seed_all_rng

from tid_d2.distill.tid import TID
from tid_d2.modeling.teacher_student import check_compatible
from tid_d2.checkpoint import load_weights
from tid_d2.engine.defaults import add_config_opts, config_opts, setup_cfg
from tid_d2.visualization import area_fractions, area_sheet, areas_for_image, load_image

logger = logging.getLogger("visualize_areas")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="a TeacherStudent config")
    p.add_argument("--weights", default="", help="TeacherStudent checkpoint (empty: fresh student)")
    p.add_argument("--input", nargs="+", required=True, help="image files")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--gt-json", default="", help="COCO json with the images' GT boxes")
    p.add_argument("--dpi", type=int, default=100, help="resolution of the PNGs (default: 100)")
    add_config_opts(p)
    return p.parse_args(argv)


def build_models(cfg, weights: str) -> Tuple[torch.nn.Module, TID]:
    """The TeacherStudent model in eval mode (student loaded from `weights`) and its TID distiller
    (one built from cfg.MODEL.DISTILL.TID when the config distills with other methods)."""
    if cfg.MODEL.META_ARCHITECTURE != "TeacherStudent":
        raise ValueError(
            f"{cfg.MODEL.META_ARCHITECTURE} config: visualize_areas needs a TeacherStudent config "
            "(e.g. configs/quickstart/TID-GFL.yaml) to have a teacher and a student"
        )
    model = build_model(cfg)
    model.eval()
    if weights:
        load_weights(model.student, weights, key="--weights")
    tid = model.distillers["tid"] if "tid" in model.distillers else None
    if tid is None:
        tid = TID(cfg.MODEL.DISTILL, check_compatible(model.teacher, model.student)).to(model.device)
    return model, tid.eval()


def _path_key(path: str) -> str:
    return os.path.normcase(os.path.realpath(path))


def _suffix_match(path: str, file_name: str) -> bool:
    """Whether `path` ends with the (relative) `file_name` of a COCO json, component-wise."""
    want = [p for p in os.path.normpath(file_name).split(os.sep) if p not in ("", ".")]
    have = os.path.realpath(path).split(os.sep)
    return bool(want) and have[-len(want) :] == want


class GroundTruth:
    """An image's dataset dict: from --gt-json by file_name, else DATASETS.TEST[0] by path."""

    def __init__(self, cfg, gt_json: str):
        self.cfg = cfg
        self.json_dicts: List[Dict] = []
        if gt_json:
            if not os.path.isfile(gt_json):
                raise FileNotFoundError(f"--gt-json not found: {gt_json}")
            scratch = f"__visualize_areas_gt_{zlib.crc32(os.path.realpath(gt_json).encode())}"
            self.json_dicts = load_coco_json(gt_json, "", dataset_name=scratch)
        self._dataset: Optional[Dict[str, Dict]] = None

    def _dataset_dicts(self) -> Dict[str, Dict]:
        if self._dataset is None:
            self._dataset = {}
            names = list(self.cfg.DATASETS.TEST)
            if names:
                try:
                    dicts = DatasetCatalog.get(names[0])
                except (KeyError, FileNotFoundError, OSError) as e:
                    logger.warning("cannot load DATASETS.TEST[0]=%s for GT: %s", names[0], e)
                    dicts = []
                self._dataset = {_path_key(d["file_name"]): d for d in dicts}
        return self._dataset

    def find(self, path: str) -> Tuple[Optional[Dict], str]:
        """(dataset dict or None, where it came from)."""
        for d in self.json_dicts:
            if _suffix_match(path, d["file_name"]):
                return d, "gt-json"
        d = self._dataset_dicts().get(_path_key(path))
        if d is not None:
            return d, f"dataset {self.cfg.DATASETS.TEST[0]}"
        return None, "none"


def gt_boxes_xyxy(dataset_dict: Optional[Dict]) -> np.ndarray:
    """[M, 4] XYXY boxes of the non-crowd annotations, in original image pixels."""
    annos = [a for a in (dataset_dict or {}).get("annotations", []) if not a.get("iscrowd", 0)]
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in annos]
    return np.asarray(boxes, dtype=np.float32).reshape(-1, 4)


@torch.no_grad()
def compute_areas(model, tid: TID, inputs: Dict) -> Dict[str, Dict[str, torch.Tensor]]:
    """`TID.areas` of one mapped image: {level: {map: [1, Hl, Wl]}}."""
    targets = model.student.gt_instances([inputs])
    student_out = model.student.dense_outputs([inputs], targets)
    teacher_out = model.teacher.dense_outputs(model.teacher_inputs([inputs]), targets)
    return tid.areas(teacher_out, student_out, targets)


def _unique_stem(path: str, seen: set) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    out, i = stem, 1
    while out in seen:
        out, i = f"{stem}_{i}", i + 1
    seen.add(out)
    return out


def visualize_image(path, image, record, source, model, tid, mapper, args, stem) -> Dict:
    """Areas of one image: writes its per-level PNGs and sheet, returns its summary entry."""
    num_classes = model.student.num_classes
    bad = [a["category_id"] for a in record["annotations"]]
    bad = [c for c in bad if not 0 <= c < num_classes]
    if bad:
        raise ValueError(
            f"{path}: GT category ids {sorted(set(bad))[:5]} ({source}) outside the model's "
            f"{num_classes} classes"
        )
    boxes = gt_boxes_xyxy(record)
    inputs = mapper(copy.deepcopy(record))
    names, per_level = areas_for_image(compute_areas(model, tid, inputs))
    strides = list(model.student.strides)
    common = dict(
        input_hw=tuple(inputs["image"].shape[-2:]),
        offset=float(getattr(model.student.anchor_generator, "offset", 0.0)),
        gt_boxes=boxes,
        score_max=max(tid.score_levels) ** 2,
        dpi=args.dpi,
    )
    files = []
    for name, level_maps, stride in zip(names, per_level, strides):
        row = area_sheet(image, [level_maps], [name], strides=[stride], **common)
        files.append(os.path.join(args.output, f"{stem}_{name}.png"))
        Image.fromarray(row).save(files[-1])
    title = f"{os.path.basename(path)}: {len(boxes)} GT boxes ({source})"
    sheet = area_sheet(image, per_level, names, strides=strides, title=title, **common)
    files.append(os.path.join(args.output, f"{stem}_areas.png"))
    Image.fromarray(sheet).save(files[-1])
    fractions = {
        name: area_fractions(m["key"], m["weak"], m["other"]) for name, m in zip(names, per_level)
    }
    return {"gt_source": source, "num_gt": len(boxes), "fractions": fractions, "files": files}


def main(argv=None) -> Dict:
    args = parse_args(argv)
    images = {path: load_image(path, "RGB") for path in args.input}  # fail early, naming the file
    cfg = setup_cfg(args.config_file, config_opts(args))
    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else None)  # reproducible fresh weights
    model, tid = build_models(cfg, args.weights)
    gt = GroundTruth(cfg, args.gt_json)
    mapper_args = DatasetMapper.from_config(cfg, is_train=False)
    mapper = DatasetMapper(**{**mapper_args, "is_train": True})  # test-time resize, keep GT
    os.makedirs(args.output, exist_ok=True)
    summary, seen = {}, set()
    for path, image in images.items():
        found, source = gt.find(path)
        record = dict(found) if found else {"annotations": []}
        record.update(file_name=path, height=image.shape[0], width=image.shape[1])
        entry = visualize_image(
            path, image, record, source, model, tid, mapper, args, _unique_stem(path, seen)
        )
        summary[path] = entry
        if source == "none":
            where = (
                f"DATASETS.TEST[0]={cfg.DATASETS.TEST[0]}" if cfg.DATASETS.TEST else "no dataset"
            )
            print(f"{path}: no ground truth found (--gt-json, {where}): scored as all background")
        else:
            print(f"{path}: {entry['num_gt']} GT boxes from {source}")
        for name, f in entry["fractions"].items():
            print(f"  {name}: key {f['key']:.2%}  weak {f['weak']:.2%}  other {f['other']:.2%}")
    with open(os.path.join(args.output, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
