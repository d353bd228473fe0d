"""``segformer serve --weights W``: the HTTP API and web page on http://127.0.0.1:8000 (extra ``serve``)."""

from __future__ import annotations

# The library and torch are imported inside run(): `segformer --help` and `segformer serve --help` stay fast
# (tests/test_serve.py checks that the help does not import torch).
import argparse

from segformer.cli.common import (
    add_device_argument,
    add_engine_arguments,
    add_fast_path_arguments,
    add_threads_argument,
    apply_threads,
    positive_int,
    runner_options,
)
from segformer.serve.limits import Limits

DEFAULT_LIMITS = Limits()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, help="checkpoint file, folder or hub id; or an .onnx file")
    add_engine_arguments(parser)
    add_device_argument(parser)
    add_fast_path_arguments(parser)
    add_threads_argument(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, local only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default: 8000)")
    parser.add_argument("--max-batch", type=positive_int, default=8, help="largest batch of requests (default: 8)")
    parser.add_argument("--batch-window-ms", type=float, default=5.0, help="wait for more requests (default: 5)")
    parser.add_argument("--queue", type=positive_int, default=64, help="requests waiting before 503 (default: 64)")
    parser.add_argument(
        "--max-pixels", type=positive_int, default=DEFAULT_LIMITS.max_pixels, help="largest image, pixels"
    )
    parser.add_argument(
        "--max-bytes", type=positive_int, default=DEFAULT_LIMITS.max_bytes, help="largest upload, bytes"
    )


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from segformer.device import resolve_device
    from segformer.engines import load_for_inference
    from segformer.serve.app import create_app
    from segformer.serve.predictor import Predictor

    device = resolve_device(args.device)
    apply_threads(args.threads)
    model, engine, engine_name = load_for_inference(args.weights, device, args.engine, args.model)
    limits = Limits(max_bytes=args.max_bytes, max_pixels=args.max_pixels)
    predictor = Predictor(model, engine, runner_options(args))
    app = create_app(predictor, limits, args.max_batch, args.batch_window_ms / 1000, args.queue)
    how = predictor.runner.describe() if engine is None else engine_name
    print(f"serving SegFormer-{predictor.metadata['variant']} ({how}) on http://{args.host}:{args.port}")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=30)
    return 0
