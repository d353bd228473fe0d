"""Bilinear resizing of class scores (align_corners False, as mmseg's ``resize``), without building more of the
full-resolution scores than needed.

* ``resize_rows``: a row tile of the resized scores, so huge images are resized and reduced tile by tile.
* ``upsampled_argmax``: the argmax of upsampled logits. A bilinear output is a convex combination of its (up
  to) four source pixels, so where those four share their argmax, the output's argmax is theirs; only the
  pixels whose sources disagree (class boundaries) are interpolated, over the classes, one by one. The full
  B×K×H×W scores, and the memory-bound passes over them, are never made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Boundary pixels interpolated at once by ``upsampled_argmax`` (each gathers 4 K-vectors).
CHUNK_PIXELS = 1 << 11
# Above this share of boundary pixels (noisy scores, e.g. an untrained model) the dense resize is cheaper.
DENSE_SHARE = 0.4


def _linear_weights(n_in: int, n_out: int, start: int, stop: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Source indices and weights of outputs start…stop-1 of a 1-D bilinear resize (align_corners False).

    Computed in float32 as PyTorch's upsampling kernels do (scale n_in / n_out, source position
    scale · (i + 0.5) − 0.5 rounded once), so the weights are F.interpolate's own.
    """
    scale = torch.tensor(n_in, dtype=torch.float32) / n_out
    dst = torch.arange(start, stop, dtype=torch.float64)
    src = (scale.double() * (dst + 0.5) - 0.5).float().clamp_(min=0)
    i0 = src.long().clamp_(max=n_in - 1)
    w1 = (src - i0).clamp_(0, 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0.to(device), i1.to(device), (1 - w1).to(device), w1.to(device)


def resize_rows(x: torch.Tensor, size: tuple[int, int], rows: slice) -> torch.Tensor:
    """Rows ``rows`` of ``x`` (…×h×w) resized bilinearly (align_corners False) to ``size``, computed alone.

    Equals ``F.interpolate(x, size, mode="bilinear", align_corners=False)[..., rows, :]`` up to the last
    bit of float32 (the order of one multiply-add). Only the source rows the tile needs are widened (by
    ``F.interpolate``), then blended row by row; every value is computed the same way whatever the tile,
    so tiles stitch into exactly the untiled result.
    """
    (height, width), h = size, x.shape[-2]
    i0, i1, a0, a1 = _linear_weights(h, height, rows.start, rows.stop, x.device)
    first, last = int(i0[0]), int(i1[-1]) + 1
    wide = F.interpolate(x[..., first:last, :], (last - first, width), mode="bilinear", align_corners=False)
    return wide[..., i0 - first, :].mul_(a0[:, None]).add_(wide[..., i1 - first, :].mul_(a1[:, None]))


def upsampled_argmax(logits: torch.Tensor, size: tuple[int, int], crop: tuple[int, int] | None = None) -> torch.Tensor:
    """``F.interpolate(logits, size, mode="bilinear", align_corners=False)[..., :H, :W].argmax(1)``, B×H×W.

    Equal to it up to float rounding at exact ties between classes (the interpolation is the same, in the
    same order; the four-source shortcut holds for monotone float arithmetic).

    Args:
        logits: B×K×h×w.
        size: the size (H', W') the logits are resized to.
        crop: (H, W) ≤ ``size``: the top-left part kept (the image inside the padding); default all of it.
    """
    batch, _, h, w = logits.shape
    height, width = crop or size
    y0, y1, wy0, wy1 = _linear_weights(h, size[0], 0, height, logits.device)
    x0, x1, wx0, wx1 = _linear_weights(w, size[1], 0, width, logits.device)
    low = logits.argmax(1)
    rows0, rows1 = low[:, y0], low[:, y1]
    labels = rows0[:, :, x0]
    boundary = (labels != rows0[:, :, x1]) | (labels != rows1[:, :, x0]) | (labels != rows1[:, :, x1])
    boundary_pixels = boundary.nonzero()
    if len(boundary_pixels) > DENSE_SHARE * boundary.numel():  # noisy scores: the dense pass is cheaper
        dense = F.interpolate(logits, size, mode="bilinear", align_corners=False)
        return dense[..., :height, :width].argmax(1)
    classes = logits.shape[1]
    pixels = logits.permute(0, 2, 3, 1).reshape(-1, classes)  # one K-vector per source pixel
    for chunk in boundary_pixels.split(CHUNK_PIXELS):
        b, i, j = chunk.unbind(1)
        top, bottom = (b * h + y0[i]) * w, (b * h + y1[i]) * w
        corners = torch.stack([top + x0[j], top + x1[j], bottom + x0[j], bottom + x1[j]])
        v = pixels.index_select(0, corners.view(-1)).view(4, len(chunk), classes)
        upper = v[0].mul_(wx0[j, None]).add_(v[1].mul_(wx1[j, None]))
        lower = v[2].mul_(wx0[j, None]).add_(v[3].mul_(wx1[j, None]))
        labels[b, i, j] = upper.mul_(wy0[i, None]).add_(lower.mul_(wy1[i, None])).argmax(1)
    return labels
