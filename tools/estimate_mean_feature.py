"""Re-estimate the head direction x̄ of a trained De-confound-TDE model as an exact mean (issue 29).

    python tools/estimate_mean_feature.py --config-file CONFIG --num-images N --output OUT.pth \\
        MODEL.WEIGHTS output/demo_tde_mask_rcnn/model_final.pth
    python tools/train_net.py --config-file CONFIG --eval-only MODEL.WEIGHTS OUT.pth

x̄ of every box stage becomes the mean box-head feature of all foreground regions (RPN proposals in
inference mode + ground-truth boxes, matcher label 1) of the first N images of DATASETS.TRAIN[0],
resized as at test time (tde_det/analysis/mean_feature.py has the definition). OUT.pth is a
Detectron2 checkpoint ({"model": state_dict}, usable as MODEL.WEIGHTS) with every other tensor
unchanged and, beside the state dict, a record of how x̄ was made that --eval-only and
tools/sweep_alpha.py print. --num-gpus N splits the images over N processes (sums all-reduced).
"""

import warnings

warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")  # fvcore's @torch.jit.script at import (torch >= 2.10)

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.engine import default_argument_parser, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tde_det import get_tde_cfg  # noqa: E402
from tde_det.analysis import mean_feature  # noqa: E402
from tde_det.data import prepare_dataset  # noqa: E402
from tde_det.engine import Trainer, cli  # noqa: E402
from tde_det.engine.trainer import is_tde_model  # noqa: E402
from tde_det.errors import ConfigError  # noqa: E402
from train_net import check_launch  # noqa: E402


def num_images(text):
    """'all' -> None, else an int (checked >= 1 in :func:`preflight`)."""
    if text == "all":
        return None
    try:
        return int(text)
    except ValueError:
        cli.usage_error(f"--num-images {text!r} must be an integer >= 1 or 'all'.")


def argument_parser():
    parser = default_argument_parser(epilog=__doc__)
    parser.description = __doc__.split("\n\n")[0]
    parser.formatter_class = argparse.RawDescriptionHelpFormatter  # keep the examples' lines
    cli.drop_arguments(parser, "resume", "eval_only")  # reads trained weights, never trains
    parser.add_argument("--num-images", type=num_images, required=True, metavar="N",
                        help="the first N images of DATASETS.TRAIN[0] ('all': every image)")
    parser.add_argument("--output", required=True, metavar="OUT.pth", help="the checkpoint to write")
    parser.add_argument("--batch-size", type=int, default=1, help="images per forward pass (default: %(default)s)")
    return cli.add_arguments(parser)


def preflight(args):
    """Before ``launch``: N, the output path, the config (a TDE model), the weights and the data check."""
    if args.num_images is not None and args.num_images < 1:
        raise ConfigError(f"--num-images {args.num_images} must be >= 1 (or 'all').")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size} must be >= 1.")
    cfg = get_tde_cfg(args.config_file, args.opts)
    if not is_tde_model(cfg):
        raise ConfigError(
            f"{args.config_file} builds a softmax model (MODEL.ROI_HEADS.NAME {cfg.MODEL.ROI_HEADS.NAME}), which has "
            "no x̄: give the config of a De-confound-TDE model (TDEStandardROIHeads or TDECascadeROIHeads)."
        )
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError("MODEL.WEIGHTS is empty: x̄ is estimated for TRAINED weights. Add the override "
                          "MODEL.WEIGHTS path/to/model_final.pth.")
    if os.path.abspath(args.output) == os.path.abspath(cfg.MODEL.WEIGHTS):
        raise ConfigError(f"--output {args.output} is MODEL.WEIGHTS itself: write the new checkpoint to another file.")
    out_dir = os.path.dirname(os.path.abspath(args.output))
    if not os.path.isdir(out_dir):
        raise ConfigError(f"--output {args.output}: the directory {out_dir} does not exist; create it first.")
    if not cfg.DATASETS.TRAIN:
        raise ConfigError("DATASETS.TRAIN is empty: x̄ is measured on the first training data set.")
    cli.preflight(cfg, [cfg.DATASETS.TRAIN[0]], skip_data_check=args.skip_data_check, evaluate=True, need_mean=False,
                  decode=getattr(args, "decode_images", False), world_size=args.num_gpus * args.num_machines)


def read_checkpoint(path):
    """The checkpoint file as ``{"model": state_dict, ...}`` (a trained TDE model's .pth)."""
    import torch
    from detectron2.utils.file_io import PathManager

    if not path.endswith((".pth", ".pt")):
        raise ConfigError(f"MODEL.WEIGHTS {path}: x̄ is re-estimated for a trained TDE model's .pth checkpoint "
                          "(e.g. OUTPUT_DIR/model_final.pth).")
    with PathManager.open(path, "rb") as f:
        checkpoint = torch.load(f, map_location="cpu", weights_only=False)  # the user's own file, as Detectron2 loads it
    return checkpoint if isinstance(checkpoint, dict) and "model" in checkpoint else {"model": checkpoint}


def main(args):
    cfg = get_tde_cfg(args.config_file, args.opts)
    cfg.freeze()
    setup_logger(distributed_rank=comm.get_rank(), name="tde_det")
    prepare_dataset(cfg.DATASETS.TRAIN[0])
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    checkpoint = read_checkpoint(cfg.MODEL.WEIGHTS)  # the file's own tensors, written back unchanged but x̄
    previous = [p.cls_score.mean_feature.detach().clone() for p in mean_feature.tde_stages(model)[3]]
    means, counts, used = mean_feature.estimate_mean_features(cfg, model, args.num_images, args.batch_size)
    if comm.is_main_process():
        record = mean_feature.make_record(cfg, counts, used, previous, means)
        mean_feature.write_checkpoint(checkpoint, means, record, args.output)
        print(f"x̄ of {len(means)} box stage(s) from {counts} foreground regions of the first {used} images of "
              f"{cfg.DATASETS.TRAIN[0]}; cos(new, training's x̄) per head {record['cos_to_previous_per_head']}", flush=True)
        print(f"wrote {args.output} (use it as MODEL.WEIGHTS)", flush=True)
    return 0


if __name__ == "__main__":
    args = argument_parser().parse_args()
    with cli.exit_on_user_error(args.debug):
        check_launch(args)
        preflight(args)
        launch(cli.in_worker(main, args.debug), args.num_gpus, num_machines=args.num_machines,
               machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
