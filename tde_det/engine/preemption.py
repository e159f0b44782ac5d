"""Preemption-safe training: a stop signal ends training with a checkpoint of the iteration it
stopped at, and ``--resume`` continues as if nothing had happened.

SLURM (preemption, time limit, ``sbatch --signal=USR1@120``) and Kubernetes (eviction) send SIGTERM
or SIGUSR1 -- to the launcher, to one process, or to the whole process group, data-loader workers
included. With these hooks (registered by :class:`~tde_det.engine.trainer.Trainer`):

- a stop signal only sets a flag (:func:`install_stop_handlers`); data-loader workers ignore it
  (:func:`ignore_stop_signals`) and are shut down by their process; a launcher of several processes
  passes it on to them (:func:`forward_stop_signals`);
- :class:`StopOnSignal` (the last hook) ends every iteration with one all-reduce (MAX) of the flag
  over a gloo group, so all processes agree on the same iteration (the all-reduce runs during the
  next iteration, whose end acts on it: with several processes a stop comes one iteration later
  and costs no wait); then rank 0 writes one checkpoint
  of it (atomic: :mod:`tde_det.engine.checkpoint`; ``last_checkpoint`` updated), every process waits
  for it and :class:`TrainingStopped` ends training; the tools exit with :data:`EXIT_STOPPED` (3).
  A signal during the save sets the flag again and nothing else;
- :class:`ResumeState` (a stateful hook: saved in every checkpoint under ``trainer/hooks``) holds
  what else the rest of the run depends on: the data stream's position and partial batches of every
  process (:mod:`tde_det.data.resumable_loader`), its seeds, and, in a checkpoint written on a stop
  between periodic checkpoints, each process's own buffers (BatchNorm statistics are only averaged
  for saving). Before each iteration it seeds Python's, numpy's and torch's random states from
  (seed, rank, iteration), so the random draws of training (e.g. the RPN/ROI sampling) need no saved
  random state. Everything is ints, lists and tensors: ``torch.load(weights_only=True)`` reads it.

On the CPU with a fixed ``SEED``, a run stopped and resumed ends with a ``model_final.pth`` equal bit
for bit to an uninterrupted run, with any ``DATALOADER.NUM_WORKERS``. On GPUs the data order is
exact; the kernels are not deterministic.
"""

import contextlib
import logging
import multiprocessing
import os
import signal

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

from ..data.resumable_loader import ResumableTrainLoader, sample_seed, seed_rngs
from ..errors import EXIT_STOPPED_ON_SIGNAL
from .buffers import sync_buffers

__all__ = ["EXIT_STOPPED", "STOP_SIGNALS", "ResumeState", "StopOnSignal", "TrainingStopped", "forward_stop_signals",
           "ignore_stop_signals", "install_stop_handlers", "stop_requested"]

logger = logging.getLogger(__name__)

EXIT_STOPPED = EXIT_STOPPED_ON_SIGNAL  # 3: stopped on a signal after saving a checkpoint; continue with --resume
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_received = []  # the stop signals received by this process, in order (set by the handler only)


class TrainingStopped(BaseException):
    """Training ended on a stop signal after its checkpoint was written (a BaseException, so that
    Detectron2's training loop lets it through without logging a traceback)."""

    def __init__(self, signal_name, iteration, checkpoint):
        super().__init__(f"stopped on {signal_name} after iteration {iteration}; checkpoint: {checkpoint}")
        self.signal_name, self.iteration, self.checkpoint = signal_name, iteration, checkpoint


def _on_stop_signal(signum, frame):
    _received.append(signum)  # nothing else: no I/O, no exception (a signal may arrive during the save)


def install_stop_handlers():
    """Make SIGTERM and SIGUSR1 set the stop flag of this process. Returns the previous handlers."""
    return {s: signal.signal(s, _on_stop_signal) for s in STOP_SIGNALS}


def restore_handlers(previous):
    for s, handler in previous.items():
        signal.signal(s, handler)


def stop_requested():
    """The name of the first stop signal this process received, or None."""
    return signal.Signals(_received[0]).name if _received else None


def ignore_stop_signals(worker_id=None):
    """``worker_init_fn`` of the training data loader: a signal sent to the whole process group does
    not kill the workers (the main process stops at the end of its iteration and shuts them down)."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


@contextlib.contextmanager
def forward_stop_signals(enabled=True):
    """In a launcher of several processes (Detectron2's ``launch``): within the block, a stop signal
    received by the launcher is passed on to the processes it started, which save and exit with
    :data:`EXIT_STOPPED`; the launcher waits for them."""
    if not enabled:
        yield
        return

    def forward(signum, frame):
        for child in multiprocessing.active_children():
            with contextlib.suppress(ProcessLookupError):
                os.kill(child.pid, signum)

    previous = {s: signal.signal(s, forward) for s in STOP_SIGNALS}
    try:
        yield
    finally:
        restore_handlers(previous)


def _inner(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _checkpoint_step(trainer, period):
    """Whether Detectron2's PeriodicCheckpointer saves after the current iteration."""
    next_iter = trainer.iter + 1
    return next_iter >= trainer.max_iter or (period > 0 and next_iter % period == 0)


class ResumeState(HookBase):
    """The state of the run beyond Detectron2's (see module docstring), saved under
    ``trainer/hooks/ResumeState``. A hook of every process, placed before the checkpointer: with
    several processes it gathers the ranks' data states on checkpoint steps (one ``all_gather``)."""

    def __init__(self, loader, model, checkpoint_period):
        self._loader, self._model, self._period = loader, model, checkpoint_period
        self._gathered = None  # (iteration, [rank states], [rank buffers] or None)
        self._rank_buffers = None  # this rank's own buffers to restore after loading a checkpoint
        self._cuda = torch.cuda.is_available()
        self._loaded = False

    def before_step(self):
        seed_rngs(sample_seed(self._loader.seed, 1, comm.get_rank(), self.trainer.iter), cuda=self._cuda)

    def after_step(self):
        if comm.get_world_size() > 1 and _checkpoint_step(self.trainer, self._period):
            self.gather()

    def after_train(self):
        self._loader.close()  # training is over (finished or stopped): shut its workers down

    def gather(self, buffers=False):
        """Collect every rank's data state (and, with `buffers`, its floating-point buffers) on all
        ranks. A collective call."""
        mine = self._loader.state_dict()
        own = {k: v.detach().cpu().clone() for k, v in _inner(self._model).named_buffers()
               if v.is_floating_point()} if buffers else None
        if comm.get_world_size() == 1:
            self._gathered = (self.trainer.iter, [mine], [own] if buffers else None)
            return
        states = comm.all_gather((mine, own))
        self._gathered = (self.trainer.iter, [s for s, _ in states], [b for _, b in states] if buffers else None)

    def state_dict(self):
        if comm.get_world_size() == 1 and (self._gathered is None or self._gathered[0] != self.trainer.iter):
            self.gather()
        if self._gathered is None or self._gathered[0] != self.trainer.iter:
            logger.warning("Checkpoint at iteration %d without the data loader's position (not gathered at this "
                           "step): --resume from it restarts the data stream.", self.trainer.iter)
            return {}
        _, ranks, buffers = self._gathered
        state = {"data": self._loader.stream_state_dict(ranks), "world_size": len(ranks), "rank_buffers": []}
        if buffers is not None:  # keep each rank's buffers that differ from the saved (averaged) ones
            saved = dict(_inner(self._model).named_buffers())
            state["rank_buffers"] = [{k: v for k, v in b.items() if not torch.equal(v, saved[k].detach().cpu())}
                                     for b in buffers]
        return state

    def load_state_dict(self, state):
        if "data" not in state:
            return
        self._loaded = True
        self._loader.load_stream_state_dict(state["data"])
        same_world = state["world_size"] == comm.get_world_size()
        self._rank_buffers = state["rank_buffers"][comm.get_rank()] if same_world and state["rank_buffers"] else None

    def restore_rank_buffers(self, resumed=True):
        """After the checkpoint is loaded (`resumed`: a training checkpoint was): this rank's own
        buffers, where the checkpoint holds them; a warning if it held no data-loader position."""
        if resumed and not self._loaded:
            logger.warning("The checkpoint holds no data-loader position (written without tde_det's ResumeState): the "
                           "training data stream starts from its beginning, unlike in an uninterrupted run.")
        if self._rank_buffers:
            buffers = dict(_inner(self._model).named_buffers())
            with torch.no_grad():
                for k, v in self._rank_buffers.items():
                    buffers[k].copy_(v)
        self._rank_buffers = None


class StopOnSignal(HookBase):
    """The last hook: after each iteration, all processes agree whether a stop signal arrived; if so
    they save the iteration (see module docstring) and raise :class:`TrainingStopped`."""

    def __init__(self, checkpointer, resume_state, model, checkpoint_period):
        self._checkpointer, self._resume_state, self._model = checkpointer, resume_state, model
        self._period = checkpoint_period
        self._previous = None
        self._group = None
        self._pending = None  # (work, tensor) of the all-reduce in flight

    def before_train(self):
        _received.clear()
        self._previous = install_stop_handlers()
        if comm.get_world_size() > 1 and dist.get_backend() != "gloo":  # a CPU flag, no GPU sync
            self._group = dist.new_group(backend="gloo")

    def after_train(self):
        if self._previous is not None:
            restore_handlers(self._previous)
            self._previous = None

    def agree(self, last=False):
        """The stop signal of any process (its number; 0: none). With several processes, the flags as
        they were one iteration earlier: each call starts an all-reduce (MAX) of this process's flag
        over gloo and returns the result of the one started by the previous call, which ran during
        this iteration (no wait, no GPU sync). `last`: start none."""
        flag = _received[0] if _received else 0
        if comm.get_world_size() == 1:
            return flag
        agreed = self._wait()
        if not last:
            t = torch.tensor([flag], dtype=torch.int64)
            self._pending = (dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self._group, async_op=True), t)
        return agreed

    def _wait(self):
        if self._pending is None:
            return 0
        work, t = self._pending
        work.wait()
        self._pending = None
        return int(t.item())

    def after_step(self):
        last = self.trainer.iter + 1 >= self.trainer.max_iter
        signum = self.agree(last)
        if last:
            # training is done and model_final.pth written: a stop now (or during the final
            # evaluation) ends the process as it would without this hook; --resume evaluates.
            self.after_train()
            return
        if signum:
            self._save_and_stop(signal.Signals(signum).name)

    def _save_and_stop(self, signal_name):
        it = self.trainer.iter
        name = f"model_{it:07d}"
        self._wait()
        logger.info("%s received: stopping after iteration %d and saving %s.pth ...", signal_name, it, name)
        if not _checkpoint_step(self.trainer, self._period):  # else the checkpointer just saved this iteration
            self._resume_state.gather(buffers=comm.get_world_size() > 1)
            sync_buffers(self._model)
            self._checkpointer.save(name, iteration=it)  # rank 0 writes (save_to_disk), the others return
        comm.synchronize()
        path = os.path.join(self._checkpointer.save_dir, name + ".pth")
        if comm.is_main_process():
            logger.info("Stopped on %s after iteration %d: %s saved, last_checkpoint updated. Continue with --resume.",
                        signal_name, it, path)
        raise TrainingStopped(signal_name, it, path)


def build_hooks(trainer, hooks):
    """Insert :class:`ResumeState` before the checkpointer in `hooks` and append :class:`StopOnSignal`
    (when the trainer's data loader is a :class:`ResumableTrainLoader`; otherwise `hooks` unchanged)."""
    from detectron2.engine import hooks as d2_hooks

    loader = trainer._trainer.data_loader
    if not isinstance(loader, ResumableTrainLoader):
        return hooks
    period = trainer.cfg.SOLVER.CHECKPOINT_PERIOD
    resume_state = ResumeState(loader, trainer.model, period)
    at = next((i for i, h in enumerate(hooks) if isinstance(h, (d2_hooks.PeriodicCheckpointer, d2_hooks.EvalHook))),
              len(hooks))
    return hooks[:at] + [resume_state] + hooks[at:] + [StopOnSignal(trainer.checkpointer, resume_state, trainer.model,
                                                                    period)]
