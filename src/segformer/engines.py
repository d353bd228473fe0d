"""Inference engines: callables from a normalised B×3×H×W float batch to B×K×h×w logits.

``Segmenter`` runs ``model(x)`` by default; an engine replaces that call. ``OnnxRuntimeEngine`` runs
an ONNX file (fp32, or int8 from ``quantize_int8``) with ONNX Runtime on the CPU. ``cached_onnx``
exports a model once (``export_for_engine``: our export with the blocks' norm affines folded, its
LayerNorms as InstanceNorms and ONNX Runtime's fusions) and keeps the file next to its weights (or in
a cache folder when that folder is read-only or the hub's), keyed by a hash of the weights file and
the version of that graph, so changed weights are exported again.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from huggingface_hub import constants as hub_constants

from segformer.config import TestProtocol
from segformer.export import export_onnx
from segformer.fileio import atomic_write
from segformer.inference import network_input
from segformer.model import Block, SegFormer
from segformer.pretrained import from_pretrained, resolve_source

if TYPE_CHECKING:
    import onnx

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

    ONNX Runtime is opt-in: measured one engine per process on 2 cores (``benchmarks/cpu_engines.py``), its fp32
    run of the engine's graph is 1.02-1.12× our PyTorch model in fp32, and the PyTorch model in bf16 on an AMX
    CPU is 1.6-1.8× faster than that; its place is the int8 model (``quantize_int8``) and machines without
    PyTorch.
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


def int8_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the nodes of an ONNX SegFormer that ``quantize_int8`` quantises.

    * The convolutions, but the first patch embedding's on the image: with three input channels its int8
      product saves less than quantising the image costs.
    * The matrix products with a constant weight. Attention's activation×activation products (QKᵀ, AV) stay
      float: quantised, they cost a quantised softmax and int8 transposes, slower than the float
      ``FusedMatMul`` they replace.
    * The decoder's sum (``segformer.fast.fuse``): the upsampling ``Resize`` nodes, the ``Add`` nodes summing
      their outputs with stage 1's map, the ``Relu`` after them and the classifier's channels-last ``Transpose``
      (``classifier_as_product``). In uint8 they move a quarter of the bytes, and the sum's Quantize is the
      classifier's input; in float they were a fifth of B0's int8 time at 512² (docs/PERFORMANCE.md).
    """
    graph = model.graph
    constants = {tensor.name for tensor in graph.initializer}
    image = {tensor.name for tensor in graph.input}
    names, summed = [], set()
    for node in graph.node:  # topological order: an Add's inputs come before it
        conv = node.op_type == "Conv" and not image.intersection(node.input)
        weighted = conv or (node.op_type == "MatMul" and node.input[1] in constants)
        in_sum = node.op_type == "Resize" or (
            node.op_type in ("Add", "Relu", "Transpose") and summed.intersection(node.input)
        )
        if in_sum:
            summed.update(node.output)
        if weighted or in_sum:
            names.append(node.name)
    return names


def shapes_from_quantized(model: onnx.ModelProto) -> int:
    """Point each ``Shape`` node that reads a ``DequantizeLinear`` output at that node's quantised input.

    The shape is the same. A Dequantize read by a ``Shape`` as well as by its quantised consumer is run twice by
    ONNX Runtime (it duplicates the node to fuse the consumer's copy); the decoder's resizes read their sizes so.
    Returns the number of ``Shape`` nodes changed.
    """
    producer = {name: node for node in model.graph.node for name in node.output}
    changed = 0
    for node in model.graph.node:
        source = producer.get(node.input[0]) if node.op_type == "Shape" else None
        if source is not None and source.op_type == "DequantizeLinear":
            node.input[0] = source.input[0]
            changed += 1
    return changed


def fuse_bias(model: onnx.ModelProto) -> int:
    """Fold ``DequantizeLinear → MatMul → Add(bias)`` into ONNX Runtime's ``MatMulIntegerToFloat`` with its bias.

    ONNX Runtime runs a quantised MatMul whose output is not quantised as ``MatMulIntegerToFloat`` but leaves the
    bias ``Add`` as one more pass over the float output; the contrib op adds the bias in its own epilogue.
    Returns the number of MatMuls fused.
    """
    import onnx  # optional dependency (segformer[export]): only the quantiser needs it

    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    producer = {name: node for node in graph.node for name in node.output}
    users: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    replaced, adds = {}, set()
    for node in graph.node:
        dequantized = [producer.get(name) for name in node.input] if node.op_type == "MatMul" else []
        following = users.get(node.output[0], [])
        if len(following) != 1 or following[0].op_type != "Add" or len(dequantized) != 2:
            continue
        (dq_a, dq_w), add = dequantized, following[0]
        if not all(dq is not None and dq.op_type == "DequantizeLinear" and len(dq.input) == 3 for dq in dequantized):
            continue
        bias = add.input[1] if add.input[0] == node.output[0] else add.input[0]
        if bias not in constants or len(constants[bias].dims) != 1:
            continue
        inputs = [dq_a.input[0], dq_w.input[0], dq_a.input[1], dq_w.input[1], dq_a.input[2], dq_w.input[2], bias]
        replaced[id(node)] = onnx.helper.make_node(
            "MatMulIntegerToFloat", inputs, add.output, name=node.name, domain="com.microsoft"
        )
        adds.add(id(add))
    unused = {  # Dequantize nodes whose every user was fused (a graph output has none, and stays)
        id(node)
        for node in graph.node
        if node.op_type == "DequantizeLinear"
        and node.output[0] in users
        and all(id(user) in replaced for user in users[node.output[0]])
    }
    nodes = [replaced.get(id(node), node) for node in graph.node if id(node) not in adds | unused]
    del graph.node[:]
    graph.node.extend(nodes)
    if replaced and not any(opset.domain == "com.microsoft" for opset in model.opset_import):
        model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return len(replaced)


def classifier_as_product(model: onnx.ModelProto) -> bool:
    """Rewrite the classifier, a 1×1 ``Conv`` giving the graph's output, as channels-last ``MatMul`` + ``Add``.

    Quantised, a ``Conv`` gives uint8 logits that a Dequantize turns back to float; a product with a constant
    weight runs as ``MatMulIntegerToFloat`` with float output and the bias in its epilogue (``fuse_bias``).
    B0 int8 at 512²: the classifier 4.3 → 2.7 ms (docs/PERFORMANCE.md). Returns whether the graph had one.
    """
    import onnx  # optional dependency (segformer[export]): only the quantiser needs it
    from onnx import numpy_helper

    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    output = graph.output[0].name
    conv = next((node for node in graph.node if output in node.output), None)
    if conv is None or conv.op_type != "Conv" or len(conv.input) != 3 or conv.input[1] not in constants:
        return False
    weight = numpy_helper.to_array(constants[conv.input[1]])
    if weight.shape[2:] != (1, 1) or any(a.name == "group" and a.i != 1 for a in conv.attribute):
        return False
    name = conv.name
    transposed = numpy_helper.from_array(weight[:, :, 0, 0].T.copy(), f"{name}.weight_t")
    graph.initializer.append(transposed)
    nodes = [
        onnx.helper.make_node("Transpose", [conv.input[0]], [f"{name}.pixels"], name=f"{name}.nhwc", perm=[0, 2, 3, 1]),
        onnx.helper.make_node(
            "MatMul", [f"{name}.pixels", transposed.name], [f"{name}.product"], name=f"{name}.matmul"
        ),
        onnx.helper.make_node("Add", [f"{name}.product", conv.input[2]], [f"{name}.scores"], name=f"{name}.bias"),
        onnx.helper.make_node("Transpose", [f"{name}.scores"], [output], name=f"{name}.nchw", perm=[0, 3, 1, 2]),
    ]
    position = list(graph.node).index(conv)
    graph.node.remove(conv)
    for offset, node in enumerate(nodes):
        graph.node.insert(position + offset, node)
    return True


def layer_norms_as_instance_norms(model: onnx.ModelProto) -> int:
    """Rewrite each ``LayerNormalization`` over the last axis as ``InstanceNormalization`` of one row per token,
    followed by the affine's ``Mul`` and ``Add`` where the scale is not all ones and the shift not all zeros (the
    norms whose affine ``export_for_engine`` folded away).

    The two normalise the same numbers, but ONNX Runtime's LayerNormalization runs a scalar loop per row, whose
    cost follows the number of rows: a stage-1 norm of B0 at 512² (16384 tokens of 32 channels) takes 1.2 ms,
    the vectorised InstanceNormalization 0.45 ms, 0.75 ms with the affine. Rows are ``[-1, 1, C]`` (C from the
    scale), so any batch and image size runs. Returns the number of nodes rewritten.
    """
    import onnx  # optional dependency (segformer[export]): only the engine's graph passes need it
    from onnx import numpy_helper

    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    one, zero = "instance_norm.one", "instance_norm.zero"
    nodes, rewritten = [], 0
    for node in graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        scale = constants.get(node.input[1]) if node.op_type == "LayerNormalization" else None
        if scale is None or axis != -1 or len(scale.dims) != 1 or used.intersection(filter(None, node.output[1:])):
            nodes.append(node)
            continue
        epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        name, x = node.name or f"layer_norm_{rewritten}", node.input[0]
        rows = numpy_helper.from_array(np.array([-1, 1, scale.dims[0]], dtype=np.int64), f"{name}.row_shape")
        graph.initializer.append(rows)
        shift = node.input[2] if len(node.input) > 2 else ""
        affine = [("Mul", node.input[1])] if np.any(numpy_helper.to_array(scale) != 1) else []
        if shift and (shift not in constants or np.any(numpy_helper.to_array(constants[shift]))):
            affine.append(("Add", shift))
        make = onnx.helper.make_node
        chain = [
            make("Shape", [x], [f"{name}.shape"], name=f"{name}.shape"),
            make("Reshape", [x, rows.name], [f"{name}.rows"], name=f"{name}.to_rows"),
            make(
                "InstanceNormalization",
                [f"{name}.rows", one, zero],
                [f"{name}.rows_normalised"],
                name=f"{name}.normalise",
                epsilon=epsilon,
            ),
            make("Reshape", [f"{name}.rows_normalised", f"{name}.shape"], [f"{name}.normalised"], name=f"{name}.back"),
        ]
        for op, parameter in affine:
            chain.append(
                make(op, [chain[-1].output[0], parameter], [f"{name}.{op.lower()}"], name=f"{name}.{op.lower()}")
            )
        chain[-1].output[0] = node.output[0]
        nodes += chain
        rewritten += 1
    if rewritten:
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.ones(1, np.float32), one),
                numpy_helper.from_array(np.zeros(1, np.float32), zero),
            ]
        )
        del graph.node[:]
        graph.node.extend(nodes)
    return rewritten


def fuse_float_ops(source: str | Path, target: str | Path) -> None:
    """The engine's float graph: ``layer_norms_as_instance_norms``, then ONNX Runtime's transformer fusions
    (``onnxruntime.transformers``: GELU's erf form into one ``Gelu``).

    Applied to the engine's fp32 file (``export_for_engine``) and before quantising, so int8 is measured against
    the same float graph (docs/PERFORMANCE.md). ``segformer export`` keeps plain ONNX that other runtimes read.
    ``source`` and ``target`` may be the same file.
    """
    import onnx  # optional dependency (segformer[export])
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    model = onnx.load(source)
    layer_norms_as_instance_norms(model)
    options = FusionOptions("bert")
    options.enable_attention = False  # SegFormer's reduced attention matches none of its patterns
    optimized = optimize_model(
        model, model_type="bert", num_heads=0, hidden_size=0, opt_level=0, optimization_options=options
    )
    optimized.save_model_to_file(str(target))


def quantize_int8(source: str | Path, target: str | Path, images: Iterable[np.ndarray], protocol: TestProtocol) -> Path:
    """Static int8 quantisation (QDQ, per-channel weights) of an fp32 ONNX model, calibrated on ``images``.

    ``source`` is best the engine's own graph (``export_for_engine``, as ``segformer export --quantize`` gives
    it): its blocks' norms carry no affine left to compute.

    The graph is first made the engine's float graph (``fuse_float_ops``: norms as InstanceNormalization, GELU
    fused), then prepared with ONNX Runtime's ``quant_pre_process``
    (symbolic shape inference, constant folding), as ONNX Runtime recommends, and the classifier becomes a
    product (``classifier_as_product``). Then the convolutions, the matrix products with a constant weight
    and the decoder's sum are quantised (``int8_nodes``; weights per output channel). The products' outputs
    are not quantised, so ONNX Runtime runs them as
    ``MatMulIntegerToFloat`` (int8 in, float out) without a Quantize/Dequantize pair, with the bias folded in by
    ``fuse_bias``; ``shapes_from_quantized`` saves the duplicated Dequantize nodes. Attention, normalisations
    and softmax stay in float: quantised, they cost 1-2 points.

    Args:
        source: the fp32 ``.onnx`` file.
        target: the int8 ``.onnx`` file to write.
        images: H×W×3 uint8 RGB calibration images (a few dozen real images of the dataset).
        protocol: the model's test protocol: each image is resized and normalised as the model is tested
            (whole image at the test scale), so the calibrated ranges are the ones the model meets.
    """
    import onnx  # optional dependency (segformer[export]): imported only when quantising
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = ({"pixel_values": network_input([image], protocol)} for image in images)

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    def write(tmp: str) -> None:
        with tempfile.TemporaryDirectory() as folder:
            fused, prepared = Path(folder) / "fused.onnx", Path(folder) / "prepared.onnx"
            fuse_float_ops(source, fused)
            quant_pre_process(str(fused), str(prepared))  # folds the constants: the classifier's weight among them
            model = onnx.load(prepared)
            classifier_as_product(model)
            onnx.save(model, prepared)
            quantize_static(
                str(prepared),
                tmp,
                Reader(),
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                op_types_to_quantize=["Conv", "MatMul", "Resize", "Add", "Relu"],
                nodes_to_quantize=int8_nodes(model),
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
            )
        model = onnx.load(tmp)
        fuse_bias(model)
        shapes_from_quantized(model)
        onnx.save(model, tmp)

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantiser logs one warning per tensor to the root logger
    try:
        atomic_write(target, write)
    finally:
        root.setLevel(level)
    return Path(target)
