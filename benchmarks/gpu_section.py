"""One section of benchmarks/gpu.sh: run its command, and whatever happens let the next section run.

Prints ``== NAME (at N s)``, runs the command (its output streams through as it comes), and records the outcome in
the JSON Lines summary (``segformer.benchmark.summary``). A command that exits non-zero, runs past its time or
cannot start prints ``FAILED NAME: <error>`` (its last error line) and is recorded as failed; this script itself
exits 0 either way, so the sections stay independent. A section that would start after the run's deadline is
not started (``FAILED NAME: not started, ...``). Standard library only, so a section costs no torch import.

    python3 -u benchmarks/gpu_section.py --json OUT.jsonl --name NAME [--timeout S] [--deadline EPOCH] -- CMD ARG...
    python3 -u benchmarks/gpu_section.py --json OUT.jsonl --report      # one line per section, at the end
"""

from __future__ import annotations

import argparse
import collections
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from segformer.benchmark.summary import append_status, read_records, sections

MIN_SECONDS = 5  # a section is not started with less time than this left before the deadline


def last_error(lines: collections.deque) -> str:
    """The most telling of the command's last stderr lines: the last ``...Error: ...`` line, else the last one."""
    text = [line.strip() for line in lines if line.strip()]
    errors = [line for line in text if "Error" in line.split(":", 1)[0] or line.startswith(("FAILED", "error"))]
    return (errors or text or ["no error output"])[-1][:300]


def run_command(command: list[str], timeout: float) -> tuple[int | None, str]:
    """Run ``command`` in its own process group, its stdout passed through and its stderr echoed as it comes;
    (exit status, or None when it ran past ``timeout`` and was killed, and its last error line)."""
    tail: collections.deque = collections.deque(maxlen=40)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    try:
        options = {"text": True, "errors": "replace", "env": env, "start_new_session": True}
        process = subprocess.Popen(command, stderr=subprocess.PIPE, **options)
    except OSError as error:
        return 127, f"cannot start {command[0]}: {error}"

    def echo() -> None:
        for line in process.stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            tail.append(line)

    reader = threading.Thread(target=echo, daemon=True)
    reader.start()
    try:
        status = process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the command's own group: the servers and workers it started too
        process.wait()
        status = None
    reader.join(timeout=5)
    return status, last_error(tail)


def run_section(name: str, command: list[str], json_path: str | None, timeout: float, deadline: float | None) -> bool:
    """Run one section and record it; True when it succeeded."""
    start = time.time()
    left = timeout if deadline is None else min(timeout, deadline - start)
    origin = float(os.environ.get("GPU_BENCH_START", start))
    print(f"\n== {name} (at {start - origin:.0f} s)", flush=True)
    if deadline is not None and deadline - start < MIN_SECONDS:
        status, error = -1, f"not started, the run's time budget is spent ({max(deadline - start, 0):.0f} s left)"
    else:
        status, error = run_command(command, left)
        if status is None:
            error = f"ran past its {left:.0f} s and was stopped; last error line: {error}"
    seconds = time.time() - start
    if status != 0:
        print(f"FAILED {name}: {error}", flush=True)
    else:
        print(f"-- {name}: done in {seconds:.0f} s", flush=True)
    if json_path:
        append_status(json_path, name, "ok" if status == 0 else "failed", seconds, None if status == 0 else error)
    return status == 0


def report(json_path: str) -> None:
    """One line per section of the summary: its status, seconds, rows, and the error of a failed one."""
    for name, entry in sections(read_records(json_path)).items():
        status = entry["status"] or {"status": "no status (killed?)", "seconds": None, "error": None}
        seconds = "" if status["seconds"] is None else f" in {status['seconds']:.0f} s"
        error = f": {status['error']}" if status.get("error") else ""
        print(f"{name}: {status['status']}{seconds}, {len(entry['rows'])} rows{error}")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="JSON Lines summary to record the outcome in")
    parser.add_argument("--name", help="the section's name")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds the command may run (default: 600)")
    parser.add_argument("--deadline", type=float, help="time.time() after which no section starts or runs on")
    parser.add_argument("--report", action="store_true", help="print one line per section of --json and exit")
    args = parser.parse_args(argv[:split])
    if args.report:
        if not args.json or not Path(args.json).exists():
            parser.error("--report needs an existing --json file")
        report(args.json)
        return 0
    command = argv[split + 1 :]
    if not args.name or not command:
        parser.error("expected --name NAME -- COMMAND ...")
    run_section(args.name, command, args.json, args.timeout, args.deadline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
