"""A training data loader that stops and continues exactly where it was (``--resume``).

Detectron2's training loader is an infinite stream that ``--resume`` restarts from its beginning,
and whose augmentations draw from each worker's own random state. This loader keeps Detectron2's
pieces as the config builds them -- the dataset dicts, the mapper (``DatasetMapper`` or the
trainer's), the sampler (``TrainingSampler``, ``RepeatFactorTrainingSampler``, ...) and the
aspect-ratio grouping -- and makes the stream a function of numbers that fit in a checkpoint:

- **Global stream.** Position ``g = 0, 1, 2, ...`` holds the g-th dataset index of the sampler's
  unsharded stream (``sampler._infinite_indices()``, seeded by the sampler's seed). With W
  processes, rank r reads positions r, r+W, r+2W, ... -- exactly the indices Detectron2's sampler
  gives rank r.
- **Augmentations.** The sample at position g is mapped with Python's, numpy's and torch's global
  random states seeded by :func:`sample_seed` (seed, g): the same images, crops and flips whichever
  worker or process maps it (``DATALOADER.NUM_WORKERS`` 0 or 4 give the same batches). In the main
  process the training's own random states are restored afterwards.
- **Batches.** Detectron2's grouping: per rank, images with width > height fill one bucket, the
  others a second (one bucket without ``DATALOADER.ASPECT_RATIO_GROUPING``); a full bucket is a batch
  of ``SOLVER.IMS_PER_BATCH / W`` images. A sample the mapper returns as ``None`` (an unreadable
  image) is skipped; Detectron2's ``MapDataset`` would retry a random other index instead.
- **State** (:meth:`ResumableTrainLoader.state_dict`, per rank): the positions this rank reads next,
  ``head`` (a list: the partial batches' positions first, which are mapped again and refill the same
  buckets in the same order) then ``next``, ``next + step``, ... -- lists of ints, nothing pickled.
  :func:`reshard` deals the rest of the stream of W processes to W' others: every position that is
  not yet in a trained batch is read exactly once.
"""

import atexit
import itertools
import logging
import random
import weakref
from collections import deque

import numpy as np
import torch
from detectron2.data import DatasetFromList
from detectron2.data.build import _train_loader_from_config, build_detection_train_loader
from detectron2.utils import comm

__all__ = ["ResumableTrainLoader", "build_resumable_train_loader", "initial_state", "rank_positions", "reshard",
           "sample_seed", "seed_rngs"]

logger = logging.getLogger(__name__)


def sample_seed(seed, *words):
    """A 64-bit seed derived from (`seed`, *`words`) (numpy's SeedSequence: distinct inputs give
    independent streams)."""
    state = np.random.SeedSequence([seed % 2**64, *(w % 2**64 for w in words)]).generate_state(2, np.uint64)
    return int(state[0])


def seed_rngs(seed64, cuda=False):
    """Seed Python's ``random``, numpy's global and torch's CPU generator (with `cuda`, every CUDA
    device's too) from one 64-bit seed."""
    random.seed(seed64)
    np.random.seed(seed64 % 2**32)
    if cuda:
        torch.manual_seed(seed64)
    else:
        torch.default_generator.manual_seed(seed64)


def initial_state(rank, world_size):
    """Rank `rank`'s positions at the start of training: r, r+W, r+2W, ..."""
    return {"head": [], "next": rank, "step": world_size}


def rank_positions(state):
    """The positions of a rank state, in order: ``head`` then ``next``, ``next + step``, ... (infinite)."""
    yield from state["head"]
    position = state["next"]
    while True:
        yield position
        position += state["step"]


def reshard(states, world_size):
    """Deal what is left of the stream of ``len(states)`` ranks to `world_size` ranks.

    The remaining positions of all ranks, merged in order, are R = [sorted list] ++ [Q, Q+1, ...]
    with Q the largest ``next``; new rank r takes R[r], R[r + W'], ... Returns the W' states."""
    old = len(states)
    if old == world_size:
        return [dict(s, head=list(s["head"])) for s in states]
    if any(s["step"] != old for s in states) or len({s["next"] % old for s in states}) != old:
        raise ValueError("inconsistent data-loader states: the ranks' positions do not cover the stream")
    tail_start = max(s["next"] for s in states)
    rest = sorted([p for s in states for p in s["head"]]
                  + [p for s in states for p in range(s["next"], tail_start, s["step"])])
    new = []
    for r in range(world_size):
        first_tail = r + world_size * max(0, -(-(len(rest) - r) // world_size))  # first index >= len(rest) of r's shard
        new.append({"head": rest[r::world_size], "next": tail_start + first_tail - len(rest), "step": world_size})
    return new


class _PositionDataset(torch.utils.data.Dataset):
    """``dataset[(g, i)]`` = (g, the mapper's output for dataset dict i with randomness seeded by (seed, g))."""

    def __init__(self, dataset, mapper, seed):
        self._dataset, self._mapper, self._seed = dataset, mapper, seed

    def __getitem__(self, key):
        position, index = key
        in_main_process = torch.utils.data.get_worker_info() is None
        if in_main_process:  # keep the training's random states out of it
            saved = random.getstate(), np.random.get_state(), torch.default_generator.get_state()
        seed_rngs(sample_seed(self._seed, position))
        try:
            return position, self._mapper(self._dataset[index])
        finally:
            if in_main_process:
                random.setstate(saved[0])
                np.random.set_state(saved[1])
                torch.default_generator.set_state(saved[2])


class _Keys(torch.utils.data.Sampler):
    """The (position, dataset index) pairs of a rank state, for a DataLoader (infinite, one pass)."""

    def __init__(self, sampler, state):
        self._sampler, self._state = sampler, state

    def __iter__(self):
        base, current = self._sampler._infinite_indices(), 0
        for position in rank_positions(self._state):
            index = next(itertools.islice(base, position - current, None))  # skips to `position`
            current = position + 1
            yield position, index


def _unbatched(sample):
    return sample


_open_loaders = weakref.WeakSet()


@atexit.register  # registered after multiprocessing's own exit handler (torch imports it first), so run before it
def _close_open_loaders():
    """Shut down the workers of loaders still open at exit. Their workers ignore SIGTERM (see
    ``worker_init_fn`` in :mod:`tde_det.engine.preemption`), which is how multiprocessing's exit
    handler would end them: it would wait for them forever."""
    for loader in list(_open_loaders):
        loader.close()


class ResumableTrainLoader:
    """Batches (lists of mapped dicts) of one rank, with ``state_dict`` / ``load_state_dict``.

    Args:
        dataset: list of dataset dicts (or a Detectron2 ``DatasetFromList``).
        mapper: callable, dataset dict -> model input dict, or None to skip the sample.
        sampler: a Detectron2 training sampler with ``_infinite_indices()`` and ``_seed``.
        batch_size: images per batch of this rank (``SOLVER.IMS_PER_BATCH`` / world size).
        aspect_ratio_grouping, num_workers: as ``DATALOADER.*``.
        seed: seed of the augmentations (``sample_seed(seed, position)``).
        worker_init_fn: passed to the DataLoader.
    """

    def __init__(self, dataset, mapper, sampler, batch_size, *, aspect_ratio_grouping=True, num_workers=0, seed=0,
                 worker_init_fn=None):
        if isinstance(dataset, list):
            dataset = DatasetFromList(dataset, copy=False)
        self.dataset, self.mapper, self.sampler = dataset, mapper, sampler
        self.batch_size, self.aspect_ratio_grouping, self.num_workers = batch_size, aspect_ratio_grouping, num_workers
        self.seed, self.worker_init_fn = int(seed), worker_init_fn
        self.rank, self.world_size = comm.get_rank(), comm.get_world_size()
        self._started = False
        self._iterator = None
        self._set_state(initial_state(self.rank, self.world_size))

    def _set_state(self, state):
        self._head, self._next, self._step = deque(state["head"]), state["next"], state["step"]
        self._buckets = [[], []]  # positions in the partial batches

    def state_dict(self):
        """This rank's state: {"head": [positions], "next": int, "step": int} (plain ints)."""
        pending = sorted(p for bucket in self._buckets for p in bucket)
        return {"head": pending + list(self._head), "next": self._next, "step": self._step}

    def stream_state_dict(self, rank_states):
        """The checkpoint entry of the whole stream, given every rank's :meth:`state_dict`."""
        return {"seed": self.seed, "sampler_seed": int(self.sampler._seed), "ranks": list(rank_states)}

    def load_stream_state_dict(self, state):
        """Continue the stream of :meth:`stream_state_dict` on this rank (reshared when the number of
        processes differs). Must be called before the first batch is read."""
        if self._started:
            raise RuntimeError("the data loader's state can only be loaded before its first batch")
        self.seed = int(state["seed"])
        self.sampler._seed = int(state["sampler_seed"])  # e.g. a shared random seed with SEED < 0
        self._set_state(reshard(state["ranks"], self.world_size)[self.rank])

    def _consume(self, position):
        if self._head:
            expected = self._head.popleft()
        else:
            expected, self._next = self._next, self._next + self._step
        assert position == expected, (position, expected)

    def __iter__(self):
        self.close()
        self._iterator = self._batches()
        _open_loaders.add(self)
        return self._iterator

    def close(self):
        """Stop reading: the data-loader workers are shut down (the state stays readable)."""
        if self._iterator is not None:
            self._iterator.close()
            self._iterator = None
        _open_loaders.discard(self)

    def _batches(self):
        self._started = True
        loader = torch.utils.data.DataLoader(
            _PositionDataset(self.dataset, self.mapper, self.seed),
            sampler=_Keys(self.sampler, self.state_dict()),
            batch_size=None,
            collate_fn=_unbatched,
            num_workers=self.num_workers,
            worker_init_fn=self.worker_init_fn,
            generator=torch.Generator(),  # the main process's random state is not drawn from
        )
        samples = [[], []]
        stream = iter(loader)
        try:
            for position, sample in stream:
                self._consume(position)
                if sample is None:
                    logger.debug("Skipped the sample at stream position %d (the mapper returned None).", position)
                    continue
                b = int(self.aspect_ratio_grouping and not sample["width"] > sample["height"])
                self._buckets[b].append(position)
                samples[b].append(sample)
                if len(samples[b]) == self.batch_size:
                    batch = samples[b][:]
                    del samples[b][:], self._buckets[b][:]  # before the yield, as Detectron2's grouping
                    yield batch
        finally:
            shutdown = getattr(stream, "_shutdown_workers", None)  # torch's multi-process iterator
            if shutdown is not None:
                shutdown()


def build_resumable_train_loader(cfg, mapper=None, *, worker_init_fn=None):
    """The training loader Detectron2 builds from `cfg` (``build_detection_train_loader(cfg, mapper)``),
    as a :class:`ResumableTrainLoader`. A sampler without an infinite seeded stream (or an iterable
    dataset) falls back to Detectron2's loader, with a warning: ``--resume`` then restarts its stream."""
    kwargs = _train_loader_from_config(cfg, mapper=mapper)
    sampler = kwargs["sampler"]
    if sampler is None or not hasattr(sampler, "_infinite_indices") or not hasattr(sampler, "_seed"):
        logger.warning("DATALOADER.SAMPLER_TRAIN %s has no seeded infinite stream: using Detectron2's loader, whose "
                       "stream --resume restarts from its beginning.", cfg.DATALOADER.SAMPLER_TRAIN)
        return build_detection_train_loader(**kwargs)
    world_size, total = comm.get_world_size(), kwargs["total_batch_size"]
    if total % world_size:
        raise ValueError(f"SOLVER.IMS_PER_BATCH ({total}) must be divisible by the number of processes ({world_size}).")
    seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
    return ResumableTrainLoader(kwargs["dataset"], kwargs["mapper"], sampler, total // world_size,
                                aspect_ratio_grouping=kwargs["aspect_ratio_grouping"],
                                num_workers=kwargs["num_workers"], seed=seed, worker_init_fn=worker_init_fn)
