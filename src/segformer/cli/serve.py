"""``segformer serve --weights W``: the HTTP API and web page on http://127.0.0.1:8000 (extra ``serve``)."""

from __future__ import annotations

# The library and torch are imported inside the functions below: `segformer --help` and
# `segformer COMMAND --help` stay fast.
import argparse

from segformer.engines import ENGINES
from segformer.serve.predictor import Limits

DEFAULT_LIMITS = Limits()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="checkpoint file, folder or hub id; or an .onnx file")
    parser.add_argument("--model", help="with an .onnx --weights: the checkpoint giving the classes and variant")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, local only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--max-batch", type=int, default=8, help="largest batch of requests (default: 8)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0, help="wait for more requests (default: 5)")
    parser.add_argument("--queue", type=int, default=64, help="requests waiting before 503 (default: 64)")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_LIMITS.max_pixels, help="largest image, pixels")
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_LIMITS.max_bytes, help="largest upload, bytes")
    parser.add_argument("--engine", choices=ENGINES, help="default: onnxruntime on the CPU when installed, else torch")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 … (default: cuda if available)")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from segformer.device import resolve_device
    from segformer.engines import load_for_inference
    from segformer.serve.app import create_app
    from segformer.serve.predictor import Predictor

    for name in ("max_batch", "queue", "max_pixels", "max_bytes"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    device = resolve_device(args.device)
    model, engine, engine_name = load_for_inference(args.weights, device, args.engine, args.model)
    limits = Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels)
    predictor = Predictor(model, engine)
    app = create_app(predictor, limits, args.max_batch, args.batch_window_ms / 1000, args.queue)
    print(f"serving SegFormer-{predictor.metadata['variant']} ({engine_name}) on http://{args.host}:{args.port}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)
    return 0
