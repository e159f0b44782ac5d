#!/usr/bin/env python
"""Benchmark: tde_det's LVIS evaluation against its fastest peer (faster-coco-eval) and the
reference (lvis-api 0.5.3), same inputs, every metric checked equal.

Synthetic LVIS-like data (``tde_det.evaluation.synthetic``; default 5,000 images x 300
detections, 1,203 categories, polygon ground-truth masks, compressed-RLE detection masks;
``--images 19809`` is LVIS v1 val's size) is generated once and cached, the results of each task in
their own file. Each (task, backend) then runs in its own subprocess, which loads the ground truth
into the backend's own object and the results list, resets its peak-RSS counter, and times only
the evaluation:

* tde_det:           ``tde_det.evaluation.fast_lvis.evaluate(gt, results, iou_type)``, gt an ``lvis.LVIS``
* faster-coco-eval:  the per-image top-300 cap of ``LVISResults``, then ``gt.loadRes(results)`` and
                     ``COCOeval_faster(gt, dt, iou_type, lvis_style=True)`` with ``maxDets = [300]``:
                     evaluate, accumulate, summarize; gt a ``faster_coco_eval.COCO``
* lvis-api:          ``LVISEval(gt, LVISResults(gt, results, max_dets=300), iou_type).run()``, gt an
                     ``lvis.LVIS`` (what Detectron2's ``LVISEvaluator`` runs), inside tde_det's
                     ``lvis_numpy_aliases()`` (lvis 0.5.3 on numpy >= 1.24)

bbox results carry only "bbox", segm results only "segmentation" (what Detectron2's LVISEvaluator
passes for segm). Each subprocess evaluates once, so the backends that write into the result dicts
(lvis-api, faster-coco-eval) get them fresh. Reported per run: wall time, peak RSS of the process
during the evaluation (VmHWM after a reset through /proc/self/clear_refs; ``ru_maxrss`` of the
whole process where the reset is not allowed) and RSS before it; then, per task, every metric of
every backend compared with tde_det's (exit status 1 if one differs by more than 1e-12). A run whose
RSS passes ``--max-rss-mb`` (default: 90 % of the memory available at the start) is stopped and
reported as such, as is one killed from outside: at LVIS val size the peers do not fit in 24 GB.

faster-coco-eval is a benchmark-only requirement (tde_det does not need it); where it is missing
the script prints the pip command that installs it.

    .venv/bin/python benchmarks/bench_lvis_eval.py                        # 5,000 images
    .venv/bin/python benchmarks/bench_lvis_eval.py --images 500           # quick look
    .venv/bin/python benchmarks/bench_lvis_eval.py --images 19809 --repeat 2 --out /tmp/lvis_val.json
"""

import argparse
import gc
import importlib.util
import json
import logging
import os
import pickle
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

BACKENDS = ("tde_det", "faster-coco-eval", "lvis-api")
LVIS_V1_VAL_IMAGES = 19809
FASTER_COCO_EVAL = "faster-coco-eval==1.8.0"  # the version measured in docs/BENCHMARKS.md
TOLERANCE = 1e-12  # largest metric difference still called equal
# faster-coco-eval's LVIS-style stats_as_dict names (maxDets = [300]) of lvis-api's metrics
FCE_KEYS = {
    "AP": "AP_all", "AP50": "AP_50", "AP75": "AP_75", "APs": "AP_small", "APm": "AP_medium", "APl": "AP_large",
    "APr": "APr", "APc": "APc", "APf": "APf",
    "AR@300": "AR_all", "ARs@300": "AR_small", "ARm@300": "AR_medium", "ARl@300": "AR_large",
}
DATA_LAYOUT = 2  # 2: one results file per task (1: both fields in one file)


def _data_paths(args):
    from tde_det.evaluation.synthetic import SYNTHETIC_VERSION

    tag = f"i{args.images}_d{args.dets}_c{args.cats}_s{args.seed}_v{SYNTHETIC_VERSION}_l{DATA_LAYOUT}"
    d = os.path.join(args.cache_dir, tag)
    return d, os.path.join(d, "gt.json"), {t: os.path.join(d, f"results_{t}.pkl") for t in ("bbox", "segm")}


def _make_data(args):
    from tde_det.evaluation.synthetic import make_synthetic_lvis

    d, gt_path, res_paths = _data_paths(args)
    if os.path.isfile(gt_path) and all(os.path.isfile(p) for p in res_paths.values()):
        return
    os.makedirs(d, exist_ok=True)
    t = time.perf_counter()
    gt, results = make_synthetic_lvis(
        num_images=args.images, num_cats=args.cats, dets_per_image=(args.dets, args.dets),
        seed=args.seed, score_decimals=None, image_size=(480, 640),
    )
    n_dets = len(results)
    for task, drop in (("bbox", "segmentation"), ("segm", "bbox")):
        with open(res_paths[task] + ".tmp", "wb") as f:
            pickle.dump([{k: v for k, v in r.items() if k != drop} for r in results], f, protocol=pickle.HIGHEST_PROTOCOL)
    del results
    with open(gt_path + ".tmp", "w") as f:
        json.dump(gt, f)
    for path in list(res_paths.values()) + [gt_path]:  # complete files only under the final names
        os.replace(path + ".tmp", path)
    print(f"generated {len(gt['images'])} images, {len(gt['annotations'])} annotations, "
          f"{n_dets} detections in {time.perf_counter() - t:.0f} s -> {d}", flush=True)


def _status_kb(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return None


def _cap_per_image(results, max_dets):
    """``lvis.LVISResults.limit_dets_per_image``: each image's top `max_dets` by score (stable),
    results grouped by image in order of first appearance."""
    by_img = {}
    for r in results:
        by_img.setdefault(r["image_id"], []).append(r)
    out = []
    for anns in by_img.values():
        if len(anns) > max_dets:
            anns = sorted(anns, key=lambda a: a["score"], reverse=True)[:max_dets]
        out.extend(anns)
    return out


def _load_gt(backend, gt_path):
    if backend == "faster-coco-eval":
        from faster_coco_eval import COCO

        return COCO(gt_path)
    from lvis import LVIS

    return LVIS(gt_path)


def _evaluate(backend, gt, results, task, max_dets):
    """{lvis-api metric name: value} of one evaluation by `backend` (the timed part)."""
    if backend == "tde_det":
        from tde_det.evaluation.fast_lvis import evaluate

        return dict(evaluate(gt, results, task, max_dets))
    if backend == "lvis-api":
        from lvis import LVISEval, LVISResults

        from tde_det.evaluation import lvis_numpy_aliases

        with lvis_numpy_aliases():  # as tde_det's lvis-api backend runs lvis 0.5.3 on numpy >= 1.24
            ev = LVISEval(gt, LVISResults(gt, results, max_dets=max_dets), task)
            ev.run()
        return dict(ev.results)
    from faster_coco_eval import COCOeval_faster

    ev = COCOeval_faster(gt, gt.loadRes(_cap_per_image(results, max_dets)), task, lvis_style=True,
                         print_function=lambda *a, **k: None)
    ev.params.maxDets = [max_dets]
    ev.evaluate()
    ev.accumulate()
    ev.summarize()
    stats = ev.stats_as_dict
    return {ours: stats[theirs] for ours, theirs in FCE_KEYS.items()}


def _worker(args):
    """Run one (backend, task) evaluation and print a json line with its measurements."""
    logging.disable(logging.WARNING)
    # every backend imports the same modules, before the timing
    import lvis  # noqa: F401
    import tde_det.evaluation.fast_lvis  # noqa: F401  (imports tde_det, and torch with it)

    if importlib.util.find_spec("faster_coco_eval") is not None:
        import faster_coco_eval  # noqa: F401

    _, gt_path, res_paths = _data_paths(args)
    gt = _load_gt(args.backend, gt_path)
    with open(res_paths[args.task], "rb") as f:
        results = pickle.load(f)
    gc.collect()
    gc.freeze()  # keep the loaded inputs out of later collections (same for every backend)
    base_kb = _status_kb("VmRSS")
    try:  # reset the peak-RSS counter (VmHWM) so it covers the evaluation only
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        peak_src = "VmHWM"
    except OSError:
        peak_src = "ru_maxrss"

    t = time.perf_counter()
    metrics = _evaluate(args.backend, gt, results, args.task, args.dets)
    seconds = time.perf_counter() - t
    peak_kb = _status_kb("VmHWM") if peak_src == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({
        "backend": args.backend, "task": args.task, "seconds": seconds,
        "peak_rss_mb": peak_kb / 1024, "base_rss_mb": base_kb / 1024, "peak_source": peak_src,
        "process_peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "metrics": {k: float(v) for k, v in metrics.items()},
    }))


def _check_backends(backends):
    if "faster-coco-eval" in backends and importlib.util.find_spec("faster_coco_eval") is None:
        sys.exit(
            "error: faster-coco-eval is not installed in this Python. It is a benchmark-only requirement "
            f"(tde_det does not need it); install it with\n    {sys.executable} -m pip install {FASTER_COCO_EVAL}\n"
            "or leave it out: --backends tde_det lvis-api"
        )
    if "tde_det" not in backends:
        sys.exit("error: --backends must include tde_det (the others are compared with it)")


def _mem_available_mb():
    with open("/proc/meminfo") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 1024


def _rss_mb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            return next((int(line.split()[1]) / 1024 for line in f if line.startswith("VmRSS:")), 0.0)
    except OSError:  # the process has ended
        return 0.0


def _run_worker(args, backend, task):
    """One measurement in a subprocess. A run whose RSS passes ``args.max_rss_mb`` is stopped (on a
    shared machine, rather than the kernel's OOM killer choosing a process) and reported as such."""
    cmd = [sys.executable, os.path.abspath(__file__), "--images", str(args.images), "--dets", str(args.dets),
           "--cats", str(args.cats), "--seed", str(args.seed), "--cache-dir", args.cache_dir,
           "--worker", backend, task]
    t = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        peak = 0.0
        while proc.poll() is None:
            peak = max(peak, _rss_mb(proc.pid))
            if peak > args.max_rss_mb:
                proc.kill()
                proc.wait()
                return {"backend": backend, "task": task, "stopped": True, "rss_mb": peak,
                        "seconds_until_stopped": time.perf_counter() - t}
            time.sleep(0.2)
        out.seek(0)
        err.seek(0)
        if proc.returncode < 0:  # killed from outside, e.g. by the kernel's OOM killer
            return {"backend": backend, "task": task, "stopped": True, "rss_mb": peak, "signal": -proc.returncode,
                    "seconds_until_stopped": time.perf_counter() - t}
        if proc.returncode != 0:
            sys.exit(f"error: the {backend} {task} run failed (exit status {proc.returncode}):\n{err.read()[-3000:]}")
        return json.loads(out.read().strip().splitlines()[-1])


def _summarize(args, runs):
    """Per task: the finished backends' median time and peak RSS, ratios to tde_det's, and their
    largest metric difference from the reference (lvis-api where it finished, else tde_det); and the
    stopped runs. Returns (summary, failures): tde_det not equal to the reference, or two runs of
    one backend that disagree. A peer that differs from the reference is reported, not a failure."""
    summary, failed = {}, []
    for task in args.tasks:
        per, stopped = {}, {}
        for backend in args.backends:
            rs = [r for r in runs if r["task"] == task and r["backend"] == backend]
            if any(r.get("stopped") for r in rs):
                stopped[backend] = next(r for r in rs if r.get("stopped"))
                continue
            per[backend] = {
                "seconds": statistics.median(r["seconds"] for r in rs), "runs": [r["seconds"] for r in rs],
                "peak_rss_mb": max(r["peak_rss_mb"] for r in rs), "base_rss_mb": max(r["base_rss_mb"] for r in rs),
                "metrics": rs[0]["metrics"],
            }
            if any(r["metrics"] != rs[0]["metrics"] for r in rs):
                failed.append(f"{task}: two {backend} runs gave different metrics")
        summary[task] = {"finished": per, "stopped": stopped, "reference": None}
        if "tde_det" not in per:
            failed.append(f"{task}: tde_det did not finish")
            continue
        ours = per["tde_det"]
        reference = "lvis-api" if "lvis-api" in per else "tde_det"
        summary[task]["reference"] = reference
        ref = per[reference]["metrics"]
        for backend, p in per.items():
            diffs = {k: abs(p["metrics"][k] - ref[k]) for k in ref}
            p["max_metric_diff"] = max(diffs.values())
            p["exact"] = p["max_metric_diff"] <= TOLERANCE
            p["time_ratio"] = p["seconds"] / ours["seconds"]  # > 1: tde_det is faster
            p["peak_ratio"] = p["peak_rss_mb"] / ours["peak_rss_mb"]
            if not p["exact"]:
                p["differences"] = {k: (p["metrics"][k], ref[k]) for k, d in diffs.items() if not d <= TOLERANCE}
                if backend == "tde_det":
                    failed.append(f"{task}: tde_det differs from {reference} in {p['differences']}")
    return summary, failed


def _print_table(args, summary):
    print(f"\n{args.images} images x {args.dets} detections, {args.cats} categories; time: median of the runs")
    print("| task | backend | time | tde_det faster by | peak RSS (before eval) | peak / tde_det's | "
          "max metric diff from the reference |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for task, s in summary.items():
        per = s["finished"]
        for backend, p in per.items():
            print(f"| {task} | {backend} | {p['seconds']:.2f} s | {p['time_ratio']:.1f}x | "
                  f"{p['peak_rss_mb']:,.0f} MB ({p['base_rss_mb']:,.0f}) | {p['peak_ratio']:.2f} | "
                  f"{p['max_metric_diff']:.1e}{'' if p['exact'] else ' (not exact)'} |")
        for backend, r in s["stopped"].items():
            why = f"killed by signal {r['signal']}" if "signal" in r else f"passed {args.max_rss_mb:,.0f} MB"
            print(f"| {task} | {backend} | stopped after {r['seconds_until_stopped']:.0f} s (loading included) | - | "
                  f"{why} | - | - |")
        if "tde_det" not in per:
            continue
        m = per["tde_det"]["metrics"]
        print(f"|  | {task}, reference {s['reference']}: AP {m['AP']:.4f}, APr {m['APr']:.4f}, APc {m['APc']:.4f}, "
              f"APf {m['APf']:.4f}, AR@300 {m['AR@300']:.4f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", type=int, default=5000, help=f"images (LVIS v1 val: {LVIS_V1_VAL_IMAGES})")
    p.add_argument("--dets", type=int, default=300, help="detections per image, and the per-image cap")
    p.add_argument("--cats", type=int, default=1203)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tasks", nargs="+", default=["bbox", "segm"], choices=["bbox", "segm"])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    p.add_argument("--repeat", type=int, default=1,
                   help="runs of tde_det and faster-coco-eval per task (median reported); lvis-api runs once")
    p.add_argument("--max-rss-mb", type=float, default=None,
                   help="stop a run whose memory passes this (default: 90%% of the memory available at the start)")
    p.add_argument("--cache-dir", default=os.path.join(ROOT, ".cache", "bench_lvis_eval"))
    p.add_argument("--out", default=None, help="also write all measurements to this json file")
    p.add_argument("--worker", nargs=2, metavar=("BACKEND", "TASK"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        args.backend, args.task = args.worker
        return _worker(args)
    if args.repeat < 1:
        sys.exit("error: --repeat must be at least 1")
    _check_backends(args.backends)
    if args.max_rss_mb is None:
        args.max_rss_mb = 0.9 * _mem_available_mb()

    _make_data(args)
    runs = []
    for task in args.tasks:
        for rep in range(args.repeat):
            for backend in args.backends:
                if (backend == "lvis-api" and rep > 0) or any(
                        r.get("stopped") and r["backend"] == backend and r["task"] == task for r in runs):
                    continue  # lvis-api runs once; a run stopped for its memory is not tried again
                run = _run_worker(args, backend, task)
                runs.append(run)
                if run.get("stopped"):
                    why = f"killed by signal {run['signal']}" if "signal" in run else f"its RSS passed {args.max_rss_mb:.0f} MB"
                    print(f"{task:4s} {backend:16s} stopped: {why} {run['seconds_until_stopped']:.0f} s after its "
                          "start (loading included)", flush=True)
                    continue
                print(f"{task:4s} {backend:16s} {run['seconds']:8.2f} s   peak RSS {run['peak_rss_mb']:7.0f} MB "
                      f"(inputs loaded, before the evaluation: {run['base_rss_mb']:.0f} MB)", flush=True)

    summary, failed = _summarize(args, runs)
    _print_table(args, summary)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "runs": runs, "summary": summary, "failed": failed}, f, indent=1)
    for task, s in summary.items():
        for backend, p in s["finished"].items():
            if not p["exact"] and backend != "tde_det":
                print(f"\n{task}: {backend} is not exact: it differs from {s['reference']} in {p['differences']}")
    if failed:
        print("\nFAILED:\n  " + "\n  ".join(failed))
        sys.exit(1)
    print(f"\ntde_det's metrics equal the reference's (max difference <= {TOLERANCE:g}) in "
          + ", ".join(f"{t} ({s['reference']})" for t, s in summary.items()))


if __name__ == "__main__":
    main()
