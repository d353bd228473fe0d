"""Graph passes over an exported ONNX SegFormer: the ONNX Runtime engine's float graph and its int8 quantisation.

``fuse_float_ops`` gives the float graph ``engines.export_for_engine`` writes (``layer_norms_as_instance_norms``,
then ONNX Runtime's transformer fusions). ``quantize_int8`` quantises that graph statically with ONNX Runtime's
quantiser (QDQ, per-channel weights), choosing the nodes with ``int8_nodes`` and rewriting the classifier before
(``classifier_as_product``) and the quantised products after (``fuse_bias``, ``shapes_from_quantized``).
Every pass keeps the logits (to float rounding); what each one saves is in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from segformer.fileio import atomic_write
from segformer.inference import network_input

if TYPE_CHECKING:
    import onnx

    from segformer.config import TestProtocol

# Shared scale and shift of the InstanceNormalization nodes that replace the LayerNorms (one channel per row).
INSTANCE_NORM_ONE, INSTANCE_NORM_ZERO = "instance_norm.one", "instance_norm.zero"


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
      classifier's input; in float they were a large share of B0's int8 time (docs/PERFORMANCE.md).
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
    weight runs as ``MatMulIntegerToFloat`` with float output and the bias in its epilogue (``fuse_bias``), which
    is faster (timed in docs/PERFORMANCE.md). The conv's weight goes with it unless another node reads it.
    Returns whether the graph had one.
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
    if not any(conv.input[1] in node.input for node in graph.node):  # else ONNX Runtime warns of an unused tensor
        graph.initializer.remove(constants[conv.input[1]])
    return True


def _instance_norm_chain(
    model: onnx.ModelProto, node: onnx.NodeProto, name: str, constants: dict[str, onnx.TensorProto]
) -> list[onnx.NodeProto]:
    """The nodes that compute the ``LayerNormalization`` ``node`` (over the last axis) as an InstanceNormalization
    of rows ``[-1, 1, C]``, reshaped back and followed by the affine's ``Mul`` and ``Add`` where the scale is not all
    ones and the shift not all zeros. Adds the rows' shape to the graph's initialisers."""
    import onnx  # optional dependency (segformer[export]): only the engine's graph passes need it
    from onnx import numpy_helper

    scale, x = constants[node.input[1]], node.input[0]
    epsilon = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
    rows = numpy_helper.from_array(np.array([-1, 1, scale.dims[0]], dtype=np.int64), f"{name}.row_shape")
    model.graph.initializer.append(rows)
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
            [f"{name}.rows", INSTANCE_NORM_ONE, INSTANCE_NORM_ZERO],
            [f"{name}.rows_normalised"],
            name=f"{name}.normalise",
            epsilon=epsilon,
        ),
        make("Reshape", [f"{name}.rows_normalised", f"{name}.shape"], [f"{name}.normalised"], name=f"{name}.back"),
    ]
    for op, parameter in affine:
        chain.append(make(op, [chain[-1].output[0], parameter], [f"{name}.{op.lower()}"], name=f"{name}.{op.lower()}"))
    chain[-1].output[0] = node.output[0]
    return chain


def layer_norms_as_instance_norms(model: onnx.ModelProto) -> int:
    """Rewrite each ``LayerNormalization`` over the last axis as ``InstanceNormalization`` of one row per token,
    followed by the affine's ``Mul`` and ``Add`` where the scale is not all ones and the shift not all zeros (the
    norms whose affine ``export_for_engine`` folded away have none).

    The two normalise the same numbers, but ONNX Runtime's LayerNormalization runs a scalar loop per row, whose
    cost follows the number of rows, where InstanceNormalization is vectorised (timed in docs/PERFORMANCE.md).
    Rows are ``[-1, 1, C]`` (C from the scale), so any batch and image size runs. Returns the number of nodes
    rewritten.
    """
    from onnx import numpy_helper

    graph = model.graph
    constants = {tensor.name: tensor for tensor in graph.initializer}
    used = {name for node in graph.node for name in node.input} | {output.name for output in graph.output}
    nodes, rewritten = [], 0
    for node in graph.node:
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        scale = constants.get(node.input[1]) if node.op_type == "LayerNormalization" else None
        if scale is None or axis != -1 or len(scale.dims) != 1 or used.intersection(filter(None, node.output[1:])):
            nodes.append(node)
            continue
        nodes += _instance_norm_chain(model, node, node.name or f"layer_norm_{rewritten}", constants)
        rewritten += 1
    if rewritten:
        graph.initializer.extend(
            [
                numpy_helper.from_array(np.ones(1, np.float32), INSTANCE_NORM_ONE),
                numpy_helper.from_array(np.zeros(1, np.float32), INSTANCE_NORM_ZERO),
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


def _calibration_reader(images: Iterable[np.ndarray], protocol: TestProtocol):
    """ONNX Runtime's ``CalibrationDataReader`` over ``images``, each resized and normalised by ``protocol``."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = ({"pixel_values": network_input([image], protocol)} for image in images)

        def get_next(self) -> dict | None:
            return next(self.batches, None)

    return Reader()


def _prepared_for_quantisation(source: str | Path, folder: Path) -> tuple[Path, onnx.ModelProto]:
    """``fuse_float_ops``, ONNX Runtime's ``quant_pre_process`` and ``classifier_as_product`` of ``source``: the
    file written in ``folder`` and its model."""
    import onnx  # optional dependency (segformer[export]): imported only when quantising
    from onnxruntime.quantization.shape_inference import quant_pre_process

    fused, prepared = folder / "fused.onnx", folder / "prepared.onnx"
    fuse_float_ops(source, fused)
    quant_pre_process(str(fused), str(prepared))  # folds the constants: the classifier's weight among them
    model = onnx.load(prepared)
    classifier_as_product(model)
    onnx.save(model, prepared)
    return prepared, model


def _write_int8(source: str | Path, target: str, images: Iterable[np.ndarray], protocol: TestProtocol) -> None:
    """The steps of ``quantize_int8``, writing ``target``."""
    import onnx  # optional dependency (segformer[export]): imported only when quantising
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    with tempfile.TemporaryDirectory() as folder:
        prepared, model = _prepared_for_quantisation(source, Path(folder))
        quantize_static(
            str(prepared),
            target,
            _calibration_reader(images, protocol),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            op_types_to_quantize=["Conv", "MatMul", "Resize", "Add", "Relu"],
            nodes_to_quantize=int8_nodes(model),
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            extra_options={"OpTypesToExcludeOutputQuantization": ["MatMul"]},
        )
    model = onnx.load(target)
    fuse_bias(model)
    shapes_from_quantized(model)
    onnx.save(model, target)


@contextlib.contextmanager
def _root_logger_at(level: int) -> Iterator[None]:
    root = logging.getLogger()
    previous = root.level
    root.setLevel(level)
    try:
        yield
    finally:
        root.setLevel(previous)


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
    and softmax stay in float: quantised, they cost accuracy (docs/PERFORMANCE.md).

    Args:
        source: the fp32 ``.onnx`` file.
        target: the int8 ``.onnx`` file to write.
        images: H×W×3 uint8 RGB calibration images (a few dozen real images of the dataset).
        protocol: the model's test protocol: each image is resized and normalised as the model is tested
            (whole image at the test scale), so the calibrated ranges are the ones the model meets.
    """
    with _root_logger_at(logging.ERROR):  # the quantiser logs one warning per tensor to the root logger
        atomic_write(target, lambda tmp: _write_int8(source, tmp, images, protocol))
    return Path(target)
