"""Joint image + mask training transforms, following mmsegmentation 0.x (the official SegFormer code).

Every transform is called as ``transform(image, mask, rng)`` and returns ``(image, mask)``. The
image is H×W×3 uint8 RGB and the mask H×W uint8 (255 = ignore) until ``Normalize`` turns them into
a C×H×W float tensor and an H×W int64 tensor; ``Pad`` works on those tensors, as mmseg pads after
normalising. Every resize and colour conversion is OpenCV's, as in mmseg (``mmcv.imresize`` is
``cv2.resize``; ``mmcv.bgr2hsv`` is ``cv2.cvtColor``): images bilinearly (``INTER_LINEAR``, no
antialiasing when shrinking), masks with nearest neighbour. All randomness comes from ``rng``, a
``numpy.random.Generator`` the caller seeds per sample, so augmentation is reproducible and does not
depend on the number of data-loading workers.

``train_transforms`` builds the official train pipeline (``train_pipeline`` of NVlabs/SegFormer
``local_configs/_base_/datasets/ade20k_repeat.py`` and ``cityscapes_1024x1024_repeat.py``; the
transforms are those of ``mmseg/datasets/pipelines/transforms.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from segformer.constants import IGNORE_INDEX, IMAGE_MEAN, IMAGE_STD

Sample = tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]


def rescale_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """Size (h, w) that fits the image inside ``scale`` (long edge, short edge) keeping its aspect ratio.

    mmcv ``imrescale``: the factor is min(long / max(h, w), short / min(h, w)), sides rounded half up.
    """
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize_image(image: np.ndarray, size: tuple[int, int], interpolation: int = cv2.INTER_LINEAR) -> np.ndarray:
    """``image`` resized to ``size`` (h, w) by ``cv2.resize`` (mmcv ``imresize``); returned as is at its own size.

    ``INTER_LINEAR`` on uint8 is OpenCV's fixed-point bilinear: align_corners False, no antialiasing,
    results rounded to integers.
    """
    if image.shape[:2] == tuple(size):
        return image  # cv2.resize copies the image unchanged when the size does not change
    return cv2.resize(image, (size[1], size[0]), interpolation=interpolation)


def resize(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``size`` (h, w): the image bilinearly, the mask with nearest neighbour (OpenCV, as mmseg)."""
    return resize_image(image, size), resize_image(mask, size, cv2.INTER_NEAREST)


class RandomResize:
    """Resize keeping the aspect ratio to ``scale`` × a ratio drawn uniformly from ``ratio_range``.

    mmseg ``Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)``: the target scale is
    (int(long × r), int(short × r)) and the image is rescaled to fit inside it.

    Args:
        scale: (long edge, short edge), e.g. (2048, 512).
        ratio_range: (min, max) of the random ratio.
    """

    def __init__(self, scale: Sequence[int] = (2048, 512), ratio_range: Sequence[float] = (0.5, 2.0)) -> None:
        self.scale = tuple(scale)
        self.ratio_range = tuple(ratio_range)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Sample:
        low, high = self.ratio_range
        ratio = rng.uniform(low, high)
        target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
        return resize(image, mask, rescale_size(*mask.shape[:2], target))


class RandomCrop:
    """Random crop to ``crop`` (h, w), retried up to 10 times while one class covers too much of it.

    mmseg ``RandomCrop``: a crop is accepted when it holds at least two classes and the largest
    covers less than ``cat_max_ratio`` of the labelled pixels (``ignore_index`` not counted); after
    ten rejected crops the eleventh is taken as it is. Images smaller than ``crop`` stay whole on
    that side (``Pad`` fills them up later).
    """

    def __init__(self, crop: Sequence[int], cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX) -> None:
        self.crop = tuple(crop)
        self.cat_max_ratio = cat_max_ratio
        self.ignore_index = ignore_index

    def _box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, int]:
        top = int(rng.integers(0, max(height - self.crop[0], 0) + 1))
        left = int(rng.integers(0, max(width - self.crop[1], 0) + 1))
        return top, left

    def _accept(self, mask: np.ndarray) -> bool:
        _, counts = np.unique(mask[mask != self.ignore_index], return_counts=True)
        return len(counts) > 1 and counts.max() / counts.sum() < self.cat_max_ratio

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Sample:
        ch, cw = self.crop
        top, left = self._box(*mask.shape, rng)
        if self.cat_max_ratio < 1.0:
            for _ in range(10):
                if self._accept(mask[top : top + ch, left : left + cw]):
                    break
                top, left = self._box(*mask.shape, rng)
        return image[top : top + ch, left : left + cw], mask[top : top + ch, left : left + cw]


class RandomFlip:
    """Horizontal flip with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Sample:
        if rng.random() < self.p:
            return np.ascontiguousarray(image[:, ::-1]), np.ascontiguousarray(mask[:, ::-1])
        return image, mask


def _convert(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """mmseg ``convert``: x × alpha + beta in float32, clipped to [0, 255], truncated to uint8."""
    return np.clip(x.astype(np.float32) * np.float32(alpha) + np.float32(beta), 0, 255).astype(np.uint8)


class PhotoMetricDistortion:
    """mmseg ``PhotoMetricDistortion``: each step applied with probability 1/2, in this order:

    1. brightness: add a value drawn from U(-brightness_delta, brightness_delta);
    2. a mode bit draws whether contrast (multiply by U(contrast_range)) comes here (mode 1) or last (mode 0);
    3. saturation: in OpenCV's 8-bit HSV, multiply S by U(saturation_range);
    4. hue: in HSV, add an integer in [-hue_delta, hue_delta) to H, modulo 180;
    5. contrast, in mode 0.

    Each step truncates to uint8 as mmseg does. HSV is OpenCV's 8-bit HSV (``cv2.cvtColor``; H in
    [0, 180)). The image is RGB here: mmseg works on BGR with ``COLOR_BGR2HSV``, the same colour transform.
    """

    def __init__(
        self,
        brightness_delta: int = 32,
        contrast_range: Sequence[float] = (0.5, 1.5),
        saturation_range: Sequence[float] = (0.5, 1.5),
        hue_delta: int = 18,
    ) -> None:
        self.brightness_delta = brightness_delta
        self.contrast_range = tuple(contrast_range)
        self.saturation_range = tuple(saturation_range)
        self.hue_delta = hue_delta

    def _contrast(self, image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if rng.integers(2):
            return _convert(image, alpha=rng.uniform(*self.contrast_range))
        return image

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Sample:
        if rng.integers(2):
            image = _convert(image, beta=rng.uniform(-self.brightness_delta, self.brightness_delta))
        mode = rng.integers(2)
        if mode == 1:
            image = self._contrast(image, rng)
        if rng.integers(2):
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
            hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if rng.integers(2):
            hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
            shift = int(rng.integers(-self.hue_delta, self.hue_delta))
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + shift) % 180
            image = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if mode == 0:
            image = self._contrast(image, rng)
        return image, mask


def normalize_image(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """H×W×3 (image − mean) × (1 / std) in float32, with OpenCV's arithmetic as mmcv ``imnormalize``."""
    out = image.astype(np.float32)
    cv2.subtract(out, np.array([mean], dtype=np.float64), out)
    cv2.multiply(out, 1 / np.array([std], dtype=np.float64), out)
    return out


class Normalize:
    """(image − mean) / std on RGB 0–255 (``normalize_image``) → C×H×W float32 tensor; the mask → H×W int64 tensor."""

    def __init__(self, mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD) -> None:
        self.mean = tuple(mean)
        self.std = tuple(std)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None) -> Sample:
        x = torch.from_numpy(normalize_image(image, self.mean, self.std)).permute(2, 0, 1)
        return x, torch.from_numpy(mask.astype(np.int64))


class Pad:
    """Pad tensors at the bottom and right to ``size`` (h, w): image with ``value``, mask with ``mask_value``."""

    def __init__(self, size: Sequence[int], value: float = 0.0, mask_value: int = IGNORE_INDEX) -> None:
        self.size = tuple(size)
        self.value = value
        self.mask_value = mask_value

    def __call__(self, image: torch.Tensor, mask: torch.Tensor, rng: np.random.Generator | None = None) -> Sample:
        pad_h = max(self.size[0] - image.shape[-2], 0)
        pad_w = max(self.size[1] - image.shape[-1], 0)
        if pad_h or pad_w:
            image = F.pad(image, (0, pad_w, 0, pad_h), value=self.value)
            mask = F.pad(mask, (0, pad_w, 0, pad_h), value=self.mask_value)
        return image, mask


class Compose:
    """Apply transforms in order, all drawing from the same generator."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> Sample:
        for t in self.transforms:
            image, mask = t(image, mask, rng)
        return image, mask

    def __repr__(self) -> str:
        return "Compose(" + ", ".join(type(t).__name__ for t in self.transforms) + ")"


def train_transforms(
    crop: Sequence[int],
    scale: Sequence[int],
    ratio_range: Sequence[float] = (0.5, 2.0),
    cat_max_ratio: float = 0.75,
    flip_prob: float = 0.5,
    photometric: bool = True,
    mean: Sequence[float] = IMAGE_MEAN,
    std: Sequence[float] = IMAGE_STD,
) -> Compose:
    """The official SegFormer train pipeline: resize, crop, flip, photometric, normalise, pad.

    Args:
        crop: (h, w) of the training crop, e.g. (512, 512).
        scale: (long, short) edge before the random ratio, e.g. (2048, 512).
        ratio_range: range of the random resize ratio.
        cat_max_ratio: largest share one class may take of a crop (1.0 turns the retries off).
        flip_prob: horizontal flip probability.
        photometric: apply ``PhotoMetricDistortion``.
        mean: normalisation mean (RGB 0–255).
        std: normalisation std.
    """
    steps = [RandomResize(scale, ratio_range), RandomCrop(crop, cat_max_ratio), RandomFlip(flip_prob)]
    if photometric:
        steps.append(PhotoMetricDistortion())
    return Compose([*steps, Normalize(mean, std), Pad(crop)])
