"""Every process holds the model that is saved: buffers made equal across processes before each
checkpoint and evaluation during training.

Detectron2's ``DefaultTrainer`` wraps the model in ``DistributedDataParallel(broadcast_buffers=False)``
so buffers are never synced across processes. Parameters stay equal (gradients are all-reduced),
and so does the TDE mean feature x̄ (its update is all-reduced), but a BatchNorm layer
(``MODEL.RESNETS.NORM: BN``, the demo configs) updates its running statistics from its own
process's images only. Each process then evaluated its shard of the test set with its own
statistics, while the checkpoint written by rank 0 held rank 0's: the table printed at the end of
training was not the table of the saved weights.

:class:`SyncBuffers` runs on every process right before Detectron2's checkpointer and evaluation
hooks, on the steps where either acts (and after the last one). It makes every floating-point
buffer equal on all processes (:func:`sync_buffers`): BatchNorm running means and variances become
their mean over the processes (each process's estimate from its own images), every other buffer
(x̄, ``num_batches_tracked``, frozen constants) becomes rank 0's. The saved checkpoint, the model
each process evaluates, and a later resume on any number of processes then hold the same values.
"""

import logging

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["SyncBuffers", "sync_buffers"]

logger = logging.getLogger(__name__)

_AVERAGED = (torch.nn.modules.batchnorm._BatchNorm,)  # torch's BatchNorm*d, SyncBatchNorm, Detectron2's NaiveSyncBatchNorm
_AVERAGED_NAMES = ("running_mean", "running_var")


def sync_buffers(model):
    """Make every buffer of `model` equal on all processes (no-op with one process).

    BatchNorm ``running_mean`` / ``running_var`` are averaged over the processes; then all
    buffers are broadcast from rank 0, so that every process holds bit-identical values. Returns
    the number of buffers averaged."""
    if comm.get_world_size() == 1:
        return 0
    model = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    averaged = [
        buf
        for module in model.modules()
        if isinstance(module, _AVERAGED)
        for name, buf in module.named_buffers(recurse=False)
        if name in _AVERAGED_NAMES and buf is not None and buf.is_floating_point()
    ]
    world = comm.get_world_size()
    with torch.no_grad():
        for buf in averaged:
            dist.all_reduce(buf)
            buf.div_(world)
        for _, buf in model.named_buffers():
            dist.broadcast(buf, src=0)
    return len(averaged)


class SyncBuffers(HookBase):
    """Calls :func:`sync_buffers` after the steps where a checkpoint is written (every
    `checkpoint_period`, and the last) or an evaluation runs (every `eval_period` > 0), before the
    hooks that do either. A hook of every process: the collective calls need all of them."""

    def __init__(self, model, checkpoint_period, eval_period):
        self._model = model
        self._periods = [p for p in (checkpoint_period, eval_period) if p and p > 0]

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if next_iter >= self.trainer.max_iter or any(next_iter % p == 0 for p in self._periods):
            n = sync_buffers(self._model)
            logger.debug("Synced the model's buffers across processes at iteration %d (%d averaged).", next_iter, n)
