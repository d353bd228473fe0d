"""Start a Python entry of benchmarks/gpu.sh: ``segformer ARGS`` or ``SCRIPT.py ARGS``, with torch.compile's backend
replaced when ``$GPU_BENCH_COMPILE_BACKEND`` is set.

The dry run on the CPU sets it to ``aot_eager``: the same Dynamo capture and AOTAutograd graphs as inductor, without
inductor's C++ build (minutes for a tiny B0 on 2 cores). On the GPU it is unset and nothing is replaced.

    python3 -u benchmarks/gpu_launch.py segformer benchmark --fast ...
    python3 -u benchmarks/gpu_launch.py benchmarks/gpu_end_to_end.py --tiny
"""

from __future__ import annotations

import functools
import os
import runpy
import sys


def main() -> int:
    if len(sys.argv) < 2:
        raise SystemExit("usage: gpu_launch.py (segformer | SCRIPT.py) ARG...")
    backend = os.environ.get("GPU_BENCH_COMPILE_BACKEND")
    if backend:
        import torch

        torch.compile = functools.partial(torch.compile, backend=backend)
    target, args = sys.argv[1], sys.argv[2:]
    if target == "segformer":
        from segformer.cli import main as segformer_main

        return segformer_main(args)
    sys.argv = [target, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(target)))  # as `python3 SCRIPT.py` would: its siblings
    runpy.run_path(target, run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
