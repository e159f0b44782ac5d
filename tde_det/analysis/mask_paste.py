"""Pasting many ROI masks into an image in a few ``grid_sample`` calls, with Detectron2's result.

On CPU, Detectron2's ``paste_masks_in_image`` pastes one mask per ``grid_sample`` call (restricted
to the box, ``skip_empty``), so its cost is dominated by per-mask overhead. The α sweep pastes the
union of all α's detections (about twice one α's), which made pasting its largest cost.
:func:`paste_masks_batched` computes, for every mask, the same sampling grid over the same
pixels as Detectron2's CPU path -- ``x = (arange(x0_int, x1_int) + 0.5 - x0) / (x1 - x0) * 2 - 1``
with ``x0_int = max(floor(x0) - 1, 0)``, ``x1_int = min(ceil(x1) + 1, W)`` (same for y) -- but pads
the boxes of a chunk of masks to a common size and samples them in one call. Each output pixel is
computed from the same mask and grid value, so the bit masks are identical (the tests check it
against Detectron2's function).

:func:`batched_mask_paste` is a context manager under which Detectron2's ``ROIMasks.to_bitmasks``
(used by ``detector_postprocess``) pastes with it. ``to_bitmasks`` imports the function when called,
from ``detectron2.layers`` in v0.6 and from ``detectron2.layers.mask_ops`` in upstream main, so both
names are swapped (a test counts the batched calls made by the real α sweep on either version).
"""

import contextlib

import detectron2.layers
import detectron2.layers.mask_ops
import torch
from torch.nn import functional as F

__all__ = ["batched_mask_paste", "paste_masks_batched"]

_D2_PASTE = detectron2.layers.mask_ops.paste_masks_in_image
# The modules whose ``paste_masks_in_image`` attribute Detectron2 versions look up at paste time.
_PASTE_MODULES = (detectron2.layers, detectron2.layers.mask_ops)
# float32 elements of the padded grid_sample output per chunk (64 MiB)
CHUNK_ELEMENTS = 1 << 24


def paste_masks_batched(masks, boxes, image_shape, threshold: float = 0.5):
    """``detectron2.layers.paste_masks_in_image`` for CPU tensors, batched.

    Args:
        masks: [N, M, M] mask probabilities (N masks of M x M, as the mask head predicts).
        boxes: ``Boxes`` or [N, 4] tensor (x0, y0, x1, y1) in image coordinates.
        image_shape: (H, W) of the output.
        threshold: masks are ``probability >= threshold``; < 0 returns Detectron2's uint8 result
            (delegated to Detectron2, as are CUDA tensors).

    Returns:
        bool [N, H, W].
    """
    if not isinstance(boxes, torch.Tensor):
        boxes = boxes.tensor
    if masks.device.type != "cpu" or threshold < 0 or len(masks) == 0 or torch.jit.is_scripting():
        return _D2_PASTE(masks, boxes, image_shape, threshold=threshold)
    assert masks.shape[-1] == masks.shape[-2], "Only square mask predictions are supported"
    img_h, img_w = image_shape
    out = torch.zeros(len(masks), img_h, img_w, dtype=torch.bool)
    if not masks.dtype.is_floating_point:
        masks = masks.float()
    x0_int = torch.clamp(boxes[:, 0].floor() - 1, min=0).to(torch.int64)
    y0_int = torch.clamp(boxes[:, 1].floor() - 1, min=0).to(torch.int64)
    x1_int = torch.clamp(boxes[:, 2].ceil() + 1, max=img_w).to(torch.int64)
    y1_int = torch.clamp(boxes[:, 3].ceil() + 1, max=img_h).to(torch.int64)
    widths, heights = (x1_int - x0_int).clamp(min=0), (y1_int - y0_int).clamp(min=0)
    # Chunks of masks of similar box size (sorted by area), each padded to its largest box; a chunk
    # ends when padding would more than double its work or it reaches CHUNK_ELEMENTS.
    order = torch.argsort(widths * heights).tolist()
    hs, ws = heights.tolist(), widths.tolist()
    start = 0
    while start < len(order):
        end, max_h, max_w, area = start, 0, 0, 0
        while end < len(order):
            i = order[end]
            h, w, a = max(max_h, hs[i]), max(max_w, ws[i]), area + hs[i] * ws[i]
            padded = (end - start + 1) * h * w
            if end > start and (padded > CHUNK_ELEMENTS or padded > 2 * a + 4096):
                break
            end, max_h, max_w, area = end + 1, h, w, a
        idx = torch.tensor(order[start:end])
        _paste_chunk(masks[idx], boxes[idx], x0_int[idx], y0_int[idx], widths[idx], heights[idx],
                     max_h, max_w, threshold, out, idx.tolist())  # fmt: skip
        start = end
    return out


def _paste_chunk(masks, boxes, x0_int, y0_int, widths, heights, max_h, max_w, threshold, out, rows):
    """Paste `masks` [n, M, M] into ``out[rows]``, sampling each on its box padded to max_h x max_w."""
    if max_h == 0 or max_w == 0:
        return
    x0, y0, x1, y1 = torch.split(boxes, 1, dim=1)  # each [n, 1]
    img_x = (x0_int[:, None] + torch.arange(max_w)).to(torch.float32) + 0.5
    img_y = (y0_int[:, None] + torch.arange(max_h)).to(torch.float32) + 0.5
    img_x = (img_x - x0) / (x1 - x0) * 2 - 1
    img_y = (img_y - y0) / (y1 - y0) * 2 - 1
    n = len(masks)
    gx = img_x[:, None, :].expand(n, max_h, max_w)
    gy = img_y[:, :, None].expand(n, max_h, max_w)
    grid = torch.stack([gx, gy], dim=3)
    pasted = F.grid_sample(masks[:, None], grid.to(masks.dtype), align_corners=False)[:, 0] >= threshold
    for i, (row, x, y, w, h) in enumerate(zip(rows, x0_int.tolist(), y0_int.tolist(), widths.tolist(), heights.tolist())):
        out[row, y : y + h, x : x + w] = pasted[i, :h, :w]


@contextlib.contextmanager
def batched_mask_paste():
    """Within the block, Detectron2's ``ROIMasks.to_bitmasks`` pastes with :func:`paste_masks_batched`."""
    saved = [m.paste_masks_in_image for m in _PASTE_MODULES]
    for m in _PASTE_MODULES:
        m.paste_masks_in_image = paste_masks_batched
    try:
        yield
    finally:
        for m, f in zip(_PASTE_MODULES, saved):
            m.paste_masks_in_image = f
