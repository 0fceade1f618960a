"""tid_shapes: determinism, COCO validity, content (classes, scales, empties, occlusion),
registration, manifest-driven regeneration and atomic writes. Small datasets under tmp_path."""

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

import tid_d2.data  # noqa: F401  (registers tid_shapes_train / tid_shapes_val)
from tid_d2.data import shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _gen(root, split="train", n=8, seed=0, **kwargs):
    return shapes.generate_shapes(str(root), split, n, seed, progress=False, **kwargs)


def _load(json_file):
    with open(json_file) as f:
        return json.load(f)


def _files(json_file):
    """json bytes + every image's bytes, keyed by name."""
    image_root = os.path.join(os.path.dirname(os.path.dirname(json_file)), "train")
    out = {"json": open(json_file, "rb").read()}
    for name in sorted(os.listdir(image_root)):
        out[name] = open(os.path.join(image_root, name), "rb").read()
    return out


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """80 default-difficulty train images: (coco dict, json path, image root)."""
    root = tmp_path_factory.mktemp("shapes")
    json_file = _gen(root, n=80, seed=0)
    return (
        _load(json_file),
        json_file,
        os.path.join(os.path.dirname(os.path.dirname(json_file)), "train"),
    )


def test_layout_and_manifest(dataset):
    coco, json_file, image_root = dataset
    base = os.path.dirname(image_root)
    assert os.path.basename(base) == "tid_shapes_n80"  # not the default size: its own folder
    assert json_file == os.path.join(base, "annotations", "train.json")
    assert len(os.listdir(image_root)) == 80
    manifest = _load(os.path.join(base, "annotations", "train.manifest.json"))
    assert (
        manifest["params"]["num_images"] == 80 and manifest["params"]["version"] == shapes.VERSION
    )
    assert not [p for p in os.listdir(base) if ".tmp-" in p]


def test_deterministic(tmp_path):
    a = _files(_gen(tmp_path / "a", n=6, seed=3))
    b = _files(_gen(tmp_path / "b", n=6, seed=3, num_workers=2))  # parallelism changes nothing
    c = _files(_gen(tmp_path / "c", n=6, seed=4))
    assert a == b
    assert a["json"] != c["json"]
    assert all(a[k] != c[k] for k in a if k != "json")


def test_coco_json_valid(dataset):
    coco, json_file, image_root = dataset
    dicts = load_coco_json(json_file, image_root)
    assert len(dicts) == 80
    for d in dicts:
        with Image.open(d["file_name"]) as im:
            assert im.size == (d["width"], d["height"])
        assert 224 <= d["width"] <= 384 and 224 <= d["height"] <= 384
        for ann in d["annotations"]:
            x, y, w, h = ann["bbox"]
            assert x >= 0 and y >= 0 and x + w <= d["width"] and y + h <= d["height"], ann
            assert w >= 2 and h >= 2, ann
            assert ann["iscrowd"] == 0
    for ann in coco["annotations"]:
        assert ann["area"] == ann["bbox"][2] * ann["bbox"][3]
    ids = [a["id"] for a in coco["annotations"]]
    assert len(set(ids)) == len(ids) and min(ids) == 1


def test_instance_masks_are_exact_and_fit_their_boxes(dataset):
    """Each object's mask (COCO RLE) is its whole drawn shape: its bounding box is the object's box,
    holes stay holes (rings), and its pixels carry the object's paint where nothing covers them."""
    from pycocotools import mask as mask_util

    coco, json_file, image_root = dataset
    images = {im["id"]: im for im in coco["images"]}
    ring = next(c["id"] for c in coco["categories"] if c["name"] == "ring")
    fill = {}
    for ann in coco["annotations"]:
        im = images[ann["image_id"]]
        m = mask_util.decode(dict(ann["segmentation"], counts=ann["segmentation"]["counts"].encode()))
        assert m.shape == (im["height"], im["width"])
        ys, xs = m.nonzero()
        x, y, w, h = ann["bbox"]
        assert [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1] == [x, y, w, h]
        fill.setdefault(ann["category_id"], []).append(m.sum() / (w * h))
    assert max(fill[ring]) < 0.75  # a disc fills pi/4 of its box; a ring less
    assert all(0.3 < np.mean(v) <= 1.0 for v in fill.values())


def test_masks_reach_mask_rcnn_as_bitmasks(dataset):
    from detectron2.data import DatasetMapper
    from detectron2.config import get_cfg

    _, json_file, image_root = dataset
    cfg = get_cfg()
    cfg.INPUT.MASK_FORMAT, cfg.MODEL.MASK_ON, cfg.INPUT.RANDOM_FLIP = "bitmask", True, "none"
    cfg.INPUT.MIN_SIZE_TRAIN = (0,)  # no resize
    d = next(d for d in load_coco_json(json_file, image_root) if d["annotations"])
    inst = DatasetMapper(cfg, is_train=True)(d)["instances"]
    boxes = inst.gt_masks.get_bounding_boxes().tensor
    assert len(inst) == len(d["annotations"]) and inst.gt_masks.tensor.any(dim=(1, 2)).all()
    assert torch.equal(boxes, inst.gt_boxes.tensor)


def test_classes_and_supercategories(dataset):
    coco = dataset[0]
    cats = coco["categories"]
    assert [c["id"] for c in cats] == list(range(1, len(shapes.SHAPE_CLASSES) + 1))
    assert [c["name"] for c in cats] == [c.name for c in shapes.SHAPE_CLASSES]
    assert {c["supercategory"] for c in cats} == {"round", "angular"}
    assert {a["category_id"] for a in coco["annotations"]} == {c["id"] for c in cats}
    # the confusable pair: same colour, different shape
    by_name = {c.name: c for c in shapes.SHAPE_CLASSES}
    assert by_name["circle"].rgb == by_name["ring"].rgb


def test_scales_empties_occlusion(dataset):
    coco = dataset[0]
    sides = np.array([max(a["bbox"][2:]) for a in coco["annotations"]])
    assert sides.min() < 16 and (sides < 16).mean() > 0.1  # small objects, a fair share
    assert sides.max() >= 100  # and large ones
    annotated = {a["image_id"] for a in coco["annotations"]}
    empty = [im["id"] for im in coco["images"] if im["id"] not in annotated]
    assert 1 <= len(empty) <= 0.2 * len(coco["images"])
    visible = np.array([a["visible"] for a in coco["annotations"]])
    assert visible.min() >= shapes.MIN_VISIBLE - 1e-3
    assert (visible < 0.9).any()


def test_difficulty_knob():
    def stats(difficulty):
        vis, noise = [], []
        for i in range(12):
            img, objects = shapes.render_image(0, "val", i, difficulty)
            vis += [v for _, _, v, _ in objects]
            noise.append(np.abs(np.diff(img.astype(np.float32), axis=1)).mean())
        return np.array(vis), np.mean(noise)

    vis0, noise0 = stats(0.0)
    vis2, noise2 = stats(2.0)
    assert (vis0 == 1.0).all()  # no occlusion at difficulty 0
    assert (vis2 < 1.0).mean() > 0.2
    assert noise2 > 2 * noise0


def test_registration(tmp_path):
    name = "tid_shapes_test_registration"
    try:
        shapes.register_shapes(name, "val", root=str(tmp_path), num_images=5, difficulty=0.5)
        meta = MetadataCatalog.get(name)
        assert not os.path.exists(meta.json_file)  # lazy: nothing generated yet
        assert os.path.basename(os.path.dirname(meta.image_root)) == "tid_shapes_n5_d0.5"
        dicts = DatasetCatalog.get(name)
        assert len(dicts) == 5 and os.path.isfile(meta.json_file)
        assert meta.thing_classes == [c.name for c in shapes.SHAPE_CLASSES]
        assert meta.evaluator_type == "coco" and len(meta.thing_colors) == len(meta.thing_classes)
        assert all(
            0 <= a["category_id"] < len(meta.thing_classes) for d in dicts for a in d["annotations"]
        )
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    for split in ("train", "val"):
        meta = MetadataCatalog.get(f"tid_shapes_{split}")
        assert f"tid_shapes_{split}" in DatasetCatalog
        assert meta.json_file.endswith(os.path.join("tid_shapes", "annotations", f"{split}.json"))
        assert meta.thing_classes == [c.name for c in shapes.SHAPE_CLASSES]


def test_default_root_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv("TID_DATASETS", str(tmp_path))
    assert shapes.shapes_paths(None, "val")[1] == os.path.join(str(tmp_path), "tid_shapes", "val")
    monkeypatch.delenv("TID_DATASETS")
    monkeypatch.chdir(tmp_path)
    assert shapes.default_root() == os.path.join(str(tmp_path), "datasets")


def test_bad_params_are_named():
    with pytest.raises(ValueError, match="test.*num_images"):
        shapes.generate_shapes(None, "test")
    with pytest.raises(ValueError, match="difficulty"):
        shapes.register_shapes("tid_shapes_never", "val", difficulty=-1)


def test_manifest_mismatch_regenerates(tmp_path, monkeypatch):
    json_file = _gen(tmp_path, n=4, dirname="fixed")
    assert len(_load(json_file)["images"]) == 4
    assert len(_load(_gen(tmp_path, n=5, dirname="fixed"))["images"]) == 5  # other params: redone
    assert len(os.listdir(os.path.join(tmp_path, "fixed", "train"))) == 5

    manifest = json_file.replace(".json", ".manifest.json")
    data = _load(manifest)
    data["params"]["version"] = -1  # an old generator's output
    with open(manifest, "w") as f:
        json.dump(data, f)
    _gen(tmp_path, n=5, dirname="fixed")
    assert _load(manifest)["params"]["version"] == shapes.VERSION

    def fail(*args, **kwargs):
        raise AssertionError("regenerated although up to date")

    monkeypatch.setattr(shapes, "_render_split", fail)
    assert _gen(tmp_path, n=5, dirname="fixed") == json_file  # same params: reused


def test_interrupted_generation_leaves_nothing_complete(tmp_path, monkeypatch):
    render = shapes._render_and_write

    def crash_at_3(index, *args, **kwargs):
        if index == 3:
            raise KeyboardInterrupt
        return render(index, *args, **kwargs)

    monkeypatch.setattr(shapes, "_render_and_write", crash_at_3)
    with pytest.raises(KeyboardInterrupt):
        _gen(tmp_path, n=6, dirname="x")
    base = os.path.join(tmp_path, "x")
    assert not os.path.exists(os.path.join(base, "annotations", "train.json"))
    assert not os.path.exists(os.path.join(base, "train"))
    assert not [p for p in os.listdir(base) if ".tmp-" in p]

    # A crash while committing (before the manifest is written) is not taken as complete.
    monkeypatch.setattr(shapes, "_render_and_write", render)
    write_json = shapes._write_json

    def no_manifest(path, obj):
        if path.endswith(".manifest.json"):
            raise OSError("disk full")
        write_json(path, obj)

    monkeypatch.setattr(shapes, "_write_json", no_manifest)
    with pytest.raises(OSError):
        _gen(tmp_path, n=6, dirname="x")
    monkeypatch.setattr(shapes, "_write_json", write_json)
    params = shapes._params("train", 6, 0, 1.0, shapes.DEFAULT_SIDES)
    json_file, image_root = shapes.shapes_paths(str(tmp_path), "train", "x")
    assert not shapes._is_complete(json_file, image_root, params)
    _gen(tmp_path, n=6, dirname="x")
    assert shapes._is_complete(json_file, image_root, params)


def test_make_shapes_tool(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location(
        "make_shapes", os.path.join(REPO, "tools", "make_shapes.py")
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "sample.png"
    argv = [
        "make_shapes.py",
        "--root",
        str(tmp_path),
        "--splits",
        "val",
        "--num-images",
        "3",
        "--difficulty",
        "1.5",
        "--sample",
        str(out),
        "--sample-index",
        "1",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    tool.main()
    assert os.path.isfile(os.path.join(tmp_path, "tid_shapes_n3_d1.5", "annotations", "val.json"))
    with Image.open(out) as im:
        assert im.size[0] >= 2 * 224  # drawn at twice the image size
