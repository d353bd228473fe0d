"""The model at a git revision against the current one, CPU, fp32, in one process.

The whole package is taken at the revision (the model spans ``model.py``, ``fast.py`` and
``config.py`` today), imported under its own name and set aside, then the current package is
imported. Same weights, same input, interleaved, medians; run from a git checkout.

    python benchmarks/history.py [--rev d671050] [--variant b0] [--size 512x512] [--threads 2] [--repeats 10]
"""

from __future__ import annotations

import argparse
import importlib
import io
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from types import ModuleType

import torch

from segformer.model import create_model


def _segformer_modules() -> dict[str, ModuleType]:
    return {k: m for k, m in sys.modules.items() if k == "segformer" or k.startswith("segformer.")}


def load_model_module_at(rev: str) -> ModuleType:
    """``segformer.model`` of the package as it was at git revision ``rev`` (the current one is left untouched)."""
    archive = subprocess.run(["git", "archive", rev, "src/segformer"], capture_output=True, check=True).stdout
    root = tempfile.mkdtemp()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(root, filter="data")
    current = _segformer_modules()
    for name in current:
        del sys.modules[name]
    sys.path.insert(0, f"{root}/src")
    try:
        return importlib.import_module("segformer.model")
    finally:
        sys.path.remove(f"{root}/src")
        for name in _segformer_modules():
            del sys.modules[name]
        sys.modules.update(current)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="d671050", help="git revision of the old package (default: first commit)")
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    new = create_model(args.variant, 150).eval()
    old = load_model_module_at(args.rev).create_model(args.variant, 150).eval()
    old.load_state_dict(new.state_dict())
    x = torch.randn(1, 3, height, width)
    models = {f"segformer@{args.rev}": old, "segformer now": new}
    times: dict[str, list[float]] = {name: [] for name in models}
    with torch.inference_mode():
        outputs = [m(x) for m in models.values()]
        for round_ in range(args.repeats + 1):
            for name, model in models.items():
                start = time.perf_counter()
                model(x)
                if round_:
                    times[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    for name, ms in medians.items():
        print(f"{name:<22} {ms:8.1f} ms")
    before, after = medians.values()
    diff = (outputs[0] - outputs[1]).abs().max().item()
    print(f"speed-up {before / after:.2f}×, max |Δ| {diff:.1e} ({args.variant}, {args.size}, {args.threads} threads)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
