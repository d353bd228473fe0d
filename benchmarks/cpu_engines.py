"""CPU engines at 512×512, batch 1, 2 threads: PyTorch eager vs ONNX Runtime fp32 vs ONNX Runtime int8.

Random weights (speed does not depend on them); the int8 model is calibrated on synthetic scenes. The
engines run interleaved (one call of each per round), so machine noise hits all of them alike.

python benchmarks/cpu_engines.py                     # B0 and B2, 20 rounds
python benchmarks/cpu_engines.py --variants b0 --rounds 50 --cache /tmp/onnx
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import torch

import segformer
from segformer.data import SyntheticDataset
from segformer.engines import OnnxRuntimeEngine, quantize_int8
from segformer.export import export_onnx

SIZE = 512


def engines(variant: str, folder: Path, threads: int) -> dict:
    """The three engines of a random ``variant`` with 150 classes; ONNX files kept in ``folder``."""
    torch.manual_seed(0)
    model = segformer.create_model(variant, num_classes=150).eval()
    fp32, int8 = folder / f"{variant}.onnx", folder / f"{variant}.int8.onnx"
    if not fp32.is_file():
        export_onnx(model, fp32, SIZE, SIZE)
    if not int8.is_file():
        scenes = SyntheticDataset(num=8, size=(SIZE, SIZE), split="val")
        quantize_int8(fp32, int8, (scenes[i][0] for i in range(len(scenes))), (SIZE, SIZE))
    return {
        "torch eager": model,
        "onnxruntime fp32": OnnxRuntimeEngine(fp32, threads),
        "onnxruntime int8": OnnxRuntimeEngine(int8, threads),
    }


def measure(runners: dict, rounds: int, warmup: int = 2) -> dict[str, float]:
    """Median milliseconds of one call of each runner, interleaved over ``rounds``."""
    x = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    times: dict[str, list[float]] = {name: [] for name in runners}
    with torch.inference_mode():
        for r in range(warmup + rounds):
            for name, run in runners.items():
                start = time.perf_counter()
                run(x)
                if r >= warmup:
                    times[name].append(1000 * (time.perf_counter() - start))
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", nargs="+", default=["b0", "b2"])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--cache", help="folder keeping the ONNX files between runs (default: a temporary one)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.cache or tmp)
        folder.mkdir(parents=True, exist_ok=True)
        print(f"{SIZE}×{SIZE}, batch 1, {args.threads} threads, median of {args.rounds} interleaved rounds")
        for variant in args.variants:
            medians = measure(engines(variant, folder, args.threads), args.rounds)
            base = medians["torch eager"]
            for name, ms in medians.items():
                print(f"{variant}  {name:<18} {ms:8.1f} ms   {base / ms:5.2f}× torch eager")


if __name__ == "__main__":
    main()
