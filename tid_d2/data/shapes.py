"""tid_shapes: a deterministic synthetic detection dataset, generated on first use.

Six classes that differ in shape and colour, two super-categories, and the circle/ring pair that
shares its colour and differs only by the hole. Images have textured backgrounds (gradients,
stripes, blotches, pixel noise), clutter that is not an object (lines, arcs, non-class polygons,
grey "decoy" class shapes), objects from about 6 px to half the image side, and occlusion (a later
object may hide part of an earlier one, whose box stays the full object box, with at least
``MIN_VISIBLE`` of it left visible). A few percent of the images have no object. Each annotation
also holds its ``visible`` fraction, for analysis.

Layout under ``root`` (env ``TID_DATASETS``, else ``./datasets``)::

    <root>/<dirname>/<split>/000000.jpg ...
    <root>/<dirname>/annotations/<split>.json            COCO instances json
    <root>/<dirname>/annotations/<split>.manifest.json   version + params; written last

Each image is drawn from its own ``numpy`` Generator seeded by (seed, split, index), so the output
does not depend on the number of workers. A split is generated into a temporary folder and moved
into place under a file lock; the manifest is written last, so an interrupted generation never
looks complete and is redone, as is one whose manifest differs from the requested params.
"""

import colorsys
import functools
import glob
import json
import logging
import math
import multiprocessing
import os
import shutil
import sys
import tempfile
import zlib
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from iopath.common.file_io import file_lock
from pycocotools import mask as mask_util
from tqdm import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

__all__ = [
    "ShapeClass",
    "SHAPE_CLASSES",
    "DEFAULT_NUM_IMAGES",
    "DEFAULT_SEED",
    "default_root",
    "shapes_paths",
    "variant_dirname",
    "render_image",
    "generate_shapes",
    "register_shapes",
    "shapes_metadata",
]

logger = logging.getLogger(__name__)

VERSION = 2  # bump whenever the drawing or the annotations change: existing data is then regenerated
# (2: instance masks added; images and boxes unchanged)
#: without a terminal, generation logs one line every this many percent of the images.
GENERATION_LINE_PERCENT = 10
DEFAULT_SEED = 0
DEFAULT_NUM_IMAGES = {"train": 800, "val": 200}
DEFAULT_DIRNAME = "tid_shapes"
DEFAULT_SIDES = (224, 384)  # image height and width are each drawn from this range
MIN_OBJECT_SIZE = 6  # px, diameter of the smallest object
MAX_OBJECT_FRACTION = 0.5  # largest object diameter, as a fraction of the shorter image side
MIN_VISIBLE = 0.4  # an occluded object keeps at least this fraction of its pixels
EMPTY_FRACTION = 0.04  # share of images with no object
JPEG_QUALITY = 92


@dataclass(frozen=True)
class ShapeClass:
    """One category: name (also how it is drawn), COCO super-category, RGB colour, least size."""

    name: str
    supercategory: str
    rgb: Tuple[int, int, int]
    min_size: int = MIN_OBJECT_SIZE


# The order gives the COCO category ids (1-based). circle and ring share their colour on purpose.
SHAPE_CLASSES: Tuple[ShapeClass, ...] = (
    ShapeClass("circle", "round", (220, 50, 45)),
    ShapeClass("ring", "round", (220, 50, 45), min_size=10),  # so the hole stays visible
    ShapeClass("ellipse", "round", (235, 185, 30), min_size=8),  # minor axis >= ~3 px
    ShapeClass("square", "angular", (45, 95, 225)),
    ShapeClass("triangle", "angular", (40, 170, 70)),
    ShapeClass("star", "angular", (170, 60, 210)),
)

_SHIFT = 3  # cv2 sub-pixel bits for drawing
_SCALE = 1 << _SHIFT


# ----------------------------------------------------------------------------------------------
# Paths and params
# ----------------------------------------------------------------------------------------------
def default_root() -> str:
    """``$TID_DATASETS`` if set, else ``./datasets``; made absolute against the current dir."""
    return os.path.abspath(os.environ.get("TID_DATASETS") or "datasets")


def shapes_paths(
    root: Optional[str], split: str, dirname: str = DEFAULT_DIRNAME
) -> Tuple[str, str]:
    """(json_file, image_root) of one split."""
    base = os.path.join(os.path.abspath(root) if root else default_root(), dirname)
    return os.path.join(base, "annotations", f"{split}.json"), os.path.join(base, split)


def _default_num_images(split: str) -> int:
    if split not in DEFAULT_NUM_IMAGES:
        raise ValueError(
            f"tid_shapes split '{split}' has no default size; pass num_images "
            f"(defaults exist for {sorted(DEFAULT_NUM_IMAGES)})."
        )
    return DEFAULT_NUM_IMAGES[split]


def variant_dirname(
    split: str,
    num_images: Optional[int] = None,
    seed: int = DEFAULT_SEED,
    difficulty: float = 1.0,
    sides: Tuple[int, int] = DEFAULT_SIDES,
) -> str:
    """``tid_shapes`` for the default params, else ``tid_shapes_<tags>`` naming what differs.

    Variants get their own folder so that registering one never overwrites the default data.
    """
    tags = []
    if num_images is not None and num_images != _default_num_images(split):
        tags.append(f"n{num_images}")
    if seed != DEFAULT_SEED:
        tags.append(f"s{seed}")
    if float(difficulty) != 1.0:
        tags.append(f"d{float(difficulty):g}")
    if tuple(sides) != DEFAULT_SIDES:
        tags.append(f"px{sides[0]}-{sides[1]}")
    return "_".join([DEFAULT_DIRNAME] + tags)


def _params(split: str, num_images: int, seed: int, difficulty: float, sides) -> Dict:
    """Everything the output depends on; a manifest with other params triggers regeneration."""
    return {
        "version": VERSION,
        "split": split,
        "num_images": int(num_images),
        "seed": int(seed),
        "difficulty": float(difficulty),
        "sides": [int(sides[0]), int(sides[1])],
        "classes": [[c.name, c.supercategory, list(c.rgb), c.min_size] for c in SHAPE_CLASSES],
        "jpeg_quality": JPEG_QUALITY,
    }


def _check_params(split: str, num_images: int, difficulty: float, sides) -> None:
    if not split or not split.replace("_", "").isalnum():
        raise ValueError(
            f"tid_shapes split must be a plain name like 'train' or 'val', got {split!r}."
        )
    if int(num_images) < 1:
        raise ValueError(f"tid_shapes num_images must be >= 1, got {num_images}.")
    if not 0.0 <= float(difficulty) <= 3.0:
        raise ValueError(f"tid_shapes difficulty must be in [0, 3], got {difficulty}.")
    lo, hi = sides
    if not 64 <= lo <= hi:
        raise ValueError(f"tid_shapes sides must satisfy 64 <= min <= max, got {tuple(sides)}.")


def _image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The Generator of one image: depends only on (seed, split, index)."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode()), int(index)])


# ----------------------------------------------------------------------------------------------
# Drawing
# ----------------------------------------------------------------------------------------------
def _fixed(points: np.ndarray) -> np.ndarray:
    """(N, 2) float pixel coordinates -> int32 cv2 fixed point with ``_SHIFT`` fractional bits."""
    return np.round(points * _SCALE).astype(np.int32)


def _regular_polygon(center, radius: float, n: int, angle: float, inner: float = 0.0) -> np.ndarray:
    """(n or 2n, 2) vertices; with ``inner`` > 0, a star alternating radius and inner*radius."""
    if inner > 0:
        k = np.arange(2 * n)
        radii = np.where(k % 2 == 0, radius, radius * inner)
        theta = angle + k * np.pi / n
    else:
        radii = np.full(n, radius)
        theta = angle + np.arange(n) * 2 * np.pi / n
    return np.stack([center[0] + radii * np.cos(theta), center[1] + radii * np.sin(theta)], axis=1)


def _draw_shape(
    mask: np.ndarray, kind: str, center, radius: float, rng: np.random.Generator
) -> None:
    """Fill the pixels of one shape of diameter ``2 * radius`` with 1 in the uint8 ``mask``."""
    c = (int(round(center[0] * _SCALE)), int(round(center[1] * _SCALE)))
    r = int(round(radius * _SCALE))
    angle = rng.uniform(0, 2 * np.pi)
    if kind == "circle":
        cv2.circle(mask, c, r, 1, -1, cv2.LINE_8, _SHIFT)
    elif kind == "ring":
        cv2.circle(mask, c, r, 1, -1, cv2.LINE_8, _SHIFT)
        cv2.circle(mask, c, int(r * rng.uniform(0.45, 0.6)), 0, -1, cv2.LINE_8, _SHIFT)
    elif kind == "ellipse":
        axes = (r, int(r * rng.uniform(0.4, 0.65)))
        cv2.ellipse(mask, c, axes, float(np.degrees(angle)), 0, 360, 1, -1, cv2.LINE_8, _SHIFT)
    elif kind in ("square", "triangle", "star", "hexagon", "pentagon"):
        n, inner = {
            "square": (4, 0),
            "triangle": (3, 0),
            "star": (5, 0.45),
            "hexagon": (6, 0),
            "pentagon": (5, 0),
        }[kind]
        poly = _regular_polygon(center, radius, n, angle, inner)
        cv2.fillPoly(mask, [_fixed(poly)], 1, cv2.LINE_8, _SHIFT)
    elif kind == "blob":  # irregular polygon
        n = int(rng.integers(5, 10))
        theta = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.45, 1.0, n)
        poly = np.stack([center[0] + radii * np.cos(theta), center[1] + radii * np.sin(theta)], 1)
        cv2.fillPoly(mask, [_fixed(poly)], 1, cv2.LINE_8, _SHIFT)
    elif kind == "bar":  # elongated rectangle (aspect >= 3), never a square
        w = radius * rng.uniform(0.12, 0.3)
        d = np.array([np.cos(angle), np.sin(angle)])
        n = np.array([-d[1], d[0]])
        poly = np.array(center) + np.array(
            [d * radius + n * w, d * radius - n * w, -d * radius - n * w, -d * radius + n * w]
        )
        cv2.fillPoly(mask, [_fixed(poly)], 1, cv2.LINE_8, _SHIFT)
    else:
        raise ValueError(f"Unknown tid_shapes shape kind {kind!r}.")


def _hsv_to_rgb(h: float, s: float, v: float) -> np.ndarray:
    return (
        np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0))) * 255
    )


def _class_colour(cls: ShapeClass, rng: np.random.Generator, difficulty: float) -> np.ndarray:
    """The class colour with hue/saturation/value jitter (RGB float)."""
    h, s, v = colorsys.rgb_to_hsv(*(np.array(cls.rgb) / 255.0))
    jitter = 0.5 + 0.5 * min(difficulty, 2.0)
    return _hsv_to_rgb(
        h + rng.normal(0, 0.012 * jitter),
        s * (1 - rng.uniform(0, 0.2 * jitter)),
        v * (1 - rng.uniform(-0.05, 0.25 * jitter)),
    )


def _paint(img: np.ndarray, mask: np.ndarray, box, colour: np.ndarray, rng: np.random.Generator):
    """Paint ``colour`` with a random linear shading over the ``mask`` pixels inside ``box``."""
    x, y, w, h = box
    m = mask[y : y + h, x : x + w].astype(bool)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    d = rng.normal(0, 1, 2)
    shade = 1 + rng.uniform(0, 0.25) * (
        d[0] * (gx / max(w, 1) - 0.5) + d[1] * (gy / max(h, 1) - 0.5)
    )
    region = img[y : y + h, x : x + w]
    region[m] = (shade[..., None] * colour.astype(np.float32))[m]


def _background(rng: np.random.Generator, h: int, w: int, difficulty: float) -> np.ndarray:
    """(h, w, 3) float32 RGB: a two-colour gradient, maybe stripes, low-frequency blotches."""
    c0, c1 = (
        _hsv_to_rgb(rng.random(), rng.uniform(0, 0.45), rng.uniform(0.2, 0.9)) for _ in range(2)
    )
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    a = rng.uniform(0, 2 * np.pi)
    t = xx * np.cos(a) + yy * np.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = c0.astype(np.float32) + (c1 - c0).astype(np.float32) * t[..., None]
    if rng.random() < min(0.6 * difficulty, 0.9):
        a = rng.uniform(0, np.pi)
        period = rng.uniform(4, 40)
        wave = np.sin(
            (xx * np.cos(a) + yy * np.sin(a)) * (2 * np.pi / period) + rng.uniform(0, 6.3)
        )
        direction = rng.normal(0, 1, 3).astype(np.float32)
        direction /= np.linalg.norm(direction) + 1e-6
        img += wave[..., None] * direction * rng.uniform(8, 30) * min(difficulty, 2.0)
    blotches = rng.normal(0, 1, (h // 40 + 2, w // 40 + 2, 3)).astype(np.float32)
    img += (
        cv2.resize(blotches, (w, h), interpolation=cv2.INTER_CUBIC)
        * rng.uniform(0, 18)
        * difficulty
    )
    return img


def _sample_size(
    rng: np.random.Generator, max_size: float, min_size: int, difficulty: float
) -> float:
    """Object diameter: log-uniform, with a difficulty-scaled share of small (< 16 px) ones."""
    small = 16.0
    if rng.random() < min(0.22 * difficulty, 0.6):
        size = np.exp(rng.uniform(np.log(MIN_OBJECT_SIZE), np.log(small)))
    else:
        size = np.exp(rng.uniform(np.log(small), np.log(max(max_size, small + 1))))
    return float(max(size, min_size))


def _draw_clutter(img, rng, difficulty: float, min_side: int) -> None:
    """Things that are not objects: non-class polygons, grey class shapes, lines, arcs."""
    h, w = img.shape[:2]
    mask = np.zeros((h, w), np.uint8)
    for _ in range(rng.poisson(3.0 * difficulty)):  # non-class filled shapes, any colour
        kind = ("hexagon", "pentagon", "blob", "bar")[rng.integers(4)]
        colour = _hsv_to_rgb(rng.random(), rng.uniform(0, 1), rng.uniform(0.2, 1))
        _draw_distractor(img, mask, kind, rng, 20, min_side, colour)  # big enough to tell apart
    for _ in range(rng.poisson(1.5 * difficulty)):  # decoys: class shapes, low saturation
        kind = SHAPE_CLASSES[rng.integers(len(SHAPE_CLASSES))].name
        colour = _hsv_to_rgb(rng.random(), rng.uniform(0, 0.15), rng.uniform(0.25, 0.95))
        _draw_distractor(img, mask, kind, rng, 12, min_side, colour)
    _draw_strokes(img, rng, rng.poisson(3.0 * difficulty))


def _draw_distractor(img, mask, kind, rng, min_size, min_side, colour) -> None:
    """One filled ``kind`` shape, min_size to 0.35 * min_side across, anywhere (may be cut off)."""
    h, w = img.shape[:2]
    radius = 0.5 * np.exp(rng.uniform(np.log(min_size), np.log(0.35 * min_side)))
    center = (rng.uniform(0, w), rng.uniform(0, h))
    mask[:] = 0
    _draw_shape(mask, kind, center, radius, rng)
    img[mask.astype(bool)] = colour.astype(np.float32)


def _stroke_colour(rng: np.random.Generator) -> Tuple[float, float, float]:
    return tuple(
        float(c) for c in _hsv_to_rgb(rng.random(), rng.uniform(0, 1), rng.uniform(0.1, 1))
    )


def _draw_strokes(img, rng, count: int, owner=None, visible=None, areas=None, min_visible=1.0):
    """Lines, polylines and arcs; with ``owner`` given, skip those that would hide too much of an
    object (leave less than ``min_visible`` of it), and update ``owner`` and ``visible``."""
    h, w = img.shape[:2]
    for _ in range(count):
        layer = np.zeros((h, w), np.uint8)
        thickness = int(rng.integers(1, 4))
        kind = rng.integers(3)
        if kind == 0:
            p = rng.uniform(0, 1, (2, 2)) * (w, h)
            cv2.line(layer, _tuple(p[0]), _tuple(p[1]), 1, thickness, cv2.LINE_8, _SHIFT)
        elif kind == 1:
            p = np.cumsum(rng.normal(0, 0.15, (int(rng.integers(3, 7)), 2)), 0) * (w, h)
            p += rng.uniform(0, 1, 2) * (w, h)
            cv2.polylines(layer, [_fixed(p)], False, 1, thickness, cv2.LINE_8, _SHIFT)
        else:
            c = _tuple(rng.uniform(0, 1, 2) * (w, h))
            r = int(rng.uniform(6, 0.4 * min(h, w)) * _SCALE)
            start = rng.uniform(0, 360)
            end = start + rng.uniform(60, 270)
            cv2.ellipse(layer, c, (r, r), 0, start, end, 1, thickness, cv2.LINE_8, _SHIFT)
        hit = layer.astype(bool)
        if owner is not None:
            lost = np.bincount(owner[hit], minlength=len(visible))
            if np.any((visible - lost)[1:] < min_visible * areas[1:]):
                continue
            owner[hit] = 0
            visible -= lost
            visible[0] = 0
        img[hit] = _stroke_colour(rng)


def _tuple(p) -> Tuple[int, int]:
    return int(round(p[0] * _SCALE)), int(round(p[1] * _SCALE))


def _min_visible(difficulty: float) -> float:
    """Least visible fraction of an occluded object: 1 (no occlusion) at 0, MIN_VISIBLE from 1."""
    return min(max(1.0 - 0.6 * difficulty, MIN_VISIBLE), 1.0)


def _place_objects(img: np.ndarray, rng: np.random.Generator, difficulty: float):
    """Draw the objects in order, later ones on top, rejecting placements that hide too much.

    Returns [(class index, (x, y, w, h), COCO RLE of the whole shape)], the owner map (h, w) int32
    (0: no object, i: the i-th object), and per object (index 0 unused) its visible and total pixel
    counts, each (n + 1,).
    """
    h, w = img.shape[:2]
    min_side = min(h, w)
    if rng.random() < EMPTY_FRACTION:
        count = 0
    else:
        count = 1 + min(int(rng.poisson(4.0)), 11)
    p_near = min(0.45 * difficulty, 0.9)  # chance of aiming at an earlier object (occlusion)
    min_visible = _min_visible(difficulty)
    owner = np.zeros((h, w), np.int32)
    visible = np.zeros(count + 1, np.int64)
    areas = np.zeros(count + 1, np.int64)
    objects = []
    centers = []
    mask = np.zeros((h, w), np.uint8)
    for _ in range(count):
        cls_idx = int(rng.integers(len(SHAPE_CLASSES)))
        cls = SHAPE_CLASSES[cls_idx]
        size = _sample_size(rng, MAX_OBJECT_FRACTION * min_side, cls.min_size, difficulty)
        colour = _class_colour(cls, rng, difficulty)
        radius = size / 2
        for _try in range(10):
            if centers and rng.random() < p_near:
                cx, cy, r_other = centers[rng.integers(len(centers))]
                reach = 0.9 * (r_other + radius)
                center = (cx + rng.uniform(-reach, reach), cy + rng.uniform(-reach, reach))
            else:
                center = (rng.uniform(0, w), rng.uniform(0, h))
            # keep the whole object inside the image
            center = (
                float(np.clip(center[0], radius + 1, w - radius - 1)),
                float(np.clip(center[1], radius + 1, h - radius - 1)),
            )
            mask[:] = 0
            _draw_shape(mask, cls.name, center, radius, rng)
            box = cv2.boundingRect(mask)
            x, y, bw, bh = box
            if bw < 2 or bh < 2:
                continue
            m = mask[y : y + bh, x : x + bw].astype(bool)
            k = len(objects) + 1
            lost = np.bincount(owner[y : y + bh, x : x + bw][m], minlength=k)
            if np.any((visible[:k] - lost)[1:] < min_visible * areas[1:k]):
                continue
            visible[:k] -= lost
            owner[y : y + bh, x : x + bw][m] = k
            visible[k] = areas[k] = int(m.sum())
            visible[0] = 0
            _paint(img, mask, box, colour, rng)
            objects.append((cls_idx, box, _rle(mask)))
            centers.append((center[0], center[1], radius))
            break
    n = len(objects) + 1
    return objects, owner, visible[:n], areas[:n]


def _rle(mask: np.ndarray) -> Dict:
    """COCO's compressed RLE of a uint8 (h, w) mask, JSON-ready."""
    rle = mask_util.encode(np.asfortranarray(mask))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def render_image(seed: int, split: str, index: int, difficulty: float = 1.0, sides=DEFAULT_SIDES):
    """Draw one image.

    Returns:
        image: (H, W, 3) uint8 RGB.
        objects: list of (class index into SHAPE_CLASSES, (x, y, w, h) full-object box in pixels,
            visible fraction, the full object's mask as COCO RLE). Box and mask are both of the
            whole shape (amodal: occluders drawn later do not cut them), so the box is the mask's.
    """
    rng = _image_rng(seed, split, index)
    h, w = (int(v) for v in rng.integers(sides[0], sides[1] + 1, 2))
    img = _background(rng, h, w, difficulty)
    _draw_clutter(img, rng, difficulty, min(h, w))
    objects, owner, visible, areas = _place_objects(img, rng, difficulty)
    _draw_strokes(
        img, rng, rng.poisson(1.0 * difficulty), owner, visible, areas, _min_visible(difficulty)
    )
    sigma = difficulty * rng.uniform(2, 10)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(sigma)
    if rng.random() < 0.3:
        img = cv2.GaussianBlur(img, (3, 3), rng.uniform(0.4, 0.9))
    img = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    out = [
        (c, box, float(visible[i + 1] / max(areas[i + 1], 1)), rle) for i, (c, box, rle) in enumerate(objects)
    ]
    return img, out


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------
def _render_and_write(index: int, seed: int, split: str, difficulty: float, sides, image_dir: str):
    """Render image ``index``, write it as JPEG; returns its COCO image record and objects."""
    img, objects = render_image(seed, split, index, difficulty, sides)
    file_name = f"{index:06d}.jpg"
    ok, buf = cv2.imencode(".jpg", img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise RuntimeError(f"tid_shapes: could not encode image {file_name}.")
    with open(os.path.join(image_dir, file_name), "wb") as f:
        f.write(buf.tobytes())
    record = {
        "id": index + 1,
        "file_name": file_name,
        "height": img.shape[0],
        "width": img.shape[1],
    }
    return record, objects


def _coco_dict(records, objects_per_image, params: Dict) -> Dict:
    annotations = []
    for record, objects in zip(records, objects_per_image):
        for cls_idx, (x, y, w, h), vis, rle in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": record["id"],
                    "category_id": cls_idx + 1,
                    "bbox": [int(x), int(y), int(w), int(h)],
                    "area": int(w) * int(h),  # the box's, as before masks (COCO's size ranges)
                    "segmentation": rle,
                    "iscrowd": 0,
                    "visible": round(vis, 3),
                }
            )
    return {
        "info": {"description": "tid_shapes synthetic detection dataset", "params": params},
        "licenses": [],
        "images": list(records),
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": c.name, "supercategory": c.supercategory}
            for i, c in enumerate(SHAPE_CLASSES)
        ],
    }


def _manifest_path(json_file: str) -> str:
    return json_file[: -len(".json")] + ".manifest.json"


def _is_complete(json_file: str, image_root: str, params: Dict) -> bool:
    """The split exists with exactly ``params`` (manifest written last) and all its images."""
    try:
        with open(_manifest_path(json_file)) as f:
            manifest = json.load(f)
    except (OSError, ValueError):
        return False
    return (
        manifest.get("params") == params
        and os.path.isfile(json_file)
        and os.path.isdir(image_root)
        and len(os.listdir(image_root)) == params["num_images"]
    )


def _write_json(path: str, obj: Dict) -> None:
    """Write atomically (temp file + rename)."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
    os.replace(tmp, path)


def generate_shapes(
    root: Optional[str] = None,
    split: str = "train",
    num_images: Optional[int] = None,
    seed: int = DEFAULT_SEED,
    difficulty: float = 1.0,
    *,
    sides: Tuple[int, int] = DEFAULT_SIDES,
    dirname: Optional[str] = None,
    num_workers: int = 0,
    force: bool = False,
    progress: bool = True,
) -> str:
    """Generate one split unless it already exists with the same params; returns its json path.

    Args:
        root: datasets root; None: ``$TID_DATASETS``, else ``./datasets``.
        split: e.g. "train" or "val"; also part of each image's seed.
        num_images: None: ``DEFAULT_NUM_IMAGES[split]``.
        seed: base seed; image i of a split is drawn from Generator(seed, split, i).
        difficulty: scales clutter, occlusion, noise, colour jitter and the small-object share
            (0: plain backgrounds, no clutter or occlusion; 1: default; up to 3).
        sides: (min, max) image side in pixels; height and width are drawn independently.
        dirname: folder under root; None: :func:`variant_dirname` of the params.
        num_workers: processes to render with (0: in this process); the output is the same.
        force: regenerate even if a complete split with the same params exists.
        progress: show a tqdm bar on a terminal, else (CI, a log file) a log line every
            ``GENERATION_LINE_PERCENT`` percent of the images.
    """
    num_images = _default_num_images(split) if num_images is None else int(num_images)
    sides = (int(sides[0]), int(sides[1]))
    _check_params(split, num_images, difficulty, sides)
    if dirname is None:
        dirname = variant_dirname(split, num_images, seed, difficulty, sides)
    json_file, image_root = shapes_paths(root, split, dirname)
    params = _params(split, num_images, seed, difficulty, sides)
    if not force and _is_complete(json_file, image_root, params):
        return json_file
    base = os.path.dirname(image_root)
    os.makedirs(os.path.dirname(json_file), exist_ok=True)
    with file_lock(os.path.join(base, f".{split}")):
        if not force and _is_complete(json_file, image_root, params):  # made while we waited
            return json_file
        for stale in glob.glob(os.path.join(base, f".{split}.tmp-*")):  # left by a killed run
            shutil.rmtree(stale, ignore_errors=True)
        tmp = tempfile.mkdtemp(prefix=f".{split}.tmp-", dir=base)
        try:
            tmp_images = os.path.join(tmp, "images")
            os.makedirs(tmp_images)
            coco = _render_split(params, tmp_images, num_workers, progress, dirname)
            tmp_json = os.path.join(tmp, "annotations.json")
            _write_json(tmp_json, coco)
            # Commit: the manifest goes first and comes back last, so a crash in between
            # leaves a split that is regenerated on next use.
            if os.path.exists(_manifest_path(json_file)):
                os.remove(_manifest_path(json_file))
            if os.path.isdir(image_root):
                shutil.rmtree(image_root)
            os.rename(tmp_images, image_root)
            os.replace(tmp_json, json_file)
            stats = {
                "num_annotations": len(coco["annotations"]),
                "num_empty_images": num_images - len({a["image_id"] for a in coco["annotations"]}),
            }
            _write_json(_manifest_path(json_file), {"params": params, "stats": stats})
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(f"tid_shapes: wrote {num_images} {split} images to {image_root}")
    return json_file


def _render_split(params: Dict, image_dir: str, num_workers: int, progress: bool, dirname: str):
    n = params["num_images"]
    job = functools.partial(
        _render_and_write,
        seed=params["seed"],
        split=params["split"],
        difficulty=params["difficulty"],
        sides=tuple(params["sides"]),
        image_dir=image_dir,
    )
    desc = f"{dirname}/{params['split']}"
    on_terminal = progress and sys.stderr.isatty()
    bar = tqdm(total=n, desc=desc, disable=not on_terminal, unit="img")
    line_every = max(1, math.ceil(n * GENERATION_LINE_PERCENT / 100))
    results = []

    def done(record):
        results.append(record)
        bar.update()
        if progress and not on_terminal and (len(results) % line_every == 0 or len(results) == n):
            logger.info(f"tid_shapes: {desc}: {len(results)}/{n} images ({100 * len(results) // n}%)")

    if num_workers > 0:
        method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
        with multiprocessing.get_context(method).Pool(num_workers) as pool:
            for r in pool.imap(job, range(n), chunksize=8):
                done(r)
    else:
        for i in range(n):
            done(job(i))
    bar.close()
    records, objects = zip(*results)
    return _coco_dict(records, objects, params)


# ----------------------------------------------------------------------------------------------
# Detectron2 registration
# ----------------------------------------------------------------------------------------------
def shapes_metadata() -> Dict:
    """Class metadata shared by every tid_shapes variant."""
    return {
        "thing_classes": [c.name for c in SHAPE_CLASSES],
        "thing_colors": [list(c.rgb) for c in SHAPE_CLASSES],
        "thing_supercategories": [c.supercategory for c in SHAPE_CLASSES],
        "thing_dataset_id_to_contiguous_id": {i + 1: i for i in range(len(SHAPE_CLASSES))},
    }


def _load_shapes(name: str, json_file: str, image_root: str, gen_kwargs: Dict) -> List[Dict]:
    generate_shapes(**gen_kwargs)
    return load_coco_json(json_file, image_root, name)


def register_shapes(
    name: str,
    split: str,
    root: Optional[str] = None,
    num_images: Optional[int] = None,
    difficulty: float = 1.0,
    seed: int = DEFAULT_SEED,
    *,
    sides: Tuple[int, int] = DEFAULT_SIDES,
    num_workers: int = 0,
) -> None:
    """Register a tid_shapes split in DatasetCatalog and MetadataCatalog.

    Nothing is generated here: the split is generated (or checked) when the dataset is first
    loaded. Paths are fixed now, so ``root=None`` reads ``$TID_DATASETS`` at registration time.
    Non-default params live in their own folder (:func:`variant_dirname`).
    """
    num_images = _default_num_images(split) if num_images is None else int(num_images)
    sides = (int(sides[0]), int(sides[1]))
    _check_params(split, num_images, difficulty, sides)
    root = os.path.abspath(root) if root else default_root()
    dirname = variant_dirname(split, num_images, seed, difficulty, sides)
    json_file, image_root = shapes_paths(root, split, dirname)
    gen_kwargs = dict(
        root=root,
        split=split,
        num_images=num_images,
        seed=seed,
        difficulty=difficulty,
        sides=sides,
        dirname=dirname,
        num_workers=num_workers,
    )
    DatasetCatalog.register(
        name, functools.partial(_load_shapes, name, json_file, image_root, gen_kwargs)
    )
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco", **shapes_metadata()
    )
