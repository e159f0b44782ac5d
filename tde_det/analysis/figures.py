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

__all__ = ["lvis_category_stats", "plot_alpha_curves", "plot_prediction_distribution"]

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


def plot_prediction_distribution(
    train_image_count: Sequence[int],
    counts: "OrderedDict[str, Sequence[int]]",
    path: str,
    frequency: Optional[Sequence[str]] = None,
    class_names: Optional[Sequence[str]] = None,
    title: str = "",
) -> str:
    """Figure (b): per-class shares of `counts` (label -> [C] counts, e.g. plain / TDE / ground
    truth), classes sorted by `train_image_count` (descending, stable). Shares (count / total of
    that label) make predicted regions and ground-truth instances comparable. With `frequency`
    (r/c/f per class) the groups are shaded and a second panel sums the shares per group.
    Returns `path`."""
    num = len(train_image_count)
    if num == 0 or not counts:
        raise ValueError("plot_prediction_distribution needs at least one class and one series of counts.")
    for label, c in counts.items():
        if len(c) != num:
            raise ValueError(f"Series {label!r} has {len(c)} counts but there are {num} classes.")
    order = np.argsort(-np.asarray(train_image_count), kind="stable")
    shares = OrderedDict()
    for label, c in counts.items():
        c = np.asarray(c, dtype=np.float64)
        shares[label] = c / c.sum() if c.sum() > 0 else c
    fig = Figure(figsize=(10.0, 3.8), dpi=100)
    grid = fig.add_gridspec(1, 4)
    ax = fig.add_subplot(grid[0, :3] if frequency is not None else grid[0, :])
    xs = np.arange(num)
    if frequency is not None:
        freq_sorted = [frequency[i] for i in order]
        start = 0
        for i in range(1, num + 1):
            if i == num or freq_sorted[i] != freq_sorted[start]:
                g = freq_sorted[start]
                ax.axvspan(start - 0.5, i - 0.5, color=_GROUP_COLOURS.get(g, "#eeeeee"), zorder=0)
                ax.text((start + i - 1) / 2, 1.0, g, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                        fontsize=8)
                start = i
    if num <= 120:
        width = 0.8 / len(shares)
        for j, (label, s) in enumerate(shares.items()):
            ax.bar(xs + (j - (len(shares) - 1) / 2) * width, s[order], width=width, label=label, zorder=2)
    else:
        for label, s in shares.items():
            ax.plot(xs, s[order], label=label, linewidth=0.8, zorder=2)
    if class_names is not None and num <= 60:
        ax.set_xticks(xs)
        ax.set_xticklabels([class_names[i] for i in order], rotation=90, fontsize=5)
    ax.set_xlim(-0.5, num - 0.5)
    ax.set_xlabel("classes sorted by training frequency (most frequent first)")
    ax.set_ylabel("share of top-1 predictions / instances")
    ax.set_title(title or "Prediction distribution", fontsize=10, pad=14)
    ax.legend(fontsize=8)
    if frequency is not None:
        side = fig.add_subplot(grid[0, 3])
        groups = [g for g in ("f", "c", "r") if g in set(frequency)]
        gx = np.arange(len(groups))
        width = 0.8 / len(shares)
        for j, (label, s) in enumerate(shares.items()):
            vals = [s[[i for i in range(num) if frequency[i] == g]].sum() for g in groups]
            side.bar(gx + (j - (len(shares) - 1) / 2) * width, vals, width=width, label=label)
        side.set_xticks(gx)
        side.set_xticklabels(groups)
        side.set_title("share per frequency group", fontsize=9, pad=14)
        side.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
