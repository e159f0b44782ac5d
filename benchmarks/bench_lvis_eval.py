#!/usr/bin/env python
"""Benchmark: tde_det's fast LVIS evaluation vs lvis-api 0.5.3's LVISEval, same inputs.

Synthetic LVIS-like data (``tde_det.evaluation.synthetic``; default 5,000 images x 300
detections, 1,203 categories, polygon ground-truth masks, compressed-RLE detection masks) is
generated once and cached. Each (task, backend) then runs in its own subprocess, which loads the
data, resets its peak-RSS counter, and times only the evaluation:

* lvis-api:  ``LVISEval(gt, LVISResults(gt, results, max_dets=300), iou_type).run()``
* fast:      ``tde_det.evaluation.fast_lvis.evaluate(gt, results, iou_type)``

with ``gt`` an already loaded ``lvis.LVIS``. bbox results carry only "bbox", segm results only
"segmentation" (what Detectron2's LVISEvaluator passes for segm). Reported per run: wall time,
peak RSS of the process during the evaluation (VmHWM after a reset through
/proc/self/clear_refs; ``ru_maxrss`` of the whole process where the reset is not allowed), and
the largest metric difference between the two backends.

    .venv/bin/python benchmarks/bench_lvis_eval.py                     # full size
    .venv/bin/python benchmarks/bench_lvis_eval.py --images 500        # quick look
"""

import argparse
import gc
import json
import logging
import os
import pickle
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def _data_paths(args):
    from tde_det.evaluation.synthetic import SYNTHETIC_VERSION

    tag = f"i{args.images}_d{args.dets}_c{args.cats}_s{args.seed}_v{SYNTHETIC_VERSION}"
    d = os.path.join(args.cache_dir, tag)
    return d, os.path.join(d, "gt.json"), os.path.join(d, "results.pkl")


def _make_data(args):
    from tde_det.evaluation.synthetic import make_synthetic_lvis

    d, gt_path, res_path = _data_paths(args)
    if os.path.isfile(gt_path) and os.path.isfile(res_path):
        return
    os.makedirs(d, exist_ok=True)
    t = time.perf_counter()
    gt, results = make_synthetic_lvis(
        num_images=args.images, num_cats=args.cats, dets_per_image=(args.dets, args.dets),
        seed=args.seed, score_decimals=None, image_size=(480, 640),
    )
    with open(gt_path, "w") as f:
        json.dump(gt, f)
    with open(res_path, "wb") as f:
        pickle.dump(results, f, protocol=pickle.HIGHEST_PROTOCOL)
    print(f"generated {len(gt['images'])} images, {len(gt['annotations'])} annotations, "
          f"{len(results)} detections in {time.perf_counter() - t:.0f} s -> {d}", flush=True)


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _worker(args):
    """Run one (backend, task) evaluation and print a json line with its measurements."""
    logging.disable(logging.WARNING)
    from lvis import LVIS, LVISEval, LVISResults

    from tde_det.evaluation.fast_lvis import evaluate  # both backends import the same modules

    _, gt_path, res_path = _data_paths(args)
    lvis_gt = LVIS(gt_path)
    with open(res_path, "rb") as f:
        results = pickle.load(f)
    drop = "segmentation" if args.task == "bbox" else "bbox"
    for r in results:
        r.pop(drop, None)
    gc.collect()
    gc.freeze()  # keep the loaded inputs out of later collections (same for both backends)
    base_kb = _status_kb("VmRSS")
    try:  # reset the peak-RSS counter (VmHWM) so it covers the evaluation only
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak_src = "VmHWM"
    except OSError:
        peak_src = "ru_maxrss"

    t = time.perf_counter()
    if args.backend == "lvis-api":
        ev = LVISEval(lvis_gt, LVISResults(lvis_gt, results, max_dets=300), args.task)
        ev.run()
        metrics = dict(ev.results)
    else:
        metrics = dict(evaluate(lvis_gt, results, args.task))
    seconds = time.perf_counter() - t
    peak_kb = _status_kb("VmHWM") if peak_src == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "backend": args.backend, "task": args.task, "seconds": seconds,
        "peak_rss_mb": peak_kb / 1024, "base_rss_mb": base_kb / 1024, "peak_source": peak_src,
        "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "metrics": {k: float(v) for k, v in metrics.items()},
    }))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=5000)
    p.add_argument("--dets", type=int, default=300, help="detections per image")
    p.add_argument("--cats", type=int, default=1203)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"])
    p.add_argument("--backends", nargs="+", default=["fast", "lvis-api"], choices=["fast", "lvis-api"])
    p.add_argument("--cache-dir", default=os.path.join(ROOT, ".cache", "bench_lvis_eval"))
    p.add_argument("--out", default=None, help="also write all measurements to this json file")
    p.add_argument("--worker", nargs=2, metavar=("BACKEND", "TASK"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.backend, args.task = args.worker
        return _worker(args)

    _make_data(args)
    runs = []
    for task in args.tasks:
        for backend in args.backends:
            cmd = [sys.executable, os.path.abspath(__file__), "--images", str(args.images), "--dets", str(args.dets),
                   "--cats", str(args.cats), "--seed", str(args.seed), "--cache-dir", args.cache_dir,
                   "--worker", backend, task]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            run = json.loads(out.strip().splitlines()[-1])
            print(f"{task:4s} {backend:8s} {run['seconds']:8.2f} s   peak RSS {run['peak_rss_mb']:7.0f} MB "
                  f"(inputs loaded, before the evaluation: {run['base_rss_mb']:.0f} MB)", flush=True)
            runs.append(run)

    print()
    summary = {}
    for task in args.tasks:
        r = {x["backend"]: x for x in runs if x["task"] == task}
        if "fast" in r and "lvis-api" in r:
            f, l = r["fast"], r["lvis-api"]
            diff = max(abs(f["metrics"][k] - l["metrics"][k]) for k in l["metrics"])
            summary[task] = {
                "speedup": l["seconds"] / f["seconds"],
                "peak_ratio": f["peak_rss_mb"] / l["peak_rss_mb"],
                "extra_ratio": (f["peak_rss_mb"] - f["base_rss_mb"]) / max(l["peak_rss_mb"] - l["base_rss_mb"], 1e-9),
                "max_metric_diff": diff,
            }
            s = summary[task]
            print(f"{task}: {s['speedup']:.1f}x faster, peak RSS fast/lvis-api = {s['peak_ratio']:.2f} "
                  f"(growth during eval {s['extra_ratio']:.2f}), max |metric diff| = {diff:.2e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": runs, "summary": summary}, f, indent=1)


if __name__ == "__main__":
    main()
