#!/usr/bin/env python
"""Convert COCO-format annotation files into LVIS-format ones, for rare / common / frequent AP.

    python tools/coco_to_lvis.py TRAIN_JSON [JSON ...] --output-dir DIR

The first file is the training split: its image counts give every category's LVIS frequency group
(rare: at most 10 training images, common: 11-100, frequent: more). One output per input, with the
same file name, in DIR. Categories are renumbered 1..N in order of their original id, which each
keeps as "coco_id". docs/OWN_DATA.md describes the conversion, crowd annotations, partially
labelled data, and how to train and evaluate on the converted files.
Bad input: one ``error:`` line naming the file and the entry, exit status 2, nothing written.
"""

import warnings

# fvcore's @torch.jit.script at import (torch >= 2.10): nothing a user can do about it
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")

import argparse  # noqa: E402
import os
import sys  # noqa: E402
from collections import Counter  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tde_det.data.coco_to_lvis import COMMON_MAX, RARE_MAX, convert_files  # noqa: E402
from tde_det.engine.cli import exit_on_user_error  # noqa: E402


def argument_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", metavar="JSON", help="COCO-format json files, the training split first")
    parser.add_argument("--output-dir", required=True, metavar="DIR", help="where the LVIS-format files go")
    parser.add_argument("--rare-max-images", type=int, default=RARE_MAX, metavar="N",
                        help=f"a class in at most N training images is rare (default {RARE_MAX}, LVIS's)")
    parser.add_argument("--common-max-images", type=int, default=COMMON_MAX, metavar="N",
                        help=f"... common up to N images, frequent above (default {COMMON_MAX}, LVIS's)")
    parser.add_argument("--partially-labelled", action="store_true",
                        help="the images are not exhaustively labelled: leave neg_category_ids empty, so a class "
                             "is evaluated only on the images that have an annotation of it")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of input errors")
    return parser


def summary(path, data):
    """One line about a converted file: images, annotations, and the frequency groups."""
    groups = Counter(c["frequency"] for c in data["categories"])
    crowd = sum(bool(img["not_exhaustive_category_ids"]) for img in data["images"])
    return (f"{path}: {len(data['images'])} images, {len(data['annotations'])} annotations, "
            f"{len(data['categories'])} categories (rare {groups['r']}, common {groups['c']}, frequent {groups['f']})"
            + (f", {crowd} images with crowd regions (not exhaustive)" if crowd else ""))


def main(argv=None):
    args = argument_parser().parse_args(argv)
    notes = []
    with exit_on_user_error(args.debug):
        outputs = convert_files(args.inputs, args.output_dir, rare_max=args.rare_max_images,
                                common_max=args.common_max_images, partially_labelled=args.partially_labelled,
                                notes=notes)
    for path, data in outputs:
        print(summary(path, data))
    for note in notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
