"""Confidence maps (segformer.scores): max probability and normalised entropy against NumPy, 16-bit PNGs."""

import cv2
import numpy as np
import pytest
import torch

import segformer
from reference import numpy_confidence
from segformer import scores
from segformer.config import TestProtocol
from segformer.inference import Segmenter
from segformer.scores import confidence, confidence_maps, logit_confidence, save_confidence_maps


@pytest.fixture(scope="module")
def model(one_thread):
    torch.manual_seed(0)
    return segformer.create_model("b0", num_classes=3)


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (64, 80, 3), dtype=np.uint8)


@pytest.mark.parametrize("views", [{}, {"aug_ratios": (0.75, 1.0)}], ids=["one view", "multi-scale + flip"])
def test_confidence_maps_equal_numpy_from_predict_logits(model, image, views):
    segmenter = Segmenter(model, TestProtocol(mode="whole", scale=None), **views)
    top, entropy = confidence_maps(segmenter, image)
    expected_top, expected_entropy = numpy_confidence(segmenter.predict_logits(image).numpy())
    assert top.dtype == entropy.dtype == np.uint16 and top.shape == entropy.shape == (64, 80)
    np.testing.assert_array_equal(top, expected_top)
    np.testing.assert_array_equal(entropy, expected_entropy)
    assert len(np.unique(top)) > 100  # real, varied maps: the comparison can fail


def test_known_answers_uniform_and_certain_pixels():
    logits = torch.zeros(4, 1, 2)
    logits[:, 0, 1] = torch.tensor([60.0, 0.0, 0.0, 0.0])  # pixel (0, 1): class 0 certain; pixel (0, 0): uniform
    top, entropy = logit_confidence(logits)
    np.testing.assert_array_equal(top, [[round(65535 / 4), 65535]])
    np.testing.assert_array_equal(entropy, [[65535, 0]])
    one_class = confidence(torch.ones(1, 2, 2))
    np.testing.assert_array_equal(one_class[0], np.full((2, 2), 65535))
    np.testing.assert_array_equal(one_class[1], np.zeros((2, 2)))


def test_row_tiles_give_the_same_maps(monkeypatch):
    logits = torch.randn(5, 37, 23, generator=torch.Generator().manual_seed(1))
    whole = logit_confidence(logits)
    monkeypatch.setattr(scores, "MAX_ELEMENTS", 5 * 23 * 4)  # four rows per tile
    tiled = logit_confidence(logits)
    for a, b in zip(whole, tiled, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole[0], numpy_confidence(logits.numpy())[0])


def test_pngs_read_back_as_the_uint16_maps(tmp_path):
    top, entropy = logit_confidence(torch.randn(3, 20, 30, generator=torch.Generator().manual_seed(2)))
    paths = save_confidence_maps(top, entropy, tmp_path / "out", "street")
    assert [p.name for p in paths] == ["street_confidence.png", "street_entropy.png"]
    for path, array in zip(paths, (top, entropy), strict=True):
        stored = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        assert stored.dtype == np.uint16
        np.testing.assert_array_equal(stored, array)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["street_confidence.png", "street_entropy.png"]
    with pytest.raises(ValueError, match=r"bad_confidence\.png: expected an H×W uint16 map, got float32"):
        save_confidence_maps(top.astype(np.float32), entropy, tmp_path, "bad")
