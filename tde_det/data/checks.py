"""Up-front checks that a dataset's files exist, with errors that say where they were expected."""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog

from .builtin import DEMO_DATASETS
from .demo_lt import ensure_generated

# COCO image folders that the images of Detectron2's builtin LVIS splits live in
# (LVIS v1 train and val both draw from COCO 2017 train and val images).
LVIS_IMAGE_FOLDERS = {
    "lvis_v1_train": ("train2017", "val2017"),
    "lvis_v1_val": ("train2017", "val2017"),
    "lvis_v1_test_dev": ("test2017",),
    "lvis_v1_test_challenge": ("test2017",),
    "lvis_v0.5_train": ("train2017",),
    "lvis_v0.5_val": ("val2017",),
    "lvis_v0.5_val_rand_100": ("val2017",),
    "lvis_v0.5_test": ("test2017",),
    "lvis_v0.5_train_cocofied": ("train2017",),
    "lvis_v0.5_val_cocofied": ("val2017",),
}

_HOW_TO_FIX = (
    "Set the environment variable DETECTRON2_DATASETS to the directory that holds lvis/ and coco/ "
    "(currently {root!r}), or put the files there; datasets/README.md explains the layout and "
    "`python datasets/check_lvis.py` checks it."
)


class DatasetFilesMissing(FileNotFoundError):
    """A registered dataset's annotation file or image folder is not where its registration says."""


def _datasets_root():
    return os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))


def missing_files(dataset_name):
    """Paths (json file, image folders) that `dataset_name` needs and that do not exist; [] if all exist."""
    meta = MetadataCatalog.get(dataset_name)
    json_file = meta.get("json_file")
    image_root = meta.get("image_root")
    missing = []
    if json_file is not None and "://" not in json_file and not os.path.isfile(json_file):
        missing.append(json_file)
    if image_root is not None:
        folders = [os.path.join(image_root, f) for f in LVIS_IMAGE_FOLDERS.get(dataset_name, ("",))]
        missing += [os.path.normpath(f) for f in folders if not os.path.isdir(f)]
    return missing


def prepare_dataset(dataset_name):
    """Make `dataset_name` ready to load: generate a demo set on first use, or check the files exist.

    Raises:
        KeyError: the name is not registered (lists the registered LVIS-style names).
        DatasetFilesMissing: a json file or image folder is missing; the message names the
            expected paths, ``DETECTRON2_DATASETS`` and ``datasets/README.md``.
    """
    if dataset_name in DEMO_DATASETS:
        ensure_generated(*DEMO_DATASETS[dataset_name])
        return
    if dataset_name not in DatasetCatalog.list():
        known = sorted(n for n in DatasetCatalog.list() if "lvis" in n or n in DEMO_DATASETS)
        raise KeyError(
            f"Dataset {dataset_name!r} is not registered. LVIS-style datasets known here: {', '.join(known)}. "
            "Register your own with detectron2.data.datasets.register_lvis_instances."
        )
    missing = missing_files(dataset_name)
    if missing:
        raise DatasetFilesMissing(
            f"Dataset {dataset_name!r} needs these files, which do not exist: "
            + ", ".join(repr(m) for m in missing)
            + ". "
            + _HOW_TO_FIX.format(root=_datasets_root())
        )
