#!/usr/bin/env python
"""Per-iteration cost of preemption safety: the stop check and the per-iteration seeding.

    python benchmarks/bench_stop_check.py --num-gpus 2      # 2 CPU processes over gloo (upstream detectron2)
    python benchmarks/bench_stop_check.py --num-gpus 1      # 1 process (detectron2 v0.6 or upstream)

One training of the tiny demo config (``--iters`` iterations, no checkpoint or evaluation in
between) with tde_det's ``Trainer``. The per-iteration work of :mod:`tde_det.engine.preemption` --
``StopOnSignal.after_step`` (with several processes one all-reduce of the stop flag over gloo) and
``ResumeState.before_step`` (seeding Python's, numpy's and torch's random states) -- runs on every
other iteration and is skipped on the others, in the order on/off, off/on, ... (the same on every
rank). Reports the median iteration time with and without it, the median (and quartiles) of the
per-pair ratios with / without, and the time of the work itself on the "with" iterations: the
seeding, and the stop check (its all-reduce also waits for the slowest rank, which is no cost of the
check: the least time over the ranks is reported), median per iteration, also as % of an iteration.
"""

import json
import statistics
import time
import weakref

import _common  # noqa: F401  (puts the repo on sys.path)
from _common import print_table
from detectron2.engine import HookBase, default_argument_parser, launch
from detectron2.utils import comm

from tde_det import get_tde_cfg
from tde_det.data import prepare_dataset
from tde_det.engine import Trainer, cli, preemption

TINY = "configs/demo/tde_mask_rcnn_tiny.yaml"


def parse_args():
    p = default_argument_parser()
    p.add_argument("--iters", type=int, default=120)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--out", help="write the results here (json)")
    return p.parse_args()


def with_check(iteration, warmup):
    """on, off | off, on | on, off ... after the warm-up (always on during it)."""
    if iteration < warmup:
        return True
    pair, second = divmod(iteration - warmup, 2)
    return (pair % 2 == 0) != bool(second)


class IterationClock(HookBase):
    """The first hook: time from one iteration's start to the next's, tagged with the check's state."""

    def __init__(self):
        self.times, self._start = [], None

    def before_step(self):
        now = time.perf_counter()
        if self._start is not None:
            self.times.append((self.trainer.iter - 1, now - self._start))
        self._start = now


def timed_switch(hook, method, warmup, spent):
    """Run `hook.method` only on the iterations with the check, timing it into `spent[iteration]`."""
    original = getattr(hook, method)

    def run():
        it = hook.trainer.iter
        if with_check(it, warmup):
            start = time.perf_counter()
            original()
            spent[it] = spent.get(it, 0.0) + time.perf_counter() - start

    setattr(hook, method, run)


def worker(args):
    cfg = get_tde_cfg(TINY, ["SOLVER.MAX_ITER", str(args.iters), "SOLVER.CHECKPOINT_PERIOD", str(10 * args.iters),
                             "DATASETS.TEST", "()", "DATALOADER.NUM_WORKERS", "0",
                             "OUTPUT_DIR", "/tmp/tde_det_bench_stop_check"])
    cfg.freeze()
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    check, seeding, clock = {}, {}, IterationClock()
    for h in trainer._hooks:
        if isinstance(h, preemption.StopOnSignal):
            timed_switch(h, "after_step", args.warmup, check)
        if isinstance(h, preemption.ResumeState):
            timed_switch(h, "before_step", args.warmup, seeding)
    trainer._hooks.insert(0, clock)
    clock.trainer = weakref.proxy(trainer)
    trainer.train()
    # the stop check's all-reduce also waits for the slowest rank: its own cost is the least over the ranks
    checks = comm.all_gather(check)
    if not comm.is_main_process():
        return
    times = {it: t for it, t in clock.times if it >= args.warmup}
    on = [t for it, t in times.items() if with_check(it, args.warmup)]
    off = [t for it, t in times.items() if not with_check(it, args.warmup)]
    ratios = [times[a] / times[b] if with_check(a, args.warmup) else times[b] / times[a]
              for a, b in zip(range(args.warmup, args.iters, 2), range(args.warmup + 1, args.iters, 2))
              if a in times and b in times]
    work = [min(c[it] for c in checks) + seeding[it] for it in times if it in check]
    row = {"processes": comm.get_world_size(), "pairs": len(ratios),
           "with_ms": 1000 * statistics.median(on), "without_ms": 1000 * statistics.median(off),
           "ratio": statistics.median(ratios), "ratio_q25": statistics.quantiles(ratios, n=4)[0],
           "ratio_q75": statistics.quantiles(ratios, n=4)[2],
           "seed_us": 1e6 * statistics.median(seeding[it] for it in times if it in seeding),
           "check_us": 1e6 * statistics.median(min(c[it] for c in checks) for it in times if it in check),
           "work_%": 100 * statistics.median(work) / statistics.median(off)}
    print_table([row], list(row))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(row, f, indent=1)


if __name__ == "__main__":
    args = parse_args()
    for name in ("tde_demo_lt_tiny_train",):
        prepare_dataset(name)  # once, before the processes start
    launch(cli.in_worker(worker), args.num_gpus, num_machines=1, machine_rank=0, dist_url="auto", args=(args,))
