"""Segmenter: mmseg test protocol (resize rule, sliding windows, multi-scale + flip) and tiled argmax."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segformer import create_model, score_resize
from segformer.config import TestProtocol as Protocol  # aliased: pytest would collect a "Test…" class
from segformer.constants import IMAGE_MEAN, IMAGE_STD
from segformer.inference import Segmenter, label_dtype, sliding_windows, view_size
from segformer.score_resize import resize_rows, resized_argmax

K = 4


def protocol(**fields) -> Protocol:
    """A test protocol from the legacy defaults (whole, (2048, 512), plain Resize)."""
    return Protocol(**fields)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("b0", num_classes=K).eval()


def random_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


class Symmetric(nn.Module):
    """A left-right symmetric model: the mean of f(x) and the mirror of f(mirrored x)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.num_classes = inner.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.inner(x) + self.inner(x.flip(-1)).flip(-1)) / 2


def reference_scores(model, image, sizes, flip):
    """Hand-written mmseg aug_test: per scale (and flip) cv2 resize, normalise, forward, resize to the view
    (encode_decode) and to the image (whole_inference), softmax, flip back; mean."""
    h, w = image.shape[:2]
    mean, std = torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    probs = []
    with torch.no_grad():
        for size in sizes:
            resized = cv2.resize(image, size[::-1], interpolation=cv2.INTER_LINEAR)
            xr = (torch.from_numpy(resized).permute(2, 0, 1)[None].float() - mean) / std
            for flipped in (False, True) if flip else (False,):
                logits = model(xr.flip(-1) if flipped else xr)
                logits = F.interpolate(logits, size, mode="bilinear", align_corners=False)
                logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)
                probs.append(logits.softmax(1).flip(-1)[0] if flipped else logits.softmax(1)[0])
    return torch.stack(probs).mean(0)


@pytest.mark.parametrize(
    ("hw", "scale", "ratio", "expected"),
    [
        ((512, 683), (2048, 512), 1.0, (512, 683)),  # ADE-like: already at the short side 512
        ((375, 500), (2048, 512), 1.0, (512, 683)),  # factor 512/375; 500 * 1.3653 = 682.67 -> 683
        ((100, 3000), (2048, 512), 1.0, (68, 2048)),  # long side bound: factor 2048/3000
        ((512, 683), (2048, 512), 0.875, (448, 598)),  # scale (1792, 448); 683 * 0.875 = 597.6 -> 598
        ((1024, 2048), (2048, 1024), 0.75, (768, 1536)),  # Cityscapes ratio 0.75
        ((1024, 2048), (2048, 1024), 1.75, (1792, 3584)),  # Cityscapes ratio 1.75
        ((45, 71), None, 0.5, (22, 35)),  # no scale: target (int(35.5), int(22.5)) = (35, 22) -> factor 22/45
        ((97, 131), None, 0.75, (72, 97)),  # target (98, 72): factor 72/97 -> 72 × int(97.74)
    ],
)
def test_resize_follows_mmcv_keep_ratio_rule(hw, scale, ratio, expected):
    assert view_size(*hw, scale, ratio) == expected


def test_sliding_windows_match_mmseg_grid():
    # h: max(100 - 64 + 47, 0) // 48 + 1 = 2 rows, the second pushed back to end at 100; w: 2 columns ending at 70.
    assert sliding_windows(100, 70, (64, 64), (48, 48)) == [
        (0, 64, 0, 64),
        (0, 64, 6, 70),
        (36, 100, 0, 64),
        (36, 100, 6, 70),
    ]
    assert sliding_windows(30, 40, (64, 64), (48, 48)) == [(0, 30, 0, 40)]  # smaller than the crop: one window


def test_resize_rows_tiles_stitch_exactly_and_match_interpolate():
    x = torch.randn(2, 3, 13, 17, generator=torch.Generator().manual_seed(1))
    for size in [(101, 77), (5, 40), (13, 17)]:
        full = resize_rows(x, size, slice(0, size[0]))
        for step in (1, 7):
            tiles = [resize_rows(x, size, slice(r, min(r + step, size[0]))) for r in range(0, size[0], step)]
            assert torch.equal(torch.cat(tiles, dim=2), full)
        torch.testing.assert_close(full, F.interpolate(x, size, mode="bilinear", align_corners=False))


def blobs(batch: int, classes: int, h: int, w: int, seed: int) -> torch.Tensor:
    """Logits whose argmax forms regions a few pixels across (boundaries on a fraction of the pixels)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(batch, classes, max(h // 6, 1), max(w // 6, 1), generator=g) * 3
    smooth = F.interpolate(coarse, (h, w), mode="bilinear", align_corners=False)
    return smooth + 0.05 * torch.randn(batch, classes, h, w, generator=g)


@pytest.mark.parametrize(
    "shape, size, crop, final",
    [
        ((2, 150, 32, 32), (128, 128), None, None),  # the ×4 of SegFormer's logits, a batch
        ((1, 19, 25, 33), (100, 129), (97, 129), None),  # odd factors, a crop (the padding of a small image)
        ((1, 5, 40, 30), (40, 30), None, None),  # same size: the identity
        ((1, 7, 30, 40), (21, 25), None, None),  # shrinking
        ((1, 150, 32, 44), (128, 176), None, (120, 171)),  # mmseg's second resize, to the original image
        ((2, 6, 17, 23), (68, 92), (66, 90), (131, 45)),  # crop, then a second resize up and down
    ],
)
def test_resized_argmax_equals_the_argmax_of_the_resizes(shape, size, crop, final, monkeypatch):
    logits = blobs(*shape, seed=sum(shape))
    height, width = crop or size
    scores = F.interpolate(logits, size, mode="bilinear", align_corners=False)[..., :height, :width]
    if final is not None:
        scores = F.interpolate(scores, final, mode="bilinear", align_corners=False)
    dense = scores.argmax(1)
    monkeypatch.setattr(score_resize, "CHUNK_PIXELS", 97)  # several chunks
    shortcut = resized_argmax(logits, size, crop, final)
    assert torch.equal(shortcut, dense)  # only the boundary pixels interpolated
    monkeypatch.setattr(score_resize, "DENSE_SHARE", 0.0)
    assert torch.equal(resized_argmax(logits, size, crop, final, max_elements=5000), dense)  # the dense fallback


def test_predict_takes_the_same_labels_as_the_argmax_of_the_scores(model):
    """``predict`` (labels from the low-resolution logits) against ``predict_logits`` (full-resolution scores)."""
    cases = [(96, 128, None), (40, 52, None), (30, 70, None), (50, 75, (64, 32)), (45, 60, (100, 80))]
    for h, w, scale in cases:  # tested at its own size (padded to 32 pixels), or resized first (two resizes)
        image = random_image(h, w, seed=h)
        segmenter = Segmenter(model, protocol(scale=scale))
        assert np.array_equal(segmenter.predict(image), segmenter.predict_logits(image).argmax(0).numpy())


@pytest.mark.parametrize("crop", [(40, 52), (64, 64)])
def test_slide_with_one_window_equals_whole(model, crop):
    image = random_image(40, 52)
    whole = Segmenter(model, protocol(scale=None)).predict_logits(image)
    slide = Segmenter(model, protocol(mode="slide", scale=None, crop=crop, stride=(32, 32))).predict_logits(image)
    torch.testing.assert_close(slide, whole, atol=1e-5, rtol=1e-5)


def test_slide_averages_overlapping_windows(model):
    image = random_image(40, 52, seed=3)
    x = (
        torch.from_numpy(image).permute(2, 0, 1)[None].float() - torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1)
    ) / torch.tensor(IMAGE_STD).view(1, 3, 1, 1)
    total, count = torch.zeros(1, K, 40, 52), torch.zeros(1, 1, 40, 52)
    with torch.no_grad():
        for y1, x1 in [(0, 0), (0, 20), (8, 0), (8, 20)]:  # crop 32x32, stride 24: y in {0, 8}, x in {0, 20}
            logits = model(x[:, :, y1 : y1 + 32, x1 : x1 + 32])
            total[:, :, y1 : y1 + 32, x1 : x1 + 32] += F.interpolate(logits, (32, 32), mode="bilinear")
            count[:, :, y1 : y1 + 32, x1 : x1 + 32] += 1
    got = Segmenter(model, protocol(mode="slide", scale=None, crop=(32, 32), stride=(24, 24))).predict_logits(image)
    torch.testing.assert_close(got, (total / count)[0], atol=1e-5, rtol=1e-5)


def test_flip_of_a_symmetric_model_changes_nothing(model):
    image = random_image(37, 50, seed=1)
    symmetric = Symmetric(model)
    one_view = protocol(scale=(64, 32), aug_ratios=(1.0,), flip=True)
    plain = Segmenter(symmetric, one_view)
    flipped = Segmenter(symmetric, one_view, aug=True)
    torch.testing.assert_close(flipped.predict_logits(image).exp(), plain.predict_logits(image).softmax(0))
    np.testing.assert_array_equal(flipped.predict(image), plain.predict(image))
    # the same test is not vacuous: the asymmetric model's flipped view does change the scores
    base = Segmenter(model, one_view).predict_logits(image).softmax(0)
    assert not torch.allclose(Segmenter(model, one_view, aug=True).predict_logits(image).exp(), base, atol=1e-3)


@pytest.mark.parametrize("flip", [False, True])
def test_multi_scale_average_equals_reference(model, flip):
    image = random_image(70, 94, seed=2)
    # scale (128, 64) x 0.5 = (64, 32): factor 32/70 -> 32 x 42.97 -> (32, 43); x 1.0: factor 64/70 -> (64, 86)
    expected = reference_scores(model, image, [(32, 43), (64, 86)], flip)
    segmenter = Segmenter(model, protocol(scale=(128, 64), aug_ratios=(0.5, 1.0), flip=flip), aug=True)
    torch.testing.assert_close(segmenter.predict_logits(image).exp(), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize(
    ("mode", "hw"),
    [("whole", (17, 23)), ("whole", (45, 71)), ("slide", (31, 200)), ("slide", (130, 90)), ("whole", (300, 90))],
)
def test_outputs_have_the_input_size(model, mode, hw):
    # (17, 23) at ratio 0.75 is 24×32 and (31, 200) is 10×64, below MIN_INPUT_SIZE (padded); (300, 90) and
    # (130, 90) exceed the scale (64, 32); slide windows are smaller than the crop.
    image = random_image(*hw)
    options = {"mode": mode, "scale": (64, 32), "crop": (32, 32), "stride": (21, 21), "aug_ratios": (0.75, 1.25)}
    segmenter = Segmenter(model, protocol(**options, flip=False), aug=True)
    logits = segmenter.predict_logits(image)
    labels = segmenter.predict(image)
    assert logits.shape == (K, *hw) and labels.shape == hw and labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, logits.argmax(0).numpy())


@pytest.mark.parametrize(
    ("options", "aug"), [({}, False), ({"aug_ratios": (0.5, 1.0)}, True), ({"mode": "slide", "crop": (32, 32)}, False)]
)
def test_tiled_argmax_equals_untiled(model, options, aug):
    image = random_image(61, 83, seed=4)
    untiled = Segmenter(model, protocol(scale=(64, 32), **options), aug=aug)
    tiled = Segmenter(model, protocol(scale=(64, 32), **options), aug=aug, max_elements=K * 83 * 5)  # 5 rows a tile
    expected = untiled.predict_logits(image).argmax(0).numpy()
    np.testing.assert_array_equal(untiled.predict(image), expected)
    np.testing.assert_array_equal(tiled.predict(image), expected)


def test_predict_batch_and_pil_input_agree_with_single_predictions(model):
    a, b, c = random_image(40, 50, 5), random_image(40, 50, 6), random_image(33, 60, 7)
    segmenter = Segmenter(model, protocol(scale=(64, 32)))
    batch = segmenter.predict_batch([a, b, Image.fromarray(c)])
    for got, image in zip(batch, [a, b, c], strict=True):
        assert (got == segmenter.predict(image)).mean() > 0.999  # batched convolutions may round differently


def test_for_dataset_uses_the_official_protocol(model):
    city = Segmenter.for_dataset(model, "cityscapes", aug=True)
    p = city.protocol
    assert (p.mode, p.scale, p.crop, p.stride, p.size_divisor) == (
        "slide",
        (2048, 1024),
        (1024, 1024),
        (768, 768),
        None,
    )
    assert city.ratios == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75) and city.num_views == 12
    ade = Segmenter.for_dataset(model, "ade20k", scale=(1024, 256))
    assert (ade.protocol.mode, ade.protocol.scale, ade.protocol.size_divisor) == ("whole", (1024, 256), 32)
    assert (ade.ratios, ade.num_views) == ((1.0,), 1)
    assert Segmenter.for_dataset(model, "ade20k", aug=True).ratios == (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    assert repr(ade) == "Segmenter(whole, scale=(1024, 256), size_divisor=32, torch fp32, device=cpu)"


def test_bad_input_is_named(model, tmp_path):
    segmenter = Segmenter(model, protocol())
    with pytest.raises(ValueError, match="H×W×3 .*shape \\(20, 20, 2\\)"):
        segmenter.predict(np.zeros((20, 20, 2), np.uint8))
    with pytest.raises(ValueError, match="float32"):
        segmenter.predict(np.zeros((20, 20, 3), np.float32))
    with pytest.raises(FileNotFoundError, match="missing.png"):
        segmenter.predict(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="mode must be"):
        Segmenter(model, protocol(), mode="tiles")


def test_labels_are_uint8_up_to_256_classes_and_int32_beyond():
    assert (label_dtype(1), label_dtype(256), label_dtype(257)) == (torch.uint8, torch.uint8, torch.int32)
    torch.manual_seed(0)
    many = create_model("b0", num_classes=300).eval()
    with torch.no_grad():
        many.decode_head.linear_pred.bias[256:].add_(50.0)  # classes past 255 win: uint8 would wrap them
    image = random_image(40, 50, seed=8)
    for mode in ("whole", "slide"):  # labels from the small logits, and from the full scores
        segmenter = Segmenter(many, protocol(mode=mode, scale=None, crop=(32, 32), stride=(24, 24)))
        labels = segmenter.predict(image)
        assert labels.dtype == np.int32 and labels.min() >= 256
        np.testing.assert_array_equal(labels, segmenter.predict_logits(image).argmax(0).numpy())
