#!/usr/bin/env python
"""When does the test-time TDE step help, and does it beat NorCal? A multi-seed study on the two
generated long-tailed sets (issues 15, 22).

For each data set (``demo``: 48 shape x colour classes; ``fine``: 40 classes whose rare and common
classes are near neighbours of a frequent one, :data:`tde_det.data.demo_lt.FINE_SPEC`) and each seed
(``SEED``), with one common schedule per study (:data:`SCHEDULES`: ``short`` 350 × 4, the issue-15 study;
``full`` 700 × 8, the ``make demo`` recipe; see docs/RESULTS.md):

- ``softmax``: Detectron2's softmax Mask R-CNN (configs/demo/baseline_mask_rcnn_demo.yaml), evaluated
  as it is and with NorCal (``softmax_norcal``, γ with the best held-out mask AP among {0} ∪
  :data:`HELDOUT_GAMMAS`; class counts N_c = training images of the class in the fit split);
- one De-confound training (configs/demo/tde_mask_rcnn_demo.yaml), evaluated as ``plain``, as
  ``plain_norcal`` (NorCal on the plain logits, γ chosen the same way) and as ``tde`` at α = 1.5
  (``paper``), at the authors' heuristic α = 1 / mean cos(x, d̂) (``heuristic``, mean cos measured on
  the held-out images, no labels used) and at the α with the best mask AP on the held-out images
  among {0} ∪ :data:`HELDOUT_ALPHAS` (``heldout``; 0 means "plain").

The held-out images are a fixed part of the TRAINING split (:func:`heldout_split`, ~12 %), removed
from training for every model; α and γ are never chosen on val. Both evaluations are one-pass
sweeps (:func:`tde_det.analysis.alpha_sweep.inference_on_dataset_alphas`, α and γ together).
Metrics: LVIS mask AP, AP50, APr, APc, APf, box AP and Fixed AP (``TEST.LVIS_EVAL.FIXED_AP``), in percent.

    nice -n 5 .venv/bin/python studies/tde_study.py --schedule full --datasets fine   # run / resume
    .venv/bin/python studies/tde_study.py --table --update-doc docs/RESULTS.md   # mean ± std tables
    .venv/bin/python studies/tde_study_figures.py                   # diagnostics PNGs (docs/figures)

Every run is appended to ``docs/results/tde_study.json`` (``{"runs": [{dataset, model, alpha,
alpha_rule, gamma, seed, schedule, metrics}]}``) as soon as its unit (one training + its evaluations)
finishes; a re-start skips the units already there and reuses trained weights under
``output/tde_study/<iters>x<batch>/``. ``--train-only`` trains the planned models and evaluates nothing.
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
# The schedules (iterations, images per batch). "short" is the issue-15 study's reduced schedule
# (docs/RESULTS.md says why); "full" is the `make demo` recipe of configs/demo/Base-demo.yaml.
SCHEDULES = OrderedDict([("short", (350, 4)), ("full", (700, 8))])
MAX_ITER, IMS_PER_BATCH = SCHEDULES["short"]


def schedule(max_iter=MAX_ITER, ims_per_batch=IMS_PER_BATCH):
    """Solver overrides of every training. (700, 8) is the demo configs' own solver (LR 0.02,
    warm-up 100, LR ÷10 at 550 and 650); any other (N, B): LR 0.02 · B / 8 (linear scaling), warm-up
    over the first 1/6, LR ÷10 at 80 % and 93 % of N."""
    if max_iter < 2 or ims_per_batch < 1:
        raise ValueError(f"--max-iter must be >= 2 and the batch >= 1, got {max_iter} x {ims_per_batch}.")
    if (max_iter, ims_per_batch) == SCHEDULES["full"]:
        warmup, steps = 100, (550, 650)
    else:
        warmup, steps = max(1, max_iter // 6), (int(0.8 * max_iter), int(0.93 * max_iter))
    return OrderedDict([("SOLVER.IMS_PER_BATCH", ims_per_batch), ("SOLVER.BASE_LR", 0.02 * ims_per_batch / 8),
                        ("SOLVER.MAX_ITER", max_iter), ("SOLVER.WARMUP_ITERS", warmup), ("SOLVER.STEPS", steps)])


# Detections per image in every evaluation (the configs: 100; val images hold <= 10 objects). Halves
# the mask head's and the evaluator's work, which dominate CPU inference here.
DETECTIONS_PER_IMAGE = 50
PAPER_ALPHA = 1.5
HELDOUT_ALPHAS = (0.5, 1.0, 1.5, 2.0, 2.5, 3.0)
# NorCal's γ grid (held-out choice; 0 = no calibration), 0 to 1.5 by 0.25.
HELDOUT_GAMMAS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5)
HELDOUT_FRACTION = 0.12
METRIC_KEYS = ("AP", "AP50", "APr", "APc", "APf", "APbox", "AP_fixed")
ROW_ORDER = (("softmax", None), ("softmax_norcal", "heldout"), ("plain", None), ("plain_norcal", "heldout"),
             ("tde", "paper"), ("tde", "heuristic"), ("tde", "heldout"))
MODEL_LABELS = {"softmax": "softmax (Detectron2)", "softmax_norcal": "softmax + NorCal", "plain": "De-confound (plain)",
                "plain_norcal": "De-confound (plain) + NorCal", "tde": "De-confound-TDE"}
# Paired differences reported per seed: (label, (model, rule), minus (model, rule)).
PAIRS = (("TDE paper − plain", ("tde", "paper"), ("plain", None)),
         ("TDE heuristic − plain", ("tde", "heuristic"), ("plain", None)),
         ("TDE heldout − plain", ("tde", "heldout"), ("plain", None)),
         ("NorCal − softmax", ("softmax_norcal", "heldout"), ("softmax", None)),
         ("plain NorCal − plain", ("plain_norcal", "heldout"), ("plain", None)),
         ("TDE paper − plain NorCal", ("tde", "paper"), ("plain_norcal", "heldout")),
         ("TDE paper − softmax NorCal", ("tde", "paper"), ("softmax_norcal", "heldout")))
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
    from tde_det.data.class_counts import image_counts

    fit, held = heldout_split(train)
    os.makedirs(out_dir, exist_ok=True)
    for part, ids in (("fit", set(fit)), ("heldout", set(held))):
        anns = [a for a in train["annotations"] if a["image_id"] in ids]
        # image_count of the part (NorCal's N_c); frequency stays LVIS's rule on the full train split
        cats = [dict(c, image_count=n) for c, n in zip(train["categories"], image_counts(train["categories"], anns))]
        data = dict(train, images=[i for i in train["images"] if i["id"] in ids], annotations=anns, categories=cats)
        tmp = paths[part] + ".tmp"
        with open(tmp, "w") as f:
            json.dump(data, f)
        os.replace(tmp, paths[part])
    return paths


def fit_class_counts(fit_json):
    """NorCal's N_c of the study: training images per class of the fit split, Detectron2's class order
    (counted from its annotations: split files written before they carried the part's image_count hold
    the full train split's)."""
    from tde_det.data.class_counts import image_counts

    with open(fit_json) as f:
        data = json.load(f)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    return image_counts(cats, data["annotations"])


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
    return {part: f"{prefix}_{part}" for part in paths}, paths["fit"]


# ----------------------------------------------------------------------------- the JSON
def load_study(path):
    """The study JSON (``{"runs": []}`` when absent); ValueError naming the problem if malformed."""
    if not os.path.isfile(path):
        return {"runs": []}
    with open(path) as f:
        data = json.load(f)
    check_study(data, path)
    return data


RUN_KEYS = {"dataset", "model", "alpha", "alpha_rule", "gamma", "seed", "schedule", "metrics"}


def check_study(data, where="study JSON"):
    """Raise ValueError unless `data` follows the schema (issue 15's, plus issue 22's schedule and gamma):
    ``tde`` rows have α and an α rule; ``*_norcal`` rows a γ >= 0 and the rule that chose it; the
    others neither; ``schedule`` is ``{"iters": int, "ims_per_batch": int}``."""
    if not isinstance(data, dict) or not isinstance(data.get("runs"), list):
        raise ValueError(f"{where}: expected an object with a list 'runs'; delete or fix the file.")
    for k, r in enumerate(data["runs"]):
        if set(r) != RUN_KEYS:
            raise ValueError(f"{where}: run {k} has keys {sorted(r)}, expected {sorted(RUN_KEYS)}.")
        if r["model"] not in MODEL_LABELS or r["alpha_rule"] not in (None, "paper", "heuristic", "heldout"):
            raise ValueError(f"{where}: run {k} has model {r['model']!r} / alpha_rule {r['alpha_rule']!r}.")
        tde, norcal = r["model"] == "tde", r["model"].endswith("_norcal")
        if tde != (r["alpha"] is not None) or (tde or norcal) != (r["alpha_rule"] is not None):
            raise ValueError(f"{where}: run {k}: only 'tde' runs have an alpha, only 'tde' and NorCal runs a rule.")
        if norcal != (isinstance(r["gamma"], (int, float)) and r["gamma"] >= 0) or (not norcal and r["gamma"] is not None):
            raise ValueError(f"{where}: run {k}: NorCal runs (and only they) have a gamma >= 0.")
        sched = r["schedule"]
        if not (isinstance(sched, dict) and set(sched) == {"iters", "ims_per_batch"}
                and all(isinstance(v, int) and v > 0 for v in sched.values())):
            raise ValueError(f"{where}: run {k}: schedule must be {{\"iters\": N, \"ims_per_batch\": B}}, got {sched!r}.")
        if not isinstance(r["seed"], int) or set(r["metrics"]) != set(METRIC_KEYS):
            raise ValueError(f"{where}: run {k} needs an int seed and metrics {METRIC_KEYS}.")


def schedule_of(max_iter, ims_per_batch):
    return {"iters": int(max_iter), "ims_per_batch": int(ims_per_batch)}


def unit_runs(dataset, model, seed):
    """The (model, alpha_rule) rows one unit contributes: softmax -> 2 rows, deconfound -> 5."""
    if model == "softmax":
        return [("softmax", None), ("softmax_norcal", "heldout")]
    return [("plain", None), ("tde", "paper"), ("tde", "heuristic"), ("tde", "heldout"), ("plain_norcal", "heldout")]


def unit_done(data, dataset, model, seed, schedule=None):
    """True when every row of the unit is in `data` (at `schedule`, default the short one)."""
    schedule = schedule or schedule_of(MAX_ITER, IMS_PER_BATCH)
    have = {(r["model"], r["alpha_rule"]) for r in data["runs"]
            if r["dataset"] == dataset and r["seed"] == seed and r["schedule"] == schedule}
    return all(row in have for row in unit_runs(dataset, model, seed))


def append_runs(path, runs):
    """Add `runs` to the JSON at `path` (replacing runs with the same dataset/model/rule/seed/schedule), atomically."""
    data = load_study(path)
    key = lambda r: (r["dataset"], r["model"], r["alpha_rule"], r["seed"], tuple(sorted(r["schedule"].items())))  # noqa: E731
    new = {key(r) for r in runs}
    data["runs"] = [r for r in data["runs"] if key(r) not in new] + list(runs)
    check_study(data, path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)
    return data


def schedules_in(data, dataset):
    """The schedules of `dataset`'s runs, shortest first."""
    found = {(r["schedule"]["iters"], r["schedule"]["ims_per_batch"]) for r in data["runs"] if r["dataset"] == dataset}
    return [schedule_of(n, b) for n, b in sorted(found, key=lambda t: (t[0] * t[1], t))]


def _runs(data, dataset, schedule):
    return [r for r in data["runs"] if r["dataset"] == dataset and (schedule is None or r["schedule"] == schedule)]


def mean_std_table(data, dataset, schedule=None):
    """Markdown table for `dataset` at `schedule` (None: every run): one row per (model, rule), mean ±
    sample std over seeds of every metric (std "-" with one seed), the number of seeds and, for TDE /
    NorCal rows, the α / γ values used."""
    head = "| model | rule | seeds | α or γ (per seed) | " + " | ".join(METRIC_KEYS) + " |"
    lines = [head, "|---|---|---:|---|" + "|".join("---:" for _ in METRIC_KEYS) + "|"]
    runs = _runs(data, dataset, schedule)
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
        if model == "tde":
            values = "α " + ", ".join(f"{r['alpha']:.2f}" for r in rows)
        elif model.endswith("_norcal"):
            values = "γ " + ", ".join(f"{r['gamma']:.2f}" for r in rows)
        else:
            values = ""
        lines.append(f"| {MODEL_LABELS[model]} | {rule or ''} | {len(rows)} | {values} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paired_differences(data, dataset, metric="AP", schedule=None):
    """Per pair of :data:`PAIRS` with runs: the per-seed differences of `metric` (seeds having both), a list."""
    runs = _runs(data, dataset, schedule)

    def by_seed(model, rule):
        return {r["seed"]: r["metrics"][metric] for r in runs if r["model"] == model and r["alpha_rule"] == rule
                and r["metrics"][metric] is not None}

    out = OrderedDict()
    for label, a, b in PAIRS:
        first, second = by_seed(*a), by_seed(*b)
        diffs = [first[s] - second[s] for s in sorted(first) if s in second]
        if diffs:
            out[label] = diffs
    return out


def _details_key(schedule, dataset, model, seed):
    return f"{schedule['iters']}x{schedule['ims_per_batch']}/{dataset}/{model}/seed{seed}"


def group_shares(details, dataset, frequency, alpha=PAPER_ALPHA, schedule=None):
    """Per seed of `dataset`'s De-confound models in `details` (at `schedule`, default the short one):
    (mean cos on val, {setting: {group: share of the top-1 predictions of plain-foreground val
    regions}}) for plain and TDE at `alpha`."""
    schedule = schedule or schedule_of(MAX_ITER, IMS_PER_BATCH)
    prefix = f"{schedule['iters']}x{schedule['ims_per_batch']}"
    out = OrderedDict()
    for key in sorted(details):
        sched, ds, model, seed = key.split("/")
        val = details[key].get("val")
        if sched != prefix or ds != dataset or model != "deconfound" or not val:
            continue
        shares = {}
        for name, counts in (("plain", val["top1_plain"]), (f"alpha={alpha:g}", val["top1"][f"alpha={alpha:g}"])):
            total = float(sum(counts)) or 1.0
            shares[name] = {g: sum(c for c, f in zip(counts, frequency) if f == g) / total for g in "fcr"}
        out[seed] = (val["mean_cos"], shares)
    return out


def val_oracles(details, dataset, schedule):
    """From `details`: per (model, kind) with val curves, the per-seed (best value, best val AP − AP at 0)
    over the grid -- an oracle on val, a diagnostic of what a rule could at most gain, never a choice."""
    prefix = f"{schedule['iters']}x{schedule['ims_per_batch']}/{dataset}/"
    out = OrderedDict()
    for label, model, kind in (("NorCal on softmax", "softmax", "AP_by_gamma"), ("TDE on plain", "deconfound", "AP_by_alpha"),
                               ("NorCal on plain", "deconfound", "AP_by_gamma")):
        for key in sorted(details):
            curve = details[key].get("val", {}).get(kind)
            if not key.startswith(prefix) or key.split("/")[2] != model or not curve:
                continue
            base = curve[0][1]
            best = _best(curve)
            gain = dict(curve)[best] - base
            out.setdefault(label, []).append((best, gain))
    return out


def format_tables(data, details=None, frequencies=None):
    """The Markdown tables of every data set and schedule in `data`, the paired differences of
    :data:`PAIRS` and, with `details` and `frequencies` (data set -> r/c/f per class), mean cos and
    top-1 shares per group."""
    parts = []
    for dataset in DATASETS:
        for schedule in schedules_in(data, dataset):
            n, b = schedule["iters"], schedule["ims_per_batch"]
            parts.append(f"**{dataset}** ({DATASETS[dataset]}_val), schedule {n} × {b}, mean ± std over seeds:\n\n"
                         + mean_std_table(data, dataset, schedule))
            diffs = []
            for metric in ("AP", "APr"):
                for label, d in paired_differences(data, dataset, metric, schedule).items():
                    sd = f" ± {statistics.stdev(d):.1f}" if len(d) > 1 else ""
                    diffs.append(f"{metric} {label} {statistics.mean(d):+.1f}{sd} (per seed: "
                                 + ", ".join(f"{v:+.1f}" for v in d) + ")")
            if diffs:
                parts.append(f"Paired per seed ({n} × {b}): " + "; ".join(diffs) + ".")
            oracles = val_oracles(details or {}, dataset, schedule)
            if oracles:
                cells = []
                for label, pairs in oracles.items():
                    gains = [g for _, g in pairs]
                    sd = f" ± {statistics.stdev(gains):.1f}" if len(gains) > 1 else ""
                    sym = "γ" if "NorCal" in label else "α"
                    cells.append(f"{label} +{statistics.mean(gains):.1f}{sd} AP at the best {sym} on val (per seed: "
                                 + ", ".join(f"{sym} {v:g}: {g:+.1f}" for v, g in pairs) + ")")
                parts.append(f"Val oracles ({n} × {b}; the grid value best ON VAL, a diagnostic of what a rule could "
                             "at most gain, never used to choose): " + "; ".join(cells) + ".")
            if details and frequencies and dataset in frequencies:
                shares = group_shares(details, dataset, frequencies[dataset], schedule=schedule)
                if shares:
                    cells = []
                    for seed, (cos, sh) in shares.items():
                        a = f"alpha={PAPER_ALPHA:g}"
                        cells.append(f"{seed}: mean cos(x, d̂) {cos:.3f}; top-1 share f/c/r plain "
                                     + "/".join(f"{sh['plain'][g]:.2f}" for g in "fcr") + f", TDE α={PAPER_ALPHA:g} "
                                     + "/".join(f"{sh[a][g]:.2f}" for g in "fcr"))
                    parts.append(f"Val regions (De-confound models, {n} × {b}): " + "; ".join(cells) + ".")
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
    from tde_det.analysis.alpha_sweep import metric_rows

    row = metric_rows(OrderedDict(plain=results), [])[0]
    return {m: (None if row.get(m) is None else round(float(row[m]), 3)) for m in METRIC_KEYS}


def _cfg(dataset, model, seed, workdir, splits, max_iter, ims_per_batch):
    from tde_det import get_tde_cfg

    prefix = PREFIXES[dataset]
    from detectron2.data import MetadataCatalog

    opts = []
    for k, v in schedule(max_iter, ims_per_batch).items():
        opts += [k, str(v)]
    opts += ["SEED", str(seed), "DATASETS.TRAIN", f"('{splits['fit']}',)", "DATASETS.TEST", f"('{prefix}_val',)",
             "MODEL.ROI_HEADS.NUM_CLASSES", str(len(MetadataCatalog.get(f"{prefix}_val").thing_classes)),
             "DATALOADER.NUM_WORKERS", "0", "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0",
             "TEST.LVIS_EVAL.FIXED_AP", "True", "TEST.DETECTIONS_PER_IMAGE", str(DETECTIONS_PER_IMAGE),
             "OUTPUT_DIR", os.path.join(workdir, f"{max_iter}x{ims_per_batch}", dataset, model, f"seed{seed}")]
    return get_tde_cfg(str(REPO / CONFIGS[model]), opts)


def run_unit(dataset, model, seed, workdir, max_iter=MAX_ITER, ims_per_batch=IMS_PER_BATCH, train_only=False):
    """Train (unless model_final.pth exists) and evaluate one model (unless `train_only`); returns
    (runs, details)."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    from tde_det.engine import Trainer

    torch.set_num_threads(1)
    splits, fit_json = register_splits(dataset, workdir)
    cfg = _cfg(dataset, model, seed, workdir, splits, max_iter, ims_per_batch)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger(cfg.OUTPUT_DIR)
    setup_logger(cfg.OUTPUT_DIR, name="tde_det")
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    details = {"dataset": dataset, "model": model, "seed": seed, "schedule": schedule(max_iter, ims_per_batch)}
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
    details["train_s"] = _training_seconds(cfg.OUTPUT_DIR)
    if train_only:
        return [], details
    cfg.MODEL.WEIGHTS = final
    cfg.freeze()
    model_ = Trainer.build_model(cfg)
    DetectionCheckpointer(model_).load(final)
    t0 = time.time()
    counts = fit_class_counts(fit_json)
    sched = schedule_of(max_iter, ims_per_batch)
    if model == "softmax":
        runs = _evaluate_softmax(cfg, model_, dataset, seed, splits, details, counts)
    else:
        runs = _evaluate_deconfound(cfg, model_, dataset, seed, splits, details, counts)
    for r in runs:
        r.setdefault("gamma", None)
        r["schedule"] = sched
    details["eval_s"] = round(time.time() - t0, 1)
    return runs, details


def _training_seconds(output_dir):
    """Detectron2's "Total training time" of the run in `output_dir` (its log.txt), in seconds; None if absent."""
    import re

    path = os.path.join(output_dir, "log.txt")
    found = None
    if os.path.isfile(path):
        with open(path) as f:
            for line in f:
                m = re.search(r"Total training time: (?:(\d+) days?, )?(\d+):(\d\d):(\d\d)", line)
                if m:
                    d, h, mi, sec = (int(g or 0) for g in m.groups())
                    found = float(((d * 24 + h) * 60 + mi) * 60 + sec)
    return found


def _sweep(cfg, model, dataset_name, alphas, record=None, gammas=(), counts=None):
    """One-pass α (and NorCal γ) sweep on `dataset_name`. `record(x)`, if given, sees the box features
    [R, D] of every scored region (through the classifier's ``mean_cosine``, which the sweep calls
    once per batch)."""
    from tde_det.engine import Trainer
    from tde_det.evaluation import build_lvis_evaluator
    from tde_det.analysis.alpha_sweep import inference_on_dataset_alphas

    loader = Trainer.build_test_loader(cfg, dataset_name)
    classifier = model.roi_heads.box_predictor.cls_score
    if record is not None:
        original = classifier.mean_cosine

        def mean_cosine(x):
            record(x)
            return original(x)

        classifier.mean_cosine = mean_cosine
    try:
        return inference_on_dataset_alphas(model, loader, alphas, lambda s: build_lvis_evaluator(cfg, dataset_name, None),
                                           gammas, counts)
    finally:
        if record is not None:
            del classifier.mean_cosine


def _best(candidates):
    """(value, held-out AP) pairs -> the value with the best AP (ties: the smaller value)."""
    return max(candidates, key=lambda t: (t[1] if t[1] is not None else -1.0, -t[0]))[0]


def _ap_by(sweep, kind):
    """[(value, mask AP)] of a sweep result for 0 (plain) and every α (kind "alpha") or γ ("gamma") of the grid."""
    from tde_det.analysis.alpha_sweep import gamma_setting_name, setting_name

    values = HELDOUT_ALPHAS if kind == "alpha" else HELDOUT_GAMMAS
    name = setting_name if kind == "alpha" else gamma_setting_name
    return [(0.0, _metrics(sweep.results["plain"])["AP"])] + [(v, _metrics(sweep.results[name(v)])["AP"]) for v in values]


def _heldout_gamma(held, details):
    """NorCal's γ with the best held-out mask AP among {0} ∪ HELDOUT_GAMMAS (recorded in `details`)."""
    scored = _ap_by(held, "gamma")
    details.setdefault("heldout", {}).update(best_gamma=_best(scored), AP_by_gamma=scored)
    return details["heldout"]["best_gamma"]


def _norcal_run(val, dataset, model, seed, gamma):
    from tde_det.analysis.alpha_sweep import gamma_setting_name

    res = val.results["plain"] if gamma == 0 else val.results[gamma_setting_name(gamma)]
    return dict(dataset=dataset, model=model, alpha=None, alpha_rule="heldout", gamma=float(gamma), seed=seed,
                metrics=_metrics(res))


def _evaluate_softmax(cfg, model, dataset, seed, splits, details, counts):
    """softmax and softmax + NorCal (γ chosen on the held-out images) on val."""
    held = _sweep(cfg, model, splits["heldout"], [0.0], gammas=list(HELDOUT_GAMMAS), counts=counts)
    gamma = _heldout_gamma(held, details)
    # val: the whole γ grid in the same pass; the curve is a diagnostic (oracle), never a choice
    val = _sweep(cfg, model, cfg.DATASETS.TEST[0], [0.0], gammas=list(HELDOUT_GAMMAS), counts=counts)
    details["val"] = {"top1_plain": val.stats.top1_counts(None), "rows": val.rows(), "AP_by_gamma": _ap_by(val, "gamma")}
    return [dict(dataset=dataset, model="softmax", alpha=None, alpha_rule=None, seed=seed,
                 metrics=_metrics(val.results["plain"])),
            _norcal_run(val, dataset, "softmax_norcal", seed, gamma)]


def _evaluate_deconfound(cfg, model, dataset, seed, splits, details, counts):
    import numpy as np
    import torch

    from tde_det.analysis.alpha_sweep import setting_name

    # 1) held-out training images: α and γ grids, mean cos -> heldout α, heuristic α, NorCal γ (no val involved)
    held = _sweep(cfg, model, splits["heldout"], list(HELDOUT_ALPHAS), gammas=list(HELDOUT_GAMMAS), counts=counts)
    candidates = [(0.0, held.results["plain"])] + [(a, held.results[setting_name(a)]) for a in HELDOUT_ALPHAS]
    scored = [(a, _metrics(r)["AP"]) for a, r in candidates]
    best_alpha = _best(scored)
    heuristic = round(float(held.heuristic_alpha), 3)
    rules = OrderedDict([("paper", PAPER_ALPHA), ("heuristic", heuristic), ("heldout", best_alpha)])
    details["heldout"] = {"mean_cos": held.mean_cos, "heuristic_alpha": heuristic, "best_alpha": best_alpha,
                          "AP_by_alpha": scored, "images": splits["heldout"]}
    gamma = _heldout_gamma(held, details)
    # 2) val, one pass for plain, every rule's α and the α and γ grids (their curves are diagnostics:
    #    oracles, never a choice); per-region cos(x, d̂) and plain fg flag saved
    cos_parts, fg_parts = [], []
    predictor = model.roi_heads.box_predictor

    def hook(x):
        classifier = predictor.cls_score
        cos_parts.append(type(classifier).mean_cosine(classifier, x).mean(dim=1).float().cpu())
        fg_parts.append((torch.softmax(classifier(x).float(), dim=1)[:, -1] < 0.5).cpu())

    val_alphas = sorted({a for a in rules.values() if a > 0} | set(HELDOUT_ALPHAS))
    val = _sweep(cfg, model, cfg.DATASETS.TEST[0], val_alphas, hook, gammas=list(HELDOUT_GAMMAS), counts=counts)
    np.savez_compressed(os.path.join(cfg.OUTPUT_DIR, "val_region_cos.npz"), cos=torch.cat(cos_parts).numpy(),
                        plain_fg=torch.cat(fg_parts).numpy())
    details["val"] = {"mean_cos": val.mean_cos, "heuristic_alpha_val": val.heuristic_alpha,
                      "top1_plain": val.stats.top1_counts(None),
                      "top1": {setting_name(a): val.stats.top1_counts(a) for a in val_alphas},
                      "rows": val.rows(), "AP_by_alpha": _ap_by(val, "alpha"), "AP_by_gamma": _ap_by(val, "gamma")}
    runs = [dict(dataset=dataset, model="plain", alpha=None, alpha_rule=None, seed=seed,
                 metrics=_metrics(val.results["plain"]))]
    for rule, a in rules.items():
        res = val.results["plain"] if a == 0 else val.results[setting_name(a)]
        runs.append(dict(dataset=dataset, model="tde", alpha=float(a), alpha_rule=rule, seed=seed, metrics=_metrics(res)))
    runs.append(_norcal_run(val, dataset, "plain_norcal", seed, gamma))
    return runs


# ----------------------------------------------------------------------------- the driver
def plan(seeds, datasets, models=tuple(CONFIGS)):
    """Units in seed-major order: seed 0 of every data set and model first."""
    return [(d, m, s) for s in seeds for d in datasets for m in CONFIGS if m in models]


def _details_path(json_path):
    return str(json_path).replace(".json", "_details.json")


def drive(args):
    data = load_study(args.output)
    sched = schedule_of(args.max_iter, args.ims_per_batch)
    todo = [u for u in plan(args.seeds, args.datasets, args.models) if not unit_done(data, *u, sched)]
    print(f"[tde_study] {len(todo)} unit(s) to run: {todo}", flush=True)
    os.makedirs(args.workdir, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    for dataset, model, seed in todo:
        stem = os.path.join(args.workdir, f"unit_{args.max_iter}x{args.ims_per_batch}_{dataset}_{model}_seed{seed}")
        out, log = stem + ".json", stem + ".log"
        cmd = [sys.executable, __file__, "--unit", dataset, model, str(seed), "--workdir", str(args.workdir),
               "--unit-output", out, "--max-iter", str(args.max_iter), "--ims-per-batch", str(args.ims_per_batch)]
        if args.train_only:
            cmd.append("--train-only")
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
        if args.train_only:
            print(f"[tde_study] {time.strftime('%H:%M:%S')} trained {dataset} {model} seed {seed} in "
                  f"{time.time() - t0:.0f} s", flush=True)
            continue
        with open(out) as f:
            unit = json.load(f)
        data = append_runs(args.output, unit["runs"])
        details = {}
        if os.path.isfile(_details_path(args.output)):
            with open(_details_path(args.output)) as f:
                details = json.load(f)
        details[_details_key(sched, dataset, model, seed)] = unit["details"]
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
    parser.add_argument("--models", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--output", default=str(DEFAULT_JSON), help="the study JSON (default: %(default)s)")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="weights, logs, splits (default: %(default)s)")
    parser.add_argument("--table", action="store_true", help="print the mean ± std Markdown tables and exit")
    parser.add_argument("--update-doc", metavar="MD", help="with --table: also write the tables into MD between "
                        "the tde_study markers (e.g. docs/RESULTS.md)")
    parser.add_argument("--stop-on-failure", action="store_true")
    parser.add_argument("--max-iter", type=int, default=MAX_ITER,
                        help="iterations of every training (default: %(default)s; the study's schedule)")
    parser.add_argument("--ims-per-batch", type=int, default=IMS_PER_BATCH,
                        help="images per batch of every training (default: %(default)s)")
    parser.add_argument("--schedule", choices=list(SCHEDULES),
                        help="shorthand for --max-iter/--ims-per-batch: " + ", ".join(
                            f"{k} = {n} x {b}" for k, (n, b) in SCHEDULES.items()))
    parser.add_argument("--train-only", action="store_true", help="train the planned models, evaluate nothing")
    parser.add_argument("--unit", nargs=3, metavar=("DATASET", "MODEL", "SEED"), help=argparse.SUPPRESS)
    parser.add_argument("--unit-output", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.schedule:
        args.max_iter, args.ims_per_batch = SCHEDULES[args.schedule]
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
    if args.unit:
        dataset, model, seed = args.unit[0], args.unit[1], int(args.unit[2])
        if dataset not in PREFIXES or model not in CONFIGS:
            sys.exit(f"error: unknown unit {args.unit}; data sets {list(PREFIXES)}, models {list(CONFIGS)}.")
        runs, details = run_unit(dataset, model, seed, args.workdir, args.max_iter, args.ims_per_batch, args.train_only)
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
