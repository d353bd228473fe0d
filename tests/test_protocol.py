"""The official test protocol to the pixel, against mmseg / mmcv formulas and OpenCV written out here.

References: NVlabs/SegFormer ``mmseg/models/segmentors/encoder_decoder.py`` (encode_decode, whole_inference),
``mmseg/datasets/pipelines/transforms.py`` (Resize, AlignedResize), ``mmseg/datasets/pipelines/test_time_aug.py``
(MultiScaleFlipAug), mmcv ``imrescale`` / ``rescale_size`` / ``imresize`` (cv2.resize), and the test pipelines of
``local_configs/_base_/datasets/ade20k_repeat.py`` and ``cityscapes_1024x1024_repeat.py``.
"""

import math
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from segformer import create_model
from segformer.cli import main
from segformer.config import TestProtocol as Protocol  # aliased: pytest would collect a "Test…" class
from segformer.data import DATASETS, read_image
from segformer.inference import Segmenter
from segformer.transforms import PhotoMetricDistortion, RandomResize

K = 4
MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)
CONFIG_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)  # img_ratios of both official test pipelines


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = create_model("b0", num_classes=K).eval()
    with torch.no_grad():
        net.decode_head.linear_pred.weight.mul_(10)  # logits far from uniform
    return net


def random_image(h, w, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def mmcv_rescale_size(h, w, scale):
    """mmcv.rescale_size: factor min(long / max(h, w), short / min(h, w)); new size int(x * f + 0.5)."""
    f = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return int(h * f + 0.5), int(w * f + 0.5)


def official_resize(image, scale, size_divisor=None):
    """mmseg Resize(keep_ratio=True) / NVlabs AlignedResize: cv2.resize to the rescaled size, then to the aligned."""
    h, w = mmcv_rescale_size(*image.shape[:2], scale)
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if size_divisor:
        ah, aw = math.ceil(h / size_divisor) * size_divisor, math.ceil(w / size_divisor) * size_divisor
        image = cv2.resize(image, (aw, ah), interpolation=cv2.INTER_LINEAR)
    return image


class Recorder:
    """An engine that records the de-normalised input pixels and shapes before running the model."""

    def __init__(self, net):
        self.net, self.pixels, self.shapes = net, [], []

    def __call__(self, x):
        self.shapes.append(tuple(x.shape[-2:]))
        self.pixels.append((x * STD + MEAN)[0].permute(1, 2, 0).numpy())
        return self.net(x)


# ------------------------------------------------------------------- 1. whole mode resizes logits in two steps


def test_whole_mode_resizes_logits_in_two_steps(model):
    image = random_image(150, 223)
    x = torch.from_numpy(official_resize(image, (2048, 512), 32)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        logits = model((x - MEAN) / STD)
    encode_decode = F.interpolate(logits, x.shape[-2:], mode="bilinear", align_corners=False)  # 512×768
    expected = F.interpolate(encode_decode, (150, 223), mode="bilinear", align_corners=False)[0]
    got = Segmenter.for_dataset(model, "ade20k").predict_logits(image)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    one_step = F.interpolate(logits, (150, 223), mode="bilinear", align_corners=False)[0]
    assert (one_step - expected).abs().max() > 1e-2  # the two differ: the test tells them apart


# ---------------------------------------------------------------------- 2. resized pixels are OpenCV's, exactly


@pytest.mark.parametrize(("hw", "scale"), [((150, 223), (2048, 512)), ((97, 131), (100, 50)), ((301, 97), (128, 128))])
def test_resized_pixels_are_opencv_uint8(model, hw, scale):
    image = random_image(*hw, seed=1)
    recorder = Recorder(model)
    Segmenter(model, Protocol(scale=scale), engine=recorder).predict(image)
    expected = official_resize(image, scale)
    np.testing.assert_allclose(recorder.pixels[0], expected, atol=1e-3, rtol=0)
    # a float bilinear resize rounded half to even is not the same image
    t = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    rounded = F.interpolate(t, expected.shape[:2], mode="bilinear", align_corners=False).round()[0].permute(1, 2, 0)
    assert (rounded.numpy() != expected).any()


# ------------------------------------------------------------------- 3. multi-scale sizes without a test scale


@pytest.mark.parametrize("hw", [(97, 131), (150, 223), (45, 71), (333, 100)])
def test_multi_scale_sizes_without_scale_follow_mmseg(model, hw):
    h, w = hw
    recorder = Recorder(model)
    protocol = Protocol(scale=None, aug_ratios=CONFIG_RATIOS, flip=False)
    Segmenter(model, protocol, aug=True, engine=recorder).predict(random_image(h, w))
    # MultiScaleFlipAug with img_scale None: target (int(w r), int(h r)), then mmcv imrescale to it
    expected = [mmcv_rescale_size(h, w, (int(w * r), int(h * r))) for r in CONFIG_RATIOS]
    assert recorder.shapes == [(max(a, 29), max(b, 29)) for a, b in expected]  # padded below MIN_INPUT_SIZE
    if hw == (97, 131):
        assert expected[1] == (72, 97)


# --------------------------------------------------------------------- 4. ADE20K's AlignedResize(size_divisor=32)


@pytest.mark.parametrize(("hw", "aligned"), [((150, 223), (512, 768)), ((512, 683), (512, 704)), ((97, 131), None)])
def test_ade20k_aligned_resize_sizes(model, hw, aligned):
    h, w = hw
    recorder = Recorder(model)
    Segmenter.for_dataset(model, "ade20k", aug=True, flip=False, engine=recorder).predict(random_image(h, w))
    expected = []
    for r in CONFIG_RATIOS:
        rh, rw = mmcv_rescale_size(h, w, (int(2048 * r), int(512 * r)))
        expected.append((math.ceil(rh / 32) * 32, math.ceil(rw / 32) * 32))
    assert recorder.shapes == expected
    if aligned:
        assert expected[2] == aligned
    # the pixels are those of two cv2 resizes (rescale, then align), not one
    np.testing.assert_allclose(recorder.pixels[2], official_resize(random_image(h, w), (2048, 512), 32), atol=1e-3)


def test_cityscapes_uses_plain_resize(model):
    recorder = Recorder(model)
    segmenter = Segmenter.for_dataset(model, "cityscapes", scale=(200, 100), crop=(256, 256), engine=recorder)
    segmenter.predict(random_image(150, 223))
    assert recorder.shapes == [mmcv_rescale_size(150, 223, (200, 100))] == [(100, 149)]  # no alignment to 32


# ---------------------------------------------------------------------------------- 5. the official test settings


def test_dataset_protocols_equal_the_official_configs():
    ade, city = DATASETS["ade20k"].protocol, DATASETS["cityscapes"].protocol
    assert (ade.mode, ade.scale, ade.size_divisor, ade.aug_ratios, ade.flip) == (
        "whole",
        (2048, 512),
        32,
        CONFIG_RATIOS,
        True,
    )
    assert ade.reduce_zero_label and not city.reduce_zero_label
    assert (city.mode, city.scale, city.crop, city.stride, city.size_divisor, city.aug_ratios, city.flip) == (
        "slide",
        (2048, 1024),
        (1024, 1024),
        (768, 768),
        None,
        CONFIG_RATIOS,
        True,
    )
    for info in (ade, city):
        assert info.mean == (123.675, 116.28, 103.53) and info.std == (58.395, 57.12, 57.375)


def test_aug_views_are_the_config_ratios_each_flipped(model):
    recorder = Recorder(model)
    segmenter = Segmenter.for_dataset(model, "ade20k", aug=True, scale=(128, 32), engine=recorder)
    segmenter.predict(random_image(40, 60))
    assert segmenter.ratios == CONFIG_RATIOS and segmenter.num_views == 12 and len(recorder.shapes) == 12
    for i in range(0, 12, 2):  # each scale once as it is, once flipped
        np.testing.assert_array_equal(recorder.pixels[i + 1], recorder.pixels[i][:, ::-1])


# ---------------------------------------------------------------------- 6. training resize and HSV are OpenCV's


def test_train_resize_is_opencv_not_antialiased_pillow():
    image = random_image(97, 131, seed=5)
    mask = np.random.default_rng(6).integers(0, 150, (97, 131), dtype=np.uint8)
    # ratio 0.25 of (128, 64): target (32, 16) -> factor min(32 / 131, 16 / 97) -> 16 × 22
    out_image, out_mask = RandomResize((128, 64), (0.25, 0.25))(image, mask, np.random.default_rng(0))
    h, w = mmcv_rescale_size(97, 131, (32, 16))
    np.testing.assert_array_equal(out_image, cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR))
    np.testing.assert_array_equal(out_mask, cv2.resize(mask, (w, h), interpolation=cv2.INTER_NEAREST))
    pillow = np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))
    assert np.abs(pillow.astype(int) - out_image).max() > 20  # Pillow antialiases when shrinking


def test_photometric_hsv_steps_equal_opencv():
    image = random_image(31, 47, seed=7)
    # saturation only (×0.7): mmseg converts to HSV, scales S (truncated to uint8), converts back, all with OpenCV
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 1] = np.clip(hsv[..., 1].astype(np.float32) * np.float32(0.7), 0, 255).astype(np.uint8)
    expected = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    out, _ = PhotoMetricDistortion()(image, None, Scripted(integers=[0, 0, 1, 0, 0], uniform=[0.7]))
    np.testing.assert_array_equal(out, expected)
    # hue only (+7): H shifted modulo 180
    hsv = cv2.cvtColor(image, cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0].astype(int) + 7) % 180
    out, _ = PhotoMetricDistortion()(image, None, Scripted(integers=[0, 0, 0, 1, 7, 0]))
    np.testing.assert_array_equal(out, cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB))


class Scripted:
    """A generator stand-in returning scripted draws."""

    def __init__(self, integers=(), uniform=()):
        self.ints, self.floats = list(integers), list(uniform)

    def integers(self, low, high=None):
        return self.ints.pop(0)

    def uniform(self, low, high):
        return self.floats.pop(0)


# ------------------------------------------------------------------------------------------- Segmenter contract


def test_segmenter_restores_the_model_mode(model):
    image = random_image(40, 50)
    model.train()
    model.decode_head.eval()  # a mixed state must come back as it was
    expected = Segmenter(model, Protocol(scale=(64, 32))).predict(image)
    assert model.training and not model.decode_head.training and model.backbone.training
    model.eval()
    assert (Segmenter(model, Protocol(scale=(64, 32))).predict(image) == expected).all()  # ran in eval mode
    assert not model.training


@pytest.mark.filterwarnings("ignore:SegFormer has no recorded test protocol")  # saved without one on purpose
def test_path_pil_16bit_and_array_inputs_equal_the_cli(model, tmp_path):
    rng = np.random.default_rng(8)
    sixteen = (rng.integers(0, 256, (45, 60)) * 257 + rng.integers(0, 200, (45, 60))).astype(np.uint16)
    path = tmp_path / "x16.png"
    Image.fromarray(sixteen).save(path)
    model.save_pretrained(tmp_path / "weights")
    assert main(["predict", str(path), "--weights", str(tmp_path / "weights"), "--out", str(tmp_path / "out"),
                 "--scale", "64", "32", "--device", "cpu"]) == 0  # fmt: skip
    cli = np.array(Image.open(tmp_path / "out" / "x16_label.png"))
    segmenter = Segmenter(model, Protocol(scale=(64, 32)))
    for source in (path, str(path), Image.open(path), read_image(path), sixteen):
        np.testing.assert_array_equal(segmenter.predict(source), cli)
    clipped = np.asarray(Image.open(path).convert("RGB"))  # Pillow clips 16-bit values to 255
    assert (clipped != read_image(path)).mean() > 0.5


class Recorded(nn.Module):
    """A model whose config records a protocol (as ``SegFormerConfig.protocol``)."""

    def __init__(self, net, protocol):
        super().__init__()
        self.net, self.num_classes, self.config = net, net.num_classes, SimpleNamespace(protocol=protocol)

    def forward(self, x):
        return self.net(x)


def test_protocol_comes_from_the_model_or_warns_once(model):
    recorded = Protocol(mode="slide", scale=(96, 48), crop=(40, 40), stride=(20, 20))
    assert Segmenter(Recorded(model, recorded)).protocol == recorded
    with pytest.warns(UserWarning, match=r"no recorded test protocol; using whole at \(2048, 512\)") as record:
        segmenter = Segmenter(Recorded(model, None))
        segmenter.predict(random_image(30, 40))
        segmenter.predict_batch([random_image(30, 40)])
    assert len(record) == 1 and segmenter.protocol == Protocol()


def test_overrides_replace_single_fields(model):
    base = DATASETS["cityscapes"].protocol
    segmenter = Segmenter(model, base, scale=(512, 256), stride=(100, 100), mode=None, aug=True)
    assert segmenter.protocol == Protocol(
        mode="slide", scale=(512, 256), crop=(1024, 1024), stride=(100, 100), aug_ratios=CONFIG_RATIOS
    )
    assert segmenter.aug and segmenter.num_views == 12
    ade = Segmenter.for_dataset(model, "ade20k", size_divisor=64, aug_ratios=(1.0, 2.0), flip=False, aug=True)
    assert (ade.protocol.size_divisor, ade.ratios, ade.num_views) == (64, (1.0, 2.0), 2)
    assert not Segmenter.for_dataset(model, "ade20k").aug and Segmenter.for_dataset(model, "ade20k").num_views == 1
    with pytest.raises(TypeError, match="unknown setting.*'ratios'"):
        Segmenter(model, base, ratios=(1.0,))


def test_aug_ratios_imply_multi_scale(model):
    """Passing ratios asks for multi-scale: the views are the ratios (× flip), without ``aug=True``."""
    recorder = Recorder(model)
    segmenter = Segmenter(model, Protocol(scale=(128, 32)), aug_ratios=(0.5, 1.0), flip=True, engine=recorder)
    segmenter.predict(random_image(40, 60))
    assert segmenter.aug and segmenter.ratios == (0.5, 1.0) and segmenter.num_views == 4 and len(recorder.shapes) == 4
    assert Segmenter(model, Protocol(), aug_ratios=(0.5, 1.0), flip=False).num_views == 2
    assert Segmenter.for_dataset(model, "ade20k", aug_ratios=(1.0, 2.0)).num_views == 4  # ADE20K's flip is on
    assert Segmenter(model, Protocol(), aug_ratios=None).num_views == 1  # None: not given (a CLI default)
    assert Segmenter(model, Protocol(), flip=True).num_views == 1  # flip alone does not ask for scales
    with pytest.raises(ValueError, match=r"aug_ratios=\(0.5, 1.0\) asks for multi-scale testing but aug=False"):
        Segmenter(model, Protocol(), aug=False, aug_ratios=(0.5, 1.0))


def test_protocol_replace_applies_none_and_from_dict_warns_naming_unknown_keys():
    assert Protocol().replace(scale=None, size_divisor=None).scale is None  # None is a value: the image's own size
    stored = {**Protocol(mode="slide").to_dict(), "aug": True, "tta": []}
    with pytest.warns(UserWarning, match=r"test protocol: unknown key\(s\) 'aug', 'tta' ignored") as record:
        assert Protocol.from_dict(stored) == Protocol(mode="slide")
    assert len(record) == 1
