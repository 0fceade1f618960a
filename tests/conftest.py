"""Shared test fixtures: tiny configs on a tiny embedded dataset, all on the CPU."""
import os

import pytest
import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog
from detectron2.modeling import build_model

import tid_d2  # noqa: F401  (registers models, distillers and the default datasets)
from tid_d2.data import register_shapes
from tid_d2.engine.defaults import setup_cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_TRAIN, TINY_VAL = "tid_shapes_tiny_train", "tid_shapes_tiny_val"


@pytest.fixture(autouse=True)
def _seed_and_threads():
    torch.manual_seed(0)
    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_shapes(tmp_path_factory):
    """A 16-image train / 8-image val tid_shapes variant (small images), registered once."""
    root = str(tmp_path_factory.mktemp("datasets"))
    if TINY_TRAIN not in DatasetCatalog:
        register_shapes(TINY_TRAIN, "train", root=root, num_images=16, sides=(128, 192))
        register_shapes(TINY_VAL, "val", root=root, num_images=8, sides=(128, 192))
    return TINY_TRAIN, TINY_VAL


def tiny_run_opts(train: str = TINY_TRAIN, val: str = TINY_VAL) -> list:
    """Config overrides of a test-sized run: the tiny datasets, 128-192 px images, 2 images per
    batch, no warm-up or LR steps, no loader workers."""
    return [
        "DATASETS.TRAIN", f"('{train}',)",
        "DATASETS.TEST", f"('{val}',)",
        "INPUT.MIN_SIZE_TRAIN", "(128,)",
        "INPUT.MAX_SIZE_TRAIN", "192",
        "INPUT.MIN_SIZE_TEST", "128",
        "INPUT.MAX_SIZE_TEST", "192",
        "SOLVER.IMS_PER_BATCH", "2",
        "SOLVER.WARMUP_ITERS", "0",
        "SOLVER.STEPS", "()",
        "DATALOADER.NUM_WORKERS", "0",
    ]


def quickstart_cfg(name: str, *opts, freeze: bool = True):
    """A quickstart config (configs/quickstart/<name>.yaml) shrunk for tests: `tiny_run_opts`, a
    handful of iterations, on the CPU."""
    base = tiny_run_opts() + ["SOLVER.MAX_ITER", "4", "MODEL.DEVICE", "cpu"]
    return setup_cfg(os.path.join(REPO, "configs", "quickstart", f"{name}.yaml"), base + list(opts), freeze)


@pytest.fixture(scope="module")
def teachers(tiny_shapes, tmp_path_factory):
    """Randomly initialised quickstart teachers saved with DetectionCheckpointer: name -> path."""
    out = tmp_path_factory.mktemp("teachers")
    paths = {}
    for name, opts in (
        ("GFL-teacher", ()),
        ("ATSS-teacher", ()),
        ("GFL-teacher-5cls", ("MODEL.GFL.NUM_CLASSES", "5")),
    ):
        torch.manual_seed(1)
        cfg_name = name.replace("-5cls", "")
        model = build_model(quickstart_cfg(cfg_name, *opts))
        DetectionCheckpointer(model, save_dir=str(out)).save(name)
        paths[name] = str(out / f"{name}.pth")
    return paths
