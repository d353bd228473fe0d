"""Test-time inference with the official SegFormer test protocol (NVlabs/SegFormer, its bundled mmseg 0.11).

``Segmenter`` runs a model under a ``TestProtocol`` (``segformer.config``) as the official ``tools/test.py`` does with
the dataset's test pipeline (``mmseg/datasets/pipelines/transforms.py``, ``test_time_aug.py``) and
``mmseg/models/segmentors/encoder_decoder.py``:

* **Resize** (``Resize`` / ``AlignedResize`` with ``keep_ratio=True``): the uint8 image is rescaled by ``cv2.resize``
  (``INTER_LINEAR``: no antialiasing, halves rounded up, as mmcv ``imrescale``) to fit ``scale`` (long, short): factor
  min(long / max(h, w), short / min(h, w)), sides int(x · factor + 0.5) (mmcv ``rescale_size``). With
  ``size_divisor`` (``AlignedResize``, every official ADE20K config) the result is resized again by ``cv2.resize``
  to ceil(h / d)·d × ceil(w / d)·d. The image is then normalised with the protocol's mean and std (mmcv
  ``imnormalize``: OpenCV's arithmetic).
* **whole** (``whole_inference``): one forward pass; the H/4 logits are resized bilinearly (align_corners False) to
  the resized image's size (``encode_decode``), then to the original size: two steps, as the official code.
* **slide** (``slide_inference``): windows of ``crop`` every ``stride`` (the last window of a row or column is
  pushed back inside the image); each window's logits are resized to the window (``encode_decode``), summed into
  an accumulator and divided by the number of windows covering each pixel; the sum is resized to the original
  size. A window never exceeds the image: an image smaller than ``crop`` is decoded whole, without padding.
* **Multi-scale + flip** (``aug=True``, implied by passing ``aug_ratios=``: ``MultiScaleFlipAug`` with
  ``img_ratios``, ``aug_test``): views at the scales (int(long · r), int(short · r)) for r in ``aug_ratios``
  (without a scale, (int(w · r), int(h · r)), then the same keep-ratio rescale), each also flipped horizontally
  when ``flip``; every view's scores are resized to the original size, turned into softmax probabilities, flipped
  back and averaged. The views are added to one running sum, one at a time.

Images smaller than ``MIN_INPUT_SIZE`` on a side (after resizing; the official code has no such case) are padded
at the bottom and right with zeros after normalisation (the mean colour) and the logits cropped back.

The network itself runs through a ``segformer.runner.NetworkRunner`` (device, precision, channels-last, CUDA graph
replay, opt-in ``torch.compile``, or an engine such as ONNX Runtime), shared by the Segmenters of one model and
device in a command; the logits are returned in float32 whatever the precision.

``predict`` never builds the full-resolution K×H×W scores when only labels are needed: on the CPU, with one
view of the whole image, the labels come from the network's small logits and only class-boundary pixels are
interpolated (``segformer.score_resize.resized_argmax``); otherwise the scores are resized in row tiles
(``resize_rows``) when the full scores would be large.
"""

from __future__ import annotations

import contextlib
import itertools
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segformer.config import TestProtocol
from segformer.data import DATASETS, canonical_name, read_image
from segformer.model import MIN_INPUT_SIZE
from segformer.runner import NetworkRunner
from segformer.score_resize import resize_rows, resized_argmax, row_tiles
from segformer.transforms import normalize_image, rescale_size, resize_image

ImageInput = str | Path | Image.Image | np.ndarray
# TestProtocol fields that Segmenter's keyword arguments (and the CLI flags) may replace.
OVERRIDES = ("mode", "scale", "crop", "stride", "size_divisor", "aug_ratios", "flip")


def label_dtype(num_classes: int) -> torch.dtype:
    """The dtype of label maps of ``num_classes`` classes: uint8 up to 256 classes, int32 beyond."""
    return torch.uint8 if num_classes <= 256 else torch.int32


def view_size(height: int, width: int, scale: Sequence[int] | None, ratio: float = 1.0) -> tuple[int, int]:
    """Size (h, w) of the keep-ratio resize at ``scale`` (long, short) × ``ratio`` (mmseg ``MultiScaleFlipAug``).

    The target is (int(long · r), int(short · r)); without a scale it is (int(w · r), int(h · r)) of the image
    itself. The image is then rescaled to fit inside the target (mmcv ``imrescale``).
    """
    if scale is None:
        target = (int(width * ratio), int(height * ratio))
    else:
        target = (int(max(scale) * ratio), int(min(scale) * ratio))
    h, w = rescale_size(height, width, target)
    return max(h, 1), max(w, 1)


def aligned_size(height: int, width: int, divisor: int) -> tuple[int, int]:
    """Sides rounded up to multiples of ``divisor`` (NVlabs ``AlignedResize._align``)."""
    return -(-height // divisor) * divisor, -(-width // divisor) * divisor


def resize_for_test(image: np.ndarray, protocol: TestProtocol, ratio: float = 1.0) -> np.ndarray:
    """An H×W×3 uint8 image resized as the official test pipeline does (``Resize`` or ``AlignedResize``)."""
    size = view_size(*image.shape[:2], protocol.scale, ratio)
    image = resize_image(image, size)
    if protocol.size_divisor is not None:
        image = resize_image(image, aligned_size(*size, protocol.size_divisor))
    return image


def network_input(images: Sequence[np.ndarray], protocol: TestProtocol, ratio: float = 1.0) -> np.ndarray:
    """B×3×H×W float32 network input of equal-size H×W×3 uint8 RGB images, each resized (``resize_for_test``)
    and normalised as ``protocol`` tests them at scale ``ratio``."""
    batch = np.stack(
        [normalize_image(resize_for_test(image, protocol, ratio), protocol.mean, protocol.std) for image in images]
    )
    return np.ascontiguousarray(batch.transpose(0, 3, 1, 2))


def multi_scale(aug: bool | None, aug_ratios: Sequence[float] | None) -> bool:
    """Whether to test at several scales: ``aug`` when given, else whether ``aug_ratios`` were passed.

    Raises:
        ValueError: ``aug=False`` with ``aug_ratios``, which would be ignored.
    """
    if aug is None:
        return aug_ratios is not None
    if not aug and aug_ratios is not None:
        raise ValueError(f"aug_ratios={tuple(aug_ratios)} asks for multi-scale testing but aug=False: pass aug=True")
    return bool(aug)


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


class Segmenter:
    """Semantic segmentation of whole images with a SegFormer (or any model returning B×K×h×w logits).

    Args:
        model: the network; left in the train/eval mode it is in (each call runs in eval mode and restores it).
        protocol: how to test; default the model's recorded ``model.config.protocol``, else the legacy defaults
            ``TestProtocol()`` (whole at (2048, 512)) with a warning.
        aug: multi-scale (``protocol.aug_ratios``) + flip (``protocol.flip``) testing; default on when
            ``aug_ratios`` is given (passing ratios asks for multi-scale), off otherwise. ``aug=False`` with
            ``aug_ratios`` is refused. ``flip`` alone does not turn it on.
        engine: callable run instead of ``model`` on the normalised B×3×H×W float batch, returning B×K×h×w logits
            (e.g. an ONNX Runtime session wrapper).
        device: where to run; default the model's device (the model is moved there when given).
        max_elements: largest B×K×rows×W block of full-resolution scores built at once; ``predict``
            resizes and takes the argmax tile by tile when the full scores would be larger.
        dtype: "fp32", "bf16" or "fp16" autocast of the network; default bf16 on a CUDA GPU that supports it and on
            a CPU that computes bf16 natively (AMX or AVX512_BF16), else fp32 (``$SEGFORMER_DTYPE`` overrides it).
        compile: ``torch.compile`` the model (opt-in, for long jobs of fixed sizes; ``segformer.runner``).
        graphs: replay CUDA graphs per input shape; default on for CUDA.
        runner: the ``NetworkRunner`` to run the network with (then device, dtype, engine, compile and graphs are
            its own, and Segmenters given one runner share its CUDA graphs); default a new runner of ``model``.
        **overrides: protocol fields to replace (mode, scale, crop, stride, size_divisor, aug_ratios, flip);
            None leaves a field as it is, so CLI flags can be passed as they are (to set a field to None, pass a
            ``protocol`` with it).
    """

    def __init__(
        self,
        model: nn.Module,
        protocol: TestProtocol | None = None,
        *,
        aug: bool | None = None,
        engine: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: str | torch.device | None = None,
        max_elements: int = 1 << 26,
        dtype: str | None = None,
        compile: bool | None = None,
        graphs: bool | None = None,
        runner: NetworkRunner | None = None,
        **overrides: Any,
    ) -> None:
        unknown = sorted(set(overrides) - set(OVERRIDES))
        if unknown:
            raise TypeError(f"Segmenter got unknown setting(s) {unknown}; expected some of {', '.join(OVERRIDES)}")
        protocol = protocol if protocol is not None else getattr(getattr(model, "config", None), "protocol", None)
        if protocol is None:
            warnings.warn(
                f"{type(model).__name__} has no recorded test protocol; using whole at (2048, 512); "
                "pass protocol= or train/save with segformer to record one",
                UserWarning,
                stacklevel=2,
            )
            protocol = TestProtocol()
        self.protocol: TestProtocol = protocol.replace(**{k: v for k, v in overrides.items() if v is not None})
        self.aug = multi_scale(aug, overrides.get("aug_ratios"))
        self.runner = runner or NetworkRunner(
            model, device=device, dtype=dtype, engine=engine, compile=bool(compile), graphs=graphs
        )
        self.device = self.runner.device
        self.model = model
        self.num_classes: int = model.num_classes
        self.max_elements = max_elements
        self.ratios = self.protocol.aug_ratios if self.aug else (1.0,)
        self.flips = (False, True) if self.aug and self.protocol.flip else (False,)

    @classmethod
    def for_dataset(cls, model: nn.Module, name: str, aug: bool | None = None, **overrides: Any) -> Segmenter:
        """A Segmenter with the official test protocol of dataset ``name`` (``segformer.data.DATASETS``)."""
        return cls(model, DATASETS[canonical_name(name)].protocol, aug=aug, **overrides)

    @property
    def precision(self) -> str:
        """The network's precision: "fp32", "bf16" or "fp16"."""
        return self.runner.precision

    @property
    def engine(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        return self.runner.engine

    @property
    def num_views(self) -> int:
        return len(self.ratios) * len(self.flips)

    def __repr__(self) -> str:
        p = self.protocol
        parts = [p.mode, f"scale={p.scale}"]
        if p.size_divisor is not None:
            parts.append(f"size_divisor={p.size_divisor}")
        if p.mode == "slide":
            parts.append(f"crop={p.crop}, stride={p.stride}")
        if self.aug:
            parts.append(f"aug_ratios={list(self.ratios)}, flip={len(self.flips) == 2}")
        parts.append(self.runner.describe())
        return f"Segmenter({', '.join(parts)}, device={self.device})"

    # --- public API -----------------------------------------------------------------------------

    def predict_logits(self, image: ImageInput) -> torch.Tensor:
        """Class scores K×H×W at the original image size, on the segmenter's device.

        One view: the logits. Several views (multi-scale/flip): the log of the mean softmax
        probabilities, so that ``softmax`` of the result is mmseg's averaged probability in every case.
        """
        with self._evaluating():
            scores = self._scores(read_image(image)[None])[0]
            return scores.log_() if self.num_views > 1 else scores

    def predict(self, image: ImageInput) -> np.ndarray:
        """Label map H×W (uint8, int32 beyond 256 classes) at the original image size."""
        return self.predict_batch([image])[0]

    def predict_batch(self, images: Sequence[ImageInput]) -> list[np.ndarray]:
        """Label maps of several images; consecutive images of equal size share forward passes."""
        arrays = [read_image(image) for image in images]
        labels = []
        with self._evaluating():
            for _, group in itertools.groupby(arrays, key=lambda a: a.shape):
                labels += self._labels(np.stack(list(group)))
        return labels

    # --- internals ------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _evaluating(self) -> Iterator[None]:
        """Eval and inference mode for one call; every module's train/eval flag is restored afterwards."""
        modules = list(self.model.modules()) if isinstance(self.model, nn.Module) else []
        training = [m.training for m in modules]
        for m in modules:
            m.training = False
        try:
            with torch.inference_mode():
                yield
        finally:
            for m, flag in zip(modules, training, strict=True):
                m.training = flag

    def _row_tiles(self, batch: int, height: int, width: int) -> list[slice]:
        return row_tiles(batch * self.num_classes, height, width, self.max_elements)

    def _labels(self, images: np.ndarray) -> list[np.ndarray]:
        batch, height, width = images.shape[:3]
        dtype = label_dtype(self.num_classes)
        if self.num_views == 1 and self.protocol.mode == "whole" and self.device.type == "cpu":
            # labels straight from the small logits (segformer.score_resize); a GPU runs the dense resize faster
            x = self._inputs(images, 1.0)
            logits, padded = self._padded_logits(x)
            resized = tuple(x.shape[-2:])
            final = None if resized == (height, width) else (height, width)
            labels = resized_argmax(logits, padded, resized, final, self.max_elements)
            return list(labels.to(dtype).cpu().numpy())
        if batch * self.num_classes * height * width <= self.max_elements:
            labels = self._scores(images).argmax(1).to(dtype).cpu()
        else:  # huge image: keep the small per-view maps and resize + argmax one row tile at a time
            views = list(self._views(images))
            labels = torch.empty(batch, height, width, dtype=dtype)
            for rows in self._row_tiles(batch, height, width):
                tile = sum(self._view_scores(view, flip, rows, (height, width)) for view, flip in views)
                labels[:, rows] = self._average(tile).argmax(1).to(dtype).cpu()
        return list(labels.numpy())

    def _scores(self, images: np.ndarray) -> torch.Tensor:
        """B×K×H×W scores at the input size: logits for one view, mean probabilities for several."""
        batch, height, width = images.shape[:3]
        tiles = self._row_tiles(batch, height, width)
        if self.num_views == 1 and len(tiles) == 1:  # one view in one tile: its scores, no accumulator
            ((view, flip),) = self._views(images)
            return self._view_scores(view, flip, tiles[0], (height, width))
        scores = torch.zeros(batch, self.num_classes, height, width, device=self.device)
        for view, flip in self._views(images):
            for rows in tiles:
                scores[:, :, rows] += self._view_scores(view, flip, rows, (height, width))
        return self._average(scores)

    def _average(self, total: torch.Tensor) -> torch.Tensor:
        return total / self.num_views if self.num_views > 1 else total

    def _view_scores(self, view: torch.Tensor, flip: bool, rows: slice, size: tuple[int, int]) -> torch.Tensor:
        """One view's rows ``rows`` at the original size (mmseg ``inference``): probabilities if views are averaged."""
        same_size = tuple(view.shape[-2:]) == tuple(size)  # a bilinear resize to the same size is the identity
        scores = view[..., rows, :] if same_size else resize_rows(view, size, rows)
        scores = scores.softmax(1) if self.num_views > 1 else scores
        return scores.flip(-1) if flip else scores

    def _views(self, images: np.ndarray) -> Iterator[tuple[torch.Tensor, bool]]:
        """(logits at the resized image's size, flipped) of each test view (scale × flip), one at a time."""
        for ratio in self.ratios:
            x = self._inputs(images, ratio)
            for flip in self.flips:
                view = x.flip(-1) if flip else x
                logits = self._slide(view) if self.protocol.mode == "slide" else self._encode_decode(view)
                yield logits.float(), flip

    def _inputs(self, images: np.ndarray, ratio: float) -> torch.Tensor:
        """The normalised B×3×H×W batch of ``images`` resized for the test at scale ``ratio``."""
        return torch.from_numpy(network_input(images, self.protocol, ratio)).to(self.device)

    def _encode_decode(self, x: torch.Tensor) -> torch.Tensor:
        """mmseg ``encode_decode``: logits of the normalised batch ``x`` resized to its size (padded if too small)."""
        height, width = x.shape[-2:]
        logits, padded = self._padded_logits(x)
        logits = F.interpolate(logits, padded, mode="bilinear", align_corners=False)
        return logits[..., :height, :width]

    def _padded_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """The network's logits of ``x`` padded at the bottom and right to ``MIN_INPUT_SIZE``, and the padded size."""
        height, width = x.shape[-2:]
        pad_h, pad_w = max(MIN_INPUT_SIZE - height, 0), max(MIN_INPUT_SIZE - width, 0)
        padded = F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x
        return self.network(padded), (height + pad_h, width + pad_w)

    def network(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of a normalised B×3×H×W batch (``self.runner``). No resizing or padding."""
        return self.runner(x)

    def _slide(self, x: torch.Tensor) -> torch.Tensor:
        """mmseg ``slide_inference``: window logits resized to their window, overlaps averaged."""
        batch, _, height, width = x.shape
        total = x.new_zeros(batch, self.num_classes, height, width)
        count = x.new_zeros(1, 1, height, width)
        for y1, y2, x1, x2 in sliding_windows(height, width, self.protocol.crop, self.protocol.stride):
            total[:, :, y1:y2, x1:x2] += self._encode_decode(x[:, :, y1:y2, x1:x2])
            count[:, :, y1:y2, x1:x2] += 1
        return total / count
