"""The fast decoder form against the reference form, and reduced-precision (autocast) runs against fp32."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import segformer
from reference import perturb_batchnorm
from segformer.config import VARIANTS
from segformer.fast import fold_norm_affine

SHAPE = (2, 3, 45, 61)  # batch 2, odd sizes: every stage map has an odd side


pytestmark = pytest.mark.usefixtures("one_thread")


def make_model(variant: str, seed: int = 0) -> segformer.SegFormer:
    """A deterministic model (no drop path, no dropout) with non-trivial BatchNorm statistics."""
    torch.manual_seed(seed)
    model = segformer.create_model(variant, num_classes=5, drop_path_rate=0.0, decoder_dropout=0.0)
    perturb_batchnorm(model.decode_head.linear_fuse.bn)
    with torch.no_grad():
        for proj in model.decode_head.projections():
            proj.bias.normal_(0.0, 0.1)
    return model


def pixels(seed: int = 1) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed))


def run(model: segformer.SegFormer, x: torch.Tensor, fast: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits and the parameter gradients of a fixed random projection of them."""
    model.decode_head.fast = fast
    model.zero_grad(set_to_none=True)
    logits = model(x)
    weights = torch.randn(logits.shape, generator=torch.Generator().manual_seed(2))
    (logits * weights).sum().backward()
    return logits.detach(), {name: p.grad for name, p in model.named_parameters()}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_fast_decoder_equals_reference(variant, mode):
    """Same logits and same gradients; in train mode BatchNorm uses batch statistics in both forms.

    In fp64, so that the comparison is of the two functions, not of fp32 rounding amplified through
    deep encoders (B3's 26 blocks make fp32 gradients of the first layer differ by ~2e-3 relative).
    Gradients are compared by norm, with a floor relative to the largest gradient of the model:
    in train mode some are exactly zero in theory (BatchNorm removes per-channel constants, e.g.
    the decoder biases') and hold only rounding noise in both forms.
    """
    model = make_model(variant).double().train(mode == "train")
    x = pixels().double()
    reference, reference_grads = run(copy.deepcopy(model), x, fast=False)
    logits, grads = run(model, x, fast=True)
    assert reference.abs().mean() > 0.1
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)
    assert grads.keys() == reference_grads.keys()
    assert all(g is not None for g in (*grads.values(), *reference_grads.values()))
    largest = max(g.abs().max().item() for g in reference_grads.values())
    for name, grad in grads.items():
        expected = reference_grads[name]
        error = (grad - expected).norm().item()
        assert error <= 1e-3 * expected.norm().item() + 1e-6 * largest * expected.numel() ** 0.5, name


def test_train_mode_updates_batchnorm_statistics_like_the_reference():
    model = make_model("b0").train()
    reference = copy.deepcopy(model)
    reference.decode_head.fast = False
    x = pixels()
    with torch.no_grad():
        model(x)
        reference(x)
    for name in ("running_mean", "running_var"):
        ours = getattr(model.decode_head.linear_fuse.bn, name)
        theirs = getattr(reference.decode_head.linear_fuse.bn, name)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_cached_fused_weights_follow_parameter_changes():
    """Inference caches the fused decoder weights; in-place updates and load_state_dict must invalidate them."""
    model = make_model("b0").eval()
    other = make_model("b0", seed=3).eval()
    x = pixels()

    def both(m: segformer.SegFormer) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.inference_mode():
            m.decode_head.fast = False
            reference = m(x)
            m.decode_head.fast = True
            return m(x), reference

    both(model)  # fills the cache
    with torch.no_grad():
        model.decode_head.linear_fuse.bn.running_var.mul_(3.0)
        model.decode_head.linear_c2.proj.weight.add_(0.1)
    torch.testing.assert_close(*both(model), atol=1e-4, rtol=1e-4)
    model.load_state_dict(other.state_dict())
    fast, reference = both(model)
    torch.testing.assert_close(fast, reference, atol=1e-4, rtol=1e-4)
    with torch.inference_mode():
        torch.testing.assert_close(fast, other(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("sr_ratio", [2, 1])  # the query and reduction conv read norm1, or the query and key/value
def test_folded_norm_affines_keep_the_block(sr_ratio):
    """``Block.fold_norm_affines`` moves the norms' scales and shifts into the maps reading them; the block's
    output stays the same, at a size whose reduction leaves a remainder."""
    from segformer.model import Block

    torch.manual_seed(0)
    block = Block(dim=32, num_heads=2, sr_ratio=sr_ratio, mlp_ratio=4, drop_path=0.0, eps=1e-6).eval()
    norms = [m for m in block.modules() if isinstance(m, torch.nn.LayerNorm)]
    with torch.no_grad():
        for norm in norms:
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.5)
    x = torch.randn(2, 9 * 13, 32)
    with torch.no_grad():
        want = block(x, 9, 13)
        block.fold_norm_affines()
        got = block(x, 9, 13)
    assert all(torch.equal(n.weight, torch.ones(32)) and torch.equal(n.bias, torch.zeros(32)) for n in norms)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_norm_shift_does_not_fold_into_a_padded_conv_or_a_missing_bias():
    norm, conv = torch.nn.LayerNorm(8), torch.nn.Conv2d(8, 8, 3, padding=1)
    with pytest.raises(ValueError, match="zero-padded conv"):
        fold_norm_affine(norm, [conv])
    with torch.no_grad():
        norm.weight.fill_(2.0)
    with pytest.raises(ValueError, match="every reader needs one"):
        fold_norm_affine(norm, [torch.nn.Linear(8, 4), torch.nn.Linear(8, 4, bias=False)])
    assert torch.equal(norm.weight, torch.full((8,), 2.0))  # refused before anything changed


def test_model_built_in_inference_mode():
    """Parameters created under inference_mode have no version counter: no cache, same result."""
    x = pixels()
    with torch.inference_mode():
        model = make_model("b0").eval()
        fast = model(x)
        model.decode_head.fast = False
        torch.testing.assert_close(fast, model(x), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_inference_close_to_fp32(dtype):
    model = make_model("b0").eval()
    x = pixels()
    with torch.inference_mode():
        reference = model(x)
        with torch.autocast("cpu", dtype=dtype):
            low = model(x)
    assert low.dtype == dtype
    low = low.float()
    assert torch.isfinite(low).all()
    relative = (low - reference).norm() / reference.norm()
    assert relative < 0.03, relative.item()


def test_bf16_autocast_training_step_is_finite_and_close_to_fp32():
    model = make_model("b0").train()
    x = pixels()
    labels = torch.randint(0, 5, (2, 12, 16), generator=torch.Generator().manual_seed(4))

    def loss_and_grads(autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters()])
        return loss.detach(), grads

    loss32, grads32 = loss_and_grads(False)
    loss16, grads16 = loss_and_grads(True)
    assert torch.isfinite(loss16) and torch.isfinite(grads16).all()
    assert abs(loss16 - loss32) < 0.02 * loss32
    assert (grads16 - grads32).norm() / grads32.norm() < 0.1
