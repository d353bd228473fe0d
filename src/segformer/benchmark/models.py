"""The models a benchmark row runs and the step it times: our eager model, our default path (``NetworkRunner``), the
opt-in compiled path, transformers' model, and the trainer's own training step."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from segformer.benchmark.case import COMPILED, OURS, RUNNER_IMPLS, Case
from segformer.config import TestProtocol
from segformer.constants import IGNORE_INDEX
from segformer.device import AUTOCAST_DTYPES
from segformer.inference import Segmenter
from segformer.model import create_model
from segformer.pretrained import from_pretrained
from segformer.recipe import Recipe, load_recipe
from segformer.training.optim import recipe_optimizer
from segformer.training.step import forward_module, grad_scaler, step_settings, train_step

STEP_RECIPE = "custom"  # the packaged recipe whose optimiser, loss and precision the training rows run


def save_weights(case: Case, directory: Path, weights: str | None = None, seed: int = 0) -> Path:
    """Write the weights every model of ``case`` is built from: ``directory/ours`` and ``directory/hf``.

    Random (seeded) unless ``weights`` names a checkpoint. Drop path and dropout are 0 so that
    training steps are deterministic and comparable between implementations.
    """
    options = {"drop_path_rate": 0.0, "decoder_dropout": 0.0}
    if weights is None:
        torch.manual_seed(seed)
        model = create_model(case.variant, case.num_classes, **options)
    else:
        model = from_pretrained(weights, **options)
    model.save_pretrained(directory / "ours")
    model.save_pretrained(directory / "hf", layout="hf")
    return directory


class RunnerPath(nn.Module):
    """Our model through the ``segformer.runner.NetworkRunner`` that ``Segmenter`` builds for predict and eval:
    device, precision (``case.dtype``, else the default precision), channels-last, CUDA graphs per input shape
    (unless ``case.graphs`` is False); ``compile``: the opt-in ``torch.compile`` path."""

    def __init__(self, model: nn.Module, case: Case, compile: bool) -> None:
        super().__init__()
        self.model = model
        options = {"dtype": case.dtype, "compile": compile, "graphs": None if case.graphs else False}
        self.runner = Segmenter(model, TestProtocol(), device=case.device, **options).runner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.runner(x)


class HFLogits(nn.Module):
    """transformers' model as pixels → logits (it returns an output object)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=x).logits


def load_hf_model(folder: Path, attention: str) -> nn.Module:
    """``SegformerForSemanticSegmentation`` from ``folder`` without transformers' loading bars and notices."""
    from transformers import SegformerForSemanticSegmentation  # optional, and slow to import: only for --compare-hf
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        return SegformerForSemanticSegmentation.from_pretrained(folder, attn_implementation=attention)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_model(impl: str, directory: Path, case: Case, compare_hf: bool) -> nn.Module:
    """The model of row ``impl`` as pixels → logits on the case's device, in train or eval mode: a training row as
    the trainer would run it (``forward_module`` of ``step_recipe``), ``ours-fast`` / ``ours-compiled`` through
    the runner, transformers' model compiled when the case is."""
    if impl.startswith("ours"):
        options = {"layer_norm_eps": 1e-5} if compare_hf else {}
        model = from_pretrained(directory / "ours", **options)
    else:
        model = HFLogits(load_hf_model(directory / "hf", impl.removeprefix("hf-")))
    model = model.to(case.device).train(case.train)
    if case.train:
        return forward_module(step_recipe(case, impl), model, torch.device(case.device))
    if impl in RUNNER_IMPLS:
        return RunnerPath(model, case, compile=impl == COMPILED)
    return torch.compile(model) if case.compile and impl != OURS else model


def step_dtype(case: Case, impl: str) -> str:
    """The precision of a row that is not run by the runner: ``case.dtype``; else the trainer's (the packaged
    recipe's) for our training step rows, fp32 for the others."""
    if case.dtype:
        return case.dtype
    return load_recipe(STEP_RECIPE).precision if case.train and impl in RUNNER_IMPLS else "fp32"


def row_precision(model: nn.Module, case: Case, impl: str) -> str:
    """What the row runs in: the runner's own precision for the runner rows, else ``step_dtype``."""
    return model.runner.precision if isinstance(model, RunnerPath) else step_dtype(case, impl)


def step_recipe(case: Case, impl: str) -> Recipe:
    """The recipe a training row runs: the packaged ``custom`` recipe (the official AdamW settings, mmseg's
    cross-entropy) at the row's precision, one micro-batch, no clipping. ``ours`` and transformers' rows keep the
    images channels-first; ``ours-fast`` lays them out as the recipe says (channels-last on CUDA) and is not
    compiled; ``ours-compiled`` is (as the packaged recipes' ``train.compile = "auto"`` does on CUDA), and so are
    transformers' rows of a compiled case."""
    recipe = load_recipe(STEP_RECIPE)
    recipe.precision, recipe.accumulate, recipe.clip_grad = step_dtype(case, impl), 1, 0.0
    if impl not in RUNNER_IMPLS:
        recipe.train.channels_last = False
    recipe.train.compile = impl == COMPILED or (impl.startswith("hf-") and case.compile)
    return recipe


def make_inputs(case: Case, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image batch and a random label map with some ignored pixels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(case.batch_size, 3, case.height, case.width, generator=generator)
    labels = torch.randint(0, case.num_classes, (case.batch_size, case.height, case.width), generator=generator)
    labels[:, :4] = IGNORE_INDEX
    return x.to(case.device), labels.to(case.device)


def autocast_for(case: Case, impl: str = OURS) -> torch.autocast:
    """Autocast to the row's precision (disabled for fp32)."""
    dtype = AUTOCAST_DTYPES[step_dtype(case, impl)]
    return torch.autocast(torch.device(case.device).type, dtype=dtype, enabled=dtype is not None)


def make_step(model: nn.Module, impl: str, case: Case, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One inference forward (the runner as it is; the others under ``inference_mode`` and autocast), or one
    training step: the trainer's ``train_step`` with the optimiser, GradScaler and settings the trainer builds
    for ``step_recipe(case, impl)``."""
    if not case.train:
        if isinstance(model, RunnerPath):  # its own inference mode and autocast, on the thread that owns it
            return lambda: model(x)
        autocast = autocast_for(case, impl)

        def infer() -> None:
            with torch.inference_mode(), autocast:
                model(x)

        return infer
    recipe, device = step_recipe(case, impl), torch.device(case.device)
    settings = step_settings(recipe, case.num_classes, device)
    optimizer = recipe_optimizer(uncompiled(model), recipe.optim, device)
    scaler = grad_scaler(settings["amp_dtype"], device)

    def train() -> None:
        train_step(network=model, batches=[(x, labels)], optimizer=optimizer, scaler=scaler, device=device, **settings)

    return train


def output_of(model: nn.Module, case: Case, x: torch.Tensor, impl: str = OURS) -> torch.Tensor:
    """The float32 logits in the case's mode and the row's precision, without touching the weights (no step).

    Inference rows run under ``inference_mode`` as their timed step does, so that a compiled model is not
    compiled a second time for another grad mode."""
    if isinstance(model, RunnerPath):
        return model(x)
    with torch.no_grad() if case.train else torch.inference_mode(), autocast_for(case, impl):
        return model(x).float()


def uncompiled(model: nn.Module) -> nn.Module:
    """The eager module behind a compiled one or a runner (FlopCounterMode counts eager operations)."""
    if isinstance(model, RunnerPath):
        return model.model
    return getattr(model, "_orig_mod", model)
