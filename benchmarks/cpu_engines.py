"""CPU engines at 512×512, batch 1, 2 threads: the default path against PyTorch eager fp32 and ONNX Runtime.

Rows (random weights, 150 classes; speed does not depend on the weights):

* torch fp32: ``model(x)`` in eager fp32, the baseline;
* default: ``Segmenter(model).network(x)``, what predict, eval and serve run without flags (bf16 autocast
  on a CPU with AMX, else fp32 eager);
* onnxruntime fp32 / int8: the engine's ONNX file (our export with ONNX Runtime's fusions), and its int8
  quantisation calibrated on synthetic scenes.

Each engine is timed in a process of its own, and the engines take turns over ``--passes`` passes (the
median of the passes is printed). Interleaving calls of different engines in one process is unfair on a small
machine: each runtime's worker threads spin for a while after a call and steal the cores of the next one.

python benchmarks/cpu_engines.py                     # B0 and B2, 3 passes
python benchmarks/cpu_engines.py --variants b0 --passes 5 --cache /tmp/onnx
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import warnings
from pathlib import Path

import torch
from _run import median_ms, worker_ms

import segformer
from segformer.config import TestProtocol
from segformer.data import SyntheticDataset
from segformer.engines import OnnxRuntimeEngine, export_for_engine
from segformer.inference import Segmenter
from segformer.onnx_passes import quantize_int8

SIZE = 512
ENGINES = ("torch fp32", "default", "onnxruntime fp32", "onnxruntime int8")


def random_model(variant: str) -> segformer.SegFormer:
    """A random model whose norms have an affine as trained ones do: a fresh model's scales are 1 and its shifts 0,
    which the ONNX Runtime engine's graph drops (``onnx_passes.layer_norms_as_instance_norms``)."""
    torch.manual_seed(0)
    model = segformer.create_model(variant, num_classes=150).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.1)
    return model


def prepare(variant: str, folder: Path) -> None:
    """Export ``variant`` as the engine does to ``folder``/<variant>.onnx and quantise it to <variant>.int8.onnx,
    unless present."""
    fp32, int8 = folder / f"{variant}.onnx", folder / f"{variant}.int8.onnx"
    if not fp32.is_file():
        export_for_engine(random_model(variant), fp32)
    if not int8.is_file():
        scenes = SyntheticDataset(num=8, size=(SIZE, SIZE), split="val")
        protocol = TestProtocol(scale=None)  # the 512×512 scenes as they are
        quantize_int8(fp32, int8, (scenes[i][0] for i in range(len(scenes))), protocol)


def runner(engine: str, variant: str, folder: Path, threads: int):
    """A callable running ``engine`` on a 1×3×512×512 batch."""
    if engine.startswith("onnxruntime"):
        suffix = ".int8.onnx" if engine.endswith("int8") else ".onnx"
        return OnnxRuntimeEngine(folder / f"{variant}{suffix}", threads)
    model = random_model(variant)
    if engine == "torch fp32":
        return model
    os.environ.pop("SEGFORMER_DTYPE", None)  # the default precision of this machine
    return Segmenter(model, TestProtocol()).network


def time_engine(engine: str, variant: str, folder: Path, threads: int, calls: int) -> float:
    """Median milliseconds of ``calls`` calls of one engine, after 2 warm-ups (run in a worker process)."""
    torch.set_num_threads(threads)
    run = runner(engine, variant, folder, threads)
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        return median_ms(lambda: run(x), calls, warmup=2)


def in_process(engine: str, variant: str, folder: Path, threads: int, calls: int) -> float:
    args = [engine, "--variants", variant, "--cache", str(folder), "--threads", str(threads), "--calls", str(calls)]
    return worker_ms(__file__, args)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["b0", "b2"])
    parser.add_argument("--passes", type=int, default=3)
    parser.add_argument("--calls", type=int, default=10, help="timed calls per engine and pass")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", help="folder keeping the ONNX files between runs (default: a temporary one)")
    parser.add_argument("--worker", choices=ENGINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    if args.worker:
        print(time_engine(args.worker, args.variants[0], Path(args.cache), args.threads, args.calls))
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.cache or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        precision = Segmenter(random_model("b0"), TestProtocol()).precision
        print(f"{SIZE}×{SIZE}, batch 1, {args.threads} threads, one process per engine, median of {args.passes} passes")
        print(f"default = Segmenter's network, here in {precision}")
        for variant in args.variants:
            prepare(variant, folder)
            passes = {engine: [] for engine in ENGINES}
            for _ in range(args.passes):
                for engine in ENGINES:
                    passes[engine].append(in_process(engine, variant, folder, args.threads, args.calls))
            ms = {engine: statistics.median(values) for engine, values in passes.items()}
            for engine in ENGINES:
                line = (
                    f"{variant}  {engine:<17} {ms[engine]:7.1f} ms   {ms['torch fp32'] / ms[engine]:5.2f}× torch fp32"
                )
                if engine == "onnxruntime int8":
                    line += f"   {ms['onnxruntime fp32'] / ms[engine]:5.2f}× onnxruntime fp32"
                print(line, flush=True)


if __name__ == "__main__":
    main()
