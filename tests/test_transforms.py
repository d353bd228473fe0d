"""Training transforms: image/mask alignment, mmseg's crop retries and photometric steps, by hand-computed answers.

That the resizes and HSV conversions are OpenCV's own is pinned in test_protocol.py.
"""

import numpy as np
import pytest
import torch

from segformer.constants import IMAGE_MEAN, IMAGE_STD
from segformer.transforms import (
    Compose,
    Normalize,
    Pad,
    PhotoMetricDistortion,
    RandomCrop,
    RandomFlip,
    RandomResize,
    train_transforms,
)


class Scripted:
    """A stand-in generator returning scripted draws, failing on any draw not scripted."""

    def __init__(self, integers=(), uniform=(), random=()) -> None:
        self.queues = {"integers": list(integers), "uniform": list(uniform), "random": list(random)}

    def _next(self, kind: str):
        assert self.queues[kind], f"unexpected extra {kind} draw"
        return self.queues[kind].pop(0)

    def integers(self, low, high=None):
        return self._next("integers")

    def uniform(self, low, high):
        return self._next("uniform")

    def random(self):
        return self._next("random")

    def exhausted(self) -> bool:
        return not any(self.queues.values())


def coded_sample(height=48, width=72, block=8, seed=0):
    """An image whose 8×8 blocks each have their own colour, and the mask of block ids (the class)."""
    rng = np.random.default_rng(seed)
    rows, cols = height // block, width // block
    mask = np.arange(rows * cols, dtype=np.uint8).reshape(rows, cols).repeat(block, 0).repeat(block, 1)
    palette = rng.choice(np.arange(1 << 12, 1 << 24), rows * cols, replace=False)  # far from black
    colours = np.stack([(palette >> 16) & 255, (palette >> 8) & 255, palette & 255], -1).astype(np.uint8)
    return colours[mask], mask, colours


def class_from_image(image: np.ndarray, colours: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(class of every pixel whose 3×3 neighbourhood has one palette colour, mask of those pixels)."""
    code = (image[..., 0].astype(np.int64) << 16) | (image[..., 1].astype(np.int64) << 8) | image[..., 2]
    lookup = {int((c[0] << 16) | (c[1] << 8) | c[2]): k for k, c in enumerate(colours.astype(np.int64))}
    h, w = code.shape
    padded = np.pad(code, 1, mode="edge")
    uniform = np.ones((h, w), bool)
    for dy in range(3):
        for dx in range(3):
            uniform &= padded[dy : dy + h, dx : dx + w] == code
    known = np.vectorize(lambda c: c in lookup)(code) & uniform
    classes = np.vectorize(lambda c: lookup.get(c, -1))(code)
    return classes, known


def test_geometric_transforms_keep_image_and_mask_aligned():
    image, mask, colours = coded_sample()
    pipeline = Compose([RandomResize((160, 64), (0.5, 2.0)), RandomCrop((40, 40), 0.75), RandomFlip(0.5)])
    flips = set()
    for seed in range(12):
        out_image, out_mask = pipeline(image, mask, np.random.default_rng(seed))
        assert out_image.shape[:2] == out_mask.shape
        classes, known = class_from_image(out_image, colours)
        assert known.mean() > 0.2
        np.testing.assert_array_equal(out_mask[known], classes[known])
        # the left-to-right order of block ids tells whether the crop was flipped
        row = out_mask[out_mask.shape[0] // 2]
        flips.add(bool(row[0] % 9 > row[-1] % 9))
    assert flips == {True, False}


def test_random_resize_keeps_ratio_inside_the_drawn_scale():
    image, mask, _ = coded_sample()  # 48 × 72
    # ratio 1: scale (2048, 512) -> factor min(2048 / 72, 512 / 48) = 10.667 -> 512 × 768
    out_image, out_mask = RandomResize((2048, 512))(image, mask, Scripted(uniform=[1.0]))
    assert out_image.shape == (512, 768, 3) and out_mask.shape == (512, 768)
    # ratio 0.5: scale (1024, 256) -> factor 256 / 48 = 5.333 -> 256 × 384
    out_image, _ = RandomResize((2048, 512))(image, mask, Scripted(uniform=[0.5]))
    assert out_image.shape == (256, 384, 3)
    # ratio 0.3: scale (int(614.4), int(153.6)) = (614, 153) -> factor 153 / 48 = 3.1875 -> 153 × 230 (229.5 rounds up)
    out_image, _ = RandomResize((2048, 512))(image, mask, Scripted(uniform=[0.3]))
    assert out_image.shape == (153, 230, 3)


def test_pad_and_normalize_after_a_small_crop():
    image, mask, colours = coded_sample(height=24, width=32)
    out_image, out_mask = Compose([RandomCrop((40, 48), 1.0), Normalize(), Pad((40, 48))])(
        image, mask, Scripted(integers=[0, 0])
    )
    assert out_image.shape == (3, 40, 48) and out_mask.dtype == torch.int64
    assert (out_mask[24:] == 255).all() and (out_mask[:, 32:] == 255).all()
    assert (out_image[:, 24:] == 0).all() and (out_image[:, :, 32:] == 0).all()
    np.testing.assert_array_equal(out_mask[:24, :32].numpy(), mask)
    expected = (image.astype(np.float32) - np.float32(IMAGE_MEAN)) / np.float32(IMAGE_STD)
    np.testing.assert_allclose(out_image[:, :24, :32].permute(1, 2, 0).numpy(), expected, rtol=1e-6, atol=1e-6)


def two_class_mask() -> np.ndarray:
    mask = np.ones((10, 100), np.uint8)  # columns 0..79 class 1, 80..99 class 2
    mask[:, 80:] = 2
    return mask


def crop_columns(mask: np.ndarray, lefts: list[int], cat_max_ratio: float = 0.75) -> tuple[np.ndarray, Scripted]:
    rng = Scripted(integers=[v for left in lefts for v in (0, left)])
    image = np.zeros((*mask.shape, 3), np.uint8)
    return RandomCrop((10, 10), cat_max_ratio)(image, mask, rng)[1], rng


def test_random_crop_retries_until_no_class_dominates():
    mask = two_class_mask()
    # left 0 and 5: one class only; left 75: 50 px of each class (ratio 0.5 < 0.75) is accepted
    out, rng = crop_columns(mask, [0, 5, 75])
    np.testing.assert_array_equal(out, mask[:, 75:85])
    assert rng.exhausted()
    # left 72: class 1 covers 80 px of 100 (0.8) -> rejected; left 74: 60 of 100 -> accepted
    out, _ = crop_columns(mask, [72, 74])
    np.testing.assert_array_equal(out, mask[:, 74:84])


def test_random_crop_takes_the_eleventh_crop_after_ten_rejections():
    mask = two_class_mask()
    out, rng = crop_columns(mask, [0] * 10 + [3])
    np.testing.assert_array_equal(out, mask[:, 3:13])
    assert rng.exhausted()


def test_random_crop_ratio_ignores_255_and_is_strict():
    mask = two_class_mask()
    mask[:, 70:76] = 255  # crop at 70: 60 ignored, class 1 30 px, class 2 10 px -> 30 / 40 = 0.75, not < 0.75
    out, _ = crop_columns(mask, [70, 75])
    np.testing.assert_array_equal(out, mask[:, 75:85])
    # without retries (cat_max_ratio 1) the first crop is kept whatever it holds
    out, rng = crop_columns(mask, [0], cat_max_ratio=1.0)
    np.testing.assert_array_equal(out, mask[:, 0:10])
    assert rng.exhausted()


PIXELS = np.array([[[100, 50, 200], [250, 0, 10], [200, 200, 200]]], np.uint8)


def test_photometric_brightness_then_contrast_last():
    # brightness on (+10.7), mode 0, saturation off, hue off, contrast on (×1.5); each step truncates to uint8
    rng = Scripted(integers=[1, 0, 0, 0, 1], uniform=[10.7, 1.5])
    out, _ = PhotoMetricDistortion()(PIXELS, None, rng)
    # brightness: 110.7 60.7 210.7 | 260.7 10.7 20.7 | 210.7 ... -> 110 60 210 | 255 10 20 | 210 210 210
    # contrast ×1.5: 165 90 315 | 382.5 15 30 | 315 ... clipped to 255
    np.testing.assert_array_equal(out, [[[165, 90, 255], [255, 15, 30], [255, 255, 255]]])
    assert rng.exhausted()


def test_photometric_contrast_first_in_mode_1():
    # brightness on (+100), mode 1: contrast on (×0.5) right after brightness, then saturation off, hue off
    rng = Scripted(integers=[1, 1, 1, 0, 0], uniform=[100.0, 0.5])
    out, _ = PhotoMetricDistortion()(PIXELS, None, rng)
    # brightness: 200 150 300->255 | 350->255 100 110 | 300->255 ...; contrast ×0.5 truncates: 100 75 127 | 127 50 55
    np.testing.assert_array_equal(out, [[[100, 75, 127], [127, 50, 55], [127, 127, 127]]])
    assert rng.exhausted()


def test_photometric_saturation_and_hue_in_hsv():
    red_grey = np.array([[[255, 0, 0], [90, 90, 90]]], np.uint8)
    # saturation ×0.5 on red: S 255 -> 127 (127.5 truncated) -> G = B = 255 · (1 − 127/255) = 128; grey keeps S = 0
    rng = Scripted(integers=[0, 0, 1, 0, 0], uniform=[0.5])
    out, _ = PhotoMetricDistortion()(red_grey, None, rng)
    np.testing.assert_array_equal(out, [[[255, 128, 128], [90, 90, 90]]])
    # hue −18 (OpenCV units of 2°): red 0° -> 324°: R = 255, G = 0, B = 255 · (360 − 324) / 60 = 153
    rng = Scripted(integers=[0, 0, 0, 1, -18, 0])
    out, _ = PhotoMetricDistortion()(red_grey, None, rng)
    np.testing.assert_array_equal(out, [[[255, 0, 153], [90, 90, 90]]])
    assert rng.exhausted()


@pytest.mark.parametrize("photometric", [True, False])
def test_train_transforms_are_a_function_of_the_generator_seed(photometric):
    image, mask, _ = coded_sample()
    pipeline = train_transforms((32, 32), (96, 64), photometric=photometric)
    a = pipeline(image, mask, np.random.default_rng(7))
    b = pipeline(image, mask, np.random.default_rng(7))
    c = pipeline(image, mask, np.random.default_rng(8))
    assert a[0].shape == (3, 32, 32) and a[1].shape == (32, 32)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
