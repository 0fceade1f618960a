"""Datasets. Importing this package registers ``tid_shapes_train`` and ``tid_shapes_val``."""

from detectron2.data import DatasetCatalog

from .shapes import (  # noqa: F401
    DEFAULT_NUM_IMAGES,
    SHAPE_CLASSES,
    generate_shapes,
    register_shapes,
    shapes_metadata,
)


def _register_default_shapes() -> None:
    """The default splits, under ``$TID_DATASETS`` (else ``./datasets``) as of import time."""
    for split in ("train", "val"):
        name = f"tid_shapes_{split}"
        if name not in DatasetCatalog:
            register_shapes(name, split)


_register_default_shapes()
