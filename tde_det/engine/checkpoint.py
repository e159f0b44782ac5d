"""Atomic checkpoint files: a save interrupted at any point (even kill -9) never leaves a broken file
under a checkpoint's name.

fvcore's ``Checkpointer.save`` and ``tag_last_checkpoint`` open the final path with
``self.path_manager.open(path, "wb"/"w")`` and write into it directly. :func:`make_atomic` swaps
the checkpointer's path manager for one whose local writes go to ``<path>.tmp-<pid>`` and are
moved over ``<path>`` with ``os.replace`` (atomic on POSIX) only after a successful flush+fsync.
Everything else (reads, ``ls``, ``rm``, remote paths) is passed to the original path manager.
A save killed before its ``os.replace`` leaves only ``<path>.tmp-<pid>``, which
:func:`remove_partial_files` deletes (``--resume`` does).

What the trainer adds to its checkpoints (optimizer state, the data stream's position, per-process
buffers: :mod:`tde_det.engine.preemption`) is ints, lists, dicts and tensors: like Detectron2's own
entries it loads with ``torch.load(path, weights_only=True)``, which runs no pickled code.
"""

import glob
import os
import re

__all__ = ["AtomicWritePathManager", "make_atomic", "remove_partial_files"]


class _AtomicFile:
    """A file opened for writing at a temporary path; ``close()`` (or leaving ``with``) publishes it."""

    def __init__(self, path, mode, **kwargs):
        self._path = path
        self._tmp = f"{path}.tmp-{os.getpid()}"
        self._file = open(self._tmp, mode, **kwargs)

    def close(self):
        if self._file.closed:
            return
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        os.replace(self._tmp, self._path)

    def discard(self):
        self._file.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.discard()
        return False

    def __getattr__(self, name):  # write, flush, tell, seek, fileno, ... of the real file
        return getattr(self._file, name)


class AtomicWritePathManager:
    """Wraps an iopath/fvcore ``PathManager``: local ``open(path, "w"/"wb")`` becomes atomic."""

    def __init__(self, base):
        self._base = base

    def open(self, path, mode="r", **kwargs):
        if ("w" in mode or "x" in mode) and "://" not in str(path):
            return _AtomicFile(path, mode, **kwargs)
        return self._base.open(path, mode, **kwargs)

    def __getattr__(self, name):
        return getattr(self._base, name)


def make_atomic(checkpointer):
    """Make `checkpointer` (a Detectron2/fvcore ``Checkpointer``) write its files atomically, in place."""
    if not isinstance(checkpointer.path_manager, AtomicWritePathManager):
        checkpointer.path_manager = AtomicWritePathManager(checkpointer.path_manager)
    return checkpointer


def remove_partial_files(directory):
    """Delete the ``*.tmp-<pid>`` files in `directory` whose writing process is gone (saves that were
    killed). Returns their paths."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), "*.tmp-*")):
        match = re.search(r"\.tmp-(\d+)$", path)
        if match and not _running(int(match.group(1))):
            os.remove(path)
            removed.append(path)
    return removed


def _running(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
