"""Diagnostics figures of the TDE study (studies/tde_study.py), PNG into docs/figures.

    .venv/bin/python studies/tde_study_figures.py [--seed 0] [--schedule short]

Per data set, from the De-confound model of one seed (and the softmax model of the same seed) of one
schedule:

- ``tde_study_<ds>_classifier.png``: per class against its training image count, the weight norm
  ‖w_i‖ (softmax and De-confound classifiers) and the alignment ⟨ŵ_i, d̂⟩ = mean over heads k of
  cos(w_i^k, d̂^k) -- the head bias the paper describes: a class whose weight points along the
  mean feature d̂ gains from every region, and TDE removes α·cos(x, d̂)·⟨ŵ_i, d̂⟩.
- ``tde_study_<ds>_cos.png``: histogram of cos(x, d̂) (mean over heads) over the val regions that
  the box predictor scores (all proposals, and those that plain calls foreground).
- ``tde_study_<ds>_predictions.png``: the share of top-1 foreground predictions per class, plain vs
  TDE at the paper's α, vs the ground truth (:func:`tde_det.analysis.figures.plot_prediction_distribution`).

And ``tde_study_heldout_alpha.png`` (held-out mask AP against α, every seed, both data sets) and
``fine_classes.png`` (one training instance of every class of the fine-grained set, a family per row).
"""

import argparse
import json
import os
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from tde_study import DATASETS, DEFAULT_JSON, DEFAULT_WORKDIR, PAPER_ALPHA, REPO, SCHEDULES, _details_path

from tde_det.analysis.figures import lvis_category_stats, plot_prediction_distribution

GROUP_COLOURS = {"f": "tab:blue", "c": "tab:orange", "r": "tab:red"}


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, dpi=fig.dpi)
    return path


def classifier_stats(state, num_heads=2):
    """From a checkpoint's model state: per foreground class (background row dropped) the weight norm
    ‖w_i‖ [C] and, when the state has the TDE mean feature, the alignment mean_k cos(w_i^k, d̂^k) [C]."""
    import torch

    w = state["roi_heads.box_predictor.cls_score.weight"].double()[:-1]
    norms = w.norm(dim=1).numpy()
    mean = state.get("roi_heads.box_predictor.cls_score.mean_feature")
    if mean is None:
        return norms, None
    ws = w.view(w.shape[0], num_heads, -1)
    d = mean.double().view(num_heads, -1)
    d = d / d.norm(dim=-1, keepdim=True)
    cos = (ws / ws.norm(dim=-1, keepdim=True) * d.unsqueeze(0)).sum(-1)  # [C, K]
    return norms, torch.as_tensor(cos).mean(dim=1).numpy()


def _load_state(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)["model"]


def plot_classifier(image_count, frequency, deconf_norms, alignment, softmax_norms, path, title):
    fig = Figure(figsize=(11.0, 3.4), dpi=100)
    panels = [("‖w_i‖, softmax classifier", softmax_norms), ("‖w_i‖, De-confound (cosine) classifier", deconf_norms),
              ("alignment ⟨ŵ_i, d̂⟩ (mean over heads), De-confound", alignment)]
    x = np.asarray(image_count)
    for k, (label, values) in enumerate(panels):
        ax = fig.add_subplot(1, 3, k + 1)
        if values is not None:
            for g in ("f", "c", "r"):
                sel = [i for i, f in enumerate(frequency) if f == g]
                ax.scatter(x[sel], np.asarray(values)[sel], s=14, color=GROUP_COLOURS[g], label=g)
            if len(values) > 2:
                r = np.corrcoef(np.log(np.maximum(x, 1)), values)[0, 1]
                ax.text(0.02, 0.96, f"corr(log n, ·) = {r:+.2f}", transform=ax.transAxes, fontsize=8, va="top")
        ax.set_xscale("log")
        ax.set_xlabel("training images of the class")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3)
        if k == 0:
            ax.legend(fontsize=8, loc="lower right")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_cos_hist(cos, plain_fg, path, title, alpha=1.5):
    fig = Figure(figsize=(6.4, 3.4), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    bins = np.linspace(min(float(cos.min()), 0.0), 1.0, 61)
    ax.hist(cos, bins=bins, alpha=0.6, density=True, label=f"all scored regions (n={len(cos)}, mean {cos.mean():.3f})")
    if plain_fg.any():
        fg = cos[plain_fg]
        ax.hist(fg, bins=bins, alpha=0.6, density=True,
                label=f"plain foreground, p_bg < 0.5 (n={len(fg)}, mean {fg.mean():.3f})")
    ax.axvline(1.0 / alpha, color="grey", linestyle="--", linewidth=1, label=f"1/α for α = {alpha:g}")
    ax.set_xlabel("cos(x, d̂)  (mean over heads)")
    ax.set_ylabel("density")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7, loc="upper left")
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_heldout_alpha(details, path, schedule="350x4"):
    details = {k.split("/", 1)[1]: v for k, v in details.items() if k.split("/")[0] == schedule}
    datasets = sorted({k.split("/")[0] for k in details if k.split("/")[1] == "deconfound"})
    fig = Figure(figsize=(5.0 * max(len(datasets), 1), 3.4), dpi=100)
    for j, ds in enumerate(datasets):
        ax = fig.add_subplot(1, len(datasets), j + 1)
        for key in sorted(details):
            d, model, seed = key.split("/")
            if d != ds or model != "deconfound" or "heldout" not in details[key]:
                continue
            pts = [(a, v) for a, v in details[key]["heldout"]["AP_by_alpha"] if v is not None]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker="o", label=f"{seed} (chosen α = {details[key]['heldout']['best_alpha']:g})")
        ax.set_xlabel("α (0 = plain)")
        ax.set_ylabel("held-out mask AP (%)")
        ax.set_title(f"{ds}: AP on the held-out training images", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    return _save(fig, path)


def fine_montage(root, path, spec, tile=64):
    """One training instance of every class (the first annotated one), a family per row."""
    import cv2

    with open(os.path.join(root, "annotations", "demo_lt_train.json")) as f:
        data = json.load(f)
    images = {i["id"]: i for i in data["images"]}
    first = {}
    for a in data["annotations"]:
        first.setdefault(a["category_id"], a)
    per_row = len(spec.cues) + 1
    rows = []
    for fam in range(len(spec.families)):
        tiles = []
        for k in range(per_row):
            a = first[fam * per_row + k + 1]
            img = cv2.imread(os.path.join(root, "train", images[a["image_id"]]["file_name"]))
            x, y, w, h = (int(round(v)) for v in a["bbox"])
            crop = img[max(0, y - 2): y + h + 3, max(0, x - 2): x + w + 3]
            tiles.append(cv2.resize(crop, (tile, tile), interpolation=cv2.INTER_AREA))
        rows.append(np.concatenate(tiles, 1))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    cv2.imwrite(path, np.concatenate(rows, 0))
    return path


def write_figures(study_json, workdir, seed, out_dir, datasets=None, montage=True, schedule="350x4"):
    """All figures from the study's outputs at `schedule` ("<iters>x<batch>"); returns the written paths
    (skips data sets not run yet). `datasets`: name -> dataset prefix (default: the study's)."""
    from detectron2.data import MetadataCatalog

    import tde_det  # noqa: F401  (registers the demo data sets)
    from tde_det.data import FINE_SPEC, prepare_dataset

    out_dir = str(out_dir)
    with open(_details_path(study_json)) as f:
        details = json.load(f)
    paths = []
    for ds, prefix in (datasets or DATASETS).items():
        key = f"{schedule}/{ds}/deconfound/seed{seed}"
        deconf = os.path.join(workdir, schedule, ds, "deconfound", f"seed{seed}", "model_final.pth")
        softmax = os.path.join(workdir, schedule, ds, "softmax", f"seed{seed}", "model_final.pth")
        if key not in details:
            continue
        prepare_dataset(f"{prefix}_val")
        cats = lvis_category_stats(MetadataCatalog.get(f"{prefix}_val").json_file)
        if os.path.isfile(deconf):  # the weights' figures; the predictions figure needs only the details json
            norms, align = classifier_stats(_load_state(deconf))
            soft = classifier_stats(_load_state(softmax))[0] if os.path.isfile(softmax) else None
            paths.append(plot_classifier(cats["image_count"], cats["frequency"], norms, align, soft,
                                         os.path.join(out_dir, f"tde_study_{ds}_classifier.png"),
                                         f"{prefix}: classifier weights per class (seed {seed})"))
            npz = np.load(os.path.join(os.path.dirname(deconf), "val_region_cos.npz"))
            paths.append(plot_cos_hist(npz["cos"], npz["plain_fg"], os.path.join(out_dir, f"tde_study_{ds}_cos.png"),
                                       f"{prefix}_val: cos(x, d̂) of the scored regions (seed {seed})", PAPER_ALPHA))
        val = details[key]["val"]
        series = {"plain": val["top1_plain"], f"TDE (α={PAPER_ALPHA:g})": val["top1"][f"alpha={PAPER_ALPHA:g}"],
                  "ground truth": cats["gt_instances"]}
        paths.append(plot_prediction_distribution(
            cats["image_count"], series, os.path.join(out_dir, f"tde_study_{ds}_predictions.png"),
            frequency=cats["frequency"], class_names=cats["names"],
            title=f"{prefix}_val: top-1 class of the plain-foreground regions (seed {seed})"))
    if any(k.split("/")[0] == schedule and k.split("/")[2] == "deconfound" for k in details):
        paths.append(plot_heldout_alpha(details, os.path.join(out_dir, "tde_study_heldout_alpha.png"), schedule))
    if not montage:
        return paths
    fine_root = os.path.dirname(os.path.dirname(MetadataCatalog.get("tde_demo_lt_fine_train").json_file))
    prepare_dataset("tde_demo_lt_fine_train")
    paths.append(fine_montage(fine_root, os.path.join(out_dir, "fine_classes.png"), FINE_SPEC))
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default=str(DEFAULT_JSON), help="the study JSON (default: %(default)s)")
    parser.add_argument("--workdir", default=str(DEFAULT_WORKDIR), help="weights of the study (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed whose models the figures show (default: 0)")
    parser.add_argument("--schedule", choices=list(SCHEDULES), default="short",
                        help="schedule of the models shown (default: %(default)s)")
    args = parser.parse_args(argv)
    n, b = SCHEDULES[args.schedule]
    for path in write_figures(args.output, args.workdir, args.seed, REPO / "docs/figures", schedule=f"{n}x{b}"):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
