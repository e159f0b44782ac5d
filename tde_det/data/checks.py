"""Up-front checks of the data, with errors that say what is wrong and where.

- :func:`prepare_dataset`: the json and the image folders exist (the demo sets are generated here).
- :func:`check_datasets`: the pre-flight that the tools run before building a model. For every
  LVIS-format dataset (``evaluator_type "lvis"`` with a ``json_file``) it reads the json and checks
  that every image file exists, that the categories are the registered vocabulary (count, ids 1..N,
  names) and ``MODEL.ROI_HEADS.NUM_CLASSES``, that the annotations use those categories, and that
  every image of a test set carries ``neg_category_ids`` and ``not_exhaustive_category_ids``
  (LVIS's federated evaluation). All problems are collected into one :class:`DataCheckFailed`.
"""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import DataCheckFailed, FilesMissing, NotRegistered, message
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


class DatasetFilesMissing(FilesMissing):
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
        NotRegistered (a KeyError): the name is not registered (lists the registered LVIS-style names).
        DatasetFilesMissing: a json file or image folder is missing; the message names the
            expected paths, ``DETECTRON2_DATASETS`` and ``datasets/README.md``.
    """
    if dataset_name in DEMO_DATASETS:
        ensure_generated(*DEMO_DATASETS[dataset_name])
        return
    if dataset_name not in DatasetCatalog.list():
        known = sorted(n for n in DatasetCatalog.list() if "lvis" in n or n in DEMO_DATASETS)
        raise NotRegistered(
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


# ---- the pre-flight data check ----

# Threads that stat the image files: os.stat releases the GIL, so threads overlap the waits of a
# network or cold-cache file system (benchmarks/bench_file_check.py measures it).
STAT_THREADS = 16
EXAMPLES = 3  # a problem found on many items names this many of them, then the count


def image_file(image_root, image):
    """The path Detectron2's ``load_lvis_json`` reads a json image record from: ``image_root`` +
    the last two parts of its ``coco_url`` (split folder, file name)."""
    split_folder, file_name = image["coco_url"].split("/")[-2:]
    return os.path.join(image_root + split_folder, file_name)


def _not_files(paths):
    return [p for p in paths if not os.path.isfile(p)]


def files_not_found(paths, threads=STAT_THREADS):
    """The entries of `paths` that are not existing files, in order; one stat call each, spread over
    `threads` threads (contiguous chunks)."""
    paths = list(paths)
    if threads <= 1 or len(paths) < 4 * threads:
        return _not_files(paths)
    size = -(-len(paths) // threads)
    with ThreadPoolExecutor(threads) as pool:
        chunks = pool.map(_not_files, [paths[i : i + size] for i in range(0, len(paths), size)])
        return [p for chunk in chunks for p in chunk]


def _examples(items):
    shown = ", ".join(str(x) for x in items[:EXAMPLES])
    return shown + (f", ... ({len(items)} in all)" if len(items) > EXAMPLES else "")


def _vocabulary_hint(found, expected, registered_ok):
    if (found, expected) == (1230, 1203):
        return "this looks like LVIS v0.5: use configs/lvis_v0.5_*.yaml"
    if (found, expected) == (1203, 1230):
        return "this looks like LVIS v1: use the configs/lvis_*.yaml without v0.5"
    if registered_ok:
        return f"set MODEL.ROI_HEADS.NUM_CLASSES {found} (in the config or as a trailing KEY VALUE override)"
    return "check that the json is this dataset's"


def category_problems(data, meta, num_classes=None):
    """Problems of the json's vocabulary against the registered metadata `meta` (``thing_classes``,
    optional ``thing_dataset_id_to_contiguous_id``) and `num_classes`; [] if none."""
    cats = sorted(data["categories"], key=lambda c: c["id"])
    ids = [c["id"] for c in cats]
    registered = meta.get("thing_classes")
    registered_ok = registered is None or len(registered) == len(ids)
    expected = {}
    if not registered_ok:
        expected["the registered dataset has"] = len(registered)
    if num_classes is not None and num_classes != len(ids):
        expected["MODEL.ROI_HEADS.NUM_CLASSES is"] = num_classes
    if expected:
        found = " and ".join(f"{what} {n}" for what, n in expected.items())
        hint = _vocabulary_hint(len(ids), next(iter(expected.values())), registered_ok)
        return [f"the json has {len(ids)} categories, but {found}: {hint}"]
    problems = []
    mapping = meta.get("thing_dataset_id_to_contiguous_id")
    want = sorted(mapping) if mapping else list(range(1, len(ids) + 1))
    if ids != want:
        odd = sorted(set(ids) ^ set(want)) or [i for i, j in zip(ids, want) if i != j]
        problems.append(f"the category ids are not {want[0]}..{want[-1]} as the registered dataset needs "
                        f"(ids that differ: {_examples(odd)})")
    elif registered is not None and not mapping:
        differ = [(c["id"], c.get("name"), r) for c, r in zip(cats, registered)
                  if r not in (c.get("name"), (c.get("synonyms") or [None])[0])]
        if differ:
            i, name, r = differ[0]
            problems.append(f"{len(differ)} of the {len(ids)} category names differ from the registered dataset's "
                            f"(e.g. id {i}: {name!r} in the json, {r!r} registered): the json has another vocabulary")
    used = sorted({a.get("category_id") for a in data.get("annotations", ())} - set(ids), key=str)
    if used:
        problems.append(f"annotations use category ids that are not among the json's categories: {_examples(used)}")
    return problems


def image_problems(data, image_root, is_test, threads=STAT_THREADS):
    """Problems of the json's image records: files that do not exist under `image_root`, records
    without ``coco_url``, and (test sets with annotations) records without the federated labels."""
    images = data["images"]
    problems = []
    no_url = [img.get("id") for img in images if "coco_url" not in img]
    if no_url:
        problems.append(f"{len(no_url)} of {len(images)} images have no 'coco_url', from which Detectron2's "
                        f"LVIS loader takes the image's folder and file name (image ids {_examples(no_url)})")
    paths = [image_file(image_root, img) for img in images if "coco_url" in img]
    missing = files_not_found(paths, threads)
    if missing:
        problems.append(f"{len(missing)} of {len(paths)} image files do not exist: {_examples(missing)}")
    if is_test and "annotations" in data:  # an image-info json (test-dev) has no labels to check
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            lacking = [img.get("id") for img in images if key not in img]
            if lacking:
                problems.append(f"{len(lacking)} of {len(images)} images have no '{key}', which LVIS evaluation "
                                f"needs on every image of a test set (image ids {_examples(lacking)})")
    return problems


def _check_dataset(name, is_test, num_classes, threads):
    """(problems, summary line or None) of one dataset."""
    try:
        prepare_dataset(name)
    except (DatasetFilesMissing, NotRegistered) as e:
        return [message(e)], None
    meta = MetadataCatalog.get(name)
    json_file = meta.get("json_file")
    if meta.get("evaluator_type") != "lvis" or not json_file or "://" in json_file:
        return [], f"{name}: not an LVIS-format json dataset; not checked"
    start = time.perf_counter()
    try:
        with open(json_file, "rb") as f:  # json detects the encoding (UTF-8)
            data = json.load(f)
    except ValueError as e:
        return [f"{name}: {json_file} is not valid JSON ({e})"], None
    if not (isinstance(data, dict) and all(isinstance(data.get(k), list) for k in ("images", "categories"))):
        return [f"{name}: {json_file} lacks the 'images' and 'categories' lists of an LVIS-format json"], None
    problems = category_problems(data, meta, num_classes) + image_problems(data, meta.image_root, is_test, threads)
    if problems:
        return [f"{name} ({json_file}): {p}" for p in problems], None
    return [], (f"{name}: {len(data['images'])} image files found, {len(data['categories'])} categories"
                f"{', federated labels on every image' if is_test and 'annotations' in data else ''} "
                f"({time.perf_counter() - start:.1f} s)")


def check_datasets(names, test_names=(), num_classes=None, threads=STAT_THREADS):
    """The pre-flight data check of `names` (registered dataset names); those also in `test_names`
    are checked as test sets. `num_classes`: ``MODEL.ROI_HEADS.NUM_CLASSES`` (None: not compared).

    Returns one summary line per dataset. Raises :class:`DataCheckFailed` listing every problem
    found (the first few items of each kind and their count; also as its ``problems`` list).
    """
    problems, lines = [], []
    for name in dict.fromkeys(names):
        found, line = _check_dataset(name, name in test_names, num_classes, threads)
        problems += found
        lines += [line] if line else []
    if problems:
        error = DataCheckFailed(
            f"the data check found {len(problems)} problem(s):\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nFix the data (datasets/README.md shows the layout) or the config; the tools' "
            "--skip-data-check skips this check."
        )
        error.problems = problems
        raise error
    return lines
