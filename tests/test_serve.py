"""``segformer serve``: the real server over HTTP answers as ``Segmenter.predict``, refuses bad input and stays up."""

from __future__ import annotations

import concurrent.futures
import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from xml.etree import ElementTree

import cv2
import httpx
import numpy as np
import psutil
import pytest
import torch
import uvicorn
from PIL import Image

import reference
import segformer
from segformer.config import TestProtocol
from segformer.inference import Segmenter
from segformer.serve.app import FORMATS, create_app
from segformer.serve.limits import Limits
from segformer.serve.predictor import Predictor
from segformer.visualize import overlay

pytestmark = pytest.mark.usefixtures("one_thread")

NAMES = ["sky", "road", "tree", "car"]
LIMITS = Limits(max_bytes=300_000, max_pixels=160 * 160)
# The weights' test protocol: images tested at their own size; small slide windows so that mode=slide tiles them.
PROTOCOL = TestProtocol(scale=None, crop=(64, 64), stride=(48, 48))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(app) -> Iterator[tuple[str, uvicorn.Server]]:
    """Run ``app`` with uvicorn in a thread on a free loopback port; yield its URL and the server."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}", server
    finally:
        server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop"


def encode(image: np.ndarray | Image.Image, format: str = "PNG", **options) -> bytes:
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    picture.save(buffer, format=format, **options)
    return buffer.getvalue()


def photo(height: int, width: int, seed: int) -> np.ndarray:
    """A smooth random picture (so JPEG round trips stay close and the labels form regions)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (4, 5, 3), dtype=np.uint8)
    return np.array(Image.fromarray(small).resize((width, height), Image.BILINEAR))


def labels_of(png: bytes) -> np.ndarray:
    picture = Image.open(io.BytesIO(png))
    assert picture.mode == "P"
    return np.array(picture)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    """A random B0 with 4 named classes, PROTOCOL and non-trivial BatchNorm statistics, saved with save_pretrained."""
    torch.manual_seed(0)
    model = segformer.create_model("b0", num_classes=len(NAMES), class_names=NAMES, protocol=PROTOCOL).eval()
    with torch.no_grad():
        model.decode_head.linear_fuse.bn.running_mean.normal_(0.0, 0.5)
    folder = tmp_path_factory.mktemp("serve") / "weights"
    segformer.save_pretrained(model, folder)
    return str(folder)


@pytest.fixture(scope="module")
def model(weights):
    return segformer.from_pretrained(weights).eval()


@pytest.fixture(scope="module")
def server(model) -> Iterator[tuple[str, object]]:
    """The server on the PyTorch model with small limits."""
    app = create_app(Predictor(model), LIMITS, max_batch=8, window=0.005, queue_size=64)
    with serving(app) as (url, _):
        yield url, app


def expected(model, image: np.ndarray, mode: str = "whole") -> np.ndarray:
    return Segmenter(model, mode=mode).predict(image)


def test_model_and_health(server, model):
    url, _ = server
    info = httpx.get(f"{url}/v1/model").json()
    assert info["variant"] == "b0" and info["class_names"] == NAMES and info["num_classes"] == 4
    assert len(info["palette"]) == 4 and all(len(c) == 3 for c in info["palette"])
    assert info["engine"] == "torch" and info["limits"] == {"max_bytes": 300_000, "max_pixels": 160 * 160}
    assert httpx.get(f"{url}/health").json()["status"] == "ok"
    spec = httpx.get(f"{url}/openapi.json").json()
    assert set(spec["paths"]) == {"/v1/segment", "/v1/model", "/health"}
    options = {p["name"]: p["schema"] for p in spec["paths"]["/v1/segment"]["post"]["parameters"]}
    assert options["format"]["enum"] == list(FORMATS)


def test_page_icon_is_an_svg(server):
    url, _ = server
    page = httpx.get(url).text
    link = re.search(r'<link rel="icon" href="([^"]+)" type="([^"]+)">', page)
    assert link is not None, "index.html links no icon"
    for path in (link.group(1), "/favicon.ico"):  # browsers also ask for /favicon.ico on their own
        answer = httpx.get(f"{url}{path}")
        assert answer.status_code == 200 and answer.headers["content-type"] == link.group(2) == "image/svg+xml"
        root = ElementTree.fromstring(answer.content)
        assert root.tag == "{http://www.w3.org/2000/svg}svg" and len(root) > 1


def test_serve_help_does_not_import_torch():
    """``segformer serve --help`` loads neither torch nor the server (their imports sit in ``run``)."""
    code = (
        "import contextlib, sys\n"
        "from segformer.cli import main\n"
        "with contextlib.suppress(SystemExit):\n"
        "    main(['serve', '--help'])\n"
        "print(sorted(name for name in ('torch', 'starlette', 'segformer.serve.predictor') if name in sys.modules))"
    )
    shown = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    words = " ".join(shown.stdout.split())  # the help as argparse wrapped it, on one line
    assert "--engine {torch,onnxruntime} what runs the network (default: torch; $SEGFORMER_ENGINE" in words
    assert shown.stdout.strip().splitlines()[-1] == "[]", shown.stdout


@pytest.mark.parametrize("upload", ["multipart", "body"])
def test_png_and_json_answers_equal_segmenter_predict(server, model, upload):
    url, _ = server
    image = photo(72, 96, seed=1)
    want = expected(model, image)
    assert len(np.unique(want)) > 1
    data = encode(image)

    def post(query: str) -> httpx.Response:
        if upload == "multipart":
            return httpx.post(f"{url}/v1/segment?{query}", files={"image": ("a.png", data, "image/png")})
        return httpx.post(f"{url}/v1/segment?{query}", content=data)

    answer = post("format=png")
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(labels_of(answer.content), want)

    summary = post("format=json&scores=true").json()
    ids, counts = np.unique(want, return_counts=True)
    assert (summary["width"], summary["height"], summary["mode"]) == (96, 72, "whole")
    assert {c["id"]: c["pixels"] for c in summary["classes"]} == dict(zip(ids.tolist(), counts.tolist(), strict=True))
    assert [c["name"] for c in summary["classes"]] == [NAMES[i] for i in ids[np.argsort(-counts, kind="stable")]]
    assert sum(c["share"] for c in summary["classes"]) == pytest.approx(1.0)
    probabilities = Segmenter(model).predict_logits(image).softmax(0).max(0).values.numpy()
    for entry in summary["classes"]:
        assert entry["score"] == pytest.approx(probabilities[want == entry["id"]].mean(), abs=1e-5)
    assert summary["timing"]["total_ms"] >= summary["timing"]["inference_ms"] > 0

    picture = np.array(Image.open(io.BytesIO(post("overlay=true&alpha=0.3").content)))
    palette = np.array(httpx.get(f"{url}/v1/model").json()["palette"], np.uint8)
    np.testing.assert_array_equal(picture, np.array(overlay(image, want, palette, NAMES, alpha=0.3)))


def test_slide_mode_and_other_image_formats(server, model):
    url, _ = server
    image = photo(100, 130, seed=2)
    answer = httpx.post(f"{url}/v1/segment?mode=slide", content=encode(image))
    np.testing.assert_array_equal(labels_of(answer.content), expected(model, image, "slide"))
    # CMYK JPEG, 16-bit grayscale PNG, RGBA PNG: accepted and converted as segformer.data.read_image does
    jpeg = encode(Image.fromarray(image).convert("CMYK"), "JPEG", quality=95)
    gray16 = (np.arange(90 * 110, dtype=np.uint16).reshape(90, 110) * 6).astype(np.uint16)
    rgba = np.dstack([image, np.full(image.shape[:2], 7, np.uint8)])
    cases = [
        (jpeg, np.array(Image.open(io.BytesIO(jpeg)).convert("RGB"))),
        (encode(Image.fromarray(gray16)), np.repeat(np.rint(gray16 / 257.0).astype(np.uint8)[..., None], 3, 2)),
        (encode(rgba), image),
    ]
    for data, decoded in cases:
        answer = httpx.post(f"{url}/v1/segment", content=data)
        assert answer.status_code == 200, answer.text
        np.testing.assert_array_equal(labels_of(answer.content), expected(model, decoded))


def numpy_confidence(model, image: np.ndarray, mode: str) -> np.ndarray:
    """The oracle: round(max softmax probability × 65535), half to even, in float64 NumPy from the logits of
    ``Segmenter.predict_logits``."""
    return reference.numpy_confidence(Segmenter(model, mode=mode).predict_logits(image).numpy())[0].astype(np.uint16)


@pytest.mark.parametrize("mode", ["whole", "slide"])
def test_confidence_png_equals_numpy_softmax_of_predict_logits(server, model, mode):
    url, app = server
    image = photo(72, 100, seed=8)
    batches = app.state.batcher.batches
    answer = httpx.post(f"{url}/v1/segment?format=confidence&mode={mode}", content=encode(image))
    assert answer.status_code == 200 and answer.headers["content-type"] == "image/png", answer.text
    assert app.state.batcher.batches == batches + 1  # the job ran through the batcher
    assert Image.open(io.BytesIO(answer.content)).mode == "I;16"
    confidence = cv2.imdecode(np.frombuffer(answer.content, np.uint8), cv2.IMREAD_UNCHANGED)
    want = numpy_confidence(model, image, mode)
    assert confidence.dtype == np.uint16 and len(np.unique(want)) > 100
    np.testing.assert_array_equal(confidence, want)


def _bomb() -> bytes:
    """A 1-bit PNG of 8000×8000 pixels in a few kilobytes."""
    return encode(Image.new("1", (8000, 8000)))


BAD_INPUTS = {
    "not an image": (b"hello, world" * 10, "", 415, "not an image"),
    "empty": (b"", "", 400, "no image"),
    "truncated": (encode(photo(120, 120, 3))[:2000], "", 400, "truncated"),
    "truncated jpeg": (encode(photo(120, 120, 3), "JPEG")[:1500], "", 400, "truncated"),
    "too many pixels": (encode(np.zeros((170, 160, 3), np.uint8)), "", 413, "170 = 27200 pixels is over the limit"),
    "bomb": (_bomb(), "", 413, "8000×8000 = 64000000 pixels is over the limit of 25600"),
    "too many bytes": (os.urandom(300_001), "", 413, "over the limit of 300000 bytes"),
    "unsupported mode": (encode(photo(80, 80, 4)), "mode=sliding", 400, "unsupported mode='sliding'"),
    "unsupported format": (encode(photo(80, 80, 4)), "format=gif", 400, "unsupported format='gif'"),
    "bad flag": (encode(photo(80, 80, 4)), "overlay=maybe", 400, "overlay='maybe'"),
    "unknown option": (encode(photo(80, 80, 4)), "colour=red", 400, "unknown query option 'colour'"),
    "json overlay": (
        encode(photo(80, 80, 4)),
        "format=json&overlay=true",
        400,
        "format=json and overlay=true conflict",
    ),
    "confidence overlay": (
        encode(photo(80, 80, 4)),
        "format=confidence&overlay=true",
        400,
        "format=confidence and overlay=true conflict",
    ),
    "confidence scores": (
        encode(photo(80, 80, 4)),
        "format=confidence&scores=true",
        400,
        "format=confidence and scores=true conflict",
    ),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_naming_the_problem_and_the_server_keeps_serving(server, model, case):
    url, _ = server
    data, query, status, message = BAD_INPUTS[case]
    answer = httpx.post(f"{url}/v1/segment?{query}", content=data)
    assert answer.status_code == status, answer.text
    assert message in answer.json()["error"]
    image = photo(64, 64, seed=5)
    good = httpx.post(f"{url}/v1/segment", content=encode(image))
    np.testing.assert_array_equal(labels_of(good.content), expected(model, image))


def test_multipart_without_image_field_and_uploads_stay_in_memory(server, model, monkeypatch):
    url, _ = server
    answer = httpx.post(f"{url}/v1/segment", files={"picture": ("a.png", encode(photo(64, 64, 6)))})
    assert answer.status_code == 400 and "file field named 'image'" in answer.json()["error"]
    spilled = []  # Starlette spools uploads over 1 MB to a temporary file unless told otherwise
    rollover = tempfile.SpooledTemporaryFile.rollover
    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", lambda self: spilled.append(1) or rollover(self))
    image = np.random.default_rng(7).integers(0, 256, (150, 150, 3), dtype=np.uint8)
    big_limits = Limits(max_bytes=2_000_000, max_pixels=160 * 160)
    data = encode(image, "BMP") + b"\0" * 1_500_000  # 1.6 MB: trailing bytes after a BMP are ignored
    with serving(create_app(Predictor(model), big_limits)) as (big_url, _):
        answer = httpx.post(f"{big_url}/v1/segment", files={"image": ("a.bmp", data)})
    assert answer.status_code == 200, answer.text
    np.testing.assert_array_equal(labels_of(answer.content), expected(model, image))
    assert not spilled


CLIENTS, MAX_BATCH = 32, 8
ROUND = 2  # requests each client sends in a round, one after the other
WARM_ROUNDS, MEASURED_ROUNDS = 2, 4


def test_32_concurrent_clients_get_every_answer_right_and_memory_plateaus(weights, model):
    """32 clients at once on ``segformer serve`` in its own process: every answer equals ``Segmenter.predict``,
    requests share batches, and once warmed up the server's memory stops growing.

    Memory measured from a cold start mostly measures warm-up: the allocator's pools grow to the working set of
    the largest batches, and torch keeps state per input shape (a batch size first met later adds a step). So
    the warm-up sends every batch size of each image size, then full rounds. A per-request leak grows the RSS
    at the same rate per request in both phases, the pools only in the warm-up: the measured rounds must grow
    it by less than half the warm-up's rate, and a leak fails the test once it is over the working set divided
    by the warm-up's requests.
    """
    images = [photo(64, 80, seed=10 + i) for i in range(3)] + [photo(96, 64, seed=20)]
    sizes = [0, 3]  # an image of each size
    uploads = [encode(image) for image in images]
    answers = [expected(model, image) for image in images]
    flags = ["--engine", "torch", "--max-batch", str(MAX_BATCH), "--batch-window-ms", "50"]
    with (
        cli_server("--weights", weights, *flags) as (url, process),
        contextlib.ExitStack() as stack,
        concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool,
    ):
        sessions = [stack.enter_context(httpx.Client(base_url=url, timeout=120)) for _ in range(CLIENTS)]
        server = psutil.Process(process.pid)

        def post(client: int, k: int) -> None:
            answer = sessions[client].post("/v1/segment", content=uploads[k])
            assert answer.status_code == 200, answer.text
            np.testing.assert_array_equal(labels_of(answer.content), answers[k])

        def at_once(jobs: list[tuple[int, int]]) -> int:
            list(pool.map(lambda job: post(*job), jobs))
            return len(jobs)

        def rounds(count: int) -> int:
            for _ in range(count):
                list(pool.map(lambda c: [post(c, (c + i) % len(images)) for i in range(ROUND)], range(CLIENTS)))
            return count * CLIENTS * ROUND

        idle = server.memory_info().rss
        warm_requests = sum(at_once([(c, k) for c in range(n)]) for k in sizes for n in range(1, MAX_BATCH + 1))
        warm_requests += rounds(WARM_ROUNDS)
        warm, batches_before = server.memory_info().rss, httpx.get(f"{url}/health").json()["batches"]
        requests = rounds(MEASURED_ROUNDS)
        grown = server.memory_info().rss - warm
        batches = httpx.get(f"{url}/health").json()["batches"] - batches_before
    assert batches < requests / 2, "requests arriving together should share batches"
    warm_rate, rate = (warm - idle) / warm_requests, grown / requests
    assert rate < warm_rate / 2, (
        f"RSS grew by {grown / 2**20:.0f} MiB over {requests} requests after the warm-up ({rate / 2**10:.0f} KiB "
        f"each); the warm-up's {warm_requests} took {(warm - idle) / 2**20:.0f} MiB ({warm_rate / 2**10:.0f} KiB each)"
    )


class SlowEngine:
    """An engine stub taking ``delay`` seconds per batch and predicting class 0 everywhere."""

    def __init__(self, delay: float, num_classes: int) -> None:
        self.delay, self.num_classes = delay, num_classes
        self.started = threading.Event()  # set by the first batch

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.started.set()
        time.sleep(self.delay)
        logits = torch.zeros(x.shape[0], self.num_classes, -(-x.shape[2] // 4), -(-x.shape[3] // 4))
        logits[:, 0] = 1.0
        return logits


def _post_all(url: str, count: int, data: bytes) -> list[httpx.Response | Exception]:
    def one(_: int) -> httpx.Response | Exception:
        try:
            return httpx.post(f"{url}/v1/segment", content=data, timeout=30)
        except httpx.TransportError as e:
            return e

    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(one, range(count)))


def test_full_queue_answers_503_with_retry_after(model):
    engine = SlowEngine(1.0, 4)
    app = create_app(Predictor(model, engine), LIMITS, max_batch=1, queue_size=1)
    data = encode(photo(64, 64, seed=30))
    with serving(app) as (url, _), concurrent.futures.ThreadPoolExecutor(1) as pool:
        # one request in the engine (for a second), then five at once for the one queue slot: one of them is
        # queued and answered, the others refused. Sent all six at once, the slot could fill before the engine
        # took the first request, and only one of six would be answered.
        first = pool.submit(_post_all, url, 1, data)
        assert engine.started.wait(30)
        answers = _post_all(url, 5, data) + first.result(timeout=30)
        statuses = sorted(a.status_code for a in answers)
        assert statuses.count(503) >= 3 and statuses.count(200) >= 2, statuses
        for answer in answers:
            if answer.status_code == 503:
                assert answer.headers["retry-after"] == "1"
                assert "server busy" in answer.json()["error"]
            else:
                assert (labels_of(answer.content) == 0).all()
        assert httpx.post(f"{url}/v1/segment", content=data).status_code == 200


def test_shutdown_with_requests_in_flight_answers_or_refuses_each(model):
    app = create_app(Predictor(model, SlowEngine(0.2, 4)), LIMITS, max_batch=1, queue_size=64)
    data = encode(photo(64, 64, seed=31))
    with serving(app) as (url, server):
        pool = concurrent.futures.ThreadPoolExecutor(1)
        pending = pool.submit(_post_all, url, 8, data)
        while app.state.batcher.batches == 0:
            time.sleep(0.01)
        server.should_exit = True  # graceful: stop accepting, finish the requests in flight
        answers = pending.result(timeout=60)
        pool.shutdown()
    after = _post_all(url, 1, data)[0]
    assert isinstance(after, httpx.ConnectError), after
    for answer in answers:
        assert isinstance(answer, httpx.ConnectError) or answer.status_code in (200, 503), answer
        if not isinstance(answer, Exception) and answer.status_code == 200:
            assert (labels_of(answer.content) == 0).all()
    assert sum(not isinstance(a, Exception) and a.status_code == 200 for a in answers) >= 1


@contextlib.contextmanager
def cli_server(*args: str) -> Iterator[tuple[str, subprocess.Popen]]:
    """``segformer serve ARGS`` in its own process on a free port; yield its URL once /health answers."""
    port = free_port()
    command = "import sys; from segformer.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", command, "serve", *args, "--port", str(port)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        url, deadline = f"http://127.0.0.1:{port}", time.monotonic() + 120
        while True:
            assert process.poll() is None and time.monotonic() < deadline, "segformer serve did not start"
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(f"{url}/health").status_code == 200:
                    break
            time.sleep(0.2)
        yield url, process
    finally:
        process.kill()


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then a clean exit (uvicorn re-raises the signal once it has stopped)."""
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=30) in (0, -signal.SIGTERM)


def test_cli_serve(weights, model):
    """``segformer serve`` in its own process answers and stops on SIGTERM (ONNX Runtime: test_engines.py)."""
    with cli_server("--weights", weights, "--max-pixels", "1000000", "--engine", "torch") as (url, process):
        assert httpx.get(f"{url}/v1/model").json()["engine"] == "torch"
        image = photo(120, 160, seed=40)
        answer = httpx.post(f"{url}/v1/segment", content=encode(image), timeout=60)
        np.testing.assert_array_equal(labels_of(answer.content), Segmenter(model).predict(image))
        stop(process)
        assert f"on {url}" in process.stdout.read()
