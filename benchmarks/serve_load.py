"""Throughput of ``segformer serve`` at 512×512 with concurrent clients: against the bare engine on the CPU, or
batched against one request at a time (``--compare-batching``, for a GPU).

A random B0 (150 classes) is served by ``segformer serve`` in its own process (2 threads); 8 client
threads post the same 512×512 PNG for ``--seconds`` and count answers. The bare engine's rate is
``Segmenter.predict`` on the same image in this process, same engine and threads, no HTTP. With
``--compare-batching`` the server runs twice, with ``--max-batch 1`` and with ``--max-batch N``, and the
ratio of the two request rates is printed.

python benchmarks/serve_load.py                          # CPU, default engine, against the bare engine
python benchmarks/serve_load.py --engine onnxruntime --seconds 30
python benchmarks/serve_load.py --compare-batching --device cuda --clients 32 --max-batch 16
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image

import segformer
from segformer.config import TestProtocol
from segformer.engines import build_engine
from segformer.serve.predictor import make_segmenter

CODE = "import sys; from segformer.cli import main; sys.exit(main(sys.argv[1:]))"


def start_server(
    weights: Path, engine: str, threads: int, max_batch: int, device: str | None = None
) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["serve", "--weights", str(weights), "--port", str(port), "--engine", engine, "--max-batch", str(max_batch)]
    args += ["--device", device] if device else []
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen([sys.executable, "-c", CODE, *args], env=env)
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

    The client threads run at the lowest CPU priority (nice 19, inherited from this thread), so that on a
    small machine the load generator takes the cores only when the server leaves them idle: the rate is then
    the server's, not the server's minus the clients' share of the cores.
    """
    os.nice(19)  # the most there is: a second call stays at 19

    def client(_: int) -> int:
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


def served_rate(weights: Path, data: bytes, args: argparse.Namespace, max_batch: int) -> float:
    """Requests per second of a ``segformer serve`` process started for this measurement."""
    process, url = start_server(weights, args.engine, args.threads, max_batch, args.device)
    try:
        return server_rate(url, data, args.clients, args.seconds)
    finally:
        process.terminate()
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", help="the server's --device (default: its own, cuda if available)")
    parser.add_argument("--size", type=int, default=512, help="side of the square test image")
    parser.add_argument("--compare-batching", action="store_true", help="serve with --max-batch 1 and N")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = segformer.create_model("b0", num_classes=150, protocol=TestProtocol(scale=None)).eval()  # at its size
    image = np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    case = f"B0 {args.size}×{args.size}, {args.engine}, {args.threads} threads, {args.seconds:.0f} s each"
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        weights = Path(tmp) / "model.safetensors"
        if args.compare_batching:
            single = served_rate(weights, png.getvalue(), args, 1)
            batched = served_rate(weights, png.getvalue(), args, args.max_batch)
            print(f"{case}, server device {args.device or 'default'}, {args.clients} clients")
            print(f"segformer serve --max-batch 1:  {single:7.2f} requests/s")
            print(f"segformer serve --max-batch {args.max_batch}: {batched:7.2f} requests/s  ({batched / single:.2f}×)")
            return
        segmenter = make_segmenter(model, None, build_engine(args.engine, model, weights))  # also fills the cache
        bare = bare_rate(segmenter, image, args.seconds)
        served = served_rate(weights, png.getvalue(), args, args.max_batch)
    print(case)
    print(f"bare engine (Segmenter.predict):     {bare:6.2f} images/s")
    print(f"segformer serve, {args.clients} clients:     {served:6.2f} requests/s  ({served / bare:.2f}× bare)")


if __name__ == "__main__":
    main()
