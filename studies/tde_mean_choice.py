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


# (rule, μ, background included) of the moving averages recomputed from the record; and the N of
# the exact means (None: every training image).
EMA_RULES = (("ema_0.9", 0.9, False), ("ema_0.964", 1.0 - 1.0 / 28.0, False),
             ("ema_0.9998", 1.0 - (1.0 - 0.9) * 0.002, False), ("ema_0.9998_bg", 1.0 - (1.0 - 0.9) * 0.002, True))
EXACT_IMAGES = (100, 300, None)
PAPER_ALPHA = tde_study.PAPER_ALPHA
METRICS = ("AP", "APr", "APc", "APf", "APbox", "AP_fixed")
DEFAULT_JSON = REPO / "docs/results/tde_mean_choice.json"


def exact_rule(n):
    return f"exact_{'all' if n is None else n}"


def rule_order():
    return [r for r, _, _ in EMA_RULES] + [exact_rule(n) for n in EXACT_IMAGES]


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


def _head_cos(a, b, num_heads):
    import torch

    a, b = a.double().view(num_heads, -1), b.double().view(num_heads, -1)
    return [round(float(v), 6) for v in torch.cosine_similarity(a, b, dim=1)]


def evaluate_unit(seed, workdir):
    """Every x̄ variant of `seed`'s weights on val (TDE at α = 1.5), plain and plain + NorCal (γ chosen
    on the held-out images as tde_study does); returns the unit's rows and its checks."""
    import torch
    from detectron2.checkpoint import DetectionCheckpointer

    from tde_det.analysis.alpha_sweep import setting_name
    from tde_det.analysis.mean_feature import estimate_mean_features, tde_stages
    from tde_det.engine import Trainer

    torch.set_num_threads(1)
    splits, fit_json = tde_study.register_splits(DATASET, workdir)
    cfg = tde_study._cfg(DATASET, MODEL, seed, workdir, splits, MAX_ITER, IMS_PER_BATCH)
    final = os.path.join(cfg.OUTPUT_DIR, "model_final.pth")
    cfg.MODEL.WEIGHTS = final
    cfg.freeze()
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(final)
    predictors = tde_stages(model)[3]
    own = torch.stack([p.cls_score.mean_feature.detach().clone() for p in predictors])  # [S, D]
    record = torch.load(os.path.join(cfg.OUTPUT_DIR, RECORD_NAME), weights_only=True)
    heads = cfg.MODEL.TDE.NUM_HEADS
    means, how = {}, {}
    for rule, mu, background in EMA_RULES:
        total, count = (record["all_sum"], record["all_count"]) if background else (record["fg_sum"], record["fg_count"])
        means[rule] = torch.stack([ema_from_record(total[:, s], count[:, s], mu) for s in range(own.shape[0])]).float()
        how[rule] = {"how": "training moving average, recomputed from the recorded batch means", "momentum": mu,
                     "regions": "all sampled regions (foreground + background)" if background
                     else "sampled foreground regions", "iterations": int(total.shape[0])}
    # the check: μ = 0.9 recomputed = the model's own buffer
    diff = (means["ema_0.9"] - own).abs().max().item()
    checks = {"ema_0.9_max_abs_diff_to_buffer": diff, "buffer_norm": own.norm(dim=1).tolist(),
              "ema_0.9_relative_diff": diff / own.norm(dim=1).min().item()}
    print(f"[tde_mean_choice] seed {seed}: μ=0.9 recomputed vs the model's buffer: max |diff| {diff:.3g} "
          f"(|x̄| {own.norm(dim=1).tolist()})", flush=True)
    for n in EXACT_IMAGES:
        m, counts, used = estimate_mean_features(cfg, model, n)
        means[exact_rule(n)] = m
        how[exact_rule(n)] = {"how": "exact mean (tools/estimate_mean_feature.py's definition)", "images": used,
                              "dataset": cfg.DATASETS.TRAIN[0], "foreground_regions": counts}
    for rule in means:
        how[rule]["cos_to_ema_0.9_per_head"] = _head_cos(means[rule][0], means["ema_0.9"][0], heads)
        how[rule]["cos_to_exact_all_per_head"] = _head_cos(means[rule][0], means["exact_all"][0], heads)
    counts_n = tde_study.fit_class_counts(fit_json)
    details = {}
    gamma = tde_study._heldout_gamma(
        tde_study._sweep(cfg, model, splits["heldout"], [0.0], gammas=list(tde_study.HELDOUT_GAMMAS), counts=counts_n),
        details)
    base = dict(dataset=DATASET, seed=seed, schedule=tde_study.schedule_of(MAX_ITER, IMS_PER_BATCH))
    rows = []
    for rule in rule_order():
        for p, m in zip(predictors, means[rule]):
            p.cls_score.mean_feature.copy_(m)
        gammas = [gamma] if (rule == "ema_0.9" and gamma > 0) else []
        t0 = time.time()
        val = tde_study._sweep(cfg, model, cfg.DATASETS.TEST[0], [PAPER_ALPHA], gammas=gammas, counts=counts_n)
        print(f"[tde_mean_choice] seed {seed} {rule}: AP {tde_study._metrics(val.results[setting_name(PAPER_ALPHA)])['AP']} "
              f"({time.time() - t0:.0f} s)", flush=True)
        rows.append(dict(base, model="tde", alpha=PAPER_ALPHA, gamma=None, mean_rule=rule, mean_feature=how[rule],
                         metrics=tde_study._metrics(val.results[setting_name(PAPER_ALPHA)])))
        if rule == "ema_0.9":
            plain = tde_study._metrics(val.results["plain"])
            rows.append(dict(base, model="plain", alpha=None, gamma=None, mean_rule=None,
                             mean_feature="not used (plain cosine softmax)", metrics=plain))
            norcal = tde_study._norcal_run(val, DATASET, "plain_norcal", seed, gamma)["metrics"]
            rows.append(dict(base, model="plain_norcal", alpha=None, gamma=float(gamma), mean_rule=None,
                             mean_feature="not used (NorCal on the plain logits; γ chosen on the held-out images)",
                             metrics=norcal))
    checks["heldout_gamma"] = details.get("heldout")
    return rows, checks


def load_results(path):
    if not os.path.isfile(path):
        return {"runs": [], "checks": {}}
    with open(path) as f:
        return json.load(f)


def save_results(path, data):
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1)
    os.replace(tmp, path)


TABLE_BEGIN, TABLE_END = "<!-- tde_mean_choice tables: begin -->", "<!-- tde_mean_choice tables: end -->"


def update_doc(path, tables):
    """Replace the text between the two markers in `path` by `tables`."""
    with open(path) as f:
        text = f.read()
    start, end = text.find(TABLE_BEGIN), text.find(TABLE_END)
    if start < 0 or end < start:
        sys.exit(f"error: {path} has no '{TABLE_BEGIN}' ... '{TABLE_END}' block; add the two lines where the tables go.")
    with open(path, "w") as f:
        f.write(text[: start + len(TABLE_BEGIN)] + "\n\n" + tables + "\n\n" + text[end:])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--workdir", default=str(tde_study.DEFAULT_WORKDIR))
    parser.add_argument("--output", default=str(DEFAULT_JSON), help="the results JSON (default: %(default)s)")
    parser.add_argument("--train-only", action="store_true", help="train (and record) only")
    parser.add_argument("--table", action="store_true", help="print the tables of the results JSON and exit")
    parser.add_argument("--update-doc", metavar="MD", help="with --table: also write them into MD between the "
                        "tde_mean_choice markers (docs/RESULTS.md)")
    parser.add_argument("--train-unit", type=int, metavar="SEED", help=argparse.SUPPRESS)
    parser.add_argument("--eval-unit", type=int, metavar="SEED", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.train_unit is not None:
        print(train_unit(args.train_unit, args.workdir), flush=True)
        return 0
    if args.eval_unit is not None:
        rows, checks = evaluate_unit(args.eval_unit, args.workdir)
        data = load_results(args.output)
        data["runs"] = [r for r in data["runs"] if r["seed"] != args.eval_unit] + rows
        data.setdefault("checks", {})[str(args.eval_unit)] = checks
        save_results(args.output, data)
        return 0
    if args.table:
        tables = format_tables(load_results(args.output))
        if args.update_doc:
            update_doc(args.update_doc, tables)
        print(tables)
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
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
    for seed in args.seeds:
        if not train_all([seed], args.workdir):
            return 1
        if args.train_only or any(r["seed"] == seed for r in load_results(args.output)["runs"]):
            continue
        log = os.path.join(unit_dir(args.workdir, seed), "mean_choice_eval.log")
        print(f"[tde_mean_choice] {time.strftime('%H:%M:%S')} evaluate seed {seed} (log {log})", flush=True)
        with open(log, "a") as f:
            rc = subprocess.call([sys.executable, __file__, "--eval-unit", str(seed), "--workdir", str(args.workdir),
                                  "--output", str(args.output)], stdout=f, stderr=subprocess.STDOUT, env=env,
                                 cwd=str(REPO))
        if rc != 0:
            print(f"[tde_mean_choice] evaluation of seed {seed} FAILED (exit {rc}); see {log}", flush=True)
            return 1
        print(f"[tde_mean_choice] {time.strftime('%H:%M:%S')} evaluated seed {seed}", flush=True)
    print(f"[tde_mean_choice] seeds {args.seeds}: trained" + ("" if args.train_only else f" and evaluated, in {args.output}")
          + "; tables: studies/tde_mean_choice.py --table", flush=True)
    return 0


def _rows(data):
    """{(model, mean_rule): {seed: metrics}}."""
    out = {}
    for r in data["runs"]:
        out.setdefault((r["model"], r["mean_rule"]), {})[r["seed"]] = r["metrics"]
    return out


def _mean_std(values):
    import statistics

    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def format_tables(data):
    """Markdown: mean ± std over seeds per variant; paired differences to ``ema_0.9`` (per seed, then
    mean ± std); the direction of each x̄ against the μ = 0.9 one and the exact mean over all images."""
    rows = _rows(data)
    order = [("plain", None), ("plain_norcal", None)] + [("tde", r) for r in rule_order()]
    label = {("plain", None): "De-confound (plain, no x̄)", ("plain_norcal", None): "plain + NorCal (no x̄)"}
    lines = ["| model | x̄ | seeds | " + " | ".join(METRICS) + " |", "|---|---|---:|" + "---:|" * len(METRICS)]
    for key in order:
        by_seed = rows.get(key, {})
        if not by_seed:
            continue
        name = label.get(key, f"TDE α = {PAPER_ALPHA}")
        cells = [_mean_std([m[k] for m in by_seed.values() if m[k] is not None]) for k in METRICS]
        lines.append(f"| {name} | {key[1] or '-'} | {len(by_seed)} | " + " | ".join(cells) + " |")
    seeds_all = sorted({s for by_seed in rows.values() for s in by_seed})
    lines += ["", "AP per seed (" + ", ".join(str(s) for s in seeds_all) + "):", ""]
    for key in order:
        by_seed = rows.get(key, {})
        if by_seed:
            lines.append(f"- {label.get(key, 'TDE ' + str(key[1]))}: " + " / ".join(
                f"{by_seed[s]['AP']:.1f}" if s in by_seed else "-" for s in seeds_all))
    ref = rows.get(("tde", "ema_0.9"), {})
    lines += ["", "Paired differences to TDE with x̄ = ema_0.9 (same weights, same seed), mean ± std over seeds:", "",
              "| x̄ | seeds | " + " | ".join(f"Δ{k}" for k in METRICS) + " |", "|---|---:|" + "---:|" * len(METRICS)]
    for rule in rule_order()[1:] + ["plain_norcal"]:
        key = ("plain_norcal", None) if rule == "plain_norcal" else ("tde", rule)
        by_seed = rows.get(key, {})
        seeds = sorted(set(by_seed) & set(ref))
        if not seeds:
            continue
        cells = [_mean_std([by_seed[s][k] - ref[s][k] for s in seeds if by_seed[s][k] is not None]) for k in METRICS]
        lines.append(f"| {'NorCal (plain)' if rule == 'plain_norcal' else rule} | {len(seeds)} | " + " | ".join(cells) + " |")
    lines += ["", "Direction of each x̄ (cos per head, mean over seeds; box stage 0):", "",
              "| x̄ | cos to ema_0.9 | cos to exact_all |", "|---|---|---|"]
    for rule in rule_order():
        hows = [r["mean_feature"] for r in data["runs"] if r["model"] == "tde" and r["mean_rule"] == rule]
        if not hows:
            continue
        avg = lambda k: ", ".join(f"{sum(h[k][i] for h in hows) / len(hows):.4f}" for i in range(len(hows[0][k])))  # noqa: E731
        lines.append(f"| {rule} | {avg('cos_to_ema_0.9_per_head')} | {avg('cos_to_exact_all_per_head')} |")
    checks = data.get("checks", {})
    if checks:
        worst = max(c["ema_0.9_max_abs_diff_to_buffer"] for c in checks.values())
        rel = max(c["ema_0.9_relative_diff"] for c in checks.values())
        lines += ["", f"Check: x̄ recomputed at μ = 0.9 from the recorded batch means equals the model's own buffer to "
                  f"max |Δ| = {worst:.2g} (relative to |x̄|: {rel:.2g}) over {len(checks)} seed(s)."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
