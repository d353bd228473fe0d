"""``run_case``: every row of one benchmark case, built from the same weights and timed on the same input in one
process (see ``segformer.benchmark`` for what each row is and how it is measured)."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from torch import nn

from segformer.benchmark.case import COMPILED, FAST, HF_ATTENTIONS, OURS, Case, Result, hf_impl
from segformer.benchmark.flops import count_gmacs
from segformer.benchmark.memory import peak_memory_mib
from segformer.benchmark.models import (
    RunnerPath,
    load_model,
    make_inputs,
    make_step,
    output_of,
    row_precision,
    save_weights,
    uncompiled,
)
from segformer.benchmark.timing import first_calls, time_interleaved
from segformer.pretrained import from_pretrained


def row_impls(case: Case, fast: bool, compare_hf: bool, hf_attentions: Sequence[str]) -> list[str]:
    """The rows of a case: ours, the default path (``fast``), the compiled path (``case.compile``), transformers'."""
    hf = [hf_impl(attention) for attention in hf_attentions] if compare_hf else []
    return [OURS, *([FAST] if fast else []), *([COMPILED] if case.compile else []), *hf]


def run_case(
    case: Case,
    *,
    compare_hf: bool = False,
    repeats: int = 10,
    warmup: int = 3,
    memory: bool = True,
    weights: str | None = None,
    threads: int | None = None,
    fast: bool = False,
    hf_attentions: Sequence[str] = HF_ATTENTIONS,
) -> list[Result]:
    """Measure our model (its default device path too with ``fast``, the opt-in compiled path with
    ``case.compile``, and transformers' attention implementations ``hf_attentions`` with ``compare_hf``) on one
    case."""
    impls = row_impls(case, fast, compare_hf, hf_attentions)
    with tempfile.TemporaryDirectory(prefix="segformer-bench-") as tmp:
        directory = save_weights(case, Path(tmp), weights)
        if weights is not None:  # the checkpoint decides the variant and classes
            config = from_pretrained(directory / "ours").config
            case = replace(case, variant=config.variant, num_classes=config.num_classes)
        models = {impl: load_model(impl, directory, case, compare_hf) for impl in impls}
        results = measure(models, case, repeats, warmup)
        del models
        if memory:
            for result in results:
                result.peak_mib = peak_memory_mib(result.impl, directory, case, compare_hf, threads)
    hf_latencies = [r.latency_ms for r in results if r.impl.startswith("hf-")]
    for result in results:
        if hf_latencies and result.impl.startswith("ours"):
            result.speedup = min(hf_latencies) / result.latency_ms
    return results


def measure(models: dict[str, nn.Module], case: Case, repeats: int, warmup: int) -> list[Result]:
    """Latencies, GMACs, output differences and label agreement of every row of ``case``.

    Our eager model runs first (the device's libraries are then initialised); each runner row's first two calls at
    the case's shape are timed on their own (``first_calls``) before the interleaved timing, which therefore
    replays their CUDA graphs.
    """
    x, labels = make_inputs(case)
    reference = output_of(models[OURS], case, x)
    firsts = {
        impl: first_calls(make_step(model, impl, case, x, labels), case.device)
        for impl, model in models.items()
        if isinstance(model, RunnerPath)
    }
    outputs = {impl: output_of(model, case, x, impl) for impl, model in models.items()}
    labels_fp32 = output_of(uncompiled(models[OURS]), replace(case, dtype="fp32"), x).argmax(1)
    steps = {impl: make_step(model, impl, case, x, labels) for impl, model in models.items()}
    times = time_interleaved(steps, case.device, repeats, warmup)
    results = []
    for impl, model in models.items():
        runner = model.runner if isinstance(model, RunnerPath) else None
        first, second = firsts.get(impl, (None, None))
        eager = make_step(uncompiled(model), impl, case, x, labels)
        eager()  # an eager module that only ran compiled has not cached its fused decoder weights yet
        results.append(
            Result(
                case=case,
                impl=impl,
                precision=row_precision(model, case, impl),
                params_m=sum(p.numel() for p in model.parameters()) / 1e6,
                gmacs=count_gmacs(eager),
                latencies_s=times[impl],
                max_abs_diff=None if impl == OURS else (outputs[impl] - reference).abs().max().item(),
                agreement=(outputs[impl].argmax(1) == labels_fp32).float().mean().item(),
                first_call_s=first,
                second_call_s=second,
                compiled=impl == COMPILED or (impl.startswith("hf-") and case.compile),
                graphs=runner is not None and runner.graphs is not None,
            )
        )
    return results
