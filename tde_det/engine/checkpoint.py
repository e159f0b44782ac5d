"""Atomic checkpoint files: a save interrupted at any point (even kill -9) never leaves a broken file
under a checkpoint's name.

fvcore's ``Checkpointer.save`` and ``tag_last_checkpoint`` open the final path with
``self.path_manager.open(path, "wb"/"w")`` and write into it directly. :func:`make_atomic` swaps
the checkpointer's path manager for one whose local writes go to ``<path>.tmp-<pid>`` and are
moved over ``<path>`` with ``os.replace`` (atomic on POSIX) only after a successful flush+fsync.
Everything else (reads, ``ls``, ``rm``, remote paths) is passed to the original path manager.
"""

import os

__all__ = ["AtomicWritePathManager", "make_atomic"]


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
