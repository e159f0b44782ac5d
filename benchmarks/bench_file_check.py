#!/usr/bin/env python
"""Time the pre-flight data check on LVIS v1-sized file lists (tde_det.data.checks).

    python benchmarks/bench_file_check.py                        # files under /tmp/tde_det_file_check
    python benchmarks/bench_file_check.py --threads 1 4 16 32 --annotations 1270000

Generates, once, Detectron2's builtin layout with empty image files: coco/train2017/ (118,287
files) and coco/val2017/ (5,000), and lvis/lvis_v1_{train,val}.json listing LVIS v1's 100,170
train and 19,809 val images (val drawn from both folders, as in LVIS v1) with the real 1,203
categories; ``--annotations N`` adds N polygon annotations (~0.9 kB each, like LVIS v1 train's
1.27M in 1.1 GB) to the train json. Then times:

  stat   ``files_not_found`` on the 119,979 image paths, per ``--threads`` value (best and median
         of ``--repeat`` runs; the files were just listed, so the metadata is in the page cache)
  check  ``check_datasets(["lvis_v1_train", "lvis_v1_val"])`` end to end: json load, vocabulary,
         federated labels, stat calls with the default thread count
"""

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO = {"train2017": 118287, "val2017": 5000}
LVIS_V1 = {"train": 100170, "val": 19809}


def parse_args():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="/tmp/tde_det_file_check", help="where the files are generated")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 4, 16, 32])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--annotations", type=int, default=0, help="polygon annotations in the train json")
    return p.parse_args()


def make_files(root):
    """Empty image files in coco/{train2017,val2017}; returns {folder: sorted file names}."""
    names = {}
    for folder, n in COCO.items():
        d = os.path.join(root, "coco", folder)
        os.makedirs(d, exist_ok=True)
        names[folder] = [f"{i:012d}.jpg" for i in range(1, n + 1)]
        if len(os.listdir(d)) != n:
            for name in names[folder]:
                open(os.path.join(d, name), "wb").close()
    return names


def make_jsons(root, names, num_annotations):
    from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES

    train_files = names["train2017"][: LVIS_V1["train"]]
    val_files = [("val2017", f) for f in names["val2017"]]
    val_files += [("train2017", f) for f in names["train2017"][LVIS_V1["train"] :]][: LVIS_V1["val"] - len(val_files)]
    splits = {"train": [("train2017", f) for f in train_files], "val": val_files}
    os.makedirs(os.path.join(root, "lvis"), exist_ok=True)
    for split, files in splits.items():
        path = os.path.join(root, "lvis", f"lvis_v1_{split}.json")
        n_ann = num_annotations if split == "train" else 0
        stamp = f"{path}.{len(files)}-{n_ann}"
        if os.path.isfile(stamp):
            continue
        images = [{"id": i, "height": 480, "width": 640, "coco_url": f"http://images.cocodataset.org/{folder}/{f}",
                   "neg_category_ids": [1, 2], "not_exhaustive_category_ids": []}
                  for i, (folder, f) in enumerate(files, 1)]
        poly = [round(100 + 50 * ((k * 37) % 11) / 11 + k * 0.37, 2) for k in range(80)]
        annotations = [{"id": a, "image_id": a % len(images) + 1, "category_id": a % 1203 + 1, "segmentation": [poly],
                        "bbox": [100.0, 100.0, 80.5, 60.25], "area": 3210.5} for a in range(1, n_ann + 1)]
        with open(path, "w") as f:
            json.dump({"images": images, "annotations": annotations, "categories": LVIS_CATEGORIES}, f)
        open(stamp, "w").close()
    return splits


def main():
    args = parse_args()
    os.environ["DETECTRON2_DATASETS"] = args.root  # before detectron2 registers its builtin datasets
    sys.path.insert(0, REPO)
    from tde_det.data.checks import STAT_THREADS, check_datasets, files_not_found

    t0 = time.perf_counter()
    splits = make_jsons(args.root, make_files(args.root), args.annotations)
    paths = [os.path.join(args.root, "coco", folder, f) for files in splits.values() for folder, f in files]
    print(f"{len(paths)} image paths under {args.root} (set up in {time.perf_counter() - t0:.1f} s); "
          f"{os.cpu_count()} CPUs", flush=True)
    files_not_found(paths, 1)  # list the directories once: a warm metadata cache for every run below
    print("| threads | stat of all paths, best (s) | median (s) |\n|---:|---:|---:|")
    for threads in args.threads:
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            missing = files_not_found(paths, threads)
            times.append(time.perf_counter() - start)
            assert not missing, missing[:3]
        print(f"| {threads} | {min(times):.3f} | {statistics.median(times):.3f} |", flush=True)
    start = time.perf_counter()
    lines = check_datasets(["lvis_v1_train", "lvis_v1_val"], ["lvis_v1_val"], 1203)
    print(f"check_datasets end to end ({STAT_THREADS} threads, {args.annotations} train annotations): "
          f"{time.perf_counter() - start:.2f} s")
    for line in lines:
        print("  " + line)


if __name__ == "__main__":
    main()
