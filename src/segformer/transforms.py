"""Joint image + mask training transforms, following mmsegmentation 0.x (the official SegFormer code).

Every transform is called as ``transform(image, mask, rng)`` and returns ``(image, mask)``. The
image is H×W×3 uint8 RGB and the mask H×W uint8 (255 = ignore) until ``Normalize`` turns them into
a C×H×W float tensor and an H×W int64 tensor; ``Pad`` works on those tensors, as mmseg pads after
normalising. Masks are always resized with nearest neighbour. All randomness comes from ``rng``, a
``numpy.random.Generator`` the caller seeds per sample, so augmentation is reproducible and does not
depend on the number of data-loading workers.

The official train pipeline (SPEC §4) is built by ``train_transforms``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from segformer.constants import IGNORE_INDEX, IMAGE_MEAN, IMAGE_STD

Sample = tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]


def rescale_size(height: int, width: int, scale: Sequence[int]) -> tuple[int, int]:
    """Size (h, w) that fits the image inside ``scale`` (long edge, short edge) keeping its aspect ratio.

    mmcv ``imrescale``: the factor is min(long / max(h, w), short / min(h, w)), sides rounded half up.
    """
    factor = min(max(scale) / max(height, width), min(scale) / min(height, width))
    return int(height * factor + 0.5), int(width * factor + 0.5)


def resize(image: np.ndarray, mask: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Resize to ``size`` (h, w): the image bilinearly, the mask with nearest neighbour."""
    h, w = size
    image = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize((w, h), Image.Resampling.NEAREST))
    return image, mask


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


# OpenCV's 8-bit HSV (H in [0, 180), S and V in [0, 255]), which mmseg's PhotoMetricDistortion uses.
_HSV_SHIFT = 12
_SDIV = np.concatenate([[0], np.rint((255 << _HSV_SHIFT) / np.arange(1, 256))]).astype(np.int64)
_HDIV = np.concatenate([[0], np.rint((180 << _HSV_SHIFT) / (6.0 * np.arange(1, 256)))]).astype(np.int64)


def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 RGB → uint8 HSV exactly as OpenCV's ``COLOR_RGB2HSV`` (fixed-point, 12-bit tables)."""
    rgb = image.astype(np.int64)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    v = rgb.max(-1)
    diff = v - rgb.min(-1)
    s = (diff * _SDIV[v] + (1 << (_HSV_SHIFT - 1))) >> _HSV_SHIFT
    h = np.where(v == r, g - b, np.where(v == g, b - r + 2 * diff, r - g + 4 * diff))
    h = (h * _HDIV[diff] + (1 << (_HSV_SHIFT - 1))) >> _HSV_SHIFT
    h = np.where(h < 0, h + 180, h)
    return np.stack([h, s, v], -1).astype(np.uint8)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """uint8 HSV → uint8 RGB as OpenCV's ``COLOR_HSV2RGB`` (float32 sectors, rounded to nearest)."""
    h = hsv[..., 0].astype(np.float32) * np.float32(6.0 / 180.0)
    s = hsv[..., 1].astype(np.float32) * np.float32(1.0 / 255.0)
    v = hsv[..., 2].astype(np.float32) * np.float32(1.0 / 255.0)
    h = np.mod(h, np.float32(6.0))
    sector = np.floor(h).astype(np.int64)
    f = h - sector
    tab = np.stack([v, v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))], -1)
    # (r, g, b) picked from tab = [v, p, q, t] for sectors 0…5 (OpenCV's sector_data, reordered to RGB)
    order = np.array([[0, 3, 1], [2, 0, 1], [1, 0, 3], [1, 2, 0], [3, 1, 0], [0, 1, 2]])
    rgb = np.take_along_axis(tab, order[sector], axis=-1)
    rgb = np.where((s == 0)[..., None], v[..., None], rgb)
    return np.clip(np.rint(rgb * np.float32(255.0)), 0, 255).astype(np.uint8)


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

    Each step truncates to uint8 as mmseg does. The image is RGB here (mmseg works on BGR and
    converts with BGR2HSV, which is the same colour transform).
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
            hsv = rgb_to_hsv(image)
            hsv[..., 1] = _convert(hsv[..., 1], alpha=rng.uniform(*self.saturation_range))
            image = hsv_to_rgb(hsv)
        if rng.integers(2):
            hsv = rgb_to_hsv(image)
            shift = int(rng.integers(-self.hue_delta, self.hue_delta))
            hsv[..., 0] = (hsv[..., 0].astype(np.int64) + shift) % 180
            image = hsv_to_rgb(hsv)
        if mode == 0:
            image = self._contrast(image, rng)
        return image, mask


class Normalize:
    """(image − mean) / std on RGB 0–255 → C×H×W float32 tensor; the mask → H×W int64 tensor."""

    def __init__(self, mean: Sequence[float] = IMAGE_MEAN, std: Sequence[float] = IMAGE_STD) -> None:
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator | None = None) -> Sample:
        x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)
        return (x - self.mean) / self.std, torch.from_numpy(mask.astype(np.int64))


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
