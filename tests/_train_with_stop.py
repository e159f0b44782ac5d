"""tools/train_net.py with stop signals at reproducible points, for tests/test_preemption.py (not
collected by pytest: run as a script, with train_net's arguments).

    TDE_DET_TEST_STOP_AT=K[:RANK[:SIG]]  rank RANK (default: every rank) sends itself SIGSIG (default
                                       TERM) during iteration K (before its step runs)
    TDE_DET_TEST_ITER_SLEEP=S          every iteration sleeps S seconds first (time to signal from outside)
    TDE_DET_TEST_SIGNAL_IN_SAVE=NAME   when the stop's checkpoint is being written, after its first
                                       bytes, the process sends itself SIGNAME (TERM: a second stop
                                       signal; KILL: the save dies half-written)

Without these variables it is tools/train_net.py.
"""

import os
import signal
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import train_net  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from tde_det.engine import Trainer, checkpoint, cli, preemption  # noqa: E402

STOP_AT = os.environ.get("TDE_DET_TEST_STOP_AT")
SIGNAL_IN_SAVE = os.environ.get("TDE_DET_TEST_SIGNAL_IN_SAVE")
ITER_SLEEP = float(os.environ.get("TDE_DET_TEST_ITER_SLEEP", 0))
_run_step = Trainer.run_step


def run_step(self):
    time.sleep(ITER_SLEEP)
    iteration, rank, name = ((STOP_AT or "-1") + "::").split(":")[:3]
    if self.iter == int(iteration) and (not rank or int(rank) == comm.get_rank()):
        os.kill(os.getpid(), getattr(signal, "SIG" + (name or "TERM")))
    return _run_step(self)


def write(self, data):
    result = self._file.write(data)
    if preemption.stop_requested() and self._path.endswith(".pth") and not getattr(self, "_signalled", False):
        self._signalled = True
        self._file.flush()
        print(f"_train_with_stop: SIG{SIGNAL_IN_SAVE} during the save of {self._path}", file=sys.stderr, flush=True)
        os.kill(os.getpid(), getattr(signal, "SIG" + SIGNAL_IN_SAVE))
    return result


# At import, so that the processes started by launch (which re-import this file) do it too.
if STOP_AT or ITER_SLEEP:
    Trainer.run_step = run_step
if SIGNAL_IN_SAVE:
    checkpoint._AtomicFile.write = write

if __name__ == "__main__":
    args = cli.add_arguments(train_net.default_argument_parser()).parse_args()
    with cli.exit_on_user_error(args.debug):
        train_net.check_launch(args)
        train_net.preflight(args)
        with preemption.forward_stop_signals(args.num_gpus * args.num_machines > 1):
            train_net.launch(cli.in_worker(train_net.main, args.debug), args.num_gpus, num_machines=args.num_machines,
                             machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
