"""The HTTP server: a Starlette app with the segmentation API and the web page.

Routes:
    ``POST /v1/segment``: the image as the multipart field ``image`` or as the raw body; query options
    ``format=png|json|confidence``, ``overlay=true``, ``alpha=0..1``, ``scores=true``, ``mode=whole|slide``.
    ``format=confidence`` answers the per-pixel max softmax probability × 65535 as a 16-bit grayscale PNG
    (``segformer.scores``: the map ``segformer predict --scores`` writes as ``<stem>_confidence.png``).
    ``GET /v1/model``: variant, classes, palette, test protocol. ``GET /health``. ``GET /openapi.json``.
    ``GET /``: the web page (``static/``); ``GET /favicon.ico``: its icon (an SVG).

Uploads are read into memory (never spooled to disk) and decoded there; requests are batched by
``Batcher`` and segmented in its one worker thread. Decoding and PNG encoding run in a pool of their own with a
fixed number of threads (``max_batch``, at most the cores available), made at start-up: in Starlette's pool,
which starts and retires threads as the load changes, the server's memory kept growing in steps long after
the first batches.
"""

from __future__ import annotations

import asyncio
import io
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib.resources import files

import cv2
import numpy as np
from starlette.applications import Starlette
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from segformer.cores import available_cores
from segformer.serve.batcher import Batcher, QueueFull, ShuttingDown
from segformer.serve.limits import Limits
from segformer.serve.predictor import MODES, Job, Outcome, Predictor, RequestError, decode_image
from segformer.visualize import label_picture, overlay

STATIC = files("segformer.serve") / "static"
# Room for the multipart headers and boundaries around an image of the largest accepted size.
MULTIPART_OVERHEAD = 64 << 10
# Seconds a client is told to wait when the queue is full.
RETRY_AFTER = "1"
FORMATS = ("png", "json", "confidence")


@dataclass(frozen=True)
class Options:
    """Query options of ``POST /v1/segment``."""

    format: str = "png"
    overlay: bool = False
    alpha: float = 0.5
    scores: bool = False
    mode: str | None = None

    def job(self, image: np.ndarray) -> Job:
        """The batcher's job for ``image`` under these options."""
        return Job(image, self.mode, self.scores, confidence=self.format == "confidence")


def _flag(name: str, text: str | None) -> bool:
    if text is None or text.lower() in ("0", "false", "no", ""):
        return False
    if text.lower() in ("1", "true", "yes"):
        return True
    raise RequestError(400, f"query option {name}={text!r}: expected true or false")


def parse_options(query: dict) -> Options:
    """``Options`` from the query string; ``RequestError`` naming the option that is wrong."""
    unknown = sorted(set(query) - {"format", "overlay", "alpha", "scores", "mode"})
    if unknown:
        raise RequestError(400, f"unknown query option {unknown[0]!r}: expected format, overlay, alpha, scores, mode")
    format_, mode = query.get("format", "png"), query.get("mode")
    if format_ not in FORMATS:
        raise RequestError(400, f"unsupported format={format_!r}: expected png, json or confidence")
    if mode is not None and mode not in MODES:
        raise RequestError(400, f"unsupported mode={mode!r}: expected {' or '.join(MODES)}")
    try:
        alpha = float(query.get("alpha", 0.5))
    except ValueError:
        alpha = -1.0
    if not 0.0 <= alpha <= 1.0:
        raise RequestError(400, f"query option alpha={query['alpha']!r}: expected a number from 0 to 1")
    overlay_, scores = _flag("overlay", query.get("overlay")), _flag("scores", query.get("scores"))
    if overlay_ and format_ == "json":
        raise RequestError(
            400, "format=json and overlay=true conflict: the overlay is a PNG (format=png); the JSON is a summary"
        )
    if format_ == "confidence" and (overlay_ or scores):
        conflict = "overlay=true" if overlay_ else "scores=true"
        raise RequestError(
            400,
            f"format=confidence and {conflict} conflict: the confidence PNG holds each pixel's max probability alone;"
            " the overlay is format=png, the per-class scores format=json",
        )
    return Options(format_, overlay_, alpha, scores, mode)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with 413 as soon as it passes ``limit`` bytes."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise RequestError(413, f"upload of {declared} bytes is over the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise RequestError(413, f"upload of more than {limit} bytes is over the limit")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_upload(request: Request, limits: Limits) -> bytes:
    """The uploaded image bytes: the multipart field ``image``, or the whole body otherwise."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return await read_body(request, limits.max_bytes)
    body = await read_body(request, limits.max_bytes + MULTIPART_OVERHEAD)

    async def stream():
        yield body

    parser = MultiPartParser(request.headers, stream(), max_files=1, max_fields=16)
    parser.spool_max_size = len(body) + 1  # every part stays in memory
    try:
        form = await parser.parse()
    except MultiPartException as e:
        raise RequestError(400, f"malformed multipart upload: {e.message}") from None
    upload = form.get("image")
    if upload is None or isinstance(upload, str):
        raise RequestError(400, "multipart upload without a file field named 'image'")
    data = await upload.read()
    await form.close()
    return data


def png_bytes(outcome: Outcome, image: np.ndarray, options: Options, metadata: dict) -> bytes:
    """The label map as a palette PNG, the overlay with its legend when ``options.overlay``, or the confidence
    map when ``options.format`` is confidence."""
    if options.format == "confidence":
        return confidence_png(outcome)
    buffer = io.BytesIO()
    palette = np.array(metadata["palette"], np.uint8)
    if options.overlay:
        overlay(image, outcome.label, palette, metadata["class_names"], options.alpha).save(buffer, format="PNG")
    else:
        label_picture(outcome.label, palette).save(buffer, format="PNG", compress_level=1)  # fast; labels compress well
    return buffer.getvalue()


def confidence_png(outcome: Outcome) -> bytes:
    """The confidence map as a 16-bit grayscale PNG (as ``segformer.scores.save_confidence_maps`` writes it)."""
    ok, encoded = cv2.imencode(".png", outcome.confidence)
    if not ok:
        raise ValueError(f"OpenCV could not encode the {outcome.confidence.shape} confidence map as PNG")
    return encoded.tobytes()


def summary(outcome: Outcome, mode: str, names: list[str], total_ms: float) -> dict:
    """JSON answer: image size, each present class's area (largest first), timing."""
    label = outcome.label
    ids, counts = np.unique(label, return_counts=True)
    classes = []
    for i in np.argsort(-counts, kind="stable"):
        entry = {"id": int(ids[i]), "name": names[ids[i]], "pixels": int(counts[i]), "share": counts[i] / label.size}
        if outcome.scores is not None:
            entry["score"] = outcome.scores[int(ids[i])]
        classes.append(entry)
    return {
        "width": label.shape[1],
        "height": label.shape[0],
        "mode": mode,
        "classes": classes,
        "timing": {"total_ms": total_ms, "inference_ms": outcome.inference_ms, "batch_size": outcome.batch_size},
    }


def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


async def in_codec_pool(request: Request, function: Callable, *args):
    """``function(*args)`` in the app's decode/encode thread pool (``app.state.codec``, made by the lifespan)."""
    return await asyncio.get_running_loop().run_in_executor(request.app.state.codec, function, *args)


def static_file(name: str, media_type: str | None = None) -> Callable[[Request], Response]:
    """A route answering the file ``static/name``."""
    return lambda request: FileResponse(str(STATIC / name), media_type=media_type)


def create_app(
    predictor: Predictor, limits: Limits | None = None, max_batch: int = 8, window: float = 0.005, queue_size: int = 64
) -> Starlette:
    """The Starlette app serving ``predictor`` (batches of at most ``max_batch`` collected for ``window`` seconds).

    Requests beyond ``queue_size`` waiting ones are refused with 503 and ``Retry-After``.
    """
    limits = limits or Limits()
    batcher = Batcher(predictor, max_batch, window, queue_size)
    metadata = predictor.metadata
    default_mode = predictor.segmenters[None].protocol.mode

    async def segment(request: Request) -> Response:
        start = time.perf_counter()
        try:
            options = parse_options(dict(request.query_params))
            image = await in_codec_pool(request, decode_image, await read_upload(request, limits), limits)
            outcome = await batcher.submit(options.job(image))
        except RequestError as e:
            return error(e.status, str(e))
        except (QueueFull, ShuttingDown) as e:
            return error(503, f"server busy: {e}; retry in {RETRY_AFTER} s", {"Retry-After": RETRY_AFTER})
        if options.format == "json":
            total_ms = 1000 * (time.perf_counter() - start)
            return JSONResponse(summary(outcome, options.mode or default_mode, metadata["class_names"], total_ms))
        png = await in_codec_pool(request, png_bytes, outcome, image, options, metadata)
        return Response(png, media_type="image/png")

    async def model(request: Request) -> Response:
        engine = repr(predictor.engine) if predictor.engine is not None else "torch"
        limits_ = {"max_bytes": limits.max_bytes, "max_pixels": limits.max_pixels}
        settings = {"engine": engine, "segmenter": repr(predictor.segmenters[None]), "limits": limits_}
        return JSONResponse({**metadata, **settings, "max_batch": max_batch, "modes": list(MODES)})

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok", "queued": batcher.queue.qsize(), "batches": batcher.batches})

    @asynccontextmanager
    async def lifespan(app: Starlette):
        app.state.codec = ThreadPoolExecutor(min(max_batch, available_cores()), thread_name_prefix="segformer-codec")
        batcher.start()
        yield
        await batcher.close()
        app.state.codec.shutdown()

    routes = [
        Route("/", static_file("index.html")),
        Route("/favicon.ico", static_file("favicon.svg", "image/svg+xml")),
        Route("/openapi.json", static_file("openapi.json")),
        Route("/health", health),
        Route("/v1/model", model),
        Route("/v1/segment", segment, methods=["POST"]),
        Mount("/static", StaticFiles(directory=str(STATIC)), name="static"),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.batcher = batcher
    return app
