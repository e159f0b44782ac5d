"""COCO-format annotation files -> LVIS-format ones (dicts in, dicts out; no Detectron2, no I/O
but :func:`read_json` / :func:`write_json_files`). ``tools/coco_to_lvis.py`` is the command line.

The conversion (``convert(train, others)``):

- categories: sorted by their original id and renumbered 1..N (Detectron2's LVIS loader needs
  1..N); each keeps its ``name`` and its original id as ``coco_id``; ``image_count`` /
  ``instance_count`` are counted on the TRAIN json (crowd annotations not counted) and
  ``frequency`` follows LVIS's rule on ``image_count``: "r" <= rare_max (10) < "c" <= common_max
  (100) < "f". The same category table goes into every output.
- images: kept with their ids; ``coco_url`` = "./" + ``file_name`` (Detectron2's LVIS loader reads
  the image from ``image_root + <last folder of coco_url> / <file name>``), ``neg_category_ids`` =
  every category without an annotation in the image (COCO images are exhaustively labelled) --
  or [] with ``partially_labelled`` (a class not annotated in an image is then not evaluated on
  it) -- and ``not_exhaustive_category_ids`` = [].
- annotations: renumbered 1..M (COCO tools treat id 0 as "unmatched"), category ids mapped.
  An ``iscrowd`` annotation has no LVIS equivalent: it is dropped as ground truth and its category
  goes into that image's ``not_exhaustive_category_ids`` (and not into ``neg_category_ids``), so
  detections of that class in that image that match no other ground truth are ignored -- COCO
  ignores only those matching the crowd region; AP can only rise compared to COCO's.

Every problem of the input is a :class:`ConversionError` naming the file and the entry.
"""

import json
import os
from typing import Dict, List, Sequence, Tuple

from ..errors import UserError

__all__ = ["ConversionError", "convert", "convert_files", "read_json", "write_json_files", "lvis_frequency_of"]

RARE_MAX, COMMON_MAX = 10, 100  # LVIS: rare 1-10 training images, common 11-100, frequent > 100


class ConversionError(UserError, ValueError):
    """A COCO-format input that cannot be converted; the message names the file and the entry."""


def lvis_frequency_of(image_count: int, rare_max: int = RARE_MAX, common_max: int = COMMON_MAX) -> str:
    """LVIS's frequency group of a class seen in `image_count` training images."""
    return "r" if image_count <= rare_max else "c" if image_count <= common_max else "f"


def check_thresholds(rare_max, common_max):
    if not (isinstance(rare_max, int) and isinstance(common_max, int) and 0 <= rare_max < common_max):
        raise ConversionError(
            f"frequency thresholds --rare-max-images {rare_max} and --common-max-images {common_max} make no "
            "sense: need 0 <= rare < common (a class in at most `rare` training images is rare, up to `common` "
            "common, above frequent; LVIS: 10 and 100)."
        )


def read_json(path: str) -> dict:
    """The json object in `path`; a ConversionError if it cannot be read or parsed."""
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except OSError as e:
        raise ConversionError(f"{path}: cannot read it ({e.strerror or e}).") from None
    except ValueError as e:
        raise ConversionError(f"{path}: not valid JSON ({e}).") from None


# ----------------------------------------------------------------------------- validation
def _entry(kind, i, item):
    ident = item.get("id") if isinstance(item, dict) else None
    return f"{kind}[{i}]" + (f" (id {ident!r})" if ident is not None else "")


def _require(path, kind, i, item, keys):
    if not isinstance(item, dict):
        raise ConversionError(f"{path}: {kind}[{i}] is not a JSON object.")
    for key in keys:
        if key not in item:
            raise ConversionError(f"{path}: {_entry(kind, i, item)} has no {key!r}.")


def _is_int(x):
    return isinstance(x, int) and not isinstance(x, bool)


def _unique_ids(path, kind, items):
    seen = {}
    for i, item in enumerate(items):
        ident = item["id"]
        if not _is_int(ident):
            raise ConversionError(f"{path}: {kind}[{i}] has id {ident!r}, not an integer.")
        if ident in seen:
            singular = {"images": "image", "annotations": "annotation", "categories": "category"}[kind]
            raise ConversionError(f"{path}: duplicate {singular} id {ident} ({kind}[{seen[ident]}] and {kind}[{i}]).")
        seen[ident] = i


def validate(path: str, data) -> None:
    """Raise a ConversionError naming `path` and the entry for the first problem of a COCO json."""
    if not isinstance(data, dict):
        raise ConversionError(f"{path}: the top level is not a JSON object (a COCO-format json is "
                              "{'images': [...], 'annotations': [...], 'categories': [...]}).")
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise ConversionError(f"{path}: missing key {key!r} (a COCO-format json has 'images', 'annotations' "
                                  "and 'categories').")
        if not isinstance(data[key], list):
            raise ConversionError(f"{path}: {key!r} is not a list.")
    for i, c in enumerate(data["categories"]):
        _require(path, "categories", i, c, ("id", "name"))
    for i, img in enumerate(data["images"]):
        _require(path, "images", i, img, ("id", "file_name", "height", "width"))
    for i, a in enumerate(data["annotations"]):
        _require(path, "annotations", i, a, ("id", "image_id", "category_id", "bbox"))
    _unique_ids(path, "categories", data["categories"])
    _unique_ids(path, "images", data["images"])
    _unique_ids(path, "annotations", data["annotations"])
    if not data["categories"]:
        raise ConversionError(f"{path}: 'categories' is empty.")
    cat_ids = {c["id"] for c in data["categories"]}
    img_ids = {img["id"] for img in data["images"]}
    for i, a in enumerate(data["annotations"]):
        where = f"{path}: {_entry('annotations', i, a)}"
        if a["category_id"] not in cat_ids:
            raise ConversionError(f"{where} has category_id {a['category_id']!r}, which 'categories' does not define.")
        if a["image_id"] not in img_ids:
            raise ConversionError(f"{where} has image_id {a['image_id']!r}, which 'images' does not define.")
        box = a["bbox"]
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
            raise ConversionError(f"{where} has bbox {box!r}, not [x, y, width, height].")
        if not (box[2] > 0 and box[3] > 0):
            raise ConversionError(f"{where} has bbox {box!r}: width and height must be > 0.")
        segm = a.get("segmentation", [])
        if not a.get("iscrowd", 0) and not isinstance(segm, list):
            raise ConversionError(f"{where} has an RLE segmentation without iscrowd; Detectron2's LVIS loader reads "
                                  "polygons only (convert the masks to polygons).")
    for i, img in enumerate(data["images"]):
        depth = img["file_name"].replace("\\", "/").strip("/").count("/")
        if depth > 1 or os.path.isabs(img["file_name"]):
            raise ConversionError(
                f"{path}: {_entry('images', i, img)} has file_name {img['file_name']!r}: Detectron2's LVIS loader "
                "finds images by at most one folder below the image root; give file_name relative to the image "
                "root with at most one folder (e.g. 'train/0001.jpg')."
            )


def _same_vocabulary(train_path, train, path, data):
    mine = {c["id"]: c["name"] for c in data["categories"]}
    theirs = {c["id"]: c["name"] for c in train["categories"]}
    if mine != theirs:
        diff = sorted(set(mine.items()) ^ set(theirs.items()), key=str)[0]
        raise ConversionError(
            f"{path}: its categories differ from {train_path}'s (e.g. id {diff[0]} {diff[1]!r}); every file must "
            "list the training json's categories."
        )


# ----------------------------------------------------------------------------- conversion
def lvis_categories(train: dict, rare_max=RARE_MAX, common_max=COMMON_MAX) -> Tuple[List[dict], Dict[int, int]]:
    """(LVIS category table sorted by original id, {original id: new id 1..N}) with counts from `train`."""
    cats = sorted(train["categories"], key=lambda c: c["id"])
    new_id = {c["id"]: i + 1 for i, c in enumerate(cats)}
    images, instances = {c["id"]: set() for c in cats}, {c["id"]: 0 for c in cats}
    for a in train["annotations"]:
        if not a.get("iscrowd", 0):
            images[a["category_id"]].add(a["image_id"])
            instances[a["category_id"]] += 1
    table = []
    for c in cats:
        extra = {k: v for k, v in c.items() if k not in ("id", "name")}
        n = len(images[c["id"]])
        table.append(dict(extra, id=new_id[c["id"]], name=c["name"], coco_id=c["id"], image_count=n,
                          instance_count=instances[c["id"]], frequency=lvis_frequency_of(n, rare_max, common_max)))
    return table, new_id


def box_polygon(box):
    """The rectangle [x, y, w, h] as a COCO polygon (as pycocotools' loadRes does for box results)."""
    x, y, w, h = box
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def convert_one(data: dict, categories: List[dict], new_id: Dict[int, int], partially_labelled=False) -> dict:
    """One COCO-format dict as an LVIS-format dict with the given category table. An annotation
    without a polygon gets its box as polygon (:func:`box_polygon`; LVIS annotations have one)."""
    positive, crowd = {}, {}
    annotations = []
    for a in data["annotations"]:
        cid = new_id[a["category_id"]]
        if a.get("iscrowd", 0):
            crowd.setdefault(a["image_id"], set()).add(cid)
            continue
        x, y, w, h = a["bbox"]
        ann = {k: v for k, v in a.items() if k not in ("iscrowd",)}
        segmentation = a.get("segmentation") or box_polygon(a["bbox"])
        ann.update(id=len(annotations) + 1, category_id=cid, segmentation=segmentation, area=a.get("area", w * h))
        annotations.append(ann)
        positive.setdefault(a["image_id"], set()).add(cid)
    all_ids = [c["id"] for c in categories]
    images = []
    for img in data["images"]:
        present = positive.get(img["id"], set()) | crowd.get(img["id"], set())
        neg = [] if partially_labelled else [c for c in all_ids if c not in present]
        images.append(dict(img, coco_url="./" + img["file_name"].replace("\\", "/").strip("/"),
                           neg_category_ids=neg, not_exhaustive_category_ids=sorted(crowd.get(img["id"], ()))))
    out = {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")}
    out.update(images=images, annotations=annotations, categories=categories)
    return out


def convert(inputs: Sequence[Tuple[str, dict]], rare_max=RARE_MAX, common_max=COMMON_MAX,
            partially_labelled=False, notes=None) -> List[dict]:
    """LVIS-format dicts for the COCO-format `inputs` [(path, dict), ...]; the first is the training
    split (its counts give the frequencies). Everything is validated before anything is converted.
    `notes` (a list) receives a line per input with annotations without a polygon."""
    check_thresholds(rare_max, common_max)
    for path, data in inputs:
        validate(path, data)
    train_path, train = inputs[0]
    for path, data in inputs[1:]:
        _same_vocabulary(train_path, train, path, data)
    categories, new_id = lvis_categories(train, rare_max, common_max)
    for path, data in inputs:
        boxes = sum(not a.get("segmentation") and not a.get("iscrowd", 0) for a in data["annotations"])
        if boxes and notes is not None:
            notes.append(f"{path}: {boxes} annotation(s) without a polygon get their box as polygon; box-only "
                         "data: train with MODEL.MASK_ON False (mask AP would score boxes)")
    return [convert_one(data, categories, new_id, partially_labelled) for _, data in inputs]


def output_paths(input_paths: Sequence[str], output_dir: str) -> List[str]:
    """One output per input, same file name in `output_dir`; two inputs with one name are an error."""
    names = [os.path.basename(p) for p in input_paths]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ConversionError(f"{input_paths[i]}: two inputs are named {name!r}; the outputs would overwrite "
                                  "each other.")
    outputs = [os.path.join(output_dir, n) for n in names]
    for src, dst in zip(input_paths, outputs):
        if os.path.exists(dst) and os.path.samefile(src, dst):
            raise ConversionError(f"{src}: the output would overwrite this input; choose another --output-dir.")
    return outputs


def write_json_files(outputs: Sequence[Tuple[str, dict]]) -> None:
    """Write every (path, dict): each to a temporary file first, then all renamed into place."""
    temps = []
    try:
        for path, data in outputs:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            tmp = f"{path}.tmp-{os.getpid()}"
            temps.append((tmp, path))
            with open(tmp, "w") as f:
                json.dump(data, f)
        for tmp, path in temps:
            os.replace(tmp, path)
    finally:
        for tmp, _ in temps:
            if os.path.exists(tmp):
                os.remove(tmp)


def convert_files(input_paths: Sequence[str], output_dir: str, **options) -> List[Tuple[str, dict]]:
    """Read, validate and convert the COCO-format files `input_paths` (the first: training split)
    into `output_dir`; nothing is written unless every input is valid. Returns [(output path, dict)],
    and appends to `notes` (a list, optional) what the user should know (see :func:`convert`)."""
    if "rare_max" in options or "common_max" in options:
        check_thresholds(options.get("rare_max", RARE_MAX), options.get("common_max", COMMON_MAX))
    outputs = output_paths(input_paths, output_dir)
    inputs = [(p, read_json(p)) for p in input_paths]
    converted = convert(inputs, **options)
    written = list(zip(outputs, converted))
    write_json_files(written)
    return written
