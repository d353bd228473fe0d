"""Bilinear resizing of class scores (align_corners False, as mmseg's ``resize``) to the image, without building
more of the full-resolution scores than needed (images and masks are resized by ``segformer.transforms``).

* ``resize_rows``: a row tile of the resized scores, so huge images are resized and reduced tile by tile.
* ``resized_argmax``: the labels of resized logits (one resize, or mmseg's two: to the padded input, then to
  the original image). A bilinear output is a convex combination of its source pixels (four for one resize,
  at most nine for two), so where those share their argmax, the output's argmax is theirs; only the pixels
  whose sources disagree (class boundaries) are interpolated, over the classes. The full B×K×H×W scores, and
  the memory-bound passes over them, are never made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Boundary pixels interpolated at once by ``resized_argmax`` (each gathers 4 K-vectors per resize step).
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


def row_tiles(planes: int, height: int, width: int, max_elements: int) -> list[slice]:
    """Row slices of a ``planes``×``height``×``width`` block (planes = batch × classes), each at most
    ``max_elements`` values (at least one row)."""
    step = max(1, max_elements // (planes * width))
    return [slice(r, min(r + step, height)) for r in range(0, height, step)]


Axis = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # per output index: i0, i1, w0, w1


def resized_argmax(
    logits: torch.Tensor,
    size: tuple[int, int],
    crop: tuple[int, int] | None = None,
    final: tuple[int, int] | None = None,
    max_elements: int = 1 << 26,
) -> torch.Tensor:
    """The labels of logits resized bilinearly to ``size``, cropped to ``crop``, then resized to ``final``: B×H×W.

    Equal to the argmax of those resizes (``F.interpolate``, then ``resize_rows``) up to float rounding at exact
    ties between classes: every interpolated value is computed as they compute it, in the same order.

    Args:
        logits: B×K×h×w.
        size: the size the logits are first resized to (mmseg resizes them to the padded input).
        crop: the top-left part of ``size`` kept (the image inside the padding); default all of it.
        final: a second resize, of the cropped scores to this size (the original image's); default none.
        max_elements: largest B×K×rows×W block of the second resize the dense fallback (noisy scores) builds
            at once.
    """
    crop = crop or size
    device = logits.device
    first = [_linear_weights(n, m, 0, k, device) for n, m, k in zip(logits.shape[-2:], size, crop, strict=True)]
    second = [_linear_weights(n, m, 0, m, device) for n, m in zip(crop, final, strict=True)] if final else [None] * 2
    spans = [_source_span(a, b) for a, b in zip(first, second, strict=True)]
    low = logits.argmax(1)
    labels, boundary = _uniform_labels(low, *spans)
    boundary_pixels = boundary.nonzero()
    if len(boundary_pixels) > DENSE_SHARE * boundary.numel():  # noisy scores: the dense resize is cheaper
        return _dense_argmax(logits, size, crop, final, max_elements)
    pixels = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])  # one K-vector per source pixel
    for chunk in boundary_pixels.split(CHUNK_PIXELS if final is None else CHUNK_PIXELS // 4):
        b, i, j = chunk.unbind(1)
        if final is None:
            scores = _bilinear(pixels, low.shape[-2:], b, i, j, *first)
        else:
            (r0, r1, vy0, vy1), (q0, q1, vx0, vx1) = (t[i] for t in second[0]), (t[j] for t in second[1])
            corners = [_bilinear(pixels, low.shape[-2:], b, r, q, *first) for r in (r0, r1) for q in (q0, q1)]
            scores = _blend(*corners, vx0, vx1, vy0, vy1)
        labels[b, i, j] = scores.argmax(1)
    return labels


def _source_span(first: Axis, second: Axis | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per output index of one axis: the first and the last source index its value depends on."""
    i0, i1 = first[0], first[1]
    return (i0, i1) if second is None else (i0[second[0]], i1[second[1]])


def _uniform_labels(
    low: torch.Tensor, rows: tuple[torch.Tensor, torch.Tensor], cols: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each output pixel's source label where all its sources share it, and where they do not (the boundary).

    A pixel's sources lie in the window of its spans; the check takes the largest span of each axis from
    the first source index on (a superset near the edges of other spans: exact, never wrong).
    """
    kh, kw = int((rows[1] - rows[0]).max()) + 1, int((cols[1] - cols[0]).max()) + 1
    padded = F.pad(low[:, None].float(), (0, kw - 1, 0, kh - 1), mode="replicate")
    same = F.max_pool2d(padded, (kh, kw), stride=1) == -F.max_pool2d(-padded, (kh, kw), stride=1)
    labels = low[:, rows[0]][:, :, cols[0]]
    return labels, ~same[:, 0][:, rows[0]][:, :, cols[0]]


def _bilinear(
    pixels: torch.Tensor, shape: torch.Size, b: torch.Tensor, r: torch.Tensor, q: torch.Tensor, rows: Axis, cols: Axis
) -> torch.Tensor:
    """n×K values at outputs (b, r, q) of the bilinear resize ``rows`` × ``cols`` of B·h·w×K ``pixels``, in
    the order of PyTorch's kernel (along the width, then the height)."""
    h, w = shape
    y0, y1, wy0, wy1 = (t[r] for t in rows)
    x0, x1, wx0, wx1 = (t[q] for t in cols)
    top, bottom = (b * h + y0) * w, (b * h + y1) * w
    corners = torch.stack([top + x0, top + x1, bottom + x0, bottom + x1])
    v = pixels.index_select(0, corners.view(-1)).view(4, len(b), pixels.shape[1])
    return _blend(*v, wx0, wx1, wy0, wy1)


def _blend(
    v00: torch.Tensor, v01: torch.Tensor, v10: torch.Tensor, v11: torch.Tensor, *weights: torch.Tensor
) -> torch.Tensor:
    """(v00·wx0 + v01·wx1)·wy0 + (v10·wx0 + v11·wx1)·wy1 of n×K corner values with n weights each (``weights``
    = wx0, wx1, wy0, wy1), in PyTorch's order; computed in place in the corners' memory."""
    wx0, wx1, wy0, wy1 = (w[:, None] for w in weights)
    upper = v00.mul_(wx0).add_(v01.mul_(wx1))
    lower = v10.mul_(wx0).add_(v11.mul_(wx1))
    return upper.mul_(wy0).add_(lower.mul_(wy1))


def _dense_argmax(
    logits: torch.Tensor,
    size: tuple[int, int],
    crop: tuple[int, int],
    final: tuple[int, int] | None,
    max_elements: int,
) -> torch.Tensor:
    """``resized_argmax`` the direct way: the full scores, the second resize and its argmax in row tiles."""
    scores = F.interpolate(logits, size, mode="bilinear", align_corners=False)[..., : crop[0], : crop[1]]
    if final is None:
        return scores.argmax(1)
    tiles = row_tiles(logits.shape[0] * logits.shape[1], *final, max_elements)
    return torch.cat([resize_rows(scores, final, rows).argmax(1) for rows in tiles], dim=1)
