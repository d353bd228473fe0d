"""The model before the speed work (``model.py`` at a git revision) against the current one, CPU, fp32.

Same weights, same input, interleaved, medians; run from a git checkout.

    python benchmarks/history.py [--rev d671050] [--variant b0] [--size 512x512] [--threads 2] [--repeats 10]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from segformer.model import SegFormer


def load_old_model_module(rev: str):
    """Import ``src/segformer/model.py`` as it was at git revision ``rev``."""
    source = subprocess.run(
        ["git", "show", f"{rev}:src/segformer/model.py"], capture_output=True, text=True, check=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "model_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("model_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="d671050", help="git revision of the old model.py (default: first commit)")
    parser.add_argument("--variant", default="b0")
    parser.add_argument("--size", default="512x512")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    height, width = (int(v) for v in args.size.split("x"))
    torch.manual_seed(0)
    new = SegFormer(args.variant, 150).eval()
    old = load_old_model_module(args.rev).SegFormer(args.variant, 150).eval()
    old.load_state_dict(new.state_dict())
    x = torch.randn(1, 3, height, width)
    models = {f"model.py@{args.rev}": old, "model.py now": new}
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
