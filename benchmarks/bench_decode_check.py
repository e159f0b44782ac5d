#!/usr/bin/env python
"""How fast `datasets/check_lvis.py --decode` decodes images, and how long LVIS v1 train would take.

    python benchmarks/bench_decode_check.py [--images 400] [--threads N]

Writes `--images` COCO-sized JPEGs (640x480, quality 90, textured so that a file is ~100-200 KB
like a COCO photo) into a temporary folder, reads them once (so both runs find them in the page
cache), then times :func:`tde_det.data.images.decode_problems` on one thread (the baseline) and on
`--threads` threads, in the same run. Prints both rates, their ratio, and the extrapolation to LVIS
v1 train's 100,170 images at the parallel rate (a warm cache: on a cold network disk reading the
~19 GB can dominate).
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tde_det.data.images import DECODE_THREADS, decode_problems  # noqa: E402

LVIS_V1_TRAIN_IMAGES = 100_170


def write_images(folder, count, seed=0):
    """`count` 640x480 JPEGs: smooth colour fields plus texture; [(path, height, width)]."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        coarse = rng.integers(0, 256, (15, 20, 3)).astype(np.uint8)
        base = np.asarray(Image.fromarray(coarse).resize((640, 480), Image.BICUBIC), dtype=np.int16)
        pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        path = os.path.join(folder, f"{i:012d}.jpg")
        Image.fromarray(pixels).save(path, quality=90)
        records.append((path, 480, 640))
    return records


def timed(records, threads):
    start = time.perf_counter()
    problems = decode_problems(records, threads)
    assert not problems, problems[:3]
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=400)
    parser.add_argument("--threads", type=int, default=DECODE_THREADS, help=f"default: the CPUs ({DECODE_THREADS})")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        records = write_images(folder, args.images)
        size = sum(os.path.getsize(p) for p, _, _ in records) / len(records) / 1024
        for path, _, _ in records:  # into the page cache for both runs
            with open(path, "rb") as f:
                f.read()
        serial = timed(records, 1)
        parallel = timed(records, args.threads)
    rate1, rate = len(records) / serial, len(records) / parallel
    print(f"{len(records)} JPEGs of 640x480 px, {size:.0f} KB on average, {os.cpu_count()} CPUs")
    print(f"1 thread:  {serial:.2f} s, {rate1:.0f} images/s")
    print(f"{args.threads} threads: {parallel:.2f} s, {rate:.0f} images/s ({serial / parallel:.2f}x the 1-thread rate)")
    print(f"LVIS v1 train ({LVIS_V1_TRAIN_IMAGES:,} images) at {rate:.0f} images/s: about "
          f"{LVIS_V1_TRAIN_IMAGES / rate / 60:.0f} min (extrapolated; warm page cache)")


if __name__ == "__main__":
    main()
