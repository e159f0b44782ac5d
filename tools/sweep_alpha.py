#!/usr/bin/env python
"""Evaluate a trained De-confound-TDE model for many α (and NorCal γ) in ONE inference pass (issues 4, 22).

    python tools/sweep_alpha.py --config-file configs/demo/tde_mask_rcnn_demo.yaml \\
        --alphas 0 0.5 1 1.5 2 2.5 3 MODEL.WEIGHTS output/demo_tde_mask_rcnn/model_final.pth
    # TDE against NorCal post-hoc calibration on the same weights (class counts: DATASETS.TRAIN's images)
    python tools/sweep_alpha.py --config-file configs/demo/tde_mask_rcnn_demo.yaml \\
        --alphas 0 1 1.5 2 --gammas 0.25 0.5 1 MODEL.WEIGHTS output/demo_tde_mask_rcnn/model_final.pth
    # a Detectron2 softmax model: NorCal rows only
    python tools/sweep_alpha.py --config-file configs/demo/baseline_mask_rcnn_demo.yaml \\
        --gammas 0.25 0.5 1 MODEL.WEIGHTS output/demo_baseline_mask_rcnn/model_final.pth
    # LVIS v1 val on 8 GPUs
    python tools/sweep_alpha.py --config-file configs/lvis_tde_mask_rcnn.yaml --num-gpus 8 \\
        --alphas 0 0.5 1 1.5 2 2.5 3 --output output/sweep MODEL.WEIGHTS model.pth

Backbone, RPN and box head run once per image; for every α (and ``plain``) the box
post-processing and the mask head run on that α's boxes, and one LVIS evaluator per α scores them
(:mod:`tde_det.analysis.alpha_sweep`). NorCal γ rows (``--gammas``) rescore the plain logits
with the class training counts of ``MODEL.NORCAL.CLASS_COUNTS`` or ``DATASETS.TRAIN``. For each
dataset in ``DATASETS.TEST`` it prints the table setting × (AP, AP50, APr, APc, APf, box AP), the
best setting per metric and the authors' heuristic α (α · mean cos(x, d̂) = 1; TDE models), and
writes into ``--output`` (default ``OUTPUT_DIR/alpha_sweep``):

    alpha_sweep_<dataset>.json               rows, best α, mean cos, heuristic α, timings, raw results
    alpha_curves_<dataset>.png               (a) AP / APr / APc / APf against α
    prediction_distribution_<dataset>.png    (b) top-1 predictions per class: plain, TDE, ground truth

Detectron2's command-line conventions (``--num-gpus``, ``--num-machines``, ``--dist-url``, trailing
``KEY VALUE`` overrides) and ``launch``; results are gathered on the main process.
"""

import warnings

# Third-party warnings a user can do nothing about: fvcore's @torch.jit.script at import (torch >= 2.10),
# the meshgrid call of Detectron2's anchor generator.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")
warnings.filterwarnings("ignore", "torch.meshgrid: in an upcoming release")

import argparse
import json
import logging
import os
import sys
from collections import OrderedDict

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import MetadataCatalog
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

_TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(_TOOLS, ".."))
sys.path.insert(0, _TOOLS)
from tde_det import get_tde_cfg  # noqa: E402  (also registers the TDE heads, demo backbone and datasets)
from tde_det.data.class_counts import norcal_class_counts  # noqa: E402
from tde_det.engine import Trainer, check_config, cli, is_tde_model  # noqa: E402
from tde_det.engine.results import strict_json  # noqa: E402
from tde_det.engine.weights import needs_trained_mean  # noqa: E402
from tde_det.errors import ConfigError  # noqa: E402
from tde_det.analysis import mean_feature  # noqa: E402
from tde_det.evaluation import build_lvis_evaluator  # noqa: E402
from tde_det.analysis.alpha_sweep import (  # noqa: E402
    check_alphas,
    check_gammas,
    format_sweep_table,
    inference_on_dataset_alphas,
    setting_name,
)
from tde_det.analysis.figures import (  # noqa: E402
    lvis_category_stats,
    plot_alpha_curves,
    plot_prediction_distribution,
)
from train_net import check_launch  # noqa: E402

logger = logging.getLogger("tde_det.sweep_alpha")

DEFAULT_ALPHAS = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0]


def argument_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' lines
    cli.drop_arguments(parser, "resume", "eval_only")  # always evaluates, never trains
    parser.add_argument("--alphas", nargs="+", default=None, metavar="ALPHA",
                        help=f"alpha values to evaluate (plain is always added); default: {DEFAULT_ALPHAS} for a TDE "
                             "model, none (plain only) for a softmax one. Trailing KEY VALUE overrides may follow them directly.")
    parser.add_argument("--gammas", nargs="+", default=[], metavar="GAMMA",
                        help="NorCal gamma values to evaluate on the same pass (softmax([z_fg - gamma log N, z_bg]); "
                             "N: MODEL.NORCAL.CLASS_COUNTS or DATASETS.TRAIN's image counts per class)")
    parser.add_argument("--output", default="", metavar="DIR",
                        help="where the JSON and the pictures go (default: OUTPUT_DIR/alpha_sweep)")
    parser.add_argument("--figure-alpha", type=float, default=None, metavar="ALPHA",
                        help="alpha of the TDE series in the prediction-distribution figure "
                             "(default: the swept alpha > 0 with the best AP)")
    parser.add_argument("--save-detections", action="store_true",
                        help="also let each alpha's evaluator write its detections (large on LVIS)")
    return cli.add_arguments(parser)


def parse_args(argv=None):
    """Parse the command line. ``--alphas`` and ``--gammas`` take the numbers after them; the first word
    that is not a number starts the trailing ``KEY VALUE`` overrides (``--alphas 0 1 2 MODEL.WEIGHTS m.pth``)."""
    args = argument_parser().parse_args(argv)
    rest = []
    for name in ("alphas", "gammas"):
        values = getattr(args, name)
        if values is None:
            continue
        values = [str(a) for a in values]
        n = 0
        while n < len(values) and _is_number(values[n]):
            n += 1
        if n == 0 and values:
            cli.usage_error(f"--{name} needs numbers, got {values[0]!r} (e.g. --{name} 0 0.5 1 1.5 2).")
        setattr(args, name, [float(v) for v in values[:n]])
        rest += values[n:]
    args.opts = rest + list(args.opts)
    return args


def _is_number(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def setup(args):
    cfg = get_tde_cfg(args.config_file, args.opts)
    cfg.OUTPUT_DIR = args.output or os.path.join(cfg.OUTPUT_DIR, "alpha_sweep")
    cfg.freeze()
    cli.default_setup(cfg, args)  # Detectron2's, its config dump and environment in OUTPUT_DIR/log.txt only
    setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="tde_det")
    check_config(cfg, list(cfg.DATASETS.TEST))
    require_weights(cfg)
    return cfg


def require_weights(cfg):
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError(
            "MODEL.WEIGHTS is empty: the sweep evaluates a TRAINED model. Add the "
            "override MODEL.WEIGHTS path/to/model_final.pth (e.g. output/demo_tde_mask_rcnn/model_final.pth)."
        )


def preflight(args):
    """Before ``launch``, so before any model is built: config, weights and the data check of
    DATASETS.TEST (``--skip-data-check`` skips the data part)."""
    if not args.config_file:
        raise ConfigError("--config-file is required: the config the weights were trained with, e.g. "
                          "--config-file configs/demo/tde_mask_rcnn_demo.yaml.")
    cfg = get_tde_cfg(args.config_file, args.opts)
    require_weights(cfg)
    cli.preflight(cfg, cfg.DATASETS.TEST, cfg.DATASETS.TEST, skip_data_check=args.skip_data_check, evaluate=True,
                  need_mean=needs_trained_mean(cfg, sweep_alphas(cfg, args)), decode=args.decode_images,
                  world_size=args.num_gpus * args.num_machines)


def build_evaluator(cfg, dataset_name, output_dir):
    """The project's LVIS evaluator (``TEST.LVIS_EVAL``); `output_dir` None writes no detection files."""
    if MetadataCatalog.get(dataset_name).get("evaluator_type") != "lvis":
        raise ConfigError(f"The alpha sweep evaluates LVIS-format datasets; {dataset_name!r} is not one.")
    return build_lvis_evaluator(cfg, dataset_name, output_dir)


def figure_alpha(rows, requested):
    """α of the TDE series in figure (b): `requested`, else the best-AP row with α > 0."""
    if requested is not None:
        return requested
    swept = [r for r in rows if r["alpha"] and r.get("AP") is not None]
    return max(swept, key=lambda r: r["AP"])["alpha"] if swept else None


def sweep_alphas(cfg, args):
    """--alphas, else the default: DEFAULT_ALPHAS for a TDE model, none for a softmax one (plain only)."""
    if args.alphas is not None:
        return args.alphas
    return DEFAULT_ALPHAS if is_tde_model(cfg) else []


def report(cfg, args, dataset_name, result):
    """Print the table and write the JSON and the two pictures (main process only)."""
    out = cfg.OUTPUT_DIR
    rows = result.rows()
    table = format_sweep_table(rows, result.mean_cos, result.heuristic_alpha)
    logger.info("Alpha sweep on %s (AP* = mask AP, APbox = box AP):\n%s\n", dataset_name, table)
    record = result.to_json()
    record.update(dataset=dataset_name, weights=cfg.MODEL.WEIGHTS, config_file=args.config_file)
    paths = {"json": os.path.join(out, f"alpha_sweep_{dataset_name}.json")}
    with open(paths["json"], "w") as f:
        json.dump(strict_json(record), f, indent=2, default=float, allow_nan=False)

    if any(r["alpha"] for r in rows):
        paths["curves"] = plot_alpha_curves(
            rows, os.path.join(out, f"alpha_curves_{dataset_name}.png"), result.heuristic_alpha,
            title=f"{dataset_name}: AP against alpha (dotted: plain)",
        )
    alpha = figure_alpha(rows, args.figure_alpha)
    norcal = [r for r in rows if r["gamma"] and r.get("AP") is not None]
    json_file = MetadataCatalog.get(dataset_name).get("json_file")
    if (alpha is not None or norcal) and json_file:
        cats = lvis_category_stats(json_file)
        series = OrderedDict([("plain", result.stats.top1_counts(None))])
        if alpha is not None:
            series[f"TDE ({setting_name(alpha)})"] = result.stats.top1_counts(alpha)
        if norcal:
            best = max(norcal, key=lambda r: r["AP"])["setting"]
            series[f"NorCal ({best.split('_')[-1]})"] = result.stats.top1_counts(best)
        series["ground truth"] = cats["gt_instances"]
        paths["distribution"] = plot_prediction_distribution(
            cats["image_count"], series, os.path.join(out, f"prediction_distribution_{dataset_name}.png"),
            frequency=cats["frequency"], class_names=cats["names"],
            title=f"{dataset_name}: top-1 class of {result.stats.num_fg_regions} foreground regions",
        )
    for name, path in paths.items():
        logger.info("Wrote %s: %s", name, path)
    return record


def main(args):
    cfg = setup(args)
    alphas = sweep_alphas(cfg, args)
    if args.figure_alpha is not None and args.figure_alpha not in [float(a) for a in alphas]:
        raise ConfigError(f"--figure-alpha {args.figure_alpha:g} is not one of --alphas {alphas}.")
    class_counts = norcal_class_counts(cfg) if args.gammas else None
    model = Trainer.build_model(cfg)
    checkpoint = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).load(cfg.MODEL.WEIGHTS)
    mean_feature.log_record(checkpoint)  # how x̄ was made, when tools/estimate_mean_feature.py wrote the file
    records = OrderedDict()
    for dataset_name in cfg.DATASETS.TEST:
        loader = Trainer.build_test_loader(cfg, dataset_name)

        def make_evaluator(setting, dataset_name=dataset_name):
            folder = os.path.join(cfg.OUTPUT_DIR, dataset_name, setting) if args.save_detections else None
            return build_evaluator(cfg, dataset_name, folder)

        with cli.info_to_file_only("detectron2.evaluation"):  # each setting's tables: log.txt; one table printed
            result = inference_on_dataset_alphas(model, loader, alphas, make_evaluator, args.gammas, class_counts)
        if comm.is_main_process():
            records[dataset_name] = report(cfg, args, dataset_name, result)
    return records


if __name__ == "__main__":
    args = parse_args()
    with cli.exit_on_user_error(args.debug):
        check_launch(args)
        check_alphas(args.alphas if args.alphas is not None else DEFAULT_ALPHAS)  # a ConfigError: one "error:" line
        check_gammas(args.gammas)
        preflight(args)
        logger.info("Command Line Args: %s", args)
        launch(cli.in_worker(main, args.debug), args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
