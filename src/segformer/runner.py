"""The network runner: what turns a normalised B×3×H×W batch into float32 logits, apart from the test protocol.

``Segmenter`` (``segformer.inference``) decides *what* the network sees (resizes, windows, test views); the
``NetworkRunner`` decides *how* it runs: device, precision (autocast), memory layout, CUDA graph replay, opt-in
``torch.compile``, or another engine (an ONNX Runtime session). Serve, bulk predict, eval and the benchmark all run
the network through it: a command builds one runner and hands it to each ``Segmenter`` it makes (serve's default,
whole and slide ones share its graphs).

* **CUDA default**: bf16 autocast where the GPU supports it, channels-last input (cuDNN's fast convolution layout),
  eager kernels replayed through CUDA graphs, one captured per input shape (``torch.cuda.CUDAGraph``, as PyTorch's
  "CUDA Graphs" notes describe: a warm-up on a side stream, a capture with static input and output buffers, then
  ``replay``). A shape is captured the second time it is seen (a size seen once is not worth a capture), graphs are
  kept in a bounded LRU (``max_graphs``, ``graph_memory``), and a capture that fails or would exceed the memory
  bound leaves that shape eager. The result is always copied out of the graph's static output buffer: the next
  replay overwrites it. All CUDA work of a runner happens on one thread it owns, whatever thread calls it, so a
  server's pool of threads never records graphs of its own.
* **torch.compile is opt-in** (``compile=True``): for long jobs of fixed shapes (eval or bulk predict at one test
  size, serving a fixed set of sizes). Each new shape is one compile; once dynamo's recompile limit
  (``torch._dynamo.config.recompile_limit``) would be passed, one warning names the compiled sizes and further
  shapes run eagerly (through the graphs on CUDA). Inductor caches its kernels in ``$TORCHINDUCTOR_CACHE_DIR``
  (default ``/tmp/torchinductor_<user>``), so a second process compiles faster.
* **CPU**: eager kernels, bf16 autocast where the CPU computes bf16 natively (AMX or AVX512_BF16,
  ``segformer.device.default_precision``), else fp32. No graphs.
"""

from __future__ import annotations

import functools
import threading
import warnings
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn

from segformer.device import autocast_dtype, default_precision

Forward = Callable[[torch.Tensor], torch.Tensor]
Capture = Callable[[Forward, torch.Tensor], Forward]  # (forward, example) -> replay(x), into a static output buffer
PRECISIONS = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
CAPTURE_AFTER = 2  # a shape is captured the second time it is seen
MAX_GRAPHS = 16  # captured shapes kept (least recently used dropped first)
GRAPH_MEMORY = 4 << 30  # bytes of CUDA memory all captured graphs of a runner may hold
WARMUP_ITERATIONS = 3  # eager runs on a side stream before a capture (cuDNN and the allocator settle)


def inference_dtype(dtype: str | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``dtype`` ("fp32", "bf16", "fp16") on ``device``; None = fp32.

    Default (None): ``default_precision(device)``: bf16 on a CUDA GPU that supports it or a CPU that computes bf16
    natively (AMX or AVX512_BF16), else fp32.
    """
    return autocast_dtype(dtype or default_precision(device), device)


def capture_cuda_graph(forward: Forward, example: torch.Tensor) -> Forward:
    """``forward`` on inputs shaped like ``example``, captured as one CUDA graph; returns ``replay(x)``.

    ``replay`` copies ``x`` into the graph's static input, replays the graph and returns its static output buffer
    (which the next replay overwrites: ``GraphCache`` copies it out).
    """
    static_input = example.clone()
    side = torch.cuda.Stream(device=example.device)
    side.wait_stream(torch.cuda.current_stream(example.device))
    with torch.cuda.stream(side):  # warm-up off the capturing stream, as PyTorch's CUDA graph notes ask
        for _ in range(WARMUP_ITERATIONS):
            forward(static_input)
    torch.cuda.current_stream(example.device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, capture_error_mode="thread_local"):  # other threads may run CUDA work meanwhile
        static_output = forward(static_input)

    def replay(x: torch.Tensor) -> torch.Tensor:
        static_input.copy_(x)
        graph.replay()
        return static_output

    return replay


def cuda_memory_in_use(device: torch.device) -> int:
    return torch.cuda.memory_reserved(device) if device.type == "cuda" else 0


class GraphCache:
    """Captured replays by input shape: captured on the ``capture_after``-th sighting, at most ``max_graphs`` kept
    (least recently used dropped), shapes whose capture failed or was too large run eagerly from then on.

    ``memory_in_use(device)`` measures what a capture holds (the CUDA allocator's reserved bytes by default).
    """

    def __init__(
        self,
        capture: Capture,
        *,
        capture_after: int = CAPTURE_AFTER,
        max_graphs: int = MAX_GRAPHS,
        memory_limit: int = GRAPH_MEMORY,
        memory_in_use: Callable[[torch.device], int] | None = None,
    ) -> None:
        self.capture, self.capture_after, self.max_graphs = capture, capture_after, max_graphs
        self.memory_limit, self.memory_in_use = memory_limit, memory_in_use or cuda_memory_in_use
        self.replays: OrderedDict[tuple, tuple[Forward, int]] = OrderedDict()  # shape -> (replay, bytes)
        self.sightings: dict[tuple, int] = {}
        self.eager_shapes: set[tuple] = set()

    def run(self, forward: Forward, x: torch.Tensor) -> torch.Tensor:
        shape = (tuple(x.shape), x.dtype, x.device, x.is_contiguous(memory_format=torch.channels_last))
        if shape in self.replays:
            self.replays.move_to_end(shape)
            return self.replays[shape][0](x).clone()  # the graph's output buffer is overwritten by the next replay
        self.sightings[shape] = self.sightings.get(shape, 0) + 1
        if shape in self.eager_shapes or self.sightings[shape] < self.capture_after:
            return forward(x)
        replay = self._capture(shape, forward, x)
        return forward(x) if replay is None else replay(x).clone()

    @property
    def memory(self) -> int:
        return sum(size for _, size in self.replays.values())

    def _capture(self, shape: tuple, forward: Forward, x: torch.Tensor) -> Forward | None:
        before = self.memory_in_use(x.device)
        try:
            replay = self.capture(forward, x)
        except Exception as error:  # an op that cannot be captured: this shape stays eager
            warnings.warn(
                f"CUDA graph capture of input {list(x.shape)} failed ({error}); running it eagerly", stacklevel=4
            )
            self.eager_shapes.add(shape)
            return None
        size = max(self.memory_in_use(x.device) - before, 0)
        if size > self.memory_limit:
            self.eager_shapes.add(shape)
            return None
        while self.replays and (len(self.replays) >= self.max_graphs or self.memory + size > self.memory_limit):
            self.replays.popitem(last=False)
        self.replays[shape] = (replay, size)
        return replay


def recompile_limit() -> int:
    config = torch._dynamo.config
    return int(getattr(config, "recompile_limit", getattr(config, "cache_size_limit", 8)))


class CompiledForward:
    """``torch.compile(forward, dynamic=False)`` for at most dynamo's recompile limit of input shapes; beyond it,
    one warning naming the compiled sizes, then ``forward`` itself. A compile that fails: one warning, then eager."""

    def __init__(
        self, forward: Forward, compiler: Callable[[Forward], Forward] | None = None, limit: int | None = None
    ) -> None:
        self.forward = forward
        self.compiled_forward: Forward | None = (compiler or (lambda f: torch.compile(f, dynamic=False)))(forward)
        self.shapes: list[tuple[int, ...]] = []
        self.limit = recompile_limit() if limit is None else limit

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if self.compiled_forward is None:
            return self.forward(x)
        if shape not in self.shapes:
            if len(self.shapes) >= self.limit:
                return self._past_the_limit(x)
            self.shapes.append(shape)
        try:
            return self.compiled_forward(x)
        except Exception as error:  # no compiler, an unsupported backend …: run eagerly
            warnings.warn(f"torch.compile failed ({type(error).__name__}): running the model eagerly", stacklevel=2)
            self.compiled_forward = None
            return self.forward(x)

    def _past_the_limit(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.shapes) == self.limit:  # warn once
            sizes = ", ".join("×".join(map(str, s)) for s in self.shapes)
            warnings.warn(
                f"torch.compile reached its recompile limit ({self.limit} input sizes: {sizes}); "
                f"{'×'.join(map(str, x.shape))} and other new sizes run without compiling",
                stacklevel=3,
            )
            self.shapes.append(())  # marks the warning as given
        return self.forward(x)


def start_owner_thread(device: torch.device, ident: list[int]) -> None:
    """The runner's own thread starts: note who it is, and make the runner's GPU its current device."""
    ident.append(threading.get_ident())
    if device.type == "cuda":
        torch.cuda.set_device(device)


class NetworkRunner:
    """Runs ``model`` (or ``engine``) on normalised B×3×H×W batches and returns float32 logits B×K×h×w.

    Args:
        model: the network (an ``nn.Module`` returning logits).
        device: where it runs; default the model's device (the model is moved there when given).
        dtype: "fp32", "bf16" or "fp16" autocast; default ``segformer.device.default_precision`` (bf16 on a CUDA
            GPU that supports it and on a CPU that computes bf16 natively, else fp32; ``$SEGFORMER_DTYPE``).
        engine: a callable run instead of the model (e.g. an ONNX Runtime session wrapper); it has its own precision.
        graphs: replay CUDA graphs per input shape; default on for CUDA (never elsewhere).
        compile: ``torch.compile`` the model (opt-in; see the module docstring).
        capture: how a forward is captured (default ``capture_cuda_graph``; tests pass a stand-in).
        own_thread: run every call on a thread the runner owns; default on for CUDA.
    """

    def __init__(
        self,
        model: nn.Module | Forward,
        *,
        device: str | torch.device | None = None,
        dtype: str | None = None,
        engine: Forward | None = None,
        graphs: bool | None = None,
        compile: bool = False,
        capture: Capture | None = None,
        own_thread: bool | None = None,
        max_graphs: int = MAX_GRAPHS,
        graph_memory: int = GRAPH_MEMORY,
    ) -> None:
        parameter = next(model.parameters(), None) if isinstance(model, nn.Module) else None
        self.device = torch.device(device) if device is not None else getattr(parameter, "device", torch.device("cpu"))
        self.model = model.to(self.device) if device is not None and isinstance(model, nn.Module) else model
        self.engine = engine
        self.amp_dtype = inference_dtype(dtype, self.device) if engine is None else None
        self.channels_last = self.device.type == "cuda" and engine is None
        runs_model = engine is None and isinstance(model, nn.Module)
        self.compiled = CompiledForward(self._forward) if compile and runs_model else None
        use_graphs = (self.device.type == "cuda") if graphs is None else graphs
        self.graphs = (
            GraphCache(capture or capture_cuda_graph, max_graphs=max_graphs, memory_limit=graph_memory)
            if use_graphs and engine is None
            else None
        )
        own_thread = self.device.type == "cuda" if own_thread is None else own_thread
        self._owner_ident: list[int] = []  # the owning thread's ident, once it runs
        start = functools.partial(start_owner_thread, self.device, self._owner_ident)  # holds no runner: GC frees it
        self._owner = ThreadPoolExecutor(1, "segformer-runner", start) if own_thread else None

    @property
    def precision(self) -> str:
        """The network's precision: "fp32", "bf16" or "fp16"."""
        return PRECISIONS[self.amp_dtype]

    def describe(self) -> str:
        """A few words: "onnxruntime", "torch bf16, CUDA graphs, compiled" …"""
        if self.engine is not None:
            return "onnxruntime"
        extras = [name for name, on in (("CUDA graphs", self.graphs), ("compiled", self.compiled)) if on is not None]
        return ", ".join([f"torch {self.precision}", *extras])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 logits of the normalised batch ``x`` (no resizing or padding), never a buffer reused later."""
        if self._owner is None or threading.get_ident() in self._owner_ident:
            return self._run(x)
        return self._owner.submit(self._run, x).result()

    def close(self) -> None:
        """End the owning thread (a runner that is garbage collected ends it too)."""
        if self._owner is not None:
            self._owner.shutdown(wait=True)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():  # inference mode is per thread: set where the work runs
            if self.engine is not None:
                return self.engine(x)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            forward = self.compiled or self._forward
            return forward(x) if self.graphs is None else self.graphs.run(forward, x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        # autocast's weight cache must be off for graph capture (PyTorch's CUDA graph notes); it only helps training
        with torch.autocast(self.device.type, self.amp_dtype, enabled=self.amp_dtype is not None, cache_enabled=False):
            return self.model(x).float()
