"""
What the training data really is, said once at the start of training: per training dataset the
images, the annotations, the images without any, and the boxes Detectron2 drops, by reason.

Nothing is filtered here. The counts come from Detectron2's own steps, run on each image at its
annotated size: `filter_images_with_only_crowd_annotations` (when DATALOADER.FILTER_EMPTY_ANNOTATIONS
is on), the mapper's crowd skip, `transform_instance_annotations` (BoxMode conversion and clipping
to the image) and `annotations_to_instances` + `filter_empty_instances` (`Boxes.nonempty`). A box
that step drops gets its reason from its raw annotation: non-finite coordinates, a non-positive
width or height, or else it lies outside the image. Random augmentations (e.g. crops) come later
and may drop more.
"""
import logging
import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence

from tabulate import tabulate

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.build import filter_images_with_only_crowd_annotations
from detectron2.structures import BoxMode

__all__ = [
    "DROPPED_BOX_WARN_FRACTION",
    "DROP_REASONS",
    "DatasetReport",
    "inspect_dataset",
    "format_reports",
    "report_datasets",
]

logger = logging.getLogger(__name__)

#: a training set whose dropped boxes exceed this share of its (non-crowd) boxes is warned about.
DROPPED_BOX_WARN_FRACTION = 0.01
#: why a box was dropped, in the order of the table's columns.
DROP_REASONS = ("non-positive size", "outside the image", "non-finite")


@dataclass
class DatasetReport:
    """The counts of one dataset; `boxes` are its non-crowd annotations."""

    name: str
    json_file: str
    images: int = 0
    annotations: int = 0
    crowd: int = 0
    images_without_annotations: int = 0
    images_filtered: int = 0  # removed by filter_images_with_only_crowd_annotations
    without_mask: int = 0  # non-crowd annotations with no 'segmentation'
    dropped: Dict[str, int] = field(default_factory=lambda: dict.fromkeys(DROP_REASONS, 0))

    @property
    def boxes(self) -> int:
        return self.annotations - self.crowd

    @property
    def num_dropped(self) -> int:
        return sum(self.dropped.values())

    @property
    def dropped_fraction(self) -> float:
        return self.num_dropped / self.boxes if self.boxes else 0.0


def _drop_reason(box: Sequence[float], box_mode) -> str:
    """Why Detectron2 dropped this raw box: it is non-finite, has no area, or lies outside."""
    if not all(math.isfinite(float(v)) for v in box):
        return "non-finite"
    x0, y0, x1, y1 = BoxMode.convert(list(box), box_mode, BoxMode.XYXY_ABS)
    if x1 <= x0 or y1 <= y0:
        return "non-positive size"
    return "outside the image"


def _dropped_boxes(record: Dict, annos: List[Dict]) -> Counter:
    """Reasons of the non-crowd boxes of one image that the DatasetMapper would drop, found with
    its own functions under the identity transform at the image's annotated size."""
    image_size = (record.get("height", math.inf), record.get("width", math.inf))
    boxes = [{"bbox": a["bbox"], "bbox_mode": a["bbox_mode"], "category_id": a["category_id"]}
             for a in annos]
    identity = T.TransformList([])
    clipped = [utils.transform_instance_annotations(b, identity, image_size) for b in boxes]
    instances = utils.annotations_to_instances(clipped, image_size)
    _, kept = utils.filter_empty_instances(instances, return_mask=True)
    return Counter(_drop_reason(a["bbox"], a["bbox_mode"]) for a, k in zip(annos, kept) if not k)


def inspect_dataset(name: str, filter_empty: bool = True) -> Optional[DatasetReport]:
    """The counts of the registered dataset `name` (None for a torch Dataset, which cannot be
    inspected without iterating it). `filter_empty`: DATALOADER.FILTER_EMPTY_ANNOTATIONS."""
    dicts = DatasetCatalog.get(name)
    if not isinstance(dicts, list):
        return None
    report = DatasetReport(name, MetadataCatalog.get(name).get("json_file", "?"), images=len(dicts))
    for record in dicts:
        annos = record.get("annotations", [])
        non_crowd = [a for a in annos if a.get("iscrowd", 0) == 0]
        report.annotations += len(annos)
        report.crowd += len(annos) - len(non_crowd)
        report.images_without_annotations += not non_crowd
        report.without_mask += sum("segmentation" not in a for a in non_crowd)
        if non_crowd:
            for reason, n in _dropped_boxes(record, non_crowd).items():
                report.dropped[reason] += n
    if filter_empty and dicts and "annotations" in dicts[0]:
        report.images_filtered = len(dicts) - len(filter_images_with_only_crowd_annotations(dicts))
    return report


def format_reports(reports: Iterable[DatasetReport], masks: bool = False) -> str:
    """One row per dataset, as a pipe table (`masks`: with the count of instances without a mask)."""
    headers = ["dataset", "images", "annotations", "crowd", "images without annotations",
               "images filtered out"] + [f"dropped: {r}" for r in DROP_REASONS] + ["dropped %"]
    rows = [[r.name, r.images, r.annotations, r.crowd, r.images_without_annotations,
             r.images_filtered] + [r.dropped[k] for k in DROP_REASONS]
            + [f"{100 * r.dropped_fraction:.2f}"] + ([r.without_mask] if masks else []) for r in reports]
    headers += ["instances without mask"] if masks else []
    return tabulate(rows, headers=headers, tablefmt="pipe")


#: the report last logged for each dataset name in this process (a benchmark trains many runs).
_LOGGED: Dict[str, DatasetReport] = {}


def _check(report: DatasetReport, warn: bool = True, masks: bool = False) -> None:
    """Error for a training set without usable boxes, or (`masks`) with instances without a mask;
    warning (if `warn`) when many boxes are dropped."""
    if report.boxes == 0 or report.num_dropped == report.boxes:
        what = ("has no annotations" if report.annotations == 0 else
                f"has no usable box ({report.crowd} crowd annotations, {report.num_dropped} boxes "
                f"dropped: {report.dropped})")
        raise ValueError(
            f"training dataset {report.name!r} (json: {report.json_file}) {what} in its "
            f"{report.images} images; a detector cannot learn from it. Check the json's "
            "'annotations' (and their 'image_id's) or DATASETS.TRAIN"
        )
    if masks and report.without_mask:
        raise ValueError(
            f"training dataset {report.name!r} (json: {report.json_file}): {report.without_mask} of its "
            f"{report.boxes} instances have no 'segmentation', and a mask head (MODEL.MASK_ON) needs one "
            "per instance. Add the masks, or train without the mask head (MODEL.MASK_ON False: Faster R-CNN)"
        )
    if warn and report.dropped_fraction > DROPPED_BOX_WARN_FRACTION:
        reasons = ", ".join(f"{n} {k}" for k, n in report.dropped.items() if n)
        logger.warning(
            f"training dataset {report.name!r} (json: {report.json_file}): Detectron2 drops "
            f"{report.num_dropped} of its {report.boxes} boxes ({100 * report.dropped_fraction:.1f}% "
            f"> {100 * DROPPED_BOX_WARN_FRACTION:g}%): {reasons}. Fix the annotations: those "
            "objects are trained as background"
        )


def report_datasets(
    dataset_names: Iterable[str], filter_empty: bool = True, masks: bool = False
) -> List[DatasetReport]:
    """
    Log the table of `dataset_names` (the training datasets) and check each one: a dataset with
    no usable box raises ValueError naming it and its json; dropping more than
    DROPPED_BOX_WARN_FRACTION of the boxes is a warning naming it. Table and warning are said once
    per process while a dataset's counts stay the same (a benchmark trains many runs on one). Call
    it once where the train loader is built, before it (`filter_empty`:
    DATALOADER.FILTER_EMPTY_ANNOTATIONS, or `get_detection_dataset_dicts`'s `filter_empty` in a
    LazyConfig). `masks` (MODEL.MASK_ON): every instance needs a mask, else a ValueError names the
    dataset and the count. Returns the reports.
    """
    names = [dataset_names] if isinstance(dataset_names, str) else list(dataset_names)
    reports, skipped = [], []
    for name in names:
        report = inspect_dataset(name, filter_empty)
        if report is None:
            skipped.append(name)
        else:
            reports.append(report)
    new = [r for r in reports if _LOGGED.get(r.name) != r]
    if new:
        logger.info("Training data (boxes Detectron2 drops, by reason):\n" + format_reports(new, masks))
    if skipped:
        logger.info(f"Training datasets not inspected (not a list of dicts): {skipped}")
    for report in reports:
        _check(report, warn=report in new, masks=masks)
        _LOGGED[report.name] = report
    return reports
