"""``segformer`` in a process of its own, as a user runs it: what it prints, and what ``--help`` imports."""

from __future__ import annotations

import json
import os
import subprocess
import sys

# What torch.onnx and torch.export print by themselves, and ONNX Runtime when a graph keeps an unused tensor:
# none of it is the user's concern (``segformer.export.quiet_exporter``, ``onnx_passes.classifier_as_product``).
TOOL_NOISE = ("torchvision is not installed", "LeafSpec", "Removing initializer")
# Runs `segformer COMMAND --help` (argparse exits after printing it) and reports the help text and every module
# the process had imported by then.
HELP_PROBE = """
import contextlib, io, json, sys
from segformer.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    try:
        main([sys.argv[1], "--help"])
    except SystemExit:
        pass
print(json.dumps({"help": out.getvalue(), "modules": sorted(sys.modules)}))
"""


def run_segformer(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """``python -m segformer ARGS`` on one thread; its exit status, stdout and stderr (text)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "segformer", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)


def help_imports(command: str) -> tuple[str, set[str]]:
    """The ``--help`` text of ``segformer COMMAND`` and the names of the modules imported to print it."""
    result = subprocess.run(
        [sys.executable, "-c", HELP_PROBE, command], capture_output=True, text=True, timeout=120, check=True
    )
    report = json.loads(result.stdout)
    return report["help"], set(report["modules"])
