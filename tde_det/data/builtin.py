"""Registration of the long-tailed demo datasets, the way Detectron2 registers its builtin LVIS sets.

Registered on import (cheap: nothing is generated until a dataset is first used):

    tde_demo_lt_train / tde_demo_lt_val            48 classes, $DETECTRON2_DATASETS/tde_demo_lt
    tde_demo_lt_tiny_train / tde_demo_lt_tiny_val   6 classes, $DETECTRON2_DATASETS/tde_demo_lt_tiny
    tde_demo_lt_fine_train / tde_demo_lt_fine_val   40 classes, fine-grained tail (FINE_SPEC),
                                                    $DETECTRON2_DATASETS/tde_demo_lt_fine

``DETECTRON2_DATASETS`` defaults to ``datasets`` (relative to the working directory), as in
Detectron2. The metadata carries ``json_file``, ``image_root``, ``evaluator_type="lvis"`` and
``thing_classes``, so Detectron2's ``LVISEvaluator`` and ``Visualizer`` work unchanged.
"""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.lvis import load_lvis_json

from .demo_lt import DEMO_SPEC, FINE_SPEC, TINY_SPEC, ensure_generated

# dataset name -> (cache root, spec); read by prepare_dataset() to generate on first use.
DEMO_DATASETS = {}


def _load(root, spec, json_file, image_root):
    ensure_generated(root, spec)
    # dataset_name is not passed: Detectron2 would look up builtin LVIS metadata for it.
    return load_lvis_json(json_file, image_root)


def register_demo_lt(prefix, root, spec=DEMO_SPEC):
    """Register ``{prefix}_train`` and ``{prefix}_val`` for the demo set generated (lazily) into `root`."""
    for split in ("train", "val"):
        name = f"{prefix}_{split}"
        json_file = os.path.join(root, "annotations", f"demo_lt_{split}.json")
        image_root = os.path.join(root, "")  # the loader appends the split folder named in coco_url
        DatasetCatalog.register(name, lambda r=root, s=spec, j=json_file, i=image_root: _load(r, s, j, i))
        MetadataCatalog.get(name).set(
            json_file=json_file, image_root=image_root, evaluator_type="lvis", thing_classes=spec.class_names
        )
        DEMO_DATASETS[name] = (root, spec)


def register_all_demo(datasets_root):
    register_demo_lt("tde_demo_lt", os.path.join(datasets_root, "tde_demo_lt"), DEMO_SPEC)
    register_demo_lt("tde_demo_lt_tiny", os.path.join(datasets_root, "tde_demo_lt_tiny"), TINY_SPEC)
    register_demo_lt("tde_demo_lt_fine", os.path.join(datasets_root, "tde_demo_lt_fine"), FINE_SPEC)


_root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
register_all_demo(_root)
