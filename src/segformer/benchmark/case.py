"""What one benchmark row is: the setting (``Case``), the model (its ``impl`` name), the measurements (``Result``),
and how rows are printed (``format_timings``) and written to a JSON summary (``result_row``)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

OURS = "ours"  # our model, eager, at --dtype (fp32 when not given): the reference of max |Δ|
FAST = "ours-fast"  # our default path: inference through NetworkRunner; training the trainer's step, eager
COMPILED = "ours-compiled"  # the opt-in compiled path: NetworkRunner(compile=True); training the compiled step
RUNNER_IMPLS = (FAST, COMPILED)
HF_ATTENTIONS = ("eager", "sdpa")  # transformers' attn_implementation values timed with --compare-hf


def hf_impl(attention: str) -> str:
    return f"hf-{attention}"


@dataclass(frozen=True)
class Case:
    """One benchmark setting.

    ``dtype`` None: the rows' own defaults (our eager and transformers' rows fp32, the runner rows the default
    precision of ``segformer.device.default_precision``, the trainer's step the packaged recipe's precision).
    ``compile``: add the opt-in compiled row and compile transformers' rows; ``graphs``: the runner rows replay
    CUDA graphs (their default on CUDA; False is ``--no-graphs``).
    """

    variant: str
    height: int
    width: int
    batch_size: int = 1
    device: str = "cpu"
    dtype: str | None = None
    train: bool = False
    num_classes: int = 150
    compile: bool = False
    graphs: bool = True

    @property
    def label(self) -> str:
        mode = "train" if self.train else "infer"
        return f"{self.variant} {self.height}x{self.width} b{self.batch_size} {mode}"


@dataclass
class Result:
    """Measurements of one model on one case."""

    case: Case
    impl: str  # OURS, FAST, COMPILED or hf_impl(attention)
    precision: str  # what the row ran in: "fp32", "bf16" or "fp16"
    params_m: float
    gmacs: float
    latencies_s: list[float]
    peak_mib: float | None = None
    max_abs_diff: float | None = None  # vs our eager model's output on the same input
    agreement: float | None = None  # share of argmax labels equal to our fp32 eager model's
    speedup: float | None = None  # best transformers latency / this latency (ours only)
    first_call_s: float | None = None  # runner rows: the first call at this shape (the compile, when compiled)
    second_call_s: float | None = None  # runner rows: the second call (where a CUDA graph is captured)
    compiled: bool = False  # this row's model is torch.compile'd
    graphs: bool = False  # this row replays CUDA graphs

    @property
    def latency_ms(self) -> float:
        return statistics.median(self.latencies_s) * 1e3

    @property
    def images_per_s(self) -> float:
        return self.case.batch_size / statistics.median(self.latencies_s)

    @property
    def model_label(self) -> str:
        extras = [name for name, on in (("compiled", self.compiled), ("CUDA graphs", self.graphs)) if on]
        return self.impl + (f" ({', '.join(extras)})" if extras else "")


def result_row(result: Result) -> dict:
    """One result as a flat JSON-ready dict: the case's fields, the row's figures (milliseconds, MiB, shares)."""
    ms = None if result.first_call_s is None else 1e3 * result.first_call_s
    second = None if result.second_call_s is None else 1e3 * result.second_call_s
    case = {k: v for k, v in asdict(result.case).items() if k not in ("compile", "graphs")}  # the row's own below
    return {
        **case,
        "case": result.case.label,
        "impl": result.impl,
        "precision": result.precision,
        "compiled": result.compiled,
        "graphs": result.graphs,
        "params_m": result.params_m,
        "gmacs": result.gmacs,
        "latency_ms": result.latency_ms,
        "images_per_s": result.images_per_s,
        "first_call_ms": ms,
        "second_call_ms": second,
        "peak_mib": result.peak_mib,
        "speedup": result.speedup,
        "max_abs_diff": result.max_abs_diff,
        "agreement": result.agreement,
    }


def _fmt(value: float | None, spec: str, scale: float = 1.0) -> str:
    return "-" if value is None else format(value * scale, spec)


def format_timings(results: list[Result]) -> str:
    """An aligned text table, one row per model and case."""
    header = (
        "case",
        "model",
        "dtype",
        "params M",
        "GMACs",
        "latency ms",
        "img/s",
        "1st call ms",
        "2nd call ms",
        "peak MiB",
        "speed-up",
        "max |Δ|",
        "agree %",
    )
    rows = [
        (
            r.case.label,
            r.model_label,
            r.precision,
            f"{r.params_m:.2f}",
            f"{r.gmacs:.2f}",
            f"{r.latency_ms:.2f}",
            f"{r.images_per_s:.1f}",
            _fmt(r.first_call_s, ".1f", 1e3),
            _fmt(r.second_call_s, ".1f", 1e3),
            _fmt(r.peak_mib, ".0f"),
            _fmt(r.speedup, ".2f") + ("×" if r.speedup is not None else ""),
            _fmt(r.max_abs_diff, ".1e"),
            _fmt(r.agreement, ".2f", 100),
        )
        for r in results
    ]
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = []
    for row in (header, *rows):
        cells = [cell.ljust(w) if i < 3 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
