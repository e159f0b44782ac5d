#!/usr/bin/env python
"""Check that the LVIS annotation files and COCO image folders are where Detectron2 looks for them.

    python datasets/check_lvis.py [DATASET_NAME ...]      (default: lvis_v1_train lvis_v1_val)

Paths are resolved under $DETECTRON2_DATASETS (default: datasets/), as in Detectron2.
Prints one line per dataset and exits with status 1 if anything is missing.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.data import MetadataCatalog  # noqa: E402

from tde_det.data import DatasetFilesMissing, missing_files, prepare_dataset  # noqa: E402
from tde_det.data.checks import LVIS_IMAGE_FOLDERS  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="*", default=["lvis_v1_train", "lvis_v1_val"],
                        help=f"registered dataset names, e.g. {', '.join(sorted(LVIS_IMAGE_FOLDERS))}")
    args = parser.parse_args(argv)
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    print(f"DETECTRON2_DATASETS = {root!r} ({os.path.abspath(root)})")
    ok = True
    for name in args.datasets:
        try:
            prepare_dataset(name)
        except (DatasetFilesMissing, KeyError) as e:
            ok = False
            missing = missing_files(name) if isinstance(e, DatasetFilesMissing) else []
            print(f"MISSING  {name}: " + (", ".join(missing) if missing else e.args[0]))
            continue
        meta = MetadataCatalog.get(name)
        print(f"OK       {name}: {meta.json_file} ({len(meta.get('thing_classes', []))} classes), images under {meta.image_root}")
    if not ok:
        print("See datasets/README.md for the expected layout.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
