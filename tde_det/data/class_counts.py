"""Training image counts per class (NorCal's N_c), from a registered dataset or a json file.

Counts are in Detectron2's contiguous class order (sorted category id), one per foreground class.
"""

import json
import os
from typing import List, Sequence

from ..errors import ConfigError, FilesMissing

__all__ = ["class_counts_from_json", "dataset_class_counts", "image_counts", "norcal_class_counts"]


def image_counts(categories, annotations) -> List[int]:
    """Per category of `categories` (in their order): the number of images with an annotation of it."""
    images = {c["id"]: set() for c in categories}
    for a in annotations:
        images[a["category_id"]].add(a["image_id"])
    return [len(images[c["id"]]) for c in categories]


def class_counts_from_json(path: str) -> List[float]:
    """Per-class counts from `path`: a JSON list of numbers (used as they are), or an LVIS / COCO-format
    dataset json -- its categories' ``image_count`` where every category has one (LVIS ships them),
    else the number of images with an annotation of the category."""
    if not os.path.isfile(path):
        raise FilesMissing(f"class-count json {path!r} does not exist (MODEL.NORCAL.CLASS_COUNTS).")
    with open(path) as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ConfigError(f"class-count json {path!r} is not valid JSON: {e}.") from None
    if isinstance(data, list):
        return [float(n) for n in data]
    if not isinstance(data, dict) or not isinstance(data.get("categories"), list):
        raise ConfigError(
            f"{path!r} is neither a JSON list of per-class counts nor a dataset json with 'categories' "
            "(MODEL.NORCAL.CLASS_COUNTS)."
        )
    cats = sorted(data["categories"], key=lambda c: c["id"])
    if cats and all("image_count" in c for c in cats):
        return [float(c["image_count"]) for c in cats]
    return [float(n) for n in image_counts(cats, data.get("annotations", []))]


def dataset_class_counts(dataset_names: Sequence[str]) -> List[float]:
    """Images per class summed over the registered datasets `dataset_names`: from each one's
    ``json_file`` (:func:`class_counts_from_json`) where its metadata names one, else from its
    Detectron2 dataset dicts (contiguous ``category_id`` of the annotations)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    from .checks import prepare_dataset

    total = None
    for name in dataset_names:
        prepare_dataset(name)
        json_file = MetadataCatalog.get(name).get("json_file")
        if json_file and os.path.isfile(json_file):
            counts = class_counts_from_json(json_file)
        else:
            num = len(MetadataCatalog.get(name).get("thing_classes") or [])
            counts = [0.0] * num
            for record in DatasetCatalog.get(name):
                for c in {a["category_id"] for a in record.get("annotations", [])}:
                    counts[c] += 1
        if total is not None and len(counts) != len(total):
            raise ConfigError(f"The training datasets {list(dataset_names)} have different class counts.")
        total = counts if total is None else [a + b for a, b in zip(total, counts)]
    if total is None:
        raise ConfigError("NorCal needs class training counts: DATASETS.TRAIN is empty; set MODEL.NORCAL.CLASS_COUNTS.")
    return total


def norcal_class_counts(cfg) -> List[float]:
    """N_c for ``MODEL.NORCAL``: the json ``MODEL.NORCAL.CLASS_COUNTS`` names, else the training image
    counts of ``DATASETS.TRAIN``."""
    path = cfg.MODEL.NORCAL.CLASS_COUNTS
    return class_counts_from_json(path) if path else dataset_class_counts(cfg.DATASETS.TRAIN)
