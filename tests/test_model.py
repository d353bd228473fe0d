"""The model against transformers' SegFormer, and its basic contract (shapes, gradients, modes)."""

from __future__ import annotations

import pytest
import torch

import segformer
from reference import HF_VARIANTS, make_hf_model
from segformer.config import VARIANTS as VARIANT_TABLE
from segformer.model import MIN_INPUT_SIZE, EfficientSelfAttention

VARIANTS = list(HF_VARIANTS)
# Non-square, neither side a multiple of 32, batch > 1.
INPUT_SHAPE = (2, 3, 75, 101)


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    return torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(1))


@pytest.mark.parametrize("variant", VARIANTS)
def test_parity_with_transformers(variant, pixels, tmp_path):
    """Logits and the four stage features match HF: ≤1e-5 with HF's eps, ≤1e-4 with the official eps."""
    hf = make_hf_model(variant)
    hf.save_pretrained(tmp_path)
    with torch.no_grad():
        ref = hf(pixels, output_hidden_states=True)
    assert ref.logits.abs().mean() > 0.1  # the comparison is on O(1) numbers, not on near-zero ones

    for eps, tol in ((1e-5, 1e-5), (1e-6, 1e-4)):
        model = segformer.from_pretrained(tmp_path, layer_norm_eps=eps)
        assert model.config.variant == variant
        with torch.no_grad():
            features = model.backbone(pixels)
            logits = model(pixels)
        assert logits.shape == ref.logits.shape == (2, 7, 19, 26)
        for ours, theirs in zip(features, ref.hidden_states, strict=True):
            assert ours.shape == theirs.shape
            torch.testing.assert_close(ours, theirs, atol=tol, rtol=0)
        torch.testing.assert_close(logits, ref.logits, atol=tol, rtol=0)
    # The eps difference is real: with the official eps the stage features move by more than rounding.
    assert (features[-1] - ref.hidden_states[-1]).abs().max() > 1e-6


# Paper Table 6: parameters with 150 classes, in millions, as published.
PUBLISHED_PARAMS = {"b0": 3.8, "b1": 13.7, "b2": 27.5, "b3": 47.3, "b4": 64.1, "b5": 84.7}


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameter_count_matches_published(variant):
    model = segformer.create_model(variant, num_classes=150)
    millions = sum(p.numel() for p in model.parameters()) / 1e6
    assert round(millions, 1) == PUBLISHED_PARAMS[variant]


@pytest.mark.parametrize("name", ["b0", "B0", "mit-b0", "MiT_B0", "segformer-b0"])
def test_variant_names(name):
    assert segformer.create_model(name, num_classes=3).config.variant == "b0"


def test_unknown_variant_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown variant 'b9'.*b0, b1, b2, b3, b4, b5"):
        segformer.create_model("b9", num_classes=3)


@pytest.mark.parametrize("height, width", [(MIN_INPUT_SIZE, MIN_INPUT_SIZE), (29, 200), (97, 33), (64, 64), (130, 67)])
def test_any_input_size(height, width):
    model = segformer.create_model("b0", num_classes=4).eval()
    with torch.no_grad():
        logits = model(torch.randn(3, 3, height, width))
        features = model.backbone(torch.randn(1, 3, height, width))
    assert logits.shape == (3, 4, -(-height // 4), -(-width // 4))
    for f, stride, channels in zip(features, model.backbone.strides, model.backbone.out_channels, strict=True):
        assert f.shape == (1, channels, -(-height // stride), -(-width // stride))


@pytest.mark.parametrize("height, width", [(MIN_INPUT_SIZE - 1, 64), (64, 16)])
def test_input_below_minimum_is_refused(height, width):
    model = segformer.create_model("b0", num_classes=4)
    with pytest.raises(ValueError, match=f">= {MIN_INPUT_SIZE} pixels"):
        model(torch.randn(1, 3, height, width))


def test_wrong_channel_count_is_refused():
    model = segformer.create_model("b0", num_classes=4)
    with pytest.raises(ValueError, match=r"expected an input of shape \(B, 3, H, W\), got \(1, 4, 64, 64\)"):
        model(torch.randn(1, 4, 64, 64))


def test_gradients_reach_every_parameter():
    model = segformer.create_model("b0", num_classes=3).train()
    model(torch.randn(2, 3, 64, 72)).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_drop_path_and_dropout_only_in_training():
    model = segformer.create_model("b0", num_classes=3, drop_path_rate=0.5, decoder_dropout=0.5)
    x = torch.randn(2, 3, 64, 64)
    model.train()
    torch.manual_seed(0)
    a = model(x)
    b = model(x)
    assert not torch.allclose(a, b)  # stochastic in training: the options are live
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), atol=0, rtol=0)
    rates = [block.drop_path.p for i in range(1, 5) for block in getattr(model.backbone, f"block{i}")]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.5)
    assert rates == sorted(rates)


def test_attention_dropout_reaches_every_block_and_acts_only_in_training():
    """``attn_drop_rate`` (official name) drops attention probabilities in every block, in training only."""
    options = {"drop_path_rate": 0.0, "decoder_dropout": 0.0}  # attention dropout is the only random part left
    torch.manual_seed(0)
    model = segformer.create_model("b0", num_classes=3, attn_drop_rate=0.3, **options)
    torch.manual_seed(0)
    plain = segformer.create_model("b0", num_classes=3, **options)  # the same weights, no attention dropout
    attentions = [m for m in model.modules() if isinstance(m, EfficientSelfAttention)]
    assert len(attentions) == sum(VARIANT_TABLE["b0"].depths) == 8
    assert all(m.attn_drop == 0.3 for m in attentions)
    assert all(m.attn_drop == 0.0 for m in plain.modules() if isinstance(m, EfficientSelfAttention))
    x = torch.randn(2, 3, 64, 64)
    model.eval(), plain.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), plain(x), atol=0, rtol=0)  # eval: as if there were none
    model.train(), plain.train()  # (training updates BatchNorm's statistics: eval is checked first)
    torch.testing.assert_close(plain(x), plain(x), atol=0, rtol=0)  # without it, training mode is deterministic
    assert not torch.allclose(model(x), model(x))  # with it, two runs differ


def test_drop_rates_must_be_probabilities():
    for name in ("drop_path_rate", "attn_drop_rate", "decoder_dropout"):
        with pytest.raises(ValueError, match=rf"{name} must be a probability in \[0, 1\), got 1.5"):
            segformer.create_model("b0", num_classes=3, **{name: 1.5})


def test_official_layer_norm_eps():
    model = segformer.create_model("b0", num_classes=3)
    bb = model.backbone
    assert bb.block1[0].norm1.eps == 1e-6 and bb.block1[0].norm2.eps == 1e-6 and bb.norm1.eps == 1e-6
    assert bb.patch_embed1.norm.eps == 1e-5 and bb.block1[0].attn.norm.eps == 1e-5


def test_official_initialisation():
    model = segformer.create_model("b2", num_classes=3)
    conv = model.backbone.block1[0].mlp.dwconv.dwconv  # depthwise: fan_out = 3·3·256/256 = 9
    assert conv.weight.std().item() == pytest.approx((2 / 9) ** 0.5, rel=0.1)
    assert conv.bias.abs().max() == 0
    linear = model.backbone.block3[0].attn.q.weight
    assert linear.std().item() == pytest.approx(0.02, rel=0.1)  # timm's trunc_normal_ cuts at ±2 (absolute)
    fuse = model.decode_head.linear_fuse.conv  # mmcv ConvModule: He-normal over fan-out = 768
    assert fuse.weight.std().item() == pytest.approx((2 / 768) ** 0.5, rel=0.05)
    pred = model.decode_head.linear_pred  # PyTorch's default: uniform within 1/sqrt(fan_in)
    bound = 768**-0.5
    assert pred.weight.abs().max() <= bound and pred.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)
