"""Up-front checks of the data, with errors that say what is wrong and where.

- :func:`prepare_dataset`: the json and the image folders exist (the demo sets are generated here).
- :func:`check_datasets`: the pre-flight that the tools run before building a model. For every
  LVIS- or COCO-format dataset (``evaluator_type "lvis"`` or ``"coco"`` with a ``json_file``) it
  reads the json and checks what a json written or converted by hand gets wrong
  (:func:`json_problems`: empty splits, missing keys, duplicate or dangling ids, duplicate files,
  boxes and polygons), that every image file exists, that the categories are the registered
  vocabulary (LVIS: count, ids 1..N, names) and ``MODEL.ROI_HEADS.NUM_CLASSES``, that the
  annotations use those categories, and that every image of an LVIS test set carries
  ``neg_category_ids`` and ``not_exhaustive_category_ids`` (LVIS's federated evaluation); on
  request it decodes every image (:mod:`tde_det.data.images`). All problems are collected into one
  :class:`DataCheckFailed`.
"""

import json
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor

from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import DataCheckFailed, FilesMissing, NotRegistered, message
from .builtin import DEMO_DATASETS
from .demo_lt import ensure_generated
from .images import decode_problems

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


def _number(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _duplicates(values):
    seen, dup = set(), []
    for v in values:
        if v in seen:
            dup.append(v)
        seen.add(v)
    return list(dict.fromkeys(dup))


def _bbox_problem(bbox, image):
    """Why an annotation's ``bbox`` [x, y, width, height] (pixels) is wrong for `image`, or None."""
    if not (isinstance(bbox, list) and len(bbox) == 4 and all(_number(v) for v in bbox)):
        return "not 4 finite numbers"
    x, y, w, h = bbox
    if w <= 0 or h <= 0:
        return "width or height <= 0"
    if image is not None and _number(image.get("width")) and _number(image.get("height")):
        if x < -1 or y < -1 or x + w > image["width"] + 1 or y + h > image["height"] + 1:
            return "outside the image"
    return None


def json_problems(data, fmt, is_train=False, is_test=False):
    """Problems of an LVIS- (`fmt` "lvis") or COCO-format ("coco") json written or converted by hand:
    empty splits, missing keys, duplicate or dangling ids, duplicate files, bad boxes and polygons.
    What Detectron2's loaders assert on (polygons, duplicate annotation ids) or silently drop (boxes
    of zero size, boxes outside the image, e.g. [x0, y0, x1, y1] written for [x, y, width, height]),
    and what LVIS evaluation needs (federated labels that name categories). [] if none."""
    images, categories = data["images"], data["categories"]
    annotations = data.get("annotations")
    problems = []
    if not images:
        return [f"the json has no images: nothing to {'train on' if is_train else 'evaluate'}"]
    if not categories:
        problems.append("the json has no categories")
    if annotations is None and is_train:
        return problems + ["the json has no 'annotations' list: nothing to train on"]
    if not isinstance(annotations, (list, type(None))):
        return problems + ["'annotations' is not a list"]
    file_key = "coco_url" if fmt == "lvis" else "file_name"
    bad_records = [img.get("id") if isinstance(img, dict) else img for img in images
                   if not (isinstance(img, dict) and isinstance(img.get("id"), int)
                           and isinstance(img.get(file_key), str)
                           and all(_number(img.get(k)) and img[k] > 0 and img[k] == int(img[k])
                                   for k in ("height", "width")))]
    if bad_records:
        problems.append(f"{len(bad_records)} of {len(images)} image records lack an integer 'id', '{file_key}' or "
                        f"positive integer 'height' and 'width' (image ids {_examples(bad_records)})")
    by_id = {img.get("id"): img for img in images if isinstance(img, dict)}
    dup = _duplicates([img.get("id") for img in images if isinstance(img, dict)])
    if dup:
        problems.append(f"image ids occur more than once: {_examples(dup)}; every image record needs its own id")
    dup = _duplicates([img.get(file_key) for img in images if isinstance(img, dict) and img.get(file_key)])
    if dup:
        problems.append(f"{len(dup)} image file(s) are listed more than once ({file_key} {_examples(dup)}); "
                        "merge their records into one")
    cat_ids = [c.get("id") for c in categories if isinstance(c, dict)]
    dup = _duplicates(cat_ids)
    if dup:
        problems.append(f"category ids occur more than once: {_examples(dup)}")
    cat_ids = set(cat_ids)
    if annotations is not None:
        problems += _annotation_problems(annotations, by_id, fmt)
        if is_train and annotations == []:
            problems.append("the json has no annotations: nothing to train on")
    if fmt == "lvis" and is_test and annotations is not None:
        unknown = sorted({c for img in images if isinstance(img, dict)
                          for key in ("neg_category_ids", "not_exhaustive_category_ids")
                          for c in img.get(key) or () if c not in cat_ids}, key=str)
        if unknown:
            problems.append(f"neg_category_ids / not_exhaustive_category_ids name category ids that are not among "
                            f"the json's categories: {_examples(unknown)}")
    return problems


def _annotation_problems(annotations, images_by_id, fmt):
    required = ("id", "image_id", "category_id", "bbox") + (("segmentation",) if fmt == "lvis" else ())
    problems = []
    lacking = [a.get("id") if isinstance(a, dict) else a for a in annotations
               if not (isinstance(a, dict) and all(k in a for k in required))]
    if lacking:
        problems.append(f"{len(lacking)} of {len(annotations)} annotations lack one of {', '.join(required)} "
                        f"(annotation ids {_examples(lacking)})")
    annotations = [a for a in annotations if isinstance(a, dict) and all(k in a for k in required)]
    dup = _duplicates([a["id"] for a in annotations])
    if dup:
        problems.append(f"annotation ids occur more than once: {_examples(dup)}; "
                        "Detectron2's loader requires unique ids")
    dangling = [a["id"] for a in annotations if a["image_id"] not in images_by_id]
    if dangling:
        problems.append(f"{len(dangling)} annotation(s) refer to image ids that are not in 'images' "
                        f"(annotation ids {_examples(dangling)})")
    boxes = {}
    for a in annotations:
        why = _bbox_problem(a["bbox"], images_by_id.get(a["image_id"]))
        if why:
            boxes.setdefault(why, []).append(a["id"])
    for why, ids in boxes.items():
        hint = {"outside the image": ": bbox is [x, y, width, height] in pixels; [x0, y0, x1, y1] is a common "
                                     "conversion mistake",
                "width or height <= 0": " (Detectron2 drops such boxes silently)"}.get(why, "")
        problems.append(f"{len(ids)} annotation bbox(es) {why}{hint} (annotation ids {_examples(ids)})")
    polygons = []
    for a in annotations:
        segm = a.get("segmentation")
        if isinstance(segm, list) and (fmt == "lvis" and not segm or any(
                not isinstance(p, list) or len(p) < 6 or len(p) % 2 or not all(_number(v) for v in p) for p in segm)):
            polygons.append(a["id"])
    if polygons:
        problems.append(f"{len(polygons)} annotation(s) have a polygon that is not a flat list [x0, y0, x1, y1, ...] "
                        f"of at least 3 points, or no polygon (annotation ids {_examples(polygons)})")
    return problems


def image_problems(data, image_root, is_test, threads=STAT_THREADS, fmt="lvis"):
    """Problems of the json's image records: files that do not exist under `image_root`, records
    without ``coco_url`` (LVIS), and (LVIS test sets with annotations) records without the federated
    labels."""
    images = [img for img in data["images"] if isinstance(img, dict)]
    problems = []
    if fmt == "lvis":
        no_url = [img.get("id") for img in images if "coco_url" not in img]
        if no_url:
            problems.append(f"{len(no_url)} of {len(images)} images have no 'coco_url', from which Detectron2's "
                            f"LVIS loader takes the image's folder and file name (image ids {_examples(no_url)})")
    paths = image_files(data, image_root, fmt)
    missing = files_not_found([p for p, _, _ in paths], threads)
    if missing:
        problems.append(f"{len(missing)} of {len(paths)} image files do not exist: {_examples(missing)}")
    if fmt == "lvis" and is_test and "annotations" in data:  # an image-info json (test-dev) has no labels to check
        for key in ("neg_category_ids", "not_exhaustive_category_ids"):
            lacking = [img.get("id") for img in images if key not in img]
            if lacking:
                problems.append(f"{len(lacking)} of {len(images)} images have no '{key}', which LVIS evaluation "
                                f"needs on every image of a test set (image ids {_examples(lacking)})")
    return problems


def image_files(data, image_root, fmt="lvis"):
    """[(path, height, width)] of the json's image records, as Detectron2's loader names the files."""
    out = []
    for img in data["images"]:
        if not isinstance(img, dict):
            continue
        if fmt == "lvis" and isinstance(img.get("coco_url"), str):
            out.append((image_file(image_root, img), img.get("height"), img.get("width")))
        elif fmt == "coco" and isinstance(img.get("file_name"), str):
            out.append((os.path.join(image_root, img["file_name"]), img.get("height"), img.get("width")))
    return out


def _load_json(name, json_file):
    """(data, problems): the parsed json, or the problem that it is not an LVIS/COCO-format json."""
    try:
        with open(json_file, "rb") as f:  # json detects the encoding (UTF-8)
            data = json.load(f)
    except ValueError as e:
        return None, [f"{name}: {json_file} is not valid JSON ({e})"]
    if not (isinstance(data, dict) and all(isinstance(data.get(k), list) for k in ("images", "categories"))):
        return None, [f"{name}: {json_file} lacks the 'images' and 'categories' lists of an LVIS/COCO-format json"]
    return data, []


def _check_dataset(name, is_test, num_classes, threads, decode=False):
    """(problems, summary line or None) of one dataset."""
    try:
        prepare_dataset(name)
    except (DatasetFilesMissing, NotRegistered) as e:
        return [message(e)], None
    meta = MetadataCatalog.get(name)
    json_file = meta.get("json_file")
    fmt = meta.get("evaluator_type")
    if fmt not in ("lvis", "coco") or not json_file or "://" in json_file or meta.get("image_root") is None:
        return [], f"{name}: not an LVIS- or COCO-format json dataset; not checked"
    start = time.perf_counter()
    data, problems = _load_json(name, json_file)
    if problems:
        return problems, None
    is_train = not is_test
    problems = json_problems(data, fmt, is_train, is_test)
    if not problems:  # the vocabulary and files of a json that is well formed
        problems = (category_problems(data, meta, num_classes) if fmt == "lvis" else
                    coco_category_problems(data, num_classes))
        problems += image_problems(data, meta.image_root, is_test, threads, fmt)
    decoded = ""
    if decode and not problems:
        records = image_files(data, meta.image_root, fmt)
        t = time.perf_counter()
        bad = decode_problems(records)
        problems += [f"image {path!r} cannot be read: {why}" for path, why in bad]
        decoded = f", {len(records)} images decoded in {time.perf_counter() - t:.1f} s"
    if problems:
        return [f"{name} ({json_file}): {p}" for p in problems], None
    return [], (f"{name}: {len(data['images'])} image files found, {len(data['categories'])} categories"
                f"{', federated labels on every image' if fmt == 'lvis' and is_test and 'annotations' in data else ''}"
                f"{decoded} ({time.perf_counter() - start:.1f} s)")


def coco_category_problems(data, num_classes=None):
    """A COCO-format json: Detectron2 maps its category ids (any integers) to 0..N-1 in sorted order;
    N must be ``MODEL.ROI_HEADS.NUM_CLASSES``, and the annotations must use those ids."""
    ids = {c.get("id") for c in data["categories"]}
    problems = []
    if num_classes is not None and num_classes != len(ids):
        problems.append(f"the json has {len(ids)} categories, but MODEL.ROI_HEADS.NUM_CLASSES is {num_classes}: "
                        f"set MODEL.ROI_HEADS.NUM_CLASSES {len(ids)}")
    used = sorted({a.get("category_id") for a in data.get("annotations") or () if isinstance(a, dict)} - ids, key=str)
    if used:
        problems.append(f"annotations use category ids that are not among the json's categories: {_examples(used)}")
    return problems


def check_datasets(names, test_names=(), num_classes=None, threads=STAT_THREADS, decode=False):
    """The pre-flight data check of `names` (registered dataset names); those also in `test_names`
    are checked as test sets, the others as training sets. `num_classes`:
    ``MODEL.ROI_HEADS.NUM_CLASSES`` (None: not compared). `decode`: also decode every image
    (:func:`tde_det.data.images.decode_problems`).

    Returns one summary line per dataset. Raises :class:`DataCheckFailed` listing every problem
    found (the first few items of each kind and their count; also as its ``problems`` list).
    """
    problems, lines = [], []
    for name in dict.fromkeys(names):
        found, line = _check_dataset(name, name in test_names, num_classes, threads, decode)
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
