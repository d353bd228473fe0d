"""Activation checkpointing per encoder block: the same loss and gradients, fewer kept activations, training only."""

import pytest
import torch

import segformer.model
from reference import tiny_recipe
from segformer import create_model
from segformer.data.synthetic import write_synthetic
from segformer.recipe import load_recipe
from segformer.train import train
from segformer.training.checkpoint import load_checkpoint
from segformer.training.step import forward_module, set_checkpointing

pytestmark = pytest.mark.usefixtures("one_thread")


def training_pass(checkpointing: bool, drop: float) -> tuple[torch.Tensor, dict, int]:
    """(loss, parameter gradients, bytes saved for backward outside checkpointed blocks) of one training pass
    of a tiny B0 whose drop path, attention dropout and decoder dropout are ``drop``."""
    torch.manual_seed(0)
    model = create_model("b0", num_classes=3, drop_path_rate=drop, attn_drop_rate=drop, decoder_dropout=drop)
    model.train().backbone.checkpointing = checkpointing
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    saved = [0]

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        saved[0] += tensor.numel() * tensor.element_size()
        return tensor

    torch.manual_seed(5)  # the same random stream for drop path and dropout in both passes
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        logits = model(images)
    loss = logits.square().mean()
    loss.backward()
    return loss.detach(), {name: p.grad for name, p in model.named_parameters()}, saved[0]


@pytest.mark.parametrize("drop", [0.0, 0.1])
def test_checkpointing_gives_the_same_loss_and_gradients(drop):
    # with drop > 0 the recomputation must replay the forward pass's random draws (preserve_rng_state)
    loss, grads, kept = training_pass(False, drop)
    loss_ckpt, grads_ckpt, kept_ckpt = training_pass(True, drop)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert grads.keys() == grads_ckpt.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grads_ckpt[name], grad, rtol=0, atol=0, msg=name)
    assert kept_ckpt < kept / 2  # what it is for: the blocks' activations are not kept for backward


def block_calls(model: torch.nn.Module) -> list[int]:
    """A one-element counter of the encoder blocks' forward calls (counted as they start: the recomputation
    stops once it has what backward needs)."""
    calls = [0]
    for module in model.backbone.modules():
        if isinstance(module, segformer.model.Block):
            module.register_forward_pre_hook(lambda *args: calls.__setitem__(0, calls[0] + 1))
    return calls


def test_blocks_are_recomputed_in_training_and_run_once_in_eval_and_without_grad():
    model = create_model("b0", num_classes=3)
    model.backbone.checkpointing = True
    calls, blocks = block_calls(model), 8  # B0: depths 2, 2, 2, 2 (paper Table 6)
    images = torch.randn(1, 3, 64, 64)
    model.train()(images).sum().backward()
    assert calls[0] == 2 * blocks  # forward, then each block again in backward
    calls[0] = 0
    with torch.no_grad():
        model(images)
    assert calls[0] == blocks
    calls[0] = 0
    model.eval()(images).sum().backward()
    assert calls[0] == blocks  # eval mode never checkpoints


def test_the_recipe_switches_checkpointing_and_refuses_it_for_other_networks():
    model = create_model("b0", num_classes=3)
    cpu = torch.device("cpu")
    assert forward_module(load_recipe("demo", ["train.checkpointing=true"]), model, cpu) is model
    assert model.backbone.checkpointing
    forward_module(load_recipe("demo"), model, cpu)
    assert not model.backbone.checkpointing
    set_checkpointing(torch.nn.Conv2d(3, 3, 1), False)  # nothing to switch off: fine
    with pytest.raises(ValueError, match="train.checkpointing: Conv2d has no SegFormer encoder"):
        set_checkpointing(torch.nn.Conv2d(3, 3, 1), True)


def test_a_checkpointed_run_trains_the_same_weights(tmp_path):
    root = write_synthetic(tmp_path / "data", num_train=4, num_val=2, size=(64, 64), seed=0)
    randomness = {"model.drop_path_rate": 0.1, "model.decoder_dropout": 0.1, "schedule.iters": 2}
    states = {}
    for checkpointing in ("false", "true"):
        recipe = tiny_recipe(root, {**randomness, "train.checkpointing": checkpointing})
        train(recipe, tmp_path / checkpointing, device="cpu", quiet=True)
        states[checkpointing] = load_checkpoint(tmp_path / checkpointing / "last.pt")["model"]
    for key, value in states["false"].items():
        assert torch.equal(states["true"][key], value), key
