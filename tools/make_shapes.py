#!/usr/bin/env python
"""Pre-generate (or regenerate) the tid_shapes dataset, and optionally draw a sample with its boxes.

Usage:
    python tools/make_shapes.py                                   # default train + val
    python tools/make_shapes.py --splits val --difficulty 2 --num-images 100
    python tools/make_shapes.py --splits val --sample docs/images/tid_shapes_sample.png
"""

import argparse
import json
import os
import sys
import time

import cv2

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tid_d2.data.shapes import (  # noqa: E402
    DEFAULT_SEED,
    DEFAULT_SIDES,
    SHAPE_CLASSES,
    generate_shapes,
    shapes_paths,
    variant_dirname,
)


def draw_sample(json_file: str, image_root: str, index: int, out: str, scale: int = 2) -> None:
    """Write image ``index`` of a split, upscaled by ``scale``, with its boxes and class names."""
    with open(json_file) as f:
        coco = json.load(f)
    if not 0 <= index < len(coco["images"]):
        raise SystemExit(f"--sample-index {index} is out of range for {json_file}.")
    record = coco["images"][index]
    img = cv2.imread(os.path.join(image_root, record["file_name"]))
    img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_NEAREST)
    for ann in coco["annotations"]:
        if ann["image_id"] != record["id"]:
            continue
        cls = SHAPE_CLASSES[ann["category_id"] - 1]
        x, y, w, h = (v * scale for v in ann["bbox"])
        cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), (255, 255, 255), 3)
        cv2.rectangle(img, (x, y), (x + w - 1, y + h - 1), (0, 0, 0), 1)
        label = f"{cls.name} {ann['visible']:.2f}"
        cv2.putText(
            img, label, (x + 2, max(y - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 3
        )
        cv2.putText(
            img, label, (x + 2, max(y - 4, 12)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1
        )
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    cv2.imwrite(out, img)
    print(f"wrote {out} ({record['file_name']}, {record['width']}x{record['height']})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument(
        "--root", default=None, help="datasets root (default: $TID_DATASETS or ./datasets)"
    )
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--num-images", type=int, default=None, help="per split (default: 800/200)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--difficulty", type=float, default=1.0)
    parser.add_argument(
        "--sides", type=int, nargs=2, default=list(DEFAULT_SIDES), metavar=("MIN", "MAX")
    )
    parser.add_argument("--workers", type=int, default=0, help="render processes (same output)")
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    parser.add_argument("--sample", default=None, help="write a PNG of one image with its boxes")
    parser.add_argument("--sample-index", type=int, default=0)
    args = parser.parse_args()

    for split in args.splits:
        start = time.perf_counter()
        json_file = generate_shapes(
            args.root,
            split,
            args.num_images,
            args.seed,
            args.difficulty,
            sides=tuple(args.sides),
            num_workers=args.workers,
            force=args.force,
        )
        with open(json_file) as f:
            coco = json.load(f)
        print(
            f"{split}: {len(coco['images'])} images, {len(coco['annotations'])} boxes in "
            f"{time.perf_counter() - start:.1f} s -> {json_file}"
        )
    if args.sample:
        split = args.splits[-1]
        dirname = variant_dirname(
            split, args.num_images, args.seed, args.difficulty, tuple(args.sides)
        )
        draw_sample(*shapes_paths(args.root, split, dirname), args.sample_index, args.sample)


if __name__ == "__main__":
    main()
