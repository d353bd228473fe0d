"""Throughput of ``segformer serve`` at 512×512 with concurrent clients: against the bare engine on the CPU, or
batched against one request at a time (``--compare-batching``, for a GPU).

A random B0 (150 classes) is served by ``segformer serve`` in its own process (2 threads); 8 client
threads (16 with ``--compare-batching``) post the same 512×512 PNG, first for ``--warmup-seconds`` untimed (the
server's CUDA graphs for its batch sizes are captured then), then for ``--seconds``, and count answers. The bare
engine's rate is ``Segmenter.predict`` on the same image in this process, same engine and threads, no HTTP. With
``--compare-batching`` the server runs twice, with ``--max-batch 1`` and with ``--max-batch N``, each started the
same way at this process's own priority (only the client threads run at nice 19), and the ratio of the two
request rates is printed.

Where starlette, uvicorn or python-multipart are missing (the GPU machine), ``--wheels DIR`` installs them from
wheels (``benchmarks/gpu_wheels.sh`` downloads them) into a temporary folder on the servers' PYTHONPATH.

python benchmarks/serve_load.py                          # CPU, default engine, against the bare engine
python benchmarks/serve_load.py --engine onnxruntime --seconds 30
python benchmarks/serve_load.py --compare-batching --device cuda --max-batch 16 --wheels benchmarks/wheels
"""

from __future__ import annotations

import argparse
import concurrent.futures
import importlib.util
import io
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

import segformer
from segformer.benchmark.summary import append_records
from segformer.config import TestProtocol
from segformer.engines import build_engine
from segformer.serve.predictor import make_segmenter

CODE = "import sys; from segformer.cli import main; sys.exit(main(sys.argv[1:]))"
SERVE_PACKAGES = {"starlette": "starlette", "uvicorn": "uvicorn", "multipart": "python-multipart"}  # module: wheel


def serve_environment(wheels: Path | None) -> dict[str, str]:
    """Environment variables for the servers: with ``wheels`` (a folder of wheels), starlette, uvicorn and
    python-multipart installed from it (no index) into a temporary folder put first on PYTHONPATH; without, none,
    when they import here. Exits naming what is missing otherwise."""
    missing = [wheel for module, wheel in SERVE_PACKAGES.items() if importlib.util.find_spec(module) is None]
    if wheels is None or not wheels.is_dir():
        if missing:
            raise SystemExit(
                f"segformer serve needs {', '.join(missing)}, not installed here, and there is no wheel folder "
                f"{wheels or '(--wheels)'}: run `bash benchmarks/gpu_wheels.sh` where PyPI is reachable, carry "
                "benchmarks/wheels, and pass --wheels benchmarks/wheels"
            )
        return {}
    target = tempfile.mkdtemp(prefix="segformer-serve-site-")
    pip = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--find-links", str(wheels), "--target", target]
    done = subprocess.run([*pip, *SERVE_PACKAGES.values()], capture_output=True, text=True)
    if done.returncode:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise SystemExit(f"installing {', '.join(SERVE_PACKAGES.values())} from {wheels} failed: {lines[-1]}")
    print(f"installed {', '.join(SERVE_PACKAGES.values())} and their needs from {wheels} into {target}")
    return {"PYTHONPATH": os.pathsep.join(filter(None, [target, os.environ.get("PYTHONPATH")]))}


def lower_this_threads_priority() -> None:
    """nice 19 for the calling thread alone (on Linux a thread's nice value is its own): a client thread then takes
    the cores only when the server leaves them idle, while the main thread, and every server it starts, keeps the
    priority the script was started with."""
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)


def start_server(
    weights: Path, args: argparse.Namespace, max_batch: int, env: dict[str, str]
) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = ["serve", "--weights", str(weights), "--port", str(port), "--engine", args.engine]
    command += ["--max-batch", str(max_batch), *(["--device", args.device] if args.device else [])]
    env = {**os.environ, **env, "OMP_NUM_THREADS": str(args.threads)}
    process = subprocess.Popen([sys.executable, "-c", CODE, *command], env=env)
    url = f"http://127.0.0.1:{port}"
    while True:
        try:
            if httpx.get(f"{url}/health").status_code == 200:
                return process, url
        except httpx.TransportError:
            if process.poll() is not None:
                raise SystemExit("segformer serve did not start") from None
            time.sleep(0.5)


def server_rate(url: str, data: bytes, clients: int, seconds: float) -> float:
    """Answers per second with ``clients`` threads posting ``data`` for ``seconds``.

    The client threads run at the lowest CPU priority (``lower_this_threads_priority``), so that on a small
    machine the load generator takes the cores only when the server leaves them idle: the rate is then the
    server's, not the server's minus the clients' share of the cores.
    """

    def client(_: int) -> int:
        lower_this_threads_priority()
        done, stop = 0, time.monotonic() + seconds
        with httpx.Client(base_url=url, timeout=120) as session:
            while time.monotonic() < stop:
                assert session.post("/v1/segment", content=data).status_code == 200
                done += 1
        return done

    with httpx.Client(base_url=url, timeout=120) as warm:
        warm.post("/v1/segment", content=data)
    start = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        total = sum(pool.map(client, range(clients)))
    return total / (time.monotonic() - start)


def bare_rate(segmenter, image: np.ndarray, seconds: float) -> float:
    segmenter.predict(image)
    done, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        segmenter.predict(image)
        done += 1
    return done / (time.monotonic() - start)


def served_rate(weights: Path, data: bytes, args: argparse.Namespace, max_batch: int, env: dict[str, str]) -> dict:
    """Requests per second of a ``segformer serve`` process started for this measurement, after a warm-up load,
    and the server's nice value."""
    process, url = start_server(weights, args, max_batch, env)
    try:
        nice = os.getpriority(os.PRIO_PROCESS, process.pid)
        if args.warmup_seconds > 0:
            server_rate(url, data, args.clients, args.warmup_seconds)
        rate = server_rate(url, data, args.clients, args.seconds)
        return {"max_batch": max_batch, "requests_per_s": rate, "server_nice": nice}
    finally:
        process.terminate()
        process.wait()


def compare_batching(weights: Path, data: bytes, args: argparse.Namespace, case: str) -> list[dict]:
    """``--max-batch 1`` against ``--max-batch N``: both rows, printed with their ratio."""
    env = serve_environment(Path(args.wheels) if args.wheels else None)
    single, batched = (served_rate(weights, data, args, max_batch, env) for max_batch in (1, args.max_batch))
    ratio = batched["requests_per_s"] / single["requests_per_s"]
    print(f"{case}, server device {args.device or 'default'}, {args.clients} clients")
    for row in (single, batched):
        label = f"segformer serve --max-batch {row['max_batch']}:"
        print(f"{label:<32} {row['requests_per_s']:7.2f} requests/s  (server nice {row['server_nice']})")
    print(f"batched / one at a time: {ratio:.2f}× (target >= 3× on a GPU)")
    return [single, batched | {"speedup": ratio}]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--clients", type=int, help="client threads (default: 8; --compare-batching: 16)")
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--warmup-seconds", type=float, default=3.0, help="untimed load first (default: 3)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", help="the server's --device (default: its own, cuda if available)")
    parser.add_argument("--size", type=int, default=512, help="side of the square test image")
    parser.add_argument("--compare-batching", action="store_true", help="serve with --max-batch 1 and N")
    parser.add_argument("--wheels", help="folder of starlette/uvicorn/python-multipart wheels to install from")
    parser.add_argument("--json", help="append the figures to this JSON Lines summary")
    parser.add_argument("--section", default="serve", help="their section in --json (default: serve)")
    args = parser.parse_args()
    args.clients = args.clients or (16 if args.compare_batching else 8)
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = segformer.create_model("b0", num_classes=150, protocol=TestProtocol(scale=None)).eval()  # at its size
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    case = f"B0 {args.size}×{args.size}, {args.engine}, {args.threads} threads, {args.seconds:.0f} s each"
    common = {"size": args.size, "engine": args.engine, "clients": args.clients, "device": args.device}
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        weights = Path(tmp) / "model.safetensors"
        if args.compare_batching:
            rows = compare_batching(weights, png.getvalue(), args, case)
        else:
            segmenter = make_segmenter(model, None, build_engine(args.engine, model, weights))  # also fills the cache
            bare = bare_rate(segmenter, image, args.seconds)
            env = serve_environment(Path(args.wheels) if args.wheels else None)
            served = served_rate(weights, png.getvalue(), args, args.max_batch, env)
            print(case)
            print(f"bare engine (Segmenter.predict):     {bare:6.2f} images/s")
            rate = served["requests_per_s"]
            print(f"segformer serve, {args.clients} clients:     {rate:6.2f} requests/s  ({rate / bare:.2f}× bare)")
            rows = [{"bare_images_per_s": bare}, served]
    if args.json:
        append_records(args.json, args.section, [common | row for row in rows])


if __name__ == "__main__":
    main()
