"""Throughput of ``segformer serve`` on the CPU at 512×512 with 8 concurrent clients, against the bare engine.

A random B0 (150 classes) is served by ``segformer serve`` in its own process (2 threads); 8 client
threads post the same 512×512 PNG for ``--seconds`` and count answers. The bare engine's rate is
``Segmenter.predict`` on the same image in this process, same engine and threads, no HTTP.

python benchmarks/serve_load.py                          # ONNX Runtime fp32
python benchmarks/serve_load.py --engine torch --seconds 30
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
from segformer.engines import build_engine
from segformer.serve.predictor import make_segmenter

CODE = "import sys; from segformer.cli import main; sys.exit(main(sys.argv[1:]))"


def start_server(weights: Path, engine: str, threads: int, max_batch: int) -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["serve", "--weights", str(weights), "--port", str(port), "--engine", engine, "--max-batch", str(max_batch)]
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
    os.nice(19)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--engine", choices=["torch", "onnxruntime"], default="torch")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--max-batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = segformer.create_model("b0", num_classes=150).eval()
    image = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    png = io.BytesIO()
    Image.fromarray(image).save(png, format="PNG")
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        weights = Path(tmp) / "model.safetensors"
        segmenter = make_segmenter(model, None, build_engine(args.engine, model, weights))  # also fills the cache
        bare = bare_rate(segmenter, image, args.seconds)
        process, url = start_server(weights, args.engine, args.threads, args.max_batch)
        try:
            served = server_rate(url, png.getvalue(), args.clients, args.seconds)
        finally:
            process.terminate()
            process.wait()
    print(f"B0 512×512, {args.engine}, {args.threads} threads, {args.seconds:.0f} s each")
    print(f"bare engine (Segmenter.predict):     {bare:6.2f} images/s")
    print(f"segformer serve, {args.clients} clients:     {served:6.2f} requests/s  ({served / bare:.2f}× bare)")


if __name__ == "__main__":
    main()
