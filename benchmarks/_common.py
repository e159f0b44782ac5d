"""Shared pieces of the benchmarks: paired timing, peak memory, config building, a table printer."""

import resource
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sync(device):
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def time_once(fn, device):
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def paired_times(baseline_fn, tde_fn, device, warmup, reps):
    """Alternate baseline and TDE runs (order flipped every pair) so drifting machine load hits both alike.

    Returns (baseline_times, tde_times, per-pair ratios tde/baseline)."""
    for _ in range(warmup):
        baseline_fn()
        tde_fn()
    base, tde = [], []
    for i in range(reps):
        if i % 2 == 0:
            base.append(time_once(baseline_fn, device))
            tde.append(time_once(tde_fn, device))
        else:
            tde.append(time_once(tde_fn, device))
            base.append(time_once(baseline_fn, device))
    return base, tde, [t / b for b, t in zip(base, tde)]


def summarize(name, base, tde, ratios, target):
    med_ratio = statistics.median(ratios)
    return {
        "case": name,
        "baseline_ms": 1000 * statistics.median(base),
        "tde_ms": 1000 * statistics.median(tde),
        "ratio": med_ratio,
        "target": target,
        "ok": med_ratio <= target,
    }


def peak_rss_mib():
    """Peak resident set size of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def print_table(rows, columns):
    widths = [max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(_fmt(r.get(c)).ljust(w) for c, w in zip(columns, widths)))


def _fmt(v):
    if isinstance(v, float):
        return f"{v:.3f}" if v < 10 else f"{v:.1f}"
    return "" if v is None else str(v)
