"""Your own LVIS-format json files as named Detectron2 datasets, from config keys.

    DATASETS.LVIS_JSON.NAMES        ("shapes_train", "shapes_val")
    DATASETS.LVIS_JSON.FILES        ("lvis/train.json", "lvis/val.json")
    DATASETS.LVIS_JSON.IMAGE_ROOTS  ("images/", "images/")

:func:`register_json_datasets` (called by :func:`tde_det.config.get_tde_cfg`, so by every tool)
registers each name as :mod:`tde_det.data.builtin` registers the demo sets -- Detectron2's
``load_lvis_json`` without a dataset name (``register_lvis_instances`` passes the name, and the
loader then replaces the metadata by LVIS's builtin vocabulary) -- with the vocabulary of its own json:
``thing_classes`` (category names in id order), ``class_image_count`` (as Detectron2's LVIS v1
metadata, for the federated loss) and, for files written by ``tools/coco_to_lvis.py``, ``coco_ids``
(the original COCO category id of each class). The LVIS evaluator, the pre-flight, NorCal's counts
(``image_count`` of the json), ``tools/sweep_alpha.py`` and ``tools/visualize.py`` read them as
they read the builtin LVIS sets. Images are read from ``IMAGE_ROOT/<folder of coco_url>/<file>``
(Detectron2's LVIS loader; ``coco_to_lvis`` writes ``coco_url = "./" + file_name``).
"""

import json
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import load_lvis_json

from ..errors import ConfigError, FilesMissing

__all__ = ["register_json_datasets", "json_metadata", "JSON_DATASETS"]

# name -> (json file, image root) of the datasets registered here (re-registration is a no-op)
JSON_DATASETS = {}


def json_metadata(json_file):
    """Metadata of an LVIS-format json's own vocabulary (categories sorted by id)."""
    try:
        with open(json_file, "rb") as f:
            data = json.load(f)
    except ValueError as e:
        raise ConfigError(f"DATASETS.LVIS_JSON.FILES: {json_file} is not valid JSON ({e}).") from None
    cats = data.get("categories") if isinstance(data, dict) else None
    if not (isinstance(cats, list) and cats and all(isinstance(c, dict) and {"id", "name"} <= c.keys() for c in cats)):
        raise ConfigError(f"DATASETS.LVIS_JSON.FILES: {json_file} has no 'categories' list with 'id' and 'name' "
                          "(an LVIS-format json; tools/coco_to_lvis.py converts COCO-format files).")
    cats = sorted(cats, key=lambda c: c["id"])
    meta = {"thing_classes": [c["name"] for c in cats]}
    if all("image_count" in c for c in cats):
        meta["class_image_count"] = [{"id": c["id"], "image_count": c["image_count"]} for c in cats]
    if all("coco_id" in c for c in cats):
        meta["coco_ids"] = [c["coco_id"] for c in cats]
    return meta


def _register(name, json_file, image_root):
    if JSON_DATASETS.get(name) == (json_file, image_root):
        return
    if name in JSON_DATASETS:  # the same name with other files (e.g. another config in this process)
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    elif name in DatasetCatalog.list():
        raise ConfigError(f"DATASETS.LVIS_JSON.NAMES: {name!r} is already a registered dataset (a builtin one); "
                          "choose another name.")
    if not os.path.isfile(json_file):
        raise FilesMissing(f"DATASETS.LVIS_JSON.FILES: {json_file!r} (dataset {name!r}) does not exist.")
    meta = json_metadata(json_file)
    DatasetCatalog.register(name, lambda: load_lvis_json(json_file, image_root))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="lvis", **meta)
    JSON_DATASETS[name] = (json_file, image_root)


def register_json_datasets(cfg):
    """Register the datasets that ``cfg.DATASETS.LVIS_JSON`` names (idempotent). Raises a ConfigError
    for lists of different lengths, a builtin name, or a json without categories; FilesMissing for
    a json that does not exist."""
    spec = cfg.DATASETS.get("LVIS_JSON")
    if spec is None:
        return
    names, files, roots = list(spec.NAMES), list(spec.FILES), list(spec.IMAGE_ROOTS)
    if not len(names) == len(files) == len(roots):
        raise ConfigError(
            f"DATASETS.LVIS_JSON: NAMES, FILES and IMAGE_ROOTS must have one entry per dataset; they have "
            f"{len(names)}, {len(files)} and {len(roots)}."
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"DATASETS.LVIS_JSON.NAMES lists a name twice: {names}.")
    for name, json_file, root in zip(names, files, roots):
        # the loader concatenates image_root and the folder of coco_url: the root must end with "/"
        _register(name, os.path.expanduser(json_file), os.path.join(os.path.expanduser(root), ""))
