"""Data loading whose failures name the file at fault: an unreadable image, a malformed annotation json."""
import contextlib
import json
from typing import Iterable

from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog

__all__ = ["FileNamingDatasetMapper", "naming_annotation_errors"]


class FileNamingDatasetMapper(DatasetMapper):
    """Detectron2's DatasetMapper; an image that is missing, corrupt or unreadable raises an error
    naming its file (and the exception it caused) instead of PIL's or iopath's bare one."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"image file not found: {dataset_dict.get('file_name')} ({e})") from e
        except (OSError, SyntaxError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
            raise ValueError(
                f"cannot load image {dataset_dict.get('file_name')} (image_id "
                f"{dataset_dict.get('image_id')}): {type(e).__name__}: {e}"
            ) from e


@contextlib.contextmanager
def naming_annotation_errors(dataset_names: Iterable[str]):
    """Re-raise a malformed annotation file of any of `dataset_names` (invalid json, missing COCO
    fields) as a ValueError naming the datasets and their annotation files."""
    try:
        yield
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        if any(n not in DatasetCatalog for n in dataset_names):
            raise  # Detectron2's own "not registered" error says it best
        files = {n: MetadataCatalog.get(n).get("json_file", "?") for n in dataset_names}
        raise ValueError(
            f"malformed annotations in dataset(s) {files}: {type(e).__name__}: {e}. A COCO json needs "
            "'images', 'annotations' and 'categories'"
        ) from e
