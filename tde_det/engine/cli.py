"""What the tools share on the command line: one-line ``error: ...`` exits and the pre-flight.

    parser = cli.add_arguments(default_argument_parser())         # --debug, --skip-data-check
    args = parser.parse_args()
    with cli.exit_on_user_error(args.debug):
        cli.preflight(cfg, dataset_names, test_names, skip_data_check=args.skip_data_check)
        launch(cli.in_worker(main, args.debug), args.num_gpus, ..., args=(args,))

A :class:`~tde_det.errors.UserError` (bad config, missing or inconsistent data) becomes one line
``error: <what is wrong and the fix>`` on stderr and exit status 2, in the launching process and
in every process started by ``launch`` (the launcher then exits 2 quietly). ``--debug`` shows the
traceback instead. Every other exception is a bug and keeps its traceback.
"""

import contextlib
import functools
import os
import sys

import torch.distributed as dist
from torch.multiprocessing import ProcessExitedException

from ..data.checks import check_datasets
from ..errors import FilesMissing, UserError, message
from .trainer import check_config

__all__ = ["USER_ERROR_EXIT", "add_arguments", "exit_on_user_error", "in_worker", "leave_process_group", "preflight",
           "check_weights"]

USER_ERROR_EXIT = 2  # as argparse's usage errors


def add_arguments(parser, data_check=True):
    """Add ``--debug`` (and, with `data_check`, ``--skip-data-check``) to an argparse parser."""
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of configuration and data errors")
    if data_check:
        parser.add_argument("--skip-data-check", action="store_true",
                            help="do not check the datasets' files, vocabulary and labels before starting")
    return parser


@contextlib.contextmanager
def exit_on_user_error(debug=False):
    """Turn a UserError raised inside into ``error: ...`` + exit 2 (re-raised with `debug`); a
    process started by ``launch`` that exited 2 has printed its error: exit 2 as well."""
    try:
        yield
    except UserError as e:
        if debug:
            raise
        print(f"error: {message(e)}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)
    except ProcessExitedException as e:
        if e.exit_code != USER_ERROR_EXIT:
            raise
        sys.exit(USER_ERROR_EXIT)


def _run(main, debug, *args):
    with exit_on_user_error(debug):
        result = main(*args)
    leave_process_group()
    return result


def leave_process_group():
    """End this process's part in the process group that ``launch`` started, all processes together.

    Detectron2's ``launch`` never destroys its process group. With gloo, a process whose interpreter
    exits while another one still holds their connection can abort ("terminate called without an
    active exception", SIGABRT) after all its work is done, and ``launch`` then fails the whole run.
    A barrier, then ``destroy_process_group``, lets every process exit cleanly. No-op without one."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def in_worker(main, debug=False):
    """`main` wrapped for ``launch``: its UserErrors become ``error:`` lines in every process, and
    the processes leave their process group together at the end (picklable)."""
    return functools.partial(_run, main, debug)


def check_weights(cfg):
    """``MODEL.WEIGHTS``, when it is a local path, must exist (URLs are fetched by Detectron2)."""
    weights = cfg.MODEL.WEIGHTS
    if weights and "://" not in weights and not os.path.exists(weights):
        raise FilesMissing(f"MODEL.WEIGHTS {weights!r} does not exist. Give the path of a checkpoint, "
                           "e.g. MODEL.WEIGHTS OUTPUT_DIR/model_final.pth.")


def preflight(cfg, dataset_names, test_names=(), *, skip_data_check=False, weights=True):
    """Checks run before any model is built: the config against the datasets and the device
    (:func:`check_config`), ``MODEL.WEIGHTS`` (with `weights`), then the data check
    (:func:`tde_det.data.checks.check_datasets`) of `dataset_names`, the `test_names` among them as
    test sets. Prints one line per dataset checked; raises a UserError listing the problems."""
    check_config(cfg, list(dataset_names))
    if weights:
        check_weights(cfg)
    if skip_data_check:
        print("data check: skipped (--skip-data-check)", flush=True)
        return
    for line in check_datasets(dataset_names, test_names, cfg.MODEL.ROI_HEADS.NUM_CLASSES):
        print(f"data check: {line}", flush=True)
