"""The LVIS-style results table printed after evaluation, and its JSON record in OUTPUT_DIR.

One row per evaluated model variant (softmax baseline, De-confound "plain", De-confound-TDE);
mask AP columns then box AP columns, in percent as Detectron2's LVISEvaluator reports them.
LVIS reports -1 for a frequency group with no category in the split; shown here as "-".
The JSON record is strict JSON: an undefined value (NaN, e.g. the AP of a category without ground
truth) is written as null.
"""

import json
import math
import numbers
import os

__all__ = ["COLUMNS", "format_table", "update_results_json", "RESULTS_FILE", "strict_json"]

RESULTS_FILE = "lvis_results.json"

# (column title, task, LVIS metric name)
COLUMNS = [
    ("AP", "segm", "AP"),
    ("AP50", "segm", "AP50"),
    ("AP75", "segm", "AP75"),
    ("APr", "segm", "APr"),
    ("APc", "segm", "APc"),
    ("APf", "segm", "APf"),
    ("APbox", "bbox", "AP"),
    ("APbox_r", "bbox", "APr"),
    ("APbox_c", "bbox", "APc"),
    ("APbox_f", "bbox", "APf"),
]


# Fixed AP (TEST.LVIS_EVAL.FIXED_AP): shown when the results have it.
FIXED_COLUMNS = [
    ("AP_fixed", "segm", "AP_fixed"),
    ("APr_fixed", "segm", "APr_fixed"),
    ("APbox_fixed", "bbox", "AP_fixed"),
]


def _columns(rows):
    has_fixed = any(task in r and metric in r[task] for _, r in rows for _, task, metric in FIXED_COLUMNS)
    return COLUMNS + FIXED_COLUMNS if has_fixed else COLUMNS


def _cell(results, task, metric):
    value = results.get(task, {}).get(metric)
    if value is None or (isinstance(value, float) and math.isnan(value)) or value < 0:
        return "-"
    return f"{value:.1f}"


def format_table(dataset_name, rows):
    """A Markdown table. `rows`: list of (row label, {task: {metric: value}}) in display order.
    Fixed AP columns are added when the results hold them."""
    columns = _columns(rows)
    label_width = max([len("model")] + [len(label) for label, _ in rows])
    widths = [max(len(t), 5) for t, _, _ in columns]
    header = "| " + "model".ljust(label_width) + " | " + " | ".join(t.rjust(w) for (t, _, _), w in zip(columns, widths))
    rule = "|" + "-" * (label_width + 2) + "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    lines = [f"LVIS-style results on {dataset_name} (AP* = mask AP, APbox* = box AP):", header + " |", rule]
    for label, results in rows:
        cells = [_cell(results, task, metric).rjust(w) for (title, task, metric), w in zip(columns, widths)]
        lines.append("| " + label.ljust(label_width) + " | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def strict_json(value):
    """`value` (nested dicts, lists, numbers) with every non-finite float (NaN, +-inf) replaced by
    None, so that ``json.dump(..., allow_nan=False)`` writes it: strict JSON readers reject NaN."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):  # float, numpy floats
        return float(value) if math.isfinite(value) else None
    return value


def update_results_json(output_dir, dataset_name, key, record):
    """Set ``data[dataset_name][key] = record`` in ``output_dir/lvis_results.json`` (atomic rewrite).

    Records of other datasets / variants (e.g. an earlier --eval-only with another alpha) are kept.
    Undefined values are written as null (:func:`strict_json`). Returns the file's path.
    """
    os.makedirs(output_dir, exist_ok=True)
    path = os.path.join(output_dir, RESULTS_FILE)
    data = {}
    if os.path.isfile(path):
        with open(path) as f:
            data = json.load(f)
    data.setdefault(dataset_name, {})[key] = record
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(strict_json(data), f, indent=2, sort_keys=True, allow_nan=False)
    os.replace(tmp, path)
    return path
