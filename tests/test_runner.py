"""The network runner on the CPU: its shape cache, the copy out of a graph's buffer, thread ownership, the compile
limit and the default precision, with a stand-in capture where CUDA graphs would run."""

from __future__ import annotations

import gc
import threading
import warnings
import weakref

import pytest
import torch

import segformer
import segformer.device
from segformer.runner import CompiledForward, GraphCache, NetworkRunner

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def small_model():
    torch.manual_seed(0)
    return segformer.create_model("b0", num_classes=5, drop_path_rate=0.0, decoder_dropout=0.0).eval()


class StandInCapture:
    """A capture that behaves as a CUDA graph does for the runner: replays write into one static output buffer
    (overwritten by the next replay), and every capture is recorded with the memory it claims."""

    def __init__(self, bytes_per_capture: int = 100, fail: bool = False) -> None:
        self.shapes: list[tuple[int, ...]] = []
        self.bytes_per_capture, self.fail, self.held = bytes_per_capture, fail, 0

    def __call__(self, forward, example):
        if self.fail:
            raise RuntimeError("operation not permitted when stream is capturing")
        self.shapes.append(tuple(example.shape))
        self.held += self.bytes_per_capture
        static_output = forward(example).clone()

        def replay(x):
            static_output.copy_(forward(x))
            return static_output

        return replay

    def memory(self, device):
        return self.held


def doubling(x):
    return x * 2


def cache(capture, **kwargs):
    return GraphCache(capture, memory_in_use=capture.memory, **kwargs)


def test_a_shape_is_captured_on_its_second_sighting_and_replayed_after():
    capture = StandInCapture()
    graphs = cache(capture)
    x = torch.randn(1, 3, 8, 8)
    for _ in range(4):
        torch.testing.assert_close(graphs.run(doubling, x), x * 2, rtol=0, atol=0)
    assert capture.shapes == [(1, 3, 8, 8)]  # seen once: eager; second call: captured; then replayed
    graphs.run(doubling, torch.randn(2, 3, 8, 8))
    assert capture.shapes == [(1, 3, 8, 8)]  # a new shape seen once is not captured


def test_results_are_copied_out_of_the_graphs_output_buffer():
    graphs = cache(StandInCapture())
    first, second = torch.ones(1, 1, 4, 4), torch.full((1, 1, 4, 4), 5.0)
    graphs.run(doubling, first)  # eager
    kept = [graphs.run(doubling, first), graphs.run(doubling, second)]  # captured, replayed
    assert kept[0].data_ptr() != kept[1].data_ptr()
    assert torch.equal(kept[0], first * 2) and torch.equal(kept[1], second * 2)  # not overwritten by the replay


def test_the_cache_keeps_the_most_recent_shapes_within_its_count_and_memory():
    capture = StandInCapture(bytes_per_capture=100)
    graphs = cache(capture, max_graphs=2, memory_limit=250)
    shapes = [(1, 1, 4, 4), (1, 1, 8, 8), (1, 1, 4, 4), (1, 1, 12, 12)]
    for shape in shapes:
        for _ in range(2):
            graphs.run(doubling, torch.zeros(shape))
    assert [key[0] for key in graphs.replays] == [(1, 1, 4, 4), (1, 1, 12, 12)]  # 8×8, least recent, dropped
    assert graphs.memory == 200
    large = cache(StandInCapture(bytes_per_capture=300), memory_limit=250)
    for _ in range(3):
        torch.testing.assert_close(large.run(doubling, torch.ones(1, 1, 4, 4)), torch.full((1, 1, 4, 4), 2.0))
    assert not large.replays and len(large.eager_shapes) == 1  # too large to keep: eager from then on


def test_a_failed_capture_warns_once_and_runs_that_shape_eagerly():
    graphs = cache(StandInCapture(fail=True))
    x = torch.randn(1, 3, 4, 4)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = [graphs.run(doubling, x) for _ in range(4)]
    assert [str(w.message) for w in caught if "capture" in str(w.message)] == [
        "CUDA graph capture of input [1, 3, 4, 4] failed (operation not permitted when stream is capturing); "
        "running it eagerly"
    ]
    for result in results:
        torch.testing.assert_close(result, x * 2)


class ThreadRecorder(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 2, 1)
        self.threads: set[int] = set()
        self.grad_enabled: set[bool] = set()

    def forward(self, x):
        self.threads.add(threading.get_ident())
        self.grad_enabled.add(torch.is_grad_enabled())
        return self.conv(x)


def test_every_call_runs_on_the_one_thread_the_runner_owns():
    model = ThreadRecorder()
    runner = NetworkRunner(model, dtype="fp32", own_thread=True)
    x = torch.randn(1, 3, 4, 4)
    results: list[torch.Tensor] = []
    callers = [threading.Thread(target=lambda: results.append(runner(x))) for _ in range(6)]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(model.threads) == 1 and model.threads.isdisjoint({c.ident for c in callers} | {threading.get_ident()})
    assert model.grad_enabled == {False}  # inference mode is set on the owning thread
    with torch.no_grad():
        expected = model.conv(x)
    for result in results:
        torch.testing.assert_close(result, expected)


def test_compile_past_the_recompile_limit_warns_once_naming_the_sizes():
    compiled_calls: list[tuple[int, ...]] = []

    def stand_in_compiler(forward):
        def compiled(x):
            compiled_calls.append(tuple(x.shape))
            return forward(x)

        return compiled

    compiled = CompiledForward(doubling, stand_in_compiler, limit=2)
    sizes = [(1, 1, 4, 4), (1, 1, 8, 8), (1, 1, 4, 4), (1, 1, 12, 12), (1, 1, 16, 16)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for size in sizes:
            torch.testing.assert_close(compiled(torch.ones(size)), torch.full(size, 2.0))
    assert compiled_calls == sizes[:3]  # two sizes compiled; the others run eagerly
    assert CompiledForward(doubling, stand_in_compiler).limit == torch._dynamo.config.recompile_limit
    messages = [str(w.message) for w in caught]
    assert messages == [
        "torch.compile reached its recompile limit (2 input sizes: 1×1×4×4, 1×1×8×8); 1×1×12×12 and other new sizes "
        "run without compiling"
    ]


def test_the_runner_returns_float32_logits_equal_to_the_model(small_model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = small_model.eval()(x)
    runner = NetworkRunner(small_model, dtype="fp32")
    assert (runner.graphs, runner.compiled, runner.channels_last, runner.precision) == (None, None, False, "fp32")
    torch.testing.assert_close(runner(x), expected, rtol=0, atol=0)
    bf16 = NetworkRunner(small_model, dtype="bf16")(x)
    assert bf16.dtype == torch.float32 and (bf16.argmax(1) == expected.argmax(1)).float().mean() > 0.95


@pytest.mark.parametrize(
    ("amx", "avx512_bf16", "expected"), [(True, False, "bf16"), (False, True, "bf16"), (False, False, "fp32")]
)
def test_cpu_default_precision_is_bf16_where_the_cpu_computes_it_natively(monkeypatch, amx, avx512_bf16, expected):
    monkeypatch.delenv("SEGFORMER_DTYPE", raising=False)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx, raising=False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    assert segformer.device.default_precision(torch.device("cpu")) == expected


def test_a_runner_with_its_own_thread_is_freed_with_its_thread():
    model = ThreadRecorder()
    runner = NetworkRunner(model, dtype="fp32", own_thread=True)
    runner(torch.randn(1, 3, 4, 4))
    (owner,) = [t for t in threading.enumerate() if t.ident in model.threads]
    freed = weakref.ref(runner)
    del runner
    gc.collect()
    assert freed() is None  # the owning thread holds no reference to the runner (nor to its model or graphs)
    owner.join(timeout=10)
    assert not owner.is_alive()
