#!/usr/bin/env python
"""When does the test-time TDE step help? A multi-seed study on the two generated long-tailed sets (issue 15).

For each data set (``demo``: 48 shape x colour classes; ``fine``: 40 classes whose rare and common
classes are near neighbours of a frequent one, :data:`tde_det.data.demo_lt.FINE_SPEC`) and each seed
(``SEED``), with one common, reduced schedule (:func:`schedule`, see docs/RESULTS.md for why):

- ``softmax``: Detectron2's softmax Mask R-CNN (configs/demo/baseline_mask_rcnn_demo.yaml);
- one De-confound training (configs/demo/tde_mask_rcnn_demo.yaml), evaluated as ``plain`` and as
  ``tde`` at α = 1.5 (``paper``), at the authors' heuristic α = 1 / mean cos(x, d̂) (``heuristic``,
  mean cos measured on the held-out images, no labels used) and at the α with the best mask AP on
  the held-out images among {0} ∪ :data:`HELDOUT_ALPHAS` (``heldout``; 0 means "plain").

The held-out images are a fixed part of the TRAINING split (:func:`heldout_split`, ~12 %), removed
from training for every model; α is never chosen on val. Both evaluations are one-pass α sweeps
(:func:`tde_det.evaluation.alpha_sweep.inference_on_dataset_alphas`). Metrics: LVIS mask AP, AP50,
APr, APc, APf, box AP and Fixed AP (``TEST.LVIS_EVAL.FIXED_AP``), in percent.

    nice -n 5 .venv/bin/python benchmarks/tde_study.py                 # run / resume the whole study
    .venv/bin/python benchmarks/tde_study.py --table --update-doc docs/RESULTS.md   # mean ± std tables
    .venv/bin/python benchmarks/tde_study.py --figures                 # diagnostics PNGs (docs/figures)

Every run is appended to ``docs/results/tde_study.json`` (``{"runs": [{dataset, model, alpha,
alpha_rule, seed, metrics}]}``) as soon as its unit (one training + its evaluations) finishes; a
re-start skips the units already there and reuses trained weights under ``output/tde_study/``.
Units run seed-major, each in its own single-threaded subprocess. What the runs do not fit in the
schema (chosen α, mean cos, held-out α curve, top-1 counts) goes to
``docs/results/tde_study_details.json``.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections import OrderedDict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

DATASETS = OrderedDict([("demo", "tde_demo_lt"), ("fine", "tde_demo_lt_fine")])
# Not part of the study: the 6-class tiny set, for smoke runs and tests (--datasets tiny).
SMOKE_DATASETS = {"tiny": "tde_demo_lt_tiny"}
PREFIXES = {**DATASETS, **SMOKE_DATASETS}
CONFIGS = {"softmax": "configs/demo/baseline_mask_rcnn_demo.yaml", "deconfound": "configs/demo/tde_mask_rcnn_demo.yaml"}
# The common reduced schedule of every training (docs/RESULTS.md says why).
MAX_ITER = 350
IMS_PER_BATCH = 4


def schedule(max_iter=MAX_ITER):
    """Solver overrides of every training: batch IMS_PER_BATCH at the linearly scaled LR (the demo
    configs: 0.02 at batch 8), warm-up over the first 1/6, LR ÷10 at 80 % and 93 % of `max_iter`."""
    if max_iter < 2:
        raise ValueError(f"--max-iter must be >= 2, got {max_iter}.")
    return OrderedDict([("SOLVER.IMS_PER_BATCH", IMS_PER_BATCH), ("SOLVER.BASE_LR", 0.02 * IMS_PER_BATCH / 8),
                        ("SOLVER.MAX_ITER", max_iter), ("SOLVER.WARMUP_ITERS", max(1, max_iter // 6)),
                        ("SOLVER.STEPS", (int(0.8 * max_iter), int(0.93 * max_iter)))])
# Detections per image in every evaluation (the configs: 100; val images hold <= 10 objects). Halves
# the mask head's and the evaluator's work, which dominate CPU inference here.
DETECTIONS_PER_IMAGE = 50
PAPER_ALPHA = 1.5
HELDOUT_ALPHAS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
HELDOUT_FRACTION = 0.12
METRIC_KEYS = ("AP", "AP50", "APr", "APc", "APf", "APbox", "AP_fixed")
ROW_ORDER = (("softmax", None), ("plain", None), ("tde", "paper"), ("tde", "heuristic"), ("tde", "heldout"))
DEFAULT_JSON = REPO / "docs/results/tde_study.json"
DEFAULT_WORKDIR = REPO / "output/tde_study"


# ----------------------------------------------------------------------------- the held-out split
def heldout_split(train, fraction=HELDOUT_FRACTION, seed=0):
    """Image ids (fit, heldout) of an LVIS-format train dict: a seeded random ~`fraction` of the
    images is held out (the study: ~12 %), skipping any image whose removal would leave one of its classes without a
    training image (so every class keeps >= 1 training image). Deterministic in (`train`, `seed`)."""
    import numpy as np

    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction!r}.")
    classes = {}
    for a in train["annotations"]:
        classes.setdefault(a["image_id"], set()).add(a["category_id"])
    left = {}
    for cats in classes.values():
        for c in cats:
            left[c] = left.get(c, 0) + 1
    ids = sorted(i["id"] for i in train["images"])
    target = int(round(fraction * len(ids)))
    heldout = set()
    for i in np.random.RandomState(seed).permutation(len(ids)):
        if len(heldout) >= target:
            break
        cats = classes.get(ids[i], set())
        if all(left[c] > 1 for c in cats):
            heldout.add(ids[i])
            for c in cats:
                left[c] -= 1
    return [i for i in ids if i not in heldout], sorted(heldout)


def write_split_jsons(train_json, out_dir, prefix):
    """Write ``{prefix}_fit.json`` / ``{prefix}_heldout.json`` (categories of the full train split,
    so frequency groups stay LVIS's rule on train) unless present; returns their paths."""
    paths = {part: os.path.join(out_dir, f"{prefix}_{part}.json") for part in ("fit", "heldout")}
    if all(os.path.isfile(p) for p in paths.values()):
        return paths
    with open(train_json) as f:
        train = json.load(f)
    fit, held = heldout_split(train)
    os.makedirs(out_dir, exist_ok=True)
    for part, ids in (("fit", set(fit)), ("heldout", set(held))):
        data = dict(train, images=[i for i in train["images"] if i["id"] in ids],
                    annotations=[a for a in train["annotations"] if a["image_id"] in ids])
        tmp = paths[part] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, paths[part])
    return paths


def register_splits(dataset, workdir):
    """Register ``<prefix>_fit`` and ``<prefix>_heldout`` (generating the data set first if needed)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets.lvis import load_lvis_json

    from tde_det.data import prepare_dataset

    prefix = PREFIXES[dataset]
    prepare_dataset(f"{prefix}_train")
    meta = MetadataCatalog.get(f"{prefix}_train")
    paths = write_split_jsons(meta.json_file, os.path.join(workdir, "splits"), prefix)
    for part, path in paths.items():
        name = f"{prefix}_{part}"
        if name not in DatasetCatalog.list():
            DatasetCatalog.register(name, lambda p=path, r=meta.image_root: load_lvis_json(p, r))
            MetadataCatalog.get(name).set(json_file=path, image_root=meta.image_root, evaluator_type="lvis",
                                          thing_classes=meta.thing_classes)
    return {part: f"{prefix}_{part}" for part in paths}


# ----------------------------------------------------------------------------- the JSON
def load_study(path):
    """The study JSON (``{"runs": []}`` when absent); ValueError naming the problem if malformed."""
    if not os.path.isfile(path):
        return {"runs": []}
    with open(path) as f:
        data = json.load(f)
    check_study(data, path)
    return data


def check_study(data, where="study JSON"):
    """Raise ValueError unless `data` follows the issue's schema."""
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{where}: expected an object with a list 'runs'; delete or fix the file.")
    for k, r in enumerate(data["runs"]):
        keys = {"dataset", "model", "alpha", "alpha_rule", "seed", "metrics"}
        if set(r) != keys:
            raise ValueError(f"{where}: run {k} has keys {sorted(r)}, expected {sorted(keys)}.")
        if r["model"] not in ("softmax", "plain", "tde") or r["alpha_rule"] not in (None, "paper", "heuristic", "heldout"):
            raise ValueError(f"{where}: run {k} has model {r['model']!r} / alpha_rule {r['alpha_rule']!r}.")
        if (r["model"] == "tde") != (r["alpha_rule"] is not None) or (r["model"] == "tde") != (r["alpha"] is not None):
            raise ValueError(f"{where}: run {k}: only 'tde' runs have an alpha and an alpha_rule.")
        if not isinstance(r["seed"], int) or set(r["metrics"]) != set(METRIC_KEYS):
            raise ValueError(f"{where}: run {k} needs an int seed and metrics {METRIC_KEYS}.")


def unit_runs(dataset, model, seed):
    """The (model, alpha_rule) rows one unit contributes: softmax -> 1 row, deconfound -> 4."""
    if model == "softmax":
        return [("softmax", None)]
    return [("plain", None), ("tde", "paper"), ("tde", "heuristic"), ("tde", "heldout")]


def unit_done(data, dataset, model, seed):
    have = {(r["model"], r["alpha_rule"]) for r in data["runs"] if r["dataset"] == dataset and r["seed"] == seed}
    return all(row in have for row in unit_runs(dataset, model, seed))


def append_runs(path, runs):
    """Add `runs` to the JSON at `path` (replacing runs with the same dataset/model/rule/seed), atomically."""
    data = load_study(path)
    key = lambda r: (r["dataset"], r["model"], r["alpha_rule"], r["seed"])  # noqa: E731
    new = {key(r) for r in runs}
    data["runs"] = [r for r in data["runs"] if key(r) not in new] + list(runs)
    check_study(data, path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
    return data


def mean_std_table(data, dataset):
    """Markdown table for `dataset`: one row per (model, rule), mean ± sample std over seeds of every
    metric (std "-" with one seed), the number of seeds and, for TDE rows, the α values used."""
    head = "| model | α rule | seeds | α (per seed) | " + " | ".join(METRIC_KEYS) + " |"
    lines = [head, "|---|---|---:|---|" + "|".join("---:" for _ in METRIC_KEYS) + "|"]
    runs = [r for r in data["runs"] if r["dataset"] == dataset]
    for model, rule in ROW_ORDER:
        rows = sorted((r for r in runs if r["model"] == model and r["alpha_rule"] == rule), key=lambda r: r["seed"])
        if not rows:
            continue
        cells = []
        for m in METRIC_KEYS:
            vals = [r["metrics"][m] for r in rows if r["metrics"][m] is not None]
            if not vals:
                cells.append("-")
            elif len(vals) == 1:
                cells.append(f"{vals[0]:.1f}")
            else:
                cells.append(f"{statistics.mean(vals):.1f} ± {statistics.stdev(vals):.1f}")
        alphas = ", ".join(f"{r['alpha']:.2f}" for r in rows) if model == "tde" else ""
        label = {"softmax": "softmax (Detectron2)", "plain": "De-confound (plain)", "tde": "De-confound-TDE"}[model]
        lines.append(f"| {label} | {rule or ''} | {len(rows)} | {alphas} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(data, dataset, metric="AP"):
    """Per TDE rule: the per-seed differences tde − plain of `metric` (same weights), as a list."""
    runs = [r for r in data["runs"] if r["dataset"] == dataset]
    plain = {r["seed"]: r["metrics"][metric] for r in runs if r["model"] == "plain"}
    out = OrderedDict()
    for rule in ("paper", "heuristic", "heldout"):
        out[rule] = [r["metrics"][metric] - plain[r["seed"]] for r in sorted(runs, key=lambda r: r["seed"])
                     if r["model"] == "tde" and r["alpha_rule"] == rule and r["seed"] in plain
                     and r["metrics"][metric] is not None and plain[r["seed"]] is not None]
    return out


def group_shares(details, dataset, frequency, alpha=PAPER_ALPHA):
    """Per seed of `dataset`'s De-confound models in `details`: (mean cos on val, {setting: {group:
    share of the top-1 predictions of plain-foreground val regions}}) for plain and TDE at `alpha`."""
    out = OrderedDict()
    for key in sorted(details):
        ds, model, seed = key.split("/")
        val = details[key].get("val")
        if ds != dataset or model != "deconfound" or not val:
            continue
        shares = {}
        for name, counts in (("plain", val["top1_plain"]), (f"alpha={alpha:g}", val["top1"][f"alpha={alpha:g}"])):
            total = float(sum(counts)) or 1.0
            shares[name] = {g: sum(c for c, f in zip(counts, frequency) if f == g) / total for g in "fcr"}
        out[seed] = (val["mean_cos"], shares)
    return out


def format_tables(data, details=None, frequencies=None):
    """The Markdown tables of every data set in `data`, the paired TDE − plain differences and, with
    `details` and `frequencies` (data set -> r/c/f per class), mean cos and top-1 shares per group."""
    parts = []
    for dataset in DATASETS:
        if not any(r["dataset"] == dataset for r in data["runs"]):
            continue
        parts.append(f"**{dataset}** ({DATASETS[dataset]}_val), mean ± std over seeds:\n\n" + mean_std_table(data, dataset))
        diffs = []
        for metric in ("AP", "APr"):
            for rule, d in paired_differences(data, dataset, metric).items():
                if d:
                    sd = f" ± {statistics.stdev(d):.1f}" if len(d) > 1 else ""
                    diffs.append(f"{metric} {rule} {statistics.mean(d):+.1f}{sd} (per seed: "
                                 + ", ".join(f"{v:+.1f}" for v in d) + ")")
        if diffs:
            parts.append("TDE − plain, same weights (paired per seed): " + "; ".join(diffs) + ".")
        if details and frequencies and dataset in frequencies:
            shares = group_shares(details, dataset, frequencies[dataset])
            if shares:
                cells = []
                for seed, (cos, sh) in shares.items():
                    a = f"alpha={PAPER_ALPHA:g}"
                    cells.append(f"{seed}: mean cos(x, d̂) {cos:.3f}; top-1 share f/c/r plain "
                                 + "/".join(f"{sh['plain'][g]:.2f}" for g in "fcr") + f", TDE α={PAPER_ALPHA:g} "
                                 + "/".join(f"{sh[a][g]:.2f}" for g in "fcr"))
                parts.append("Val regions (De-confound models): " + "; ".join(cells) + ".")
    return "\n\n".join(parts)


def _frequencies():
    """Data set -> LVIS frequency group per class (from the generated val json, generating it if needed)."""
    from detectron2.data import MetadataCatalog

    import tde_det  # noqa: F401  (registers the demo sets)
    from tde_det.data import prepare_dataset

    out = {}
    for ds, prefix in DATASETS.items():
        prepare_dataset(f"{prefix}_val")
        with open(MetadataCatalog.get(f"{prefix}_val").json_file) as f:
            out[ds] = [c["frequency"] for c in sorted(json.load(f)["categories"], key=lambda c: c["id"])]
    return out


TABLE_BEGIN = "<!-- tde_study --table: begin (generated from docs/results/tde_study.json; do not edit) -->"
TABLE_END = "<!-- tde_study --table: end -->"


def update_doc(path, tables):
    """Replace the text between :data:`TABLE_BEGIN` and :data:`TABLE_END` in the Markdown file `path`
    by `tables`; ValueError if the markers are missing."""
    with open(path) as f:
        text = f.read()
    start, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if start < 0 or end < start:
        raise ValueError(f"{path} has no '{TABLE_BEGIN}' ... '{TABLE_END}' block to fill; add the two lines "
                         "where the tables go.")
    text = text[: start + len(TABLE_BEGIN)] + "\n\n" + tables + "\n\n" + text[end:]
    with open(path, "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------- one unit (subprocess)
def _metrics(results):
    from tde_det.evaluation.alpha_sweep import metric_rows

    row = metric_rows(OrderedDict(plain=results), [])[0]
    return {m: (None if row.get(m) is None else round(float(row[m]), 3)) for m in METRIC_KEYS}


def _cfg(dataset, model, seed, workdir, splits, max_iter):
    from tde_det import get_tde_cfg

    prefix = PREFIXES[dataset]
    from detectron2.data import MetadataCatalog

    opts = []
    for k, v in schedule(max_iter).items():
        opts += [k, str(v)]
    opts += ["SEED", str(seed), "DATASETS.TRAIN", f"('{splits['fit']}',)", "DATASETS.TEST", f"('{prefix}_val',)",
             "MODEL.ROI_HEADS.NUM_CLASSES", str(len(MetadataCatalog.get(f"{prefix}_val").thing_classes)),
             "DATALOADER.NUM_WORKERS", "0", "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0",
             "TEST.LVIS_EVAL.FIXED_AP", "True", "TEST.DETECTIONS_PER_IMAGE", str(DETECTIONS_PER_IMAGE),
             "OUTPUT_DIR", os.path.join(workdir, dataset, model, f"seed{seed}")]
    return get_tde_cfg(str(REPO / CONFIGS[model]), opts)


def run_unit(dataset, model, seed, workdir, max_iter=MAX_ITER):
    """Train (unless model_final.pth exists) and evaluate one model; returns (runs, details)."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    from tde_det.engine import Trainer

    torch.set_num_threads(1)
    splits = register_splits(dataset, workdir)
    cfg = _cfg(dataset, model, seed, workdir, splits, max_iter)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger(cfg.OUTPUT_DIR)
    setup_logger(cfg.OUTPUT_DIR, name="tde_det")
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    details = {"dataset": dataset, "model": model, "seed": seed, "schedule": schedule(max_iter)}
    t0 = time.time()
    if not os.path.isfile(final):
        train_cfg = cfg.clone()
        train_cfg.DATASETS.TEST = ()  # evaluation below, not by the trainer's hook
        train_cfg.freeze()
        seed_all_rng(seed)
        trainer = Trainer(train_cfg)
        trainer.resume_or_load(resume=False)
        trainer.train()
        del trainer
    details["train_s"] = round(time.time() - t0, 1)
    cfg.MODEL.WEIGHTS = final
    cfg.freeze()
    model_ = Trainer.build_model(cfg)
    DetectionCheckpointer(model_).load(final)
    t0 = time.time()
    if model == "softmax":
        results = Trainer.test(cfg, model_)
        runs = [dict(dataset=dataset, model="softmax", alpha=None, alpha_rule=None, seed=seed, metrics=_metrics(results))]
    else:
        runs = _evaluate_deconfound(cfg, model_, dataset, seed, splits, details)
    details["eval_s"] = round(time.time() - t0, 1)
    return runs, details


def _sweep(cfg, model, dataset_name, alphas, record=None):
    """One-pass α sweep on `dataset_name`. `record(x)`, if given, sees the box features [R, D] of every
    scored region (through the classifier's ``mean_cosine``, which the sweep calls once per batch)."""
    from tde_det.engine import Trainer
    from tde_det.evaluation import build_lvis_evaluator
    from tde_det.evaluation.alpha_sweep import inference_on_dataset_alphas

    loader = Trainer.build_test_loader(cfg, dataset_name)
    classifier = model.roi_heads.box_predictor.cls_score
    if record is not None:
        original = classifier.mean_cosine

        def mean_cosine(x):
            record(x)
            return original(x)

        classifier.mean_cosine = mean_cosine
    try:
        return inference_on_dataset_alphas(model, loader, alphas, lambda s: build_lvis_evaluator(cfg, dataset_name, None))
    finally:
        if record is not None:
            del classifier.mean_cosine


def _evaluate_deconfound(cfg, model, dataset, seed, splits, details):
    import numpy as np
    import torch

    from tde_det.evaluation.alpha_sweep import setting_name

    # 1) held-out training images: α grid, mean cos -> heldout and heuristic α (no val involved)
    held = _sweep(cfg, model, splits["heldout"], list(HELDOUT_ALPHAS))
    candidates = [(0.0, held.results["plain"])] + [(a, held.results[setting_name(a)]) for a in HELDOUT_ALPHAS]
    scored = [(a, _metrics(r)["AP"]) for a, r in candidates]
    best_alpha = max(scored, key=lambda t: (t[1] if t[1] is not None else -1.0, -t[0]))[0]
    heuristic = round(float(held.heuristic_alpha), 3)
    rules = OrderedDict([("paper", PAPER_ALPHA), ("heuristic", heuristic), ("heldout", best_alpha)])
    details["heldout"] = {"mean_cos": held.mean_cos, "heuristic_alpha": heuristic, "best_alpha": best_alpha,
                          "AP_by_alpha": scored, "images": splits["heldout"]}
    # 2) val, one pass for plain and every rule's α; per-region cos(x, d̂) and plain fg flag saved
    cos_parts, fg_parts = [], []
    predictor = model.roi_heads.box_predictor

    def hook(x):
        classifier = predictor.cls_score
        cos_parts.append(type(classifier).mean_cosine(classifier, x).mean(dim=1).float().cpu())
        fg_parts.append((torch.softmax(classifier(x).float(), dim=1)[:, -1] < 0.5).cpu())

    val_alphas = sorted({a for a in rules.values() if a > 0})
    val = _sweep(cfg, model, cfg.DATASETS.TEST[0], val_alphas, hook)
    np.savez_compressed(os.path.join(cfg.OUTPUT_DIR, "val_region_cos.npz"), cos=torch.cat(cos_parts).numpy(),
                        plain_fg=torch.cat(fg_parts).numpy())
    details["val"] = {"mean_cos": val.mean_cos, "heuristic_alpha_val": val.heuristic_alpha,
                      "top1_plain": val.stats.top1_counts(None),
                      "top1": {setting_name(a): val.stats.top1_counts(a) for a in val_alphas},
                      "rows": val.rows()}
    runs = [dict(dataset=dataset, model="plain", alpha=None, alpha_rule=None, seed=seed,
                 metrics=_metrics(val.results["plain"]))]
    for rule, a in rules.items():
        res = val.results["plain"] if a == 0 else val.results[setting_name(a)]
        runs.append(dict(dataset=dataset, model="tde", alpha=float(a), alpha_rule=rule, seed=seed, metrics=_metrics(res)))
    return runs


# ----------------------------------------------------------------------------- the driver
def plan(seeds, datasets):
    """Units in seed-major order: seed 0 of every data set and model first."""
    return [(d, m, s) for s in seeds for d in datasets for m in ("softmax", "deconfound")]


def _details_path(json_path):
    return str(json_path).replace(".json", "_details.json")


def drive(args):
    data = load_study(args.output)
    todo = [u for u in plan(args.seeds, args.datasets) if not unit_done(data, *u)]
    print(f"[tde_study] {len(todo)} unit(s) to run: {todo}", flush=True)
    os.makedirs(args.workdir, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for dataset, model, seed in todo:
        out = os.path.join(args.workdir, f"unit_{dataset}_{model}_seed{seed}.json")
        log = os.path.join(args.workdir, f"unit_{dataset}_{model}_seed{seed}.log")
        cmd = [sys.executable, __file__, "--unit", dataset, model, str(seed), "--workdir", str(args.workdir),
               "--unit-output", out, "--max-iter", str(args.max_iter)]
        t0 = time.time()
        print(f"[tde_study] {time.strftime('%H:%M:%S')} start {dataset} {model} seed {seed} (log {log})", flush=True)
        with open(log, "a") as f:
            rc = subprocess.call(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        if rc != 0 or not os.path.isfile(out):
            print(f"[tde_study] unit {dataset} {model} seed {seed} FAILED (exit {rc}); see {log}. "
                  "Re-run the same command to resume.", flush=True)
            if args.stop_on_failure:
                return 1
            continue
        with open(out) as f:
            unit = json.load(f)
        data = append_runs(args.output, unit["runs"])
        details = {}
        if os.path.isfile(_details_path(args.output)):
            with open(_details_path(args.output)) as f:
                details = json.load(f)
        details[f"{dataset}/{model}/seed{seed}"] = unit["details"]
        with open(_details_path(args.output), "w") as f:
            json.dump(details, f, indent=1, default=float)
        print(f"[tde_study] {time.strftime('%H:%M:%S')} done {dataset} {model} seed {seed} in "
              f"{time.time() - t0:.0f} s: " + "; ".join(f"{r['model']}/{r['alpha_rule']}: AP {r['metrics']['AP']}"
                                                        for r in unit["runs"]), flush=True)
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(PREFIXES))
    parser.add_argument("--output", default=str(DEFAULT_JSON), help="the study JSON (default: %(default)s)")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="weights, logs, splits (default: %(default)s)")
    parser.add_argument("--table", action="store_true", help="print the mean ± std Markdown tables and exit")
    parser.add_argument("--update-doc", metavar="MD", help="with --table: also write the tables into MD between "
                        "the tde_study markers (e.g. docs/RESULTS.md)")
    parser.add_argument("--figures", action="store_true", help="write the diagnostics figures and exit")
    parser.add_argument("--figure-seed", type=int, default=0, help="seed whose De-confound models the figures show")
    parser.add_argument("--stop-on-failure", action="store_true")
    parser.add_argument("--max-iter", type=int, default=MAX_ITER,
                        help="iterations of every training (default: %(default)s; the study's schedule)")
    parser.add_argument("--unit", nargs=3, metavar=("DATASET", "MODEL", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--unit-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.table:
        try:
            details = None
            if os.path.isfile(_details_path(args.output)):
                with open(_details_path(args.output)) as f:
                    details = json.load(f)
            tables = format_tables(load_study(args.output), details, _frequencies() if details else None)
            if args.update_doc:
                update_doc(args.update_doc, tables)
        except (OSError, ValueError) as e:
            sys.exit(f"error: {e}")
        print(tables)
        return 0
    if args.figures:
        from tde_study_figures import write_figures  # noqa: E402 (benchmarks/ is on sys.path as the script dir)

        for path in write_figures(args.output, args.workdir, args.figure_seed, REPO / "docs/figures"):
            print(path)
        return 0
    if args.unit:
        dataset, model, seed = args.unit[0], args.unit[1], int(args.unit[2])
        if dataset not in PREFIXES or model not in CONFIGS:
            sys.exit(f"error: unknown unit {args.unit}; data sets {list(PREFIXES)}, models {list(CONFIGS)}.")
        runs, details = run_unit(dataset, model, seed, args.workdir, args.max_iter)
        with open(args.unit_output + ".tmp", "w") as f:
            json.dump({"runs": runs, "details": details}, f, default=float)
        os.replace(args.unit_output + ".tmp", args.unit_output)
        return 0
    try:
        load_study(args.output)
    except ValueError as e:
        sys.exit(f"error: {e}")
    return drive(args)


if __name__ == "__main__":
    sys.exit(main())
