#!/usr/bin/env python
"""The prediction-distribution figure at LVIS scale, on SYNTHETIC counts (no model, no LVIS download).

    python studies/prediction_distribution_example.py docs/figures/lvis_scale_prediction_distribution.png

LVIS v1's 1,203 categories (names and r/c/f groups from Detectron2's ``lvis_v1_categories``) with
made-up training image counts inside each group's range (rare 1-10, common 11-100, frequent 101-20,000,
log-uniform), val instances drawn in proportion to count^0.7, and top-1 predictions of two
made-up detectors: "plain" over-predicts frequent classes (rate ∝ count^0.5 per instance), "TDE"
less so (∝ count^0.2). It shows what the figure looks like at that scale, nothing about a model.
"""

import argparse
import os
import sys
from collections import OrderedDict

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tde_det.analysis.figures import plot_prediction_distribution  # noqa: E402

RANGES = {"r": (1, 10), "c": (11, 100), "f": (101, 20000)}


def synthetic_lvis_counts(seed=0, regions=200_000):
    """(names, frequency, train image counts, OrderedDict label -> [1203] counts) of the made-up set."""
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    rng = np.random.default_rng(seed)
    cats = sorted(LVIS_CATEGORIES, key=lambda c: c["id"])
    frequency = [c["frequency"] for c in cats]
    lo, hi = (np.array([RANGES[f][k] for f in frequency], dtype=float) for k in (0, 1))
    train = np.floor(np.exp(rng.uniform(np.log(lo), np.log(hi + 1)))).astype(int)
    gt = rng.multinomial(regions // 10, train ** 0.7 / (train ** 0.7).sum())
    series = OrderedDict()
    for label, bias in (("plain", 0.5), ("TDE (alpha=1.5)", 0.2)):
        rate = (gt + 0.2) * train ** bias
        series[label] = rng.multinomial(regions, rate / rate.sum())
    series["ground truth"] = gt
    return [c["name"] for c in cats], frequency, train, series


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("output", help="PNG file to write")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    names, frequency, train, series = synthetic_lvis_counts(args.seed)
    path = plot_prediction_distribution(train, series, args.output, frequency=frequency, class_names=names,
                                        title="SYNTHETIC counts on LVIS v1's 1,203 classes: top-1 class of "
                                              "200,000 foreground regions")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
