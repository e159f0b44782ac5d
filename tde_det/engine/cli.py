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
import logging
import os
import sys

import torch.distributed as dist
from torch.multiprocessing import ProcessExitedException

from ..data.checks import check_datasets
from ..errors import EXIT_USER_ERROR, UserError, message
from .preemption import EXIT_STOPPED, TrainingStopped
from .trainer import check_config

__all__ = ["USER_ERROR_EXIT", "add_arguments", "exit_on_user_error", "in_worker", "leave_process_group", "preflight",
           "check_weights", "default_setup", "drop_arguments", "usage_error", "FILE_ONLY_RECORDS", "info_to_file_only"]

USER_ERROR_EXIT = EXIT_USER_ERROR  # 2, as argparse's usage errors (tde_det/errors.py: every status)


def add_arguments(parser, data_check=True):
    """Add ``--debug`` (and, with `data_check`, ``--skip-data-check`` and ``--decode-images``) to an
    argparse parser."""
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of configuration and data errors")
    if data_check:
        parser.add_argument("--skip-data-check", action="store_true",
                            help="do not check the datasets' files, vocabulary and labels before starting")
        parser.add_argument("--decode-images", action="store_true",
                            help="the data check also decodes every image (in parallel) and names each unreadable one")
    return parser


@contextlib.contextmanager
def exit_on_user_error(debug=False):
    """Turn a UserError raised inside into ``error: ...`` + exit 2 (re-raised with `debug`); a
    process started by ``launch`` that exited 2 has printed its error: exit 2 as well. A training
    stopped on a signal after saving (:class:`~tde_det.engine.preemption.TrainingStopped`) exits 3,
    in every process and in the launcher."""
    try:
        yield
    except UserError as e:
        if debug:
            raise
        print(f"error: {message(e)}", file=sys.stderr, flush=True)
        sys.exit(USER_ERROR_EXIT)
    except ProcessExitedException as e:
        if e.exit_code not in (USER_ERROR_EXIT, EXIT_STOPPED):
            raise
        sys.exit(e.exit_code)
    except TrainingStopped:
        leave_process_group()
        sys.exit(EXIT_STOPPED)


def drop_arguments(parser, *dests):
    """Remove the options of `dests` (e.g. Detectron2's ``resume``, ``eval_only``) from an argparse
    parser built by ``default_argument_parser``, for a tool that has no use for them."""
    for action in [a for a in parser._actions if a.dest in dests]:
        parser._remove_action(action)
        for group in parser._action_groups:
            if action in group._group_actions:
                group._group_actions.remove(action)
        for flag in action.option_strings:
            del parser._option_string_actions[flag]
    return parser


def usage_error(text):
    """For a mistake found while parsing the command line (outside :func:`exit_on_user_error`):
    ``error: text`` on stderr and exit status 2."""
    print(f"error: {text}", file=sys.stderr, flush=True)
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


def check_weights(cfg, evaluate=False, need_mean=None):
    """``MODEL.WEIGHTS``: exists, and fits the model (:func:`tde_det.engine.weights.check_weights`:
    to `evaluate` a trained model, or as the initialisation of training)."""
    from .weights import check_weights as check

    check(cfg, evaluate, need_mean)


def preflight(cfg, dataset_names, test_names=(), *, skip_data_check=False, weights=True, evaluate=False,
              need_mean=None, decode=False, world_size=1):
    """Checks run before any work (nothing is written): the config against the datasets, the device
    and the values (:func:`check_config`, for `world_size` processes), the data check
    (:func:`tde_det.data.checks.check_datasets`) of `dataset_names`, the `test_names` among them as
    test sets (`decode`: every image decoded), then ``MODEL.WEIGHTS`` (with `weights`; `evaluate`,
    `need_mean`: :func:`check_weights`). Prints one line per dataset checked; raises a UserError."""
    check_config(cfg, list(dataset_names), world_size)
    if skip_data_check:
        print("data check: skipped (--skip-data-check)", flush=True)
    else:
        for line in check_datasets(dataset_names, test_names, cfg.MODEL.ROI_HEADS.NUM_CLASSES, decode=decode):
            print(f"data check: {line}", flush=True)
    if weights:
        check_weights(cfg, evaluate, need_mean)


# Detectron2's long log records that belong in OUTPUT_DIR/log.txt but not on the console: the environment
# table (~40 lines), the config file, the full config (~500 lines; also OUTPUT_DIR/config.yaml) and the model.
FILE_ONLY_RECORDS = ("Environment info:", "Contents of args.config_file=", "Running with full config:", "Model:\n")


_FILE_ONLY_LOGGERS = []  # info records of these loggers (and their children) stay off the console too


class _FileOnly(logging.Filter):
    """Drops the records in FILE_ONLY_RECORDS, info records of the loggers given to
    :func:`info_to_file_only`, and tracebacks of a UserError (Detectron2's "Exception during
    training:" when the evaluation after training meets an unreadable image: the one ``error:``
    line follows; the traceback stays in log.txt). Attached to console handlers only."""

    def filter(self, record):
        if record.exc_info and isinstance(record.exc_info[1], UserError):
            return False
        if record.levelno <= logging.INFO and any(
                record.name == n or record.name.startswith(n + ".") for n in _FILE_ONLY_LOGGERS):
            return False
        return not str(record.msg).startswith(FILE_ONLY_RECORDS)


@contextlib.contextmanager
def info_to_file_only(logger_name):
    """Inside the block, the info records of `logger_name` (and its children) go to OUTPUT_DIR/log.txt
    only (warnings still reach the console); e.g. the α sweep's per-setting evaluator tables, where
    the sweep prints one table of all."""
    _FILE_ONLY_LOGGERS.append(logger_name)
    try:
        yield
    finally:
        _FILE_ONLY_LOGGERS.remove(logger_name)


def default_setup(cfg, args):
    """Detectron2's ``default_setup`` (log file, config.yaml, seed, cudnn) with a quiet console.

    The environment table, the config file, the full config and the model go to ``OUTPUT_DIR/log.txt``
    only (the full config also to ``OUTPUT_DIR/config.yaml``, as Detectron2 writes it); the console keeps
    progress, results and warnings. torch's "No CUDA runtime is found" line (printed while Detectron2
    collects the environment on a CPU machine) is dropped."""
    from detectron2.engine import default_setup as d2_default_setup
    from detectron2.utils import comm
    from detectron2.utils.logger import setup_logger

    # The same call as default_setup's: setup_logger is cached, so this is the logger it will use.
    logger = setup_logger(cfg.OUTPUT_DIR, distributed_rank=comm.get_rank())
    for handler in logger.handlers:
        if getattr(handler, "stream", None) in (sys.stdout, sys.stderr) and not any(
                isinstance(f, _FileOnly) for f in handler.filters):
            handler.addFilter(_FileOnly())
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    d2_default_setup(cfg, args)
    if cfg.OUTPUT_DIR:
        logger.info("Environment, config and model: %s", os.path.join(cfg.OUTPUT_DIR, "log.txt"))
