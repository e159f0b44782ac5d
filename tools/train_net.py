#!/usr/bin/env python
"""Train and evaluate De-confound-TDE models with Detectron2 (LVIS, or the generated demo set).

Detectron2's usual command line:

    # the demo (generates the data on first use, trains on CPU, prints the results table)
    python tools/train_net.py --config-file configs/demo/tde_mask_rcnn_demo.yaml
    # LVIS v1 on 8 GPUs
    python tools/train_net.py --config-file configs/lvis_tde_mask_rcnn.yaml --num-gpus 8
    # re-evaluate trained weights with another alpha, or without TDE (De-confound only)
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model.pth MODEL.TDE.ALPHA 2.0
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS model.pth MODEL.TDE.INFERENCE plain
    # continue an interrupted run from OUTPUT_DIR/last_checkpoint (a run stopped by SIGTERM or
    # SIGUSR1 saved the iteration it stopped at and exited with status 3; docs/CLUSTER.md)
    python tools/train_net.py --config-file CONFIG --resume

With ``TEST.TDE_EVAL_PLAIN True`` (the demo configs), every evaluation of a TDE model reports
both the ``plain`` and the ``tde`` inference of the same weights in one table.
"""

import warnings

# Third-party warnings a user can do nothing about: fvcore's @torch.jit.script at import (torch >= 2.10),
# the meshgrid call of Detectron2's anchor generator.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")
warnings.filterwarnings("ignore", "torch.meshgrid: in an upcoming release")

import importlib
import inspect
import logging
import os
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tde_det import get_tde_cfg  # noqa: E402  (also registers the TDE heads, demo backbone and datasets)
from tde_det.data import prepare_dataset  # noqa: E402
from tde_det.errors import ConfigError  # noqa: E402
from tde_det.analysis import mean_feature  # noqa: E402
from tde_det.engine import Trainer, check_config, cli, preemption  # noqa: E402


def setup(args):
    """Config from Detectron2's defaults + ``add_tde_config`` + the file + trailing overrides."""
    cfg = get_tde_cfg(args.config_file, args.opts)
    cfg.freeze()
    cli.default_setup(cfg, args)  # Detectron2's, its config dump and environment in OUTPUT_DIR/log.txt only
    setup_logger(output=cfg.OUTPUT_DIR, distributed_rank=comm.get_rank(), name="tde_det")
    # Fail before building the model: class count, device, and the data files (the demo set is
    # generated here on first use).
    names = dataset_names(cfg, args.eval_only)
    check_config(cfg, names)
    for name in names:
        prepare_dataset(name)
    return cfg


def dataset_names(cfg, eval_only):
    """The datasets a run reads: DATASETS.TEST with --eval-only, else DATASETS.TRAIN + TEST."""
    return list(cfg.DATASETS.TEST) if eval_only else list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST)


def preflight(args):
    """Before ``launch``, so before any model is built: config, weights and the data check (every
    image file, vocabulary, federated labels; ``--skip-data-check`` skips the data part)."""
    if not args.config_file:
        raise ConfigError("--config-file is required, e.g. --config-file configs/demo/tde_mask_rcnn_demo.yaml "
                          "(the configs are in configs/).")
    cfg = get_tde_cfg(args.config_file, args.opts)
    cli.preflight(cfg, dataset_names(cfg, args.eval_only), cfg.DATASETS.TEST, skip_data_check=args.skip_data_check,
                  weights=not args.resume, evaluate=args.eval_only, decode=args.decode_images,
                  world_size=args.num_gpus * args.num_machines)


def main(args):
    cfg = setup(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpoint = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        mean_feature.log_record(checkpoint)  # how x̄ was made, when tools/estimate_mean_feature.py wrote the file
        res = Trainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, res)
        return res
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _launcher_runs_without_cuda():
    """Whether this detectron2's ``launch`` can start several CPU processes (gloo)."""
    try:
        return "gloo" in inspect.getsource(importlib.import_module("detectron2.engine.launch")._distributed_worker).lower()
    except (AttributeError, OSError, TypeError):
        return False


def check_launch(args):
    """A clear error instead of an assertion deep inside ``launch`` (detectron2 v0.6 needs CUDA + NCCL)."""
    world_size = args.num_gpus * args.num_machines
    if args.num_gpus < 1 or args.num_machines < 1:
        raise ConfigError(f"--num-gpus {args.num_gpus} --num-machines {args.num_machines}: both must be >= 1.")
    if world_size > 1 and not torch.cuda.is_available() and not _launcher_runs_without_cuda():
        raise ConfigError(
            f"--num-gpus {args.num_gpus} --num-machines {args.num_machines} asks for {world_size} processes, "
            "but CUDA is not available and this detectron2's launch() supports only CUDA GPUs (NCCL). "
            "On a CPU machine run a single process: --num-gpus 1 (plus MODEL.DEVICE cpu if the config uses cuda)."
        )
    if args.num_gpus > 1 and torch.cuda.is_available() and args.num_gpus > torch.cuda.device_count():
        raise ConfigError(f"--num-gpus {args.num_gpus} but this machine has {torch.cuda.device_count()} CUDA devices.")


if __name__ == "__main__":
    args = cli.add_arguments(default_argument_parser()).parse_args()
    with cli.exit_on_user_error(args.debug):
        check_launch(args)
        preflight(args)
        logging.getLogger(__name__).info("Command Line Args: %s", args)
        # SIGTERM / SIGUSR1 to this launcher reach its processes, which save and exit 3 (docs/CLUSTER.md)
        with preemption.forward_stop_signals(args.num_gpus * args.num_machines > 1):
            launch(
                cli.in_worker(main, args.debug),
                args.num_gpus,
                num_machines=args.num_machines,
                machine_rank=args.machine_rank,
                dist_url=args.dist_url,
                args=(args,),
            )
