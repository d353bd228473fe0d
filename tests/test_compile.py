"""torch.compile: the forward traces as one graph (eval and train) and the compiled model matches eager."""

from __future__ import annotations

import pytest
import torch

import segformer

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model() -> segformer.SegFormer:
    torch.manual_seed(0)
    return segformer.create_model("b0", num_classes=5, drop_path_rate=0.0, decoder_dropout=0.0)


def test_forward_has_no_graph_breaks(model):
    x = torch.randn(2, 3, 64, 72)
    for training in (False, True):
        explanation = torch._dynamo.explain(model.train(training))(x)
        assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons
    torch._dynamo.reset()


def test_compiled_matches_eager_forward_and_gradients(model):
    """fullgraph=True fails on any graph break; aot_eager traces forward and backward without code generation
    (inductor's C++ build takes minutes on this CPU: ``segformer benchmark --compile`` exercises it)."""
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 64, 72, generator=torch.Generator().manual_seed(1))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), atol=1e-5, rtol=1e-5)
    model.train()
    grads = []
    for m in (compiled, model):
        model.zero_grad(set_to_none=True)
        m(x).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    # By norm: some gradients are zero in theory (BatchNorm removes constants) and hold rounding noise.
    assert (grads[0] - grads[1]).norm() <= 1e-4 * grads[1].norm()
    torch._dynamo.reset()
