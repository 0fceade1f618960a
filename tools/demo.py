#!/usr/bin/env python
"""
Draw a detector's detections on images with Detectron2's Visualizer.

    python tools/demo.py --config-file configs/quickstart/GFL-student.yaml
        --weights output/quickstart/GFL-student/model_final.pth --input IMG [IMG ...] --output DIR
        [--confidence-threshold 0.3] [--opts KEY VALUE ...]                          (one line)

Works for detector configs and TeacherStudent configs (the student alone, from a training or an
exported checkpoint; no teacher needed). Class names come from cfg.DATASETS.TEST[0]'s metadata.
Writes DIR/<image name>.png per input.
"""

import argparse
import logging
import os
import sys
from typing import Dict

import torch
from PIL import Image

from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.utils.env import seed_all_rng
from detectron2.utils.visualizer import ColorMode, Visualizer

from tid_d2.engine.defaults import add_config_opts, build_eval_model, config_opts, setup_cfg
from tid_d2.visualization import load_image

logger = logging.getLogger("demo")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--config-file", required=True, help="a detector or TeacherStudent config")
    p.add_argument("--weights", default="", help="checkpoint (empty: random weights)")
    p.add_argument("--input", nargs="+", required=True, help="image files")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument(
        "--confidence-threshold",
        type=float,
        default=0.3,
        help="draw detections scoring at least this (default: 0.3)",
    )
    p.add_argument("--scale", type=float, default=1.0, help="drawing scale (default: 1.0)")
    add_config_opts(p)
    return p.parse_args(argv)


@torch.no_grad()
def predict(model, image, cfg):
    """Instances on the original image of one HWC image in cfg.INPUT.FORMAT (test-time resize)."""
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    h, w = image.shape[:2]
    resized = resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
    return model([{"image": tensor, "height": h, "width": w}])[0]["instances"].to("cpu")


def main(argv=None) -> Dict[str, int]:
    args = parse_args(argv)
    if not 0.0 <= args.confidence_threshold <= 1.0:
        raise ValueError(
            f"--confidence-threshold must be in [0, 1], got {args.confidence_threshold}"
        )
    cfg = setup_cfg(args.config_file, config_opts(args))
    images = {path: load_image(path, cfg.INPUT.FORMAT) for path in args.input}
    seed_all_rng(cfg.SEED if cfg.SEED >= 0 else None)  # reproducible fresh weights
    model = build_eval_model(cfg, args.weights)
    metadata = MetadataCatalog.get(cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "__unused__")
    os.makedirs(args.output, exist_ok=True)
    counts, seen = {}, set()
    for path, image in images.items():
        instances = predict(model, image, cfg)
        instances = instances[instances.scores >= args.confidence_threshold]
        rgb = image[..., ::-1] if cfg.INPUT.FORMAT == "BGR" else image
        vis = Visualizer(rgb, metadata, scale=args.scale, instance_mode=ColorMode.IMAGE)
        drawn = vis.draw_instance_predictions(instances).get_image()
        stem = os.path.splitext(os.path.basename(path))[0]
        name, i = stem, 1
        while name in seen:
            name, i = f"{stem}_{i}", i + 1
        seen.add(name)
        out = os.path.join(args.output, f"{name}.png")
        Image.fromarray(drawn).save(out)
        counts[out] = len(instances)
        print(f"{path}: {len(instances)} detections >= {args.confidence_threshold} -> {out}")
    return counts


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (FileNotFoundError, ValueError, KeyError) as e:
        sys.exit(f"error: {e}")
