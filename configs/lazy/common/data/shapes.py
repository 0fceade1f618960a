"""The embedded tid_shapes dataset as configs/quickstart/Base-quickstart.yaml sets it: multi-scale
224-288 training (max 416), 256 test, 8 images per batch, empty images kept."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L

from .coco import dataloader

dataloader.train.dataset.names = "tid_shapes_train"
dataloader.train.dataset.filter_empty = False
dataloader.train.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=(224, 256, 288), max_size=416, sample_style="choice"),
    L(T.RandomFlip)(horizontal=True),
]
dataloader.train.total_batch_size = 8
dataloader.train.num_workers = 1

dataloader.test.dataset.names = "tid_shapes_val"
dataloader.test.mapper.augmentations = [
    L(T.ResizeShortestEdge)(short_edge_length=256, max_size=416, sample_style="choice"),
]
dataloader.test.num_workers = 1


def with_masks(loaders, mask_format="bitmask"):
    """The loaders of a Mask R-CNN (MODEL.MASK_ON, INPUT.MASK_FORMAT): instance masks reach the model
    (tid_shapes' exact RLE masks as bitmasks; COCO's polygons as "polygon")."""
    loaders.train.mapper.use_instance_mask = True
    loaders.train.mapper.instance_mask_format = mask_format
    return loaders
