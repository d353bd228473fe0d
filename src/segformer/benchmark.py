"""Speed, multiply-adds and peak memory of SegFormer, optionally side by side with transformers' model.

Every model in a comparison is built from the same weights and run on the same input in the same
process; timings are interleaved (one run of each model per round) so that load from other
processes hits all of them alike, and the latency is the median over rounds after warm-up.

* GMACs: multiply-accumulates counted by ``torch.utils.flop_counter.FlopCounterMode`` (its FLOPs / 2),
  the unit of the paper's "GFLOPs". Counted after warm-up, so our cached fused decoder weights
  (eval mode) are not counted; a training step counts forward and backward.
* Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during one step minus the memory
  allocated before it; on CPU the rise of the peak resident set size (``VmHWM``) over the RSS
  before the step, in a fresh subprocess per model and case, after a warm-up step on a small
  input (Linux: the peak is reset to the current RSS through ``/proc/self/clear_refs``).
* A training step (``--train``) is the trainer's ``train_step`` for every model, with the packaged ``custom``
  recipe's AdamW groups (decoder lr × 10, no decay on norms; fused on CUDA), loss and GradScaler rule.
* ``ours-fast`` (``--fast``): our model through ``Segmenter.network``, the default device path of predict and
  eval (CUDA: bf16 unless ``--dtype`` says otherwise, channels-last, compiled with CUDA graphs; CPU: eager);
  a training step as the trainer runs it by default (compiled and channels-last on CUDA). ``agree %``: the
  share of logit pixels whose argmax equals our fp32 eager model's.
* transformers' model (``--compare-hf``) is ``SegformerForSemanticSegmentation`` loaded from our
  weights saved in its layout, with ``attn_implementation`` "eager" and "sdpa". Our model is then
  built with ``layer_norm_eps=1e-5`` (transformers' value) so that outputs are comparable.
"""

from __future__ import annotations

import contextlib
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from torch.utils import flop_counter

from segformer.config import TestProtocol
from segformer.constants import IGNORE_INDEX
from segformer.device import AUTOCAST_DTYPES
from segformer.inference import Segmenter
from segformer.model import create_model
from segformer.pretrained import from_pretrained
from segformer.recipe import Recipe, load_recipe
from segformer.training.data import build_split, build_train_loader, recipe_transforms
from segformer.training.optim import recipe_optimizer
from segformer.training.step import forward_module, grad_scaler, step_settings, train_step

HF_IMPLS = ("hf-eager", "hf-sdpa")


@dataclass(frozen=True)
class Case:
    """One benchmark setting."""

    variant: str
    height: int
    width: int
    batch_size: int = 1
    device: str = "cpu"
    dtype: str = "fp32"
    train: bool = False
    num_classes: int = 150
    compile: bool = False

    @property
    def label(self) -> str:
        mode = "train" if self.train else "infer"
        return f"{self.variant} {self.height}x{self.width} b{self.batch_size} {self.dtype} {mode}"


@dataclass
class Result:
    """Measurements of one model on one case."""

    case: Case
    impl: str  # "ours", "hf-eager" or "hf-sdpa"
    params_m: float
    gmacs: float
    latencies_s: list[float]
    peak_mib: float | None = None
    max_abs_diff: float | None = None  # vs our model's output on the same input
    agreement: float | None = None  # share of argmax labels equal to our fp32 eager model's
    speedup: float | None = None  # best transformers latency / this latency (ours only)

    @property
    def latency_ms(self) -> float:
        return statistics.median(self.latencies_s) * 1e3

    @property
    def images_per_s(self) -> float:
        return self.case.batch_size / statistics.median(self.latencies_s)


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


class FastPath(nn.Module):
    """Our model as predict and eval run it on the case's device (``Segmenter.network``), in the case's dtype."""

    def __init__(self, model: nn.Module, case: Case) -> None:
        super().__init__()
        self.model = model.to(case.device)
        self.segmenter = Segmenter(model, TestProtocol(), dtype=case.dtype, compile=case.compile or None)  # no protocol

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmenter.network(x)


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
    """Our model (``ours``, ``ours-fast``) or transformers' (``impl``) as pixels → logits on the case's device,
    in train or eval mode; compiled as ``--compile`` says, and a training row as the trainer would
    (``forward_module`` of ``step_recipe``)."""
    if impl.startswith("ours"):
        options = {"layer_norm_eps": 1e-5} if compare_hf else {}
        model = from_pretrained(directory / "ours", **options)
    else:
        model = HFLogits(load_hf_model(directory / "hf", impl.removeprefix("hf-")))
    model = model.to(case.device).train(case.train)
    if case.train:
        return forward_module(step_recipe(case, impl), model, torch.device(case.device))
    if impl == "ours-fast":
        return FastPath(model, case)
    return torch.compile(model) if case.compile else model


def step_recipe(case: Case, impl: str) -> Recipe:
    """The recipe a training row runs: the packaged ``custom`` recipe (the official AdamW settings, mmseg's
    cross-entropy) at the case's precision, one micro-batch, no clipping; compiled with ``--compile``, and
    for ``ours-fast`` compile and channels-last "auto" as the trainer's default."""
    recipe = load_recipe("custom")
    auto = "auto" if impl == "ours-fast" else False
    recipe.precision, recipe.accumulate, recipe.clip_grad = case.dtype, 1, 0.0
    recipe.train.compile = True if case.compile else auto
    recipe.train.channels_last = auto
    return recipe


def make_inputs(case: Case, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """A random image batch and a random label map with some ignored pixels."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(case.batch_size, 3, case.height, case.width, generator=generator)
    labels = torch.randint(0, case.num_classes, (case.batch_size, case.height, case.width), generator=generator)
    labels[:, :4] = IGNORE_INDEX
    return x.to(case.device), labels.to(case.device)


def autocast_for(case: Case) -> torch.autocast:
    """Autocast to the case's dtype (disabled for fp32)."""
    dtype = AUTOCAST_DTYPES[case.dtype]
    return torch.autocast(torch.device(case.device).type, dtype=dtype, enabled=dtype is not None)


def make_step(model: nn.Module, impl: str, case: Case, x: torch.Tensor, labels: torch.Tensor) -> Callable[[], None]:
    """One inference forward (``inference_mode``), or one training step: the trainer's ``train_step`` with the
    optimiser, GradScaler and settings the trainer builds for ``step_recipe(case, impl)``."""
    if not case.train:
        autocast = autocast_for(case)

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


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_interleaved(
    steps: dict[str, Callable[[], None]], device: str, repeats: int, warmup: int
) -> dict[str, list[float]]:
    """Seconds per call of each step, one call of each per round, after ``warmup`` untimed rounds."""
    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_ in range(warmup + repeats):
        for name, step in steps.items():
            synchronize(device)
            start = time.perf_counter()
            step()
            synchronize(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def count_gmacs(step: Callable[[], None]) -> float:
    """Multiply-accumulates (10⁹) of one step: FlopCounterMode's FLOPs / 2.

    Two formulas are supplied: the CPU flash-attention kernels, which the counter does not know,
    and the convolution backward, whose built-in formula ignores groups (it would count a
    depthwise conv's weight gradient as a dense conv's).
    """
    aten = torch.ops.aten

    def attention(query, key, value, *args, **kwargs) -> int:
        return flop_counter.sdpa_flop_count(query, key, value)

    def attention_backward(grad_out, query, key, value, *args, **kwargs) -> int:
        return flop_counter.sdpa_backward_flop_count(grad_out, query, key, value)

    def conv_backward(grad_out, x, weight, *args, out_shape, **kwargs) -> int:
        output_mask = args[-1]  # (grad_input, grad_weight, grad_bias); each gradient costs one forward
        return flop_counter.conv_flop_count(x, weight, grad_out) * (int(output_mask[0]) + int(output_mask[1]))

    fixes = {
        aten._scaled_dot_product_flash_attention_for_cpu: attention,
        aten._scaled_dot_product_flash_attention_for_cpu_backward: attention_backward,
        aten.convolution_backward: conv_backward,
    }
    with flop_counter.FlopCounterMode(display=False, custom_mapping=fixes) as counter:
        step()
    return counter.get_total_flops() / 2e9


def output_of(model: nn.Module, case: Case, x: torch.Tensor) -> torch.Tensor:
    """The logits in the case's mode and dtype, without touching the weights (no optimiser step)."""
    with torch.no_grad(), autocast_for(case):
        return model(x).float()


def _rss_bytes(field: str) -> int:
    """``VmRSS`` (current) or ``VmHWM`` (peak) of this process, from ``/proc/self/status`` (Linux)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(f"/proc/self/status has no {field}: CPU peak memory needs Linux")


def peak_memory_mib(impl: str, directory: Path, case: Case, compare_hf: bool, threads: int | None = None) -> float:
    """Peak memory rise (MiB) during one step: CUDA allocator peak, or CPU peak RSS in a fresh subprocess."""
    if case.device.startswith("cuda"):
        model = load_model(impl, directory, case, compare_hf)
        step = make_step(model, impl, case, *make_inputs(case))
        step()  # first call: lazy initialisation (cuDNN, optimiser state) is not part of the steady state
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    job = json.dumps({"impl": impl, "directory": str(directory), "case": asdict(case), "compare_hf": compare_hf})
    code = f"import segformer.benchmark as b; b._cpu_peak_rss_child({job!r}, {threads!r})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"memory measurement of {impl} on {case.label} failed:\n{done.stderr[-2000:]}")
    return float(done.stdout.strip().splitlines()[-1])


def _cpu_peak_rss_child(job: str, threads: int | None) -> None:
    """Runs in a fresh interpreter: print the peak RSS rise (MiB) of one step.

    A first step on a small input loads code pages and initialises lazily (kernels, optimiser
    state) without leaving much freed memory in the heap; then the peak is reset to the current
    RSS (``/proc/self/clear_refs``) and the real step runs.
    """
    spec = json.loads(job)
    if threads:
        torch.set_num_threads(threads)
    case = Case(**spec["case"])
    model = load_model(spec["impl"], Path(spec["directory"]), case, spec["compare_hf"])
    small = replace(case, height=64, width=64)
    make_step(model, spec["impl"], small, *make_inputs(small))()
    step = make_step(model, spec["impl"], case, *make_inputs(case))
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _rss_bytes("VmRSS")
    step()
    print((_rss_bytes("VmHWM") - before) / 2**20)


def run_case(
    case: Case,
    *,
    compare_hf: bool = False,
    repeats: int = 10,
    warmup: int = 2,
    memory: bool = True,
    weights: str | None = None,
    threads: int | None = None,
    fast: bool = False,
) -> list[Result]:
    """Measure our model (its default device path too with ``fast``, and transformers' two attention
    implementations with ``compare_hf``) on one case."""
    impls = ["ours", *(["ours-fast"] if fast else ()), *(HF_IMPLS if compare_hf else ())]
    with tempfile.TemporaryDirectory(prefix="segformer-bench-") as tmp:
        directory = save_weights(case, Path(tmp), weights)
        if weights is not None:  # the checkpoint decides the variant and classes
            config = from_pretrained(directory / "ours").config
            case = replace(case, variant=config.variant, num_classes=config.num_classes)
        x, labels = make_inputs(case)
        models = {impl: load_model(impl, directory, case, compare_hf) for impl in impls}
        reference = output_of(models["ours"], case, x)
        outputs = {impl: output_of(m, case, x) for impl, m in models.items()}
        diffs = {impl: (output - reference).abs().max().item() for impl, output in outputs.items()}
        labels_fp32 = output_of(uncompiled(models["ours"]), replace(case, dtype="fp32"), x).argmax(1)
        agreement = {impl: (output.argmax(1) == labels_fp32).float().mean().item() for impl, output in outputs.items()}
        steps = {impl: make_step(m, impl, case, x, labels) for impl, m in models.items()}
        times = time_interleaved(steps, case.device, repeats, warmup)
        results = []
        for impl, model in models.items():
            results.append(
                Result(
                    case=case,
                    impl=impl,
                    params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                    gmacs=count_gmacs(make_step(uncompiled(model), impl, case, x, labels)),
                    latencies_s=times[impl],
                    max_abs_diff=diffs[impl] if impl != "ours" else None,
                    agreement=agreement[impl],
                )
            )
        del models, steps
        if memory:
            for result in results:
                result.peak_mib = peak_memory_mib(result.impl, directory, case, compare_hf, threads)
    if compare_hf:
        best = min(r.latency_ms for r in results if r.impl in HF_IMPLS)
        for result in results:
            result.speedup = best / result.latency_ms if result.impl.startswith("ours") else None
    return results


def uncompiled(model: nn.Module) -> nn.Module:
    """The eager module behind a compiled one (FlopCounterMode counts eager operations)."""
    if isinstance(model, FastPath):
        return model.model
    return getattr(model, "_orig_mod", model)


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def format_timings(results: list[Result]) -> str:
    """An aligned text table, one row per model and case."""
    header = ("case", "model", "params M", "GMACs", "latency ms", "img/s", "peak MiB", "speed-up", "max |Δ|", "agree %")
    rows = [
        (
            r.case.label,
            r.impl + (" (compiled)" if r.case.compile else ""),
            f"{r.params_m:.2f}",
            f"{r.gmacs:.2f}",
            f"{r.latency_ms:.1f}",
            f"{r.images_per_s:.2f}",
            _fmt(r.peak_mib, ".0f"),
            _fmt(r.speedup, ".2f") + ("×" if r.speedup is not None else ""),
            _fmt(r.max_abs_diff, ".1e"),
            _fmt(None if r.agreement is None else 100 * r.agreement, ".2f"),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


@contextlib.contextmanager
def num_threads(threads: int | None):
    """Temporarily set torch's intra-op thread count (None: leave it)."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def data_images_per_s(recipe: Recipe, workers: int, repeats: int = 10, warmup: int = 2) -> float:
    """Images/s of the training input pipeline: ``recipe``'s dataset and augmentation through the train loader.

    ``warmup`` batches (worker start-up) are not timed; then ``repeats`` batches of ``data.batch_size``.
    """
    data = recipe.data
    loader = build_train_loader(
        build_split(data, "train"), recipe_transforms(data), data.batch_size, seed=recipe.seed, workers=workers
    )
    batches = iter(loader)
    for _ in range(warmup):
        next(batches)
    start = time.perf_counter()
    for _ in range(repeats):
        next(batches)
    seconds = time.perf_counter() - start
    del batches  # stops the workers
    return repeats * data.batch_size / seconds
