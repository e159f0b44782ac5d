"""The α-sweep pictures (issue 4), PNG via matplotlib's Agg canvas (no display, global backend untouched).

(a) :func:`plot_alpha_curves`: AP, APr, APc, APf against α, the plain (De-confound) values as
    dotted reference lines and the heuristic α (α · mean cos = 1) as a vertical line.
(b) :func:`plot_prediction_distribution`: the paper's prediction-distribution figure -- per class,
    the share of top-1 predictions of plain and TDE and the share of ground-truth instances, classes
    sorted by training frequency (most frequent first); beside it the same shares summed per LVIS
    frequency group (f / c / r).
"""

import json
import math
import os
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

__all__ = ["lvis_category_stats", "plot_alpha_curves", "plot_prediction_distribution", "prediction_shares"]

CURVE_METRICS = ("AP", "APr", "APc", "APf")
_COLOURS = {"AP": "black", "APr": "tab:red", "APc": "tab:orange", "APf": "tab:blue"}
_GROUP_COLOURS = {"f": "#dde8f5", "c": "#fbe9d7", "r": "#f8dada"}


def _save(fig, path):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=fig.dpi)
    return path


def plot_alpha_curves(rows: List[dict], path: str, heuristic_alpha: Optional[float] = None, title: str = "") -> str:
    """Figure (a). `rows`: :func:`tde_det.analysis.alpha_sweep.metric_rows` (``alpha`` None = plain).

    Returns `path`. Raises ValueError if no row has an α and a value of any of AP/APr/APc/APf.
    """
    swept = sorted((r for r in rows if r.get("alpha") is not None), key=lambda r: r["alpha"])
    plain = next((r for r in rows if r.get("alpha") is None), None)
    fig = Figure(figsize=(6.4, 3.8), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    drawn = 0
    for m in CURVE_METRICS:
        pts = [(r["alpha"], r[m]) for r in swept if r.get(m) is not None]
        if not pts:
            continue
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o", color=_COLOURS[m], label=m)
        drawn += 1
        if plain is not None and plain.get(m) is not None:
            ax.axhline(plain[m], color=_COLOURS[m], linestyle=":", linewidth=1)
    if not drawn:
        raise ValueError("plot_alpha_curves: no row has an alpha and a value of AP, APr, APc or APf.")
    if heuristic_alpha is not None and math.isfinite(heuristic_alpha):
        ax.axvline(heuristic_alpha, color="grey", linestyle="--", linewidth=1,
                   label=f"heuristic $\\alpha$={heuristic_alpha:.2f}")
    ax.set_xlabel(r"$\alpha$ (TDE strength; 0 = plain)")
    ax.set_ylabel("AP (%)")
    ax.set_title(title or r"LVIS AP against $\alpha$ (dotted: plain)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    return _save(fig, path)


def lvis_category_stats(json_file: str) -> Dict[str, list]:
    """From an LVIS-format json: per class (Detectron2's contiguous order = sorted category id) the
    name, training ``image_count``, ``frequency`` (r/c/f) and the number of annotated instances in
    this json (``gt_instances``)."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"LVIS json {json_file!r} not found (needed for the class frequencies).")
    with open(json_file) as f:
        data = json.load(f)
    cats = sorted(data["categories"], key=lambda c: c["id"])
    index = {c["id"]: i for i, c in enumerate(cats)}
    gt = [0] * len(cats)
    for a in data.get("annotations", []):
        gt[index[a["category_id"]]] += 1
    return {
        "names": [c["name"] for c in cats],
        "image_count": [int(c.get("image_count", 0)) for c in cats],
        "frequency": [c.get("frequency", "") for c in cats],
        "gt_instances": gt,
    }


_SERIES_COLOURS = ("tab:blue", "tab:orange", "tab:green", "tab:purple", "tab:brown")
_GT_COLOUR = "0.55"
_GROUP_NAMES = {"f": "frequent", "c": "common", "r": "rare"}
LABELLED_CLASSES = 30  # class names on the x axis up to this many classes; beyond, only the rank
SMOOTH_ABOVE = 60  # more classes than this: per-class shares as a moving mean over neighbouring classes


def prediction_shares(train_image_count: Sequence[int], counts: "OrderedDict[str, Sequence[int]]",
                      frequency: Optional[Sequence[str]] = None) -> dict:
    """What figure (b) draws, as numbers.

    Returns ``{"order": [C] class indices sorted by training images (descending, stable),
    "shares": label -> [C] share of that label's total per class in that order (count / sum),
    "window": classes per moving mean (1: none; odd, about C / 60 when C > SMOOTH_ABOVE),
    "smoothed": label -> [C] the centred moving mean of "shares" over `window` classes (fewer at the ends),
    "groups": label -> {group: summed share} for the groups of `frequency` in f, c, r order}``.
    """
    num = len(train_image_count)
    if num == 0 or not counts:
        raise ValueError("plot_prediction_distribution needs at least one class and one series of counts.")
    for label, c in counts.items():
        if len(c) != num:
            raise ValueError(f"Series {label!r} has {len(c)} counts but there are {num} classes.")
    if frequency is not None and len(frequency) != num:
        raise ValueError(f"frequency has {len(frequency)} entries but there are {num} classes.")
    order = np.argsort(-np.asarray(train_image_count), kind="stable")
    window = 1 if num <= SMOOTH_ABOVE else 2 * int(round(num / SMOOTH_ABOVE / 2)) + 1
    kernel = np.ones(window)
    shares, smoothed, groups = OrderedDict(), OrderedDict(), OrderedDict()
    for label, c in counts.items():
        c = np.asarray(c, dtype=np.float64)
        s = (c / c.sum() if c.sum() > 0 else c)[order]
        shares[label] = s
        smoothed[label] = np.convolve(s, kernel, "same") / np.convolve(np.ones(num), kernel, "same")
        if frequency is not None:
            freq = np.asarray(frequency)[order]
            groups[label] = OrderedDict((g, float(s[freq == g].sum())) for g in "fcr" if (freq == g).any())
    return {"order": order, "shares": shares, "window": window, "smoothed": smoothed, "groups": groups}


def plot_prediction_distribution(
    train_image_count: Sequence[int],
    counts: "OrderedDict[str, Sequence[int]]",
    path: str,
    frequency: Optional[Sequence[str]] = None,
    class_names: Optional[Sequence[str]] = None,
    title: str = "",
) -> str:
    """Figure (b), readable from 6 classes to LVIS's 1,203: where the top-1 predictions go.

    `counts`: label -> [C] counts (e.g. plain / TDE / NorCal top-1 predictions and "ground truth"
    instances; a label starting with "ground truth" is drawn as a grey area, the others as lines).
    Left: per class, its share of each label's total (count / sum: predictions and instances become
    comparable), classes sorted by `train_image_count` (most frequent first), log scale, the LVIS
    frequency groups of `frequency` (r/c/f) as shaded bands. Above SMOOTH_ABOVE classes each
    curve is the moving mean over ``window`` neighbouring classes (:func:`prediction_shares`);
    class names label the axis up to LABELLED_CLASSES classes. Right (with `frequency`): the shares
    summed per group, in percent. Returns `path`."""
    data = prediction_shares(train_image_count, counts, frequency)
    order, window = data["order"], data["window"]
    num = len(order)
    curves = data["smoothed"]
    positive = [v for s in curves.values() for v in s if v > 0]
    floor = min(positive) / 2 if positive else 1e-6
    fig = Figure(figsize=(11.0, 4.2), dpi=110)
    grid = fig.add_gridspec(1, 2, width_ratios=[3.2, 1])
    ax = fig.add_subplot(grid[0, 0] if frequency is not None else grid[0, :])
    xs = np.arange(num)
    if frequency is not None:
        freq = [frequency[i] for i in order]
        start = 0
        for i in range(1, num + 1):
            if i == num or freq[i] != freq[start]:
                g = freq[start]
                ax.axvspan(start - 0.5, i - 0.5, color=_GROUP_COLOURS.get(g, "#eeeeee"), zorder=0, linewidth=0)
                wide = (i - start) / num > 0.12
                text = f"{_GROUP_NAMES.get(g, g)}: {i - start}" if wide else g
                ax.text((start + i - 1) / 2, 1.01, text, transform=ax.get_xaxis_transform(), ha="center",
                        va="bottom", fontsize=8)
                start = i
    edges = np.arange(num + 1) - 0.5  # one step per class; smoothed curves go through the class centres
    colours = iter(_SERIES_COLOURS)
    for label, s in curves.items():
        y = np.maximum(s, floor)
        if label.startswith("ground truth"):
            style = dict(color=_GT_COLOUR, alpha=0.45, linewidth=0, label=label, zorder=1)
            if window == 1:
                ax.stairs(y, edges, baseline=floor, fill=True, **style)
            else:
                ax.fill_between(xs, floor, y, **style)
        elif window == 1:
            ax.stairs(y, edges, baseline=None, color=next(colours), linewidth=1.3, label=label, zorder=3)
        else:
            ax.plot(xs, y, color=next(colours), linewidth=1.0, label=label, zorder=3)
    ax.set_yscale("log")
    ax.set_ylim(floor, None)
    if np.log10(ax.get_ylim()[1] / floor) < 3:  # few decades: label 2 and 5 between the powers of ten too
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlim(-0.5, num - 0.5)
    if class_names is not None and num <= LABELLED_CLASSES:
        ax.set_xticks(xs)
        ax.set_xticklabels([class_names[i] for i in order], rotation=0 if num <= 10 else 60,
                           ha="center" if num <= 10 else "right", fontsize=7)
        ax.set_xlabel("classes, most training images first")
    else:
        ax.set_xlabel(f"{num} classes, most training images first (rank)")
    what = "share per class" if window == 1 else f"share per class, mean over {window} neighbouring classes"
    ax.set_ylabel(f"{what}\n(log; 0 drawn at the bottom)", fontsize=8)
    ax.set_title(title or "Prediction distribution", fontsize=10, pad=16)
    ax.grid(axis="y", alpha=0.3, which="major")
    handles, labels = ax.get_legend_handles_labels()  # below both panels: on a panel it would hide curves
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=8, frameon=False)
    if frequency is not None:
        side = fig.add_subplot(grid[0, 1])
        groups = list(next(iter(data["groups"].values())))
        gx = np.arange(len(groups))
        width = 0.8 / len(curves)
        colours = iter(_SERIES_COLOURS)
        for j, (label, vals) in enumerate(data["groups"].items()):
            colour = _GT_COLOUR if label.startswith("ground truth") else next(colours)
            percent = [100 * vals[g] for g in groups]
            bars = side.bar(gx + (j - (len(curves) - 1) / 2) * width, percent, width=width, color=colour, label=label)
            side.bar_label(bars, labels=[f"{v:.0f}" if v >= 10 else f"{v:.2g}" for v in percent], fontsize=6, padding=1)
        side.set_yscale("log")
        side.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        side.set_xticks(gx)
        side.set_xticklabels([_GROUP_NAMES.get(g, g) for g in groups], fontsize=8)
        side.set_ylabel("% of all predictions / instances (log)", fontsize=8)
        side.set_title("share per frequency group", fontsize=9, pad=16)
        side.grid(axis="y", alpha=0.3)
        low = min((v for vals in data["groups"].values() for v in vals.values() if v > 0), default=1e-3)
        side.set_ylim(100 * low / 3, 300)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return _save(fig, path)
