"""Test-time inference: whole-image and sliding-window modes, multi-scale + flip, following mmseg 0.x.

The official SegFormer code (mmsegmentation 0.x) tests as follows, and ``Segmenter`` does the same:

* **Resize.** The image is resized keeping its aspect ratio to the test scale (mmcv ``imrescale``:
  factor min(long / max(h, w), short / min(h, w)), sides rounded half up), bilinearly
  (align_corners False, no antialiasing, rounded to 0–255 integers as OpenCV does on uint8), then
  normalised with ``IMAGE_MEAN``/``IMAGE_STD``.
* **whole**: one forward pass; the H/4 logits are resized bilinearly straight to the original size.
* **slide**: windows of ``crop`` every ``stride`` (the last window of a row or column is pushed back
  inside the image); each window's logits are resized to the window, summed into an accumulator and
  divided by the number of windows covering each pixel; the result is resized to the original size.
  A window never exceeds the image: an image smaller than ``crop`` is decoded whole, without padding,
  as mmseg does.
* **Multi-scale + flip** (``aug_ratios``, ``flip``): mmseg ``MultiScaleFlipAug`` with ``img_ratios``
  tests at the scales (int(long·r), int(short·r)), each unflipped and then flipped horizontally;
  ``aug_test`` resizes every view's logits to the original size, flips flipped views back, applies
  softmax and averages the probabilities (mmseg 1.x ``SegTTAModel`` averages softmax probabilities
  too). The views are added to one running sum, one at a time.

Images smaller than ``MIN_INPUT_SIZE`` on a side (after resizing) are padded at the bottom and right
with the mean colour (zero after normalisation) and the logits cropped back.

Resizing the scores to the original size is done in row tiles (``resize_rows``), so ``predict`` on a
huge image never builds the full-resolution K×H×W scores when only labels are needed.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segformer.constants import IMAGE_MEAN, IMAGE_STD
from segformer.model import MIN_INPUT_SIZE
from segformer.transforms import rescale_size

ImageLike = np.ndarray | Image.Image


def view_size(height: int, width: int, scale: Sequence[int] | None, ratio: float = 1.0) -> tuple[int, int]:
    """Size (h, w) of an image at the test ``scale`` (long, short) times ``ratio`` (mmseg MultiScaleFlipAug).

    Without a scale the image itself is scaled by ``ratio``.
    """
    if scale is None:
        h, w = int(height * ratio + 0.5), int(width * ratio + 0.5)
    else:
        h, w = rescale_size(height, width, (int(max(scale) * ratio), int(min(scale) * ratio)))
    return max(h, 1), max(w, 1)


def sliding_windows(
    height: int, width: int, crop: Sequence[int], stride: Sequence[int]
) -> list[tuple[int, int, int, int]]:
    """Windows (y1, y2, x1, x2) of mmseg ``slide_inference``: a grid of ``stride`` steps, clamped inside."""
    (crop_h, crop_w), (stride_h, stride_w) = crop, stride
    rows = max(height - crop_h + stride_h - 1, 0) // stride_h + 1
    cols = max(width - crop_w + stride_w - 1, 0) // stride_w + 1
    windows = []
    for i, j in itertools.product(range(rows), range(cols)):
        y2, x2 = min(i * stride_h + crop_h, height), min(j * stride_w + crop_w, width)
        windows.append((max(y2 - crop_h, 0), y2, max(x2 - crop_w, 0), x2))
    return windows


def _linear_weights(n_in: int, n_out: int, start: int, stop: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Source indices and weights of outputs start…stop-1 of a 1-D bilinear resize (align_corners False)."""
    dst = torch.arange(start, stop, dtype=torch.float64)
    src = ((dst + 0.5) * (n_in / n_out) - 0.5).clamp_(min=0)
    i0 = src.floor().long().clamp_(max=n_in - 1)
    w1 = (src - i0).clamp_(0, 1)
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    return i0.to(device), i1.to(device), (1 - w1).float().to(device), w1.float().to(device)


def resize_rows(x: torch.Tensor, size: tuple[int, int], rows: slice) -> torch.Tensor:
    """Rows ``rows`` of ``x`` (…×h×w) resized bilinearly (align_corners False) to ``size``, computed alone.

    Equals ``F.interpolate(x, size, mode="bilinear", align_corners=False)[..., rows, :]`` up to float
    rounding. Only the source rows the tile needs are widened (by ``F.interpolate``), then blended
    row by row; every value is computed the same way whatever the tile, so tiles stitch into exactly
    the untiled result.
    """
    (height, width), h = size, x.shape[-2]
    i0, i1, a0, a1 = _linear_weights(h, height, rows.start, rows.stop, x.device)
    first, last = int(i0[0]), int(i1[-1]) + 1
    wide = F.interpolate(x[..., first:last, :], (last - first, width), mode="bilinear", align_corners=False)
    return wide[..., i0 - first, :].mul_(a0[:, None]).add_(wide[..., i1 - first, :].mul_(a1[:, None]))


def _as_array(image: ImageLike) -> np.ndarray:
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
        desc = f"shape {image.shape}, dtype {image.dtype}" if isinstance(image, np.ndarray) else type(image).__name__
        raise ValueError(f"expected an H×W×3 uint8 RGB array or a PIL image, got {desc}")
    return image


class Segmenter:
    """Semantic segmentation of whole images with a SegFormer (or any model returning B×K×h×w logits).

    Args:
        model: the network; put in eval mode (and on ``device`` when given).
        mode: "whole" (one forward pass) or "slide" (sliding windows).
        scale: test scale (long, short) the image is resized to keeping its ratio; None keeps its size.
        crop: slide window (h, w).
        stride: slide step (h, w).
        aug_ratios: multi-scale test ratios of ``scale`` (e.g. 0.75 … 1.25); None tests at ``scale`` only.
        flip: also test the horizontally flipped image.
        device: where to run; default the model's device.
        max_elements: largest B×K×rows×W block of full-resolution scores built at once; ``predict``
            resizes and takes the argmax tile by tile when the full scores would be larger.
    """

    def __init__(
        self,
        model: nn.Module,
        mode: str = "whole",
        scale: Sequence[int] | None = (2048, 512),
        crop: Sequence[int] = (512, 512),
        stride: Sequence[int] = (341, 341),
        aug_ratios: Sequence[float] | None = None,
        flip: bool = False,
        device: str | torch.device | None = None,
        max_elements: int = 1 << 26,
    ) -> None:
        if mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {mode!r}")
        for name, pair in (("scale", scale), ("crop", crop), ("stride", stride)):
            if pair is not None and (len(pair) != 2 or min(pair) < 1):
                raise ValueError(f"{name} must be two positive integers, got {pair!r}")
        if aug_ratios is not None and (len(aug_ratios) == 0 or min(aug_ratios) <= 0):
            raise ValueError(f"aug_ratios must be positive numbers, got {aug_ratios!r}")
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.num_classes: int = model.num_classes
        self.mode = mode
        self.scale = tuple(scale) if scale is not None else None
        self.crop, self.stride = tuple(crop), tuple(stride)
        self.ratios = tuple(aug_ratios) if aug_ratios else (1.0,)
        self.flips = (False, True) if flip else (False,)
        self.max_elements = max_elements
        self._mean = torch.tensor(IMAGE_MEAN, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(IMAGE_STD, device=self.device).view(1, 3, 1, 1)

    @classmethod
    def for_dataset(cls, model: nn.Module, name: str, aug: bool = False, **overrides) -> Segmenter:
        """A Segmenter with the official test settings of dataset ``name`` (``segformer.data.DATASETS``).

        ``aug`` turns on the dataset's multi-scale ratios and flipping; ``overrides`` replace any setting.
        """
        from segformer.data import DATASETS, canonical_name

        info = DATASETS[canonical_name(name)]
        options = {"mode": info.test_mode, "scale": info.test_scale}
        if info.slide_crop is not None:
            options.update(crop=info.slide_crop, stride=info.slide_stride)
        if aug:
            options.update(aug_ratios=info.aug_ratios, flip=True)
        return cls(model, **{**options, **overrides})

    @property
    def num_views(self) -> int:
        return len(self.ratios) * len(self.flips)

    def __repr__(self) -> str:
        slide = f", crop={self.crop}, stride={self.stride}" if self.mode == "slide" else ""
        return (
            f"Segmenter(mode={self.mode!r}, scale={self.scale}{slide}, aug_ratios={list(self.ratios)}, "
            f"flip={len(self.flips) == 2}, device={self.device})"
        )

    # --- public API -----------------------------------------------------------------------------

    @torch.inference_mode()
    def predict_logits(self, image: ImageLike) -> torch.Tensor:
        """Class scores K×H×W at the original image size, on the segmenter's device.

        One view: the logits. Several views (multi-scale/flip): the log of the mean softmax
        probabilities, so that ``softmax`` of the result is mmseg's averaged probability in every case.
        """
        scores = self._scores(self._to_batch([image]))[0]
        return scores.log_() if self.num_views > 1 else scores

    @torch.inference_mode()
    def predict(self, image: ImageLike) -> np.ndarray:
        """Label map H×W (uint8, int32 beyond 256 classes) at the original image size."""
        return self.predict_batch([image])[0]

    @torch.inference_mode()
    def predict_batch(self, images: Sequence[ImageLike]) -> list[np.ndarray]:
        """Label maps of several images; consecutive images of equal size share forward passes."""
        arrays = [_as_array(image) for image in images]
        labels = []
        for _, group in itertools.groupby(arrays, key=lambda a: a.shape):
            labels += self._labels(self._to_batch(list(group)))
        return labels

    # --- internals ------------------------------------------------------------------------------

    def _to_batch(self, images: Sequence[ImageLike]) -> torch.Tensor:
        """B×3×H×W float 0–255 on the device."""
        batch = np.stack([_as_array(image) for image in images])
        return torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float()

    def _row_tiles(self, batch: int, height: int, width: int) -> list[slice]:
        step = max(1, self.max_elements // (batch * self.num_classes * width))
        return [slice(r, min(r + step, height)) for r in range(0, height, step)]

    def _labels(self, x: torch.Tensor) -> list[np.ndarray]:
        batch, _, height, width = x.shape
        dtype = torch.uint8 if self.num_classes <= 256 else torch.int32
        if batch * self.num_classes * height * width <= self.max_elements:
            labels = self._scores(x).argmax(1).to(dtype).cpu()
        else:  # huge image: keep the small per-view maps and resize + argmax one row tile at a time
            maps = list(self._view_maps(x))
            labels = torch.empty(batch, height, width, dtype=dtype)
            for rows in self._row_tiles(batch, height, width):
                tile = sum(self._view_scores(m, rows, (height, width)) for m in maps)
                labels[:, rows] = self._average(tile).argmax(1).to(dtype).cpu()
        return list(labels.numpy())

    def _scores(self, x: torch.Tensor) -> torch.Tensor:
        """B×K×H×W scores at the input size: logits for one view, mean probabilities for several."""
        batch, _, height, width = x.shape
        scores = x.new_zeros(batch, self.num_classes, height, width)
        for view in self._view_maps(x):
            for rows in self._row_tiles(batch, height, width):
                scores[:, :, rows] += self._view_scores(view, rows, (height, width))
        return self._average(scores)

    def _average(self, total: torch.Tensor) -> torch.Tensor:
        return total / self.num_views if self.num_views > 1 else total

    def _view_scores(self, view: torch.Tensor, rows: slice, size: tuple[int, int]) -> torch.Tensor:
        """One view's contribution to output rows ``rows``: resized logits, as probabilities if views are averaged."""
        scores = resize_rows(view, size, rows)
        return scores.softmax(1) if self.num_views > 1 else scores

    def _view_maps(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Logit maps of each test view (scale × flip), flipped views flipped back; one at a time."""
        height, width = x.shape[-2:]
        for ratio in self.ratios:
            size = view_size(height, width, self.scale, ratio)
            if size != (height, width):  # bilinear, rounded to integers as OpenCV's uint8 resize in mmseg
                resized = F.interpolate(x, size, mode="bilinear", align_corners=False).round_().clamp_(0, 255)
            else:
                resized = x
            resized = (resized - self._mean) / self._std
            for flip in self.flips:
                view = resized.flip(-1) if flip else resized
                logits = self._slide(view) if self.mode == "slide" else self._forward(view)
                yield (logits.flip(-1) if flip else logits).float()

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Model logits of the normalised batch ``x``, padding it first if it is below MIN_INPUT_SIZE."""
        height, width = x.shape[-2:]
        pad_h, pad_w = max(MIN_INPUT_SIZE - height, 0), max(MIN_INPUT_SIZE - width, 0)
        if not (pad_h or pad_w):
            return self.model(x)
        logits = self.model(F.pad(x, (0, pad_w, 0, pad_h)))
        padded = F.interpolate(logits, (height + pad_h, width + pad_w), mode="bilinear", align_corners=False)
        return padded[..., :height, :width]

    def _slide(self, x: torch.Tensor) -> torch.Tensor:
        """mmseg ``slide_inference``: window logits resized to their window, overlaps averaged."""
        batch, _, height, width = x.shape
        total = x.new_zeros(batch, self.num_classes, height, width)
        count = x.new_zeros(1, 1, height, width)
        for y1, y2, x1, x2 in sliding_windows(height, width, self.crop, self.stride):
            logits = self._forward(x[:, :, y1:y2, x1:x2])
            total[:, :, y1:y2, x1:x2] += F.interpolate(logits, (y2 - y1, x2 - x1), mode="bilinear", align_corners=False)
            count[:, :, y1:y2, x1:x2] += 1
        return total / count
