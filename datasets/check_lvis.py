#!/usr/bin/env python
"""Check LVIS data before training on it: the data check that tools/train_net.py runs first.

    python datasets/check_lvis.py [DATASET_NAME ...]      (default: lvis_v1_train lvis_v1_val)
    python datasets/check_lvis.py --config-file configs/lvis_tde_mask_rcnn.yaml [KEY VALUE ...]

For each dataset: the json and image folders exist, every image file of the json exists, the
json's categories are the registered vocabulary (and, with a config, MODEL.ROI_HEADS.NUM_CLASSES),
and every image of a test set carries neg_category_ids and not_exhaustive_category_ids. Test sets
are the config's DATASETS.TEST, or the named datasets without "train" in their name.
Paths are resolved under $DETECTRON2_DATASETS (default: datasets/), as in Detectron2.
Prints one line per dataset; exit status 1 if anything is wrong.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tde_det import get_tde_cfg  # noqa: E402  (also registers the demo datasets)
from tde_det.data.checks import LVIS_IMAGE_FOLDERS, check_datasets  # noqa: E402
from tde_det.engine import cli  # noqa: E402
from tde_det.errors import DataCheckFailed  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="check the datasets of this config")
    parser.add_argument("words", nargs="*", metavar="DATASET | KEY VALUE",
                        help=f"registered dataset names, e.g. {', '.join(sorted(LVIS_IMAGE_FOLDERS))}; "
                             "with --config-file: trailing KEY VALUE overrides")
    cli.add_arguments(parser, data_check=False)
    args = parser.parse_args(argv)
    with cli.exit_on_user_error(args.debug):
        if args.config_file:
            cfg = get_tde_cfg(args.config_file, args.words)
            names, tests = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST), list(cfg.DATASETS.TEST)
            num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
        else:
            names = args.words or ["lvis_v1_train", "lvis_v1_val"]
            tests, num_classes = [n for n in names if "train" not in n], None
    root = os.path.expanduser(os.getenv("DETECTRON2_DATASETS", "datasets"))
    print(f"DETECTRON2_DATASETS = {root!r} ({os.path.abspath(root)})", flush=True)
    ok = True
    for name in dict.fromkeys(names):
        try:
            for line in check_datasets([name], tests, num_classes):
                print(f"OK       {line}", flush=True)
        except DataCheckFailed as e:
            ok = False
            for problem in e.problems:
                print(f"PROBLEM  {problem}", flush=True)
    if not ok:
        print("See datasets/README.md for the expected layout and files.")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
