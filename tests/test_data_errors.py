"""Training and evaluation data that cannot be read give errors naming the file at fault."""
import json
import shutil

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from conftest import quickstart_cfg
from tid_d2.engine import TIDTrainer


def copy_of(dataset_name: str, tmp_path, name: str):
    """A copy of a tid_shapes variant (json + images) under tmp_path, registered as `name`."""
    DatasetCatalog.get(dataset_name)  # generates the images on first use
    meta = MetadataCatalog.get(dataset_name)
    root = tmp_path / name
    shutil.copytree(meta.image_root, root / "images")
    data = json.load(open(meta.json_file))
    json_file = root / "ann.json"
    json_file.write_text(json.dumps(data))
    if name not in DatasetCatalog:
        register_coco_instances(name, {}, str(json_file), str(root / "images"))
    return json_file, root / "images" / data["images"][0]["file_name"]


def read_everything(name: str, train: bool = True) -> None:
    """One training batch of 16 images (a permutation of the whole 16-image dataset), or every
    test batch, through TIDTrainer's loaders."""
    cfg = quickstart_cfg("GFL-student", "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)",
                         "SOLVER.IMS_PER_BATCH", "16", "DATALOADER.ASPECT_RATIO_GROUPING", "False")
    if train:
        next(iter(TIDTrainer.build_train_loader(cfg)))
    else:
        for _ in TIDTrainer.build_test_loader(cfg, name):
            pass


@pytest.mark.parametrize("train", [True, False])
def test_corrupt_image_names_the_file(tiny_shapes, tmp_path, train):
    name = f"corrupt_image_{train}"
    _, image = copy_of(tiny_shapes[0], tmp_path, name)
    image.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=f"cannot load image .*{image.name}"):
        read_everything(name, train)


def test_missing_image_names_the_file(tiny_shapes, tmp_path):
    _, image = copy_of(tiny_shapes[1], tmp_path, "missing_image")
    image.unlink()
    with pytest.raises(FileNotFoundError, match=f"image file not found: .*{image.name}"):
        read_everything("missing_image", train=False)


@pytest.mark.parametrize("content", ["{not json", json.dumps({"images": []})])
def test_malformed_annotation_json_names_the_file(tiny_shapes, tmp_path, content):
    name = f"malformed_json_{len(content)}"
    json_file, _ = copy_of(tiny_shapes[1], tmp_path, name)
    json_file.write_text(content)
    for train in (True, False):
        with pytest.raises(ValueError, match=f"malformed annotations .*{name}.*ann.json"):
            read_everything(name, train)


def test_unregistered_dataset_keeps_detectron2s_error(tiny_shapes):
    with pytest.raises(KeyError, match="'no_such_dataset' is not registered"):
        read_everything("no_such_dataset", train=True)
