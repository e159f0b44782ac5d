"""α sweep in one pass vs one eval-only inference run per α (issue 4), on the demo val set.

    .venv/bin/python benchmarks/bench_alpha_sweep.py \\
        [--weights output/demo_tde_mask_rcnn/model_final.pth] [--alphas 0 0.5 1 1.5 2 2.5 3 3.5] \\
        [--max-images N] [--reps 2] [--device cpu|cuda] [KEY VALUE config overrides]

Inference time only (evaluation excluded; batches are loaded before timing, as data loading is not
inference): per repetition it times

* sweep:    ``AlphaSweep`` over the whole set, every α's detections post-processed as the model
            would (``batch.outputs(α)``: masks pasted at image resolution);
* separate: for each α, ``model(batch)`` over the whole set with the predictors' α set to it --
            exactly what ``train_net.py --eval-only MODEL.TDE.ALPHA α`` runs per batch.

and reports sweep / mean single-α run (target <= 1.5) and sweep / all separate runs. It also
checks that the sweep's detections equal the separate runs' (count, scores, classes, boxes, masks)
and that memory stays bounded: process RSS (CUDA: allocated memory) sampled after every batch of
a sweep pass must not grow with the number of batches (target: growth from the first quarter of
the pass to its end <= 32 MiB).
"""

import argparse
import json
import os
import statistics
import time

import _common  # noqa: F401  (puts the repo on sys.path)
import torch
from _common import print_table, sync
from detectron2.checkpoint import DetectionCheckpointer

from tde_det import get_tde_cfg
from tde_det.engine import Trainer
from tde_det.analysis.alpha_sweep import AlphaSweep

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def current_memory_mib(device):
    if str(device).startswith("cuda"):
        return torch.cuda.memory_allocated() / 2**20
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def build(args):
    cfg = get_tde_cfg(args.config_file, ["MODEL.WEIGHTS", args.weights, "MODEL.DEVICE", args.device] + args.opts)
    cfg.freeze()
    if not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise SystemExit(
            f"error: weights {cfg.MODEL.WEIGHTS!r} not found. Train the demo model first: "
            "python tools/train_net.py --config-file configs/demo/tde_mask_rcnn_demo.yaml (or pass --weights)."
        )
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    loader = Trainer.build_test_loader(cfg, cfg.DATASETS.TEST[0])
    batches = []
    for batch in loader:
        batches.append(batch)
        if args.max_images and sum(len(b) for b in batches) >= args.max_images:
            break
    return cfg, model, batches


def predictors(model):
    heads = model.roi_heads
    return list(heads.box_predictor) if hasattr(heads, "num_cascade_stages") else [heads.box_predictor]


def fingerprint(outputs):
    """What must match between the sweep and an eval-only run, per image."""
    out = []
    for o in outputs:
        inst = o["instances"].to("cpu")
        out.append((inst.scores, inst.pred_classes, inst.pred_boxes.tensor,
                    inst.pred_masks if inst.has("pred_masks") else None))  # fmt: skip
    return out


def run_sweep(sweep, batches, alphas, device, keep=False, memory=None):
    kept = {a: [] for a in alphas}
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            result = sweep(batch)
            for a in alphas:
                outputs = result.outputs(a)
                if keep:
                    kept[a] += fingerprint(outputs)
            del result, outputs
            if memory is not None:
                sync(device)
                memory.append(current_memory_mib(device))
    sync(device)
    return time.perf_counter() - start, kept


def run_single(model, batches, alpha, device, keep=False):
    for p in predictors(model):
        p.alpha = alpha
    kept = []
    sync(device)
    start = time.perf_counter()
    with torch.no_grad():
        for batch in batches:
            outputs = model(batch)
            if keep:
                kept += fingerprint(outputs)
    sync(device)
    return time.perf_counter() - start, kept


def same(a, b):
    return len(a) == len(b) and all(
        all((x is None and y is None) or torch.equal(x, y) for x, y in zip(fa, fb)) for fa, fb in zip(a, b)
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=os.path.join(REPO, "configs/demo/tde_mask_rcnn_demo.yaml"))
    parser.add_argument("--weights", default=os.path.join(REPO, "output/demo_tde_mask_rcnn/model_final.pth"))
    parser.add_argument("--alphas", type=float, nargs="+", default=[0, 0.5, 1, 1.5, 2, 2.5, 3, 3.5])
    parser.add_argument("--max-images", type=int, default=0, help="0: the whole test set")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default="", help="also write the numbers to this file")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()

    cfg, model, batches = build(args)
    num_images = sum(len(b) for b in batches)
    sweep = AlphaSweep(model, args.alphas)
    alphas = sweep.alphas
    print(f"{cfg.DATASETS.TEST[0]}: {num_images} images in {len(batches)} batches, {len(alphas)} alphas "
          f"{alphas}, device {args.device}, {torch.get_num_threads()} threads")  # fmt: skip

    # Warm-up, and the identity check (untimed).
    _, swept = run_sweep(sweep, batches, alphas, args.device, keep=True)
    identical = all(same(swept[a], run_single(model, batches, a, args.device, keep=True)[1]) for a in alphas)
    del swept

    rows, ratios = [], []
    for rep in range(args.reps):
        # Alternate the order every repetition so drifting machine load hits both alike.
        order = ["sweep", "separate"] if rep % 2 == 0 else ["separate", "sweep"]
        for what in order:
            if what == "sweep":
                t_sweep, _ = run_sweep(sweep, batches, alphas, args.device)
            else:
                t_single = [run_single(model, batches, a, args.device)[0] for a in alphas]
        mean_single = statistics.mean(t_single)
        ratios.append(t_sweep / mean_single)
        rows.append({
            "rep": rep, "sweep_s": t_sweep, "single_alpha_mean_s": mean_single, "separate_total_s": sum(t_single),
            "sweep/single": t_sweep / mean_single, "sweep/separate": t_sweep / sum(t_single),
        })  # fmt: skip
    print_table(rows, list(rows[0]))

    memory = []
    run_sweep(sweep, batches, alphas, args.device, memory=memory)
    quarter = max(1, len(memory) // 4)
    growth = max(memory[quarter:] or memory) - max(memory[:quarter])
    ratio = statistics.median(ratios)
    summary = {
        "dataset": cfg.DATASETS.TEST[0], "images": num_images, "alphas": alphas, "device": args.device,
        "sweep_over_single_alpha": ratio, "target": 1.5, "ok": ratio <= 1.5,
        "sweep_over_separate_runs": statistics.median(r["sweep/separate"] for r in rows),
        "identical_detections": identical,
        "memory_mib_first_quarter_max": max(memory[:quarter]), "memory_mib_max": max(memory),
        "memory_growth_mib": growth, "memory_bounded": growth <= 32,
        "reps": rows,
    }  # fmt: skip
    print(f"\nsweep of {len(alphas)} alphas / one single-alpha inference run: {ratio:.2f}x (target <= 1.5) "
          f"-> {'OK' if ratio <= 1.5 else 'OVER TARGET'}")  # fmt: skip
    print(f"sweep / {len(alphas)} separate eval-only runs: {summary['sweep_over_separate_runs']:.3f}")
    print(f"detections identical to the separate runs for every alpha: {identical}")
    print(f"memory ({'CUDA allocated' if args.device.startswith('cuda') else 'RSS'}) over a sweep pass: "
          f"max {max(memory[:quarter]):.0f} MiB in the first quarter, {max(memory):.0f} MiB overall, "
          f"growth {growth:+.1f} MiB (bound 32) -> {'bounded' if growth <= 32 else 'GROWING'}")  # fmt: skip
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=2)
    return summary


if __name__ == "__main__":
    main()
