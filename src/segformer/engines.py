"""Inference engines: callables from a normalised B×3×H×W float batch to B×K×h×w logits.

``Segmenter`` runs ``model(x)`` by default; an engine replaces that call. ``OnnxRuntimeEngine`` runs
an ONNX file (fp32, or int8 from ``onnx_passes.quantize_int8``) with ONNX Runtime on the CPU. ``cached_onnx``
exports a model once (``export_for_engine``: our export with the blocks' norm affines folded, then
``onnx_passes.fuse_float_ops``) and keeps the file next to its weights (or in
a cache folder when that folder is read-only or the hub's), keyed by a hash of the weights file and
the version of that graph, so changed weights are exported again.
"""

from __future__ import annotations

import copy
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import torch
from huggingface_hub import constants as hub_constants

from segformer.export import export_onnx
from segformer.fileio import atomic_write
from segformer.model import Block, SegFormer
from segformer.onnx_passes import fuse_float_ops
from segformer.pretrained import from_pretrained, resolve_source

ENGINES = ("torch", "onnxruntime")
Engine = Callable[[torch.Tensor], torch.Tensor]
# Example size of the cached export's trace (any size runs afterwards).
TRACE_SIZE = 128
# Version of the graph export_for_engine writes, part of the cached file's name: a new version is exported anew.
ENGINE_GRAPH = 2


def onnxruntime_available() -> bool:
    try:
        import onnxruntime  # noqa: F401  (optional dependency)
    except ImportError:
        return False
    return True


def default_engine() -> str:
    """``$SEGFORMER_ENGINE`` when set, else "torch".

    ONNX Runtime is opt-in: measured one engine per process (``benchmarks/cpu_engines.py``, figures in
    docs/PERFORMANCE.md), its fp32 run of the engine's graph is about as fast as our PyTorch model in fp32, and
    the PyTorch model in bf16 on an AMX CPU is faster than both; its place is the int8 model
    (``onnx_passes.quantize_int8``) and machines without PyTorch.
    """
    chosen = os.environ.get("SEGFORMER_ENGINE")
    if chosen:
        if chosen not in ENGINES:
            raise ValueError(f"SEGFORMER_ENGINE={chosen}: expected one of {', '.join(ENGINES)}")
        return chosen
    return "torch"


def weights_hash(path: str | Path) -> str:
    """First 16 hex digits of the SHA-256 of a weights file."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def cache_folder(weights: Path) -> Path:
    """Where the ONNX export of ``weights`` is kept: next to it if that folder is ours and writable."""
    folder = weights.resolve().parent
    in_hub = folder.is_relative_to(Path(hub_constants.HF_HUB_CACHE).resolve())  # read now: it may be reconfigured
    if not in_hub and os.access(folder, os.W_OK):
        return folder
    base = os.environ.get("SEGFORMER_CACHE") or Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return Path(base) / "segformer" / "onnx"


def cached_onnx(model: SegFormer, weights: str | Path, cache_dir: str | Path | None = None) -> Path:
    """The ONNX export of ``model`` (loaded from the file ``weights``), exported on first use (``export_for_engine``).

    The file is ``<weights stem>.<hash>.v<ENGINE_GRAPH>.onnx`` in ``cache_dir`` or ``cache_folder(weights)``,
    ``hash`` being ``weights_hash(weights)``: a new weights file, or a new version of the engine's graph, gets a
    new export.
    """
    weights = Path(weights)
    folder = Path(cache_dir) if cache_dir is not None else cache_folder(weights)
    path = folder / f"{weights.stem}.{weights_hash(weights)}.v{ENGINE_GRAPH}.onnx"
    if not path.is_file():
        atomic_write(path, lambda tmp: export_for_engine(model, tmp))
    return path


def export_for_engine(model: SegFormer, path: str | Path) -> None:
    """The ONNX file ``OnnxRuntimeEngine`` runs: ``export_onnx`` (any size) of a copy of ``model`` whose blocks'
    norm affines are folded into the maps reading them (``Block.fold_norm_affines``), then ``fuse_float_ops``."""
    folded = copy.deepcopy(model).cpu()
    for module in folded.modules():
        if isinstance(module, Block):
            module.fold_norm_affines()
    export_onnx(folded, path, TRACE_SIZE, TRACE_SIZE)
    fuse_float_ops(path, path)


class OnnxRuntimeEngine:
    """Runs an ONNX SegFormer (input ``pixel_values``, output ``logits``) with ONNX Runtime on the CPU.

    Args:
        path: the ``.onnx`` file, fp32 or int8.
        threads: intra-op threads; default ``torch.get_num_threads()``.
    """

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime  # optional dependency: imported only when an engine is built

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        self.path = Path(path)
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        (logits,) = self.session.run(["logits"], {"pixel_values": x.detach().float().cpu().numpy()})
        return torch.from_numpy(logits).to(x.device)

    def __repr__(self) -> str:
        return f"OnnxRuntimeEngine({self.path.name})"


def build_engine(
    name: str, model: SegFormer, weights: str | Path | None, cache_dir: str | Path | None = None
) -> Engine | None:
    """The engine called ``name`` for ``model``: None for "torch" (the model itself), else ONNX Runtime.

    ``weights`` is the model's weights file, or an ``.onnx`` file to run as it is.
    """
    if name not in ENGINES:
        raise ValueError(f"unknown engine {name!r}: expected one of {', '.join(ENGINES)}")
    if name == "torch":
        return None
    if not onnxruntime_available():
        raise ValueError("engine 'onnxruntime' needs onnxruntime: pip install 'segformer[export]'")
    if weights is None:
        raise ValueError("engine 'onnxruntime' needs the weights file to export (or an .onnx file)")
    path = Path(weights) if str(weights).endswith(".onnx") else cached_onnx(model, weights, cache_dir)
    return OnnxRuntimeEngine(path)


def load_for_inference(
    weights: str | Path, device: torch.device, engine: str | None = None, model_source: str | Path | None = None
) -> tuple[SegFormer, Engine | None, str]:
    """The model of ``weights``, the engine that runs it (None: the model itself) and the engine's name.

    Args:
        weights: a checkpoint file, folder or hub id; or an ``.onnx`` file (fp32 or int8) to run as it is.
        device: where the model runs; ONNX Runtime runs on the CPU only.
        engine: "torch" or "onnxruntime"; default ``default_engine()`` (always ONNX Runtime for an .onnx file).
        model_source: with an ``.onnx`` file, the checkpoint whose config gives the classes and the protocol.
    """
    onnx_file = str(weights).endswith(".onnx")
    if onnx_file and model_source is None:
        raise ValueError(f"{weights}: an .onnx file needs the checkpoint it came from for its classes (--model DIR)")
    name = engine or ("onnxruntime" if onnx_file else default_engine())
    if name == "onnxruntime" and device.type != "cpu":
        raise ValueError(f"--engine onnxruntime runs on the CPU, not on --device {device}")
    if onnx_file and name != "onnxruntime":
        raise ValueError(f"{weights}: an .onnx file runs with --engine onnxruntime, not {name}")
    model = from_pretrained(model_source if onnx_file else weights, map_location=device)
    file = Path(weights) if onnx_file else resolve_source(weights).weights
    return model, build_engine(name, model, file), name
