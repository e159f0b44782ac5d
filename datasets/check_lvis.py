#!/usr/bin/env python
"""Check LVIS data before training on it: the data check that tools/train_net.py runs first.

    python datasets/check_lvis.py [DATASET_NAME ...]      (default: lvis_v1_train lvis_v1_val)
    python datasets/check_lvis.py --config-file configs/lvis_tde_mask_rcnn.yaml [KEY VALUE ...]
    python datasets/check_lvis.py --decode [DATASET_NAME ...]   (also decode every image, in parallel)

For each dataset: the json and image folders exist; the json is well formed (no empty split,
unique image / annotation / category ids, annotations that refer to existing images and
categories, boxes [x, y, width, height] inside their image, polygons of >= 3 points, no image file
listed twice); every image file of the json exists; the json's categories are the registered
vocabulary (and, with a config, MODEL.ROI_HEADS.NUM_CLASSES); every image of a test set carries
neg_category_ids and not_exhaustive_category_ids. With --decode, every image is also decoded
(threads in parallel) and each that cannot be read, or whose size differs from its json record, is
named. Test sets are the config's DATASETS.TEST, or the named datasets without "train" in their
name. Paths are resolved under $DETECTRON2_DATASETS (default: datasets/), as in Detectron2.
Prints one line per dataset (OK or PROBLEM); exit status 0 if all is well, 2 if anything is wrong
(or the arguments are: one "error:" line), as every tde_det tool.
"""

import warnings

# Third-party warnings a user can do nothing about: fvcore's @torch.jit.script at import (torch >= 2.10).
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from tde_det import get_tde_cfg  # noqa: E402  (also registers the demo datasets)
from tde_det.data.checks import LVIS_IMAGE_FOLDERS, check_datasets  # noqa: E402
from tde_det.engine import cli  # noqa: E402
from tde_det.errors import EXIT_OK, EXIT_USER_ERROR, DataCheckFailed  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default="", metavar="FILE", help="check the datasets of this config")
    parser.add_argument("words", nargs="*", metavar="DATASET | KEY VALUE",
                        help=f"registered dataset names, e.g. {', '.join(sorted(LVIS_IMAGE_FOLDERS))}; "
                             "with --config-file: trailing KEY VALUE overrides")
    parser.add_argument("--decode", action="store_true",
                        help="also decode every image (in parallel threads) and name each one that cannot be read")
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
            for line in check_datasets([name], tests, num_classes, decode=args.decode):
                print(f"OK       {line}", flush=True)
        except DataCheckFailed as e:
            ok = False
            for problem in e.problems:
                print(f"PROBLEM  {problem}", flush=True)
    if not ok:
        print("See datasets/README.md for the expected layout and files.")
    return EXIT_OK if ok else EXIT_USER_ERROR


if __name__ == "__main__":
    sys.exit(main())
