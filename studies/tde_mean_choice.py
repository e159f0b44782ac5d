#!/usr/bin/env python
"""Does the choice of the head direction x̄ matter? (issue 29)

x̄ never enters the training loss or its gradients: the training logits are the plain cosine
logits y (no x̄), and x̄ is updated under ``no_grad`` after the forward. So two trainings with the
same seed that differ only in μ (``MODEL.TDE.MOMENTUM``) have the same weights; only the buffer x̄
differs. This study therefore trains each seed ONCE (the ``fine`` set, the ``make demo`` recipe
700 × 8, the weights of ``studies/tde_study.py --schedule full``), records per iteration the global
batch's foreground feature sum and count (and the sum / count over all sampled regions, for the
official v1.0 code's background-in-x̄ variant), and computes x̄ afterwards for any μ exactly:

    x̄_t = μ x̄_{t−1} + (1 − μ) m_t     (m_t: the batch's foreground mean; no foreground: unchanged)

Variants (``mean_rule`` in docs/results/tde_mean_choice.json), each evaluated on val as TDE at
α = 1.5 (background exemption on), with NorCal on the plain logits (no x̄) as the reference:

- ``ema_0.9``: μ = 0.9, tde_det's default (the model's own buffer; the recomputation is checked
  against it);
- ``ema_0.9998``: the official LVIS v1.0 code's μ = 1 − 0.1 · 0.002, as it is;
- ``ema_0.964``: μ scaled to the same 4 % share of the schedule (window 1/(1 − μ) = 28 of 700);
- ``ema_0.9998_bg``: the official v1.0 code as it is, background regions included;
- ``exact_N``: the exact mean over the first N training images (tools/estimate_mean_feature.py's
  definition), N = 100, 300 and all.

    nice -n 10 .venv/bin/python studies/tde_mean_choice.py              # train / evaluate / resume
    .venv/bin/python studies/tde_mean_choice.py --table                 # mean ± std, paired differences
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "studies"))

import tde_study  # noqa: E402  (the study's splits, configs, schedule and sweep)

DATASET, MODEL = "fine", "deconfound"
MAX_ITER, IMS_PER_BATCH = tde_study.SCHEDULES["full"]
RECORD_NAME = "mean_feature_record.pth"


# ----------------------------------------------------------------------------- training + recording
class BatchMeanRecorder:
    """Wraps every TDE box predictor's ``losses``: before the x̄ update it records, per call (one per
    iteration and stage), the float64 sum and count of the foreground features (the regions the
    update averages) and of all sampled regions. Single process only (then the batch is global)."""

    def __init__(self, predictors):
        self.predictors = list(predictors)
        self.fg_sum = [[] for _ in self.predictors]
        self.fg_count = [[] for _ in self.predictors]
        self.all_sum = [[] for _ in self.predictors]
        self.all_count = [[] for _ in self.predictors]
        for s, p in enumerate(self.predictors):
            p.losses = self._wrap(s, p, p.losses)

    def _wrap(self, stage, predictor, losses):
        import torch
        from detectron2.layers import cat

        def recorded(predictions, proposals):
            feats = predictor._train_features
            if predictor.training and torch.is_grad_enabled() and feats is not None:
                gt = cat([p.gt_classes for p in proposals], dim=0) if len(proposals) else feats.new_zeros(0).long()
                fg = (gt >= 0) & (gt < predictor.num_classes)
                x = feats.double()
                self.fg_sum[stage].append(x[fg].sum(0))
                self.fg_count[stage].append(int(fg.sum()))
                self.all_sum[stage].append(x.sum(0))
                self.all_count[stage].append(int(x.shape[0]))
            return losses(predictions, proposals)

        return recorded

    def state(self):
        import torch

        return {
            "fg_sum": torch.stack([torch.stack(s) for s in self.fg_sum], 1),  # [T, S, D] float64
            "fg_count": torch.tensor(self.fg_count).t().contiguous(),  # [T, S]
            "all_sum": torch.stack([torch.stack(s) for s in self.all_sum], 1),
            "all_count": torch.tensor(self.all_count).t().contiguous(),
            "mean_feature": torch.stack([p.cls_score.mean_feature.detach().clone() for p in self.predictors]),  # [S, D]
            "momentum": [p.cls_score.momentum for p in self.predictors],
        }


def ema_from_record(fg_sum, fg_count, momentum):
    """x̄ after every recorded step for one stage: fg_sum [T, D], fg_count [T] -> x̄_T [D] (float64),
    x̄_0 = 0, x̄_t = μ x̄_{t−1} + (1 − μ) fg_sum_t / fg_count_t (unchanged when fg_count_t = 0)."""
    import torch

    mean = torch.zeros(fg_sum.shape[-1], dtype=torch.float64)
    for s, n in zip(fg_sum, fg_count.tolist()):
        if n > 0:
            mean = momentum * mean + (1.0 - momentum) * (s.double() / n)
    return mean


def unit_dir(workdir, seed):
    return os.path.join(workdir, f"{MAX_ITER}x{IMS_PER_BATCH}", DATASET, MODEL, f"seed{seed}")


def train_unit(seed, workdir):
    """Train the De-confound model of `seed` (tde_study's config and schedule) while recording the batch
    means; writes model_final.pth and RECORD_NAME into the unit's directory."""
    import torch
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    from tde_det.engine import Trainer
    from tde_det.modeling.roi_heads import box_stages

    torch.set_num_threads(1)
    splits, _ = tde_study.register_splits(DATASET, workdir)
    cfg = tde_study._cfg(DATASET, MODEL, seed, workdir, splits, MAX_ITER, IMS_PER_BATCH)
    os.makedirs(cfg.OUTPUT_DIR, exist_ok=True)
    setup_logger(cfg.OUTPUT_DIR)
    setup_logger(cfg.OUTPUT_DIR, name="tde_det")
    cfg = cfg.clone()
    cfg.DATASETS.TEST = ()
    cfg.freeze()
    seed_all_rng(seed)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    recorder = BatchMeanRecorder(box_stages(trainer.model, "The recording")[3])
    trainer.train()
    state = recorder.state()
    if state["fg_sum"].shape[0] != MAX_ITER:
        raise RuntimeError(f"recorded {state['fg_sum'].shape[0]} steps, expected {MAX_ITER}")
    path = os.path.join(cfg.OUTPUT_DIR, RECORD_NAME)
    torch.save(state, path + ".tmp")
    os.replace(path + ".tmp", path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default=str(tde_study.DEFAULT_WORKDIR))
    parser.add_argument("--train-unit", type=int, metavar="SEED", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_unit is not None:
        print(train_unit(args.train_unit, args.workdir), flush=True)
        return 0
    return drive(args)


def train_all(seeds, workdir):
    """Train (with the recording) every seed whose record is missing, one subprocess each, in turn."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for seed in seeds:
        out = unit_dir(workdir, seed)
        if os.path.isfile(os.path.join(out, RECORD_NAME)) and os.path.isfile(os.path.join(out, "model_final.pth")):
            continue
        os.makedirs(out, exist_ok=True)
        log = os.path.join(out, "train_recording.log")
        print(f"[tde_mean_choice] {time.strftime('%H:%M:%S')} train seed {seed} (log {log})", flush=True)
        with open(log, "a") as f:
            rc = subprocess.call([sys.executable, __file__, "--train-unit", str(seed), "--workdir", str(workdir)],
                                 stdout=f, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        if rc != 0:
            print(f"[tde_mean_choice] training seed {seed} FAILED (exit {rc}); see {log}", flush=True)
            return False
        print(f"[tde_mean_choice] {time.strftime('%H:%M:%S')} trained seed {seed}", flush=True)
    return True


def drive(args):
    if not train_all(args.seeds, args.workdir):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
