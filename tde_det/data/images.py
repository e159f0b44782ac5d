"""Images that cannot be read: found up front, skipped in training, an error in evaluation.

- :func:`decode_problems`: decode every image (as Detectron2 reads it: PIL, EXIF orientation) in
  parallel threads -- PIL releases the GIL while decoding -- and name each one that fails or whose
  size differs from its json record (``datasets/check_lvis.py --decode``, the tools'
  ``--decode-images``).
- :class:`SkipUnreadableImages`: wraps a Detectron2 mapper (``DatasetMapper``). In training an image
  that cannot be read makes it return ``None`` after one warning naming the file; Detectron2's
  ``MapDataset`` then maps another image in its place (v0.6 and main alike), so the batch keeps its
  size. The files skipped are shared by the data-loader worker processes, so each is warned about
  once, and :class:`SkippedImagesReport` lists them at the end of training. In evaluation it raises
  :class:`~tde_det.errors.UnreadableImage` naming the file (a skipped test image would change the
  metric).
"""

import ctypes
import logging
import multiprocessing
import os
import weakref
from concurrent.futures import ThreadPoolExecutor

from detectron2.data.detection_utils import SizeMismatchError
from detectron2.engine import HookBase
from PIL import Image

from ..errors import UnreadableImage

__all__ = ["DECODE_THREADS", "READ_ERRORS", "SkipUnreadableImages", "SkippedImagesReport", "decode_problems",
           "image_problem", "unreadable_message"]

logger = logging.getLogger(__name__)

# What reading an image can raise: PIL's UnidentifiedImageError and "image file is truncated" are
# OSErrors, some corrupt PNGs raise SyntaxError, Detectron2's check_image_size a SizeMismatchError.
READ_ERRORS = (OSError, SyntaxError, SizeMismatchError, Image.DecompressionBombError)
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
DECODE_THREADS = max(1, min(32, _CPUS))
_EXIF_ORIENTATION = 0x0112  # orientations 5-8 swap width and height (Detectron2 applies them)
CHECK_HINT = "`python datasets/check_lvis.py --decode` lists every unreadable image of the data sets"


def _reason(error):
    if isinstance(error, SizeMismatchError):
        return f"its size differs from the json's height/width: {error}"
    text = str(error) or type(error).__name__
    return text if isinstance(error, OSError) and "cannot identify" in text else f"{type(error).__name__}: {text}"


def unreadable_message(path, error):
    """One line: which image, why, and what to do."""
    return f"image {path!r} cannot be read ({_reason(error)}); replace or remove it. {CHECK_HINT}."


def image_problem(path, height=None, width=None):
    """None if `path` decodes completely to an image of `height` x `width` (when given, after the
    EXIF orientation); else the reason, one line."""
    try:
        with Image.open(path) as image:
            image.load()  # the whole file: a truncated JPEG fails here, not at open
            w, h = image.size
            if image.getexif().get(_EXIF_ORIENTATION, 1) in (5, 6, 7, 8):
                w, h = h, w
    except READ_ERRORS as e:
        return _reason(e)
    if height is not None and width is not None and (h, w) != (height, width):
        return f"it is {w}x{h} px, the json says {width}x{height} (width x height)"
    return None


def _problems(records):
    return [(r[0], p) for r in records if (p := image_problem(*r)) is not None]


def decode_problems(records, threads=DECODE_THREADS):
    """[(path, reason)] of the `records` [(path, height, width)] (height/width may be None) whose
    image cannot be decoded or has another size, in order; `threads` threads (contiguous chunks)."""
    records = list(records)
    if threads <= 1 or len(records) < 2 * threads:
        return _problems(records)
    size = -(-len(records) // (threads * 4))  # 4 chunks per thread balance slow files
    with ThreadPoolExecutor(threads) as pool:
        chunks = pool.map(_problems, [records[i : i + size] for i in range(0, len(records), size)])
        return [p for chunk in chunks for p in chunk]


class _SharedNames:
    """A set of file names shared by the processes that inherit (or are spawned with) it: a 64 KiB
    buffer of names, one per line, and a count of all names (also those past the buffer)."""

    def __init__(self, capacity=1 << 16):
        self._buffer = multiprocessing.Array(ctypes.c_char, capacity)  # its own lock
        self._count = multiprocessing.Value(ctypes.c_int64, 0, lock=False)
        self._used = multiprocessing.Value(ctypes.c_int64, 0, lock=False)

    def add(self, name):
        """True if `name` is new (and now recorded)."""
        entry = name.encode("utf-8", "replace") + b"\n"
        with self._buffer.get_lock():
            used = self._used.value
            if (b"\n" + self._buffer.raw[:used]).find(b"\n" + entry) >= 0:
                return False
            self._count.value += 1
            if used + len(entry) <= len(self._buffer):
                self._buffer[used : used + len(entry)] = entry
                self._used.value = used + len(entry)
            return True

    def names(self):
        with self._buffer.get_lock():
            return self._buffer.raw[: self._used.value].decode("utf-8", "replace").splitlines()

    def __len__(self):
        return self._count.value


class SkipUnreadableImages:
    """``mapper`` (a Detectron2 mapper: dataset dict -> model input) that copes with images that
    cannot be read (module docstring). `is_train`: skip them (return None), else raise
    :class:`UnreadableImage`."""

    _training = weakref.WeakSet()  # instances made for training in this process, for the report

    def __init__(self, mapper, is_train):
        self.mapper = mapper
        self.is_train = is_train
        self.skipped = _SharedNames() if is_train else None
        if is_train:
            SkipUnreadableImages._training.add(self)

    def __call__(self, dataset_dict):
        try:
            return self.mapper(dataset_dict)
        except READ_ERRORS as e:
            path = dataset_dict.get("file_name", "?")
            if not self.is_train:
                raise UnreadableImage(unreadable_message(path, e) + " A test image is never skipped: the "
                                      "metrics would change.") from e
            if self.skipped.add(path):
                logger.warning(f"Skipping training image {path!r}: it cannot be read ({_reason(e)}); another "
                               f"image takes its place. {CHECK_HINT}.")
            return None


class SkippedImagesReport(HookBase):
    """At the end of training: one warning with the count and names of the images skipped."""

    def after_train(self):
        mappers = list(SkipUnreadableImages._training)
        names = [n for m in mappers for n in m.skipped.names()]
        count = sum(len(m.skipped) for m in mappers)
        if count:
            shown = ", ".join(repr(n) for n in names[:20]) + (", ..." if count > min(len(names), 20) else "")
            logger.warning(f"{count} training image(s) could not be read and were skipped: {shown}. {CHECK_HINT}.")
