"""ONNX Runtime engine: logits and labels match PyTorch, the export cache follows the weights, int8 stays close."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F

import segformer
import segformer.engines as engines
import segformer.onnx_passes as onnx_passes
from cli_process import TOOL_NOISE, run_segformer
from segformer.config import TestProtocol
from segformer.data import SYNTHETIC_CLASSES, SyntheticDataset, build_dataset, write_synthetic
from segformer.engines import OnnxRuntimeEngine, build_engine, cache_folder, cached_onnx, weights_hash
from segformer.inference import Segmenter, network_input
from segformer.runner import NetworkRunner
from segformer.serve.predictor import make_segmenter
from test_serve import cli_server, encode, labels_of, stop

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE = 64  # synthetic scenes, trace and calibration size


def briefly_trained(steps: int = 60) -> segformer.SegFormer:
    """A B0 trained for a few Adam steps on synthetic shapes: confident, structured logits (random weights give
    near-tied logits whose argmax flips under any rounding, which says nothing about quantisation)."""
    torch.manual_seed(0)
    model = segformer.create_model(
        "b0",
        num_classes=len(SYNTHETIC_CLASSES),
        class_names=list(SYNTHETIC_CLASSES),
        protocol=TestProtocol(scale=None),  # tested (and calibrated) at the images' own 64×64
    )
    data = SyntheticDataset(num=32, size=(SIZE, SIZE), split="train", seed=1)
    images = torch.stack([torch.from_numpy(data[i][0]) for i in range(len(data))]).permute(0, 3, 1, 2).float()
    masks = torch.stack([torch.from_numpy(data[i][1]) for i in range(len(data))]).long()
    x = (images - torch.tensor(segformer.constants.IMAGE_MEAN).view(1, 3, 1, 1)) / torch.tensor(
        segformer.constants.IMAGE_STD
    ).view(1, 3, 1, 1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for step in range(steps):
        batch = slice((step * 8) % 32, (step * 8) % 32 + 8)
        logits = F.interpolate(model(x[batch]), (SIZE, SIZE), mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits, masks[batch], ignore_index=255)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval()


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """The trained model saved, then ``segformer export --quantize int8`` calibrated on synthetic custom data, run
    in a process of its own as a user runs it."""
    folder = tmp_path_factory.mktemp("engines")
    model = briefly_trained()
    model.save_pretrained(folder / "weights")
    root = write_synthetic(folder / "data", num_train=16, num_val=8, size=(SIZE, SIZE), seed=3)
    command = ["export", "--weights", str(folder / "weights"), str(folder / "model.onnx"), "--height", "64"]
    command += ["--width", "64", "--quantize", "int8", "--calibrate", "custom", "--data-root", str(root)]
    result = run_segformer(*command, "--calibration-images", "16")
    assert result.returncode == 0, result.stdout + result.stderr
    return {"model": model, "folder": folder, "root": root, "out": result.stdout, "err": result.stderr}


def val_images(root: Path) -> list[np.ndarray]:
    dataset = build_dataset("custom", root, "val")
    return [dataset.load(i)[0] for i in range(len(dataset))]


@pytest.mark.parametrize("source", ["segformer export", "engine cache"])
def test_onnxruntime_engine_matches_pytorch(exported, source, tmp_path):
    """Both ONNX files ONNX Runtime runs: the plain export, and the engine's own (with ONNX Runtime's fusions)."""
    model, folder = exported["model"], exported["folder"]
    if source == "segformer export":
        engine = OnnxRuntimeEngine(folder / "model.onnx")
    else:
        engine = build_engine("onnxruntime", model, folder / "weights" / "model.safetensors", cache_dir=tmp_path)
        nodes = onnx.load(engine.path).graph.node
        assert {"Gelu", "InstanceNormalization"} <= {node.op_type for node in nodes}
        assert "LayerNormalization" not in {node.op_type for node in nodes}
        # B0's 30 norms: per stage 2 blocks of 2 norms and the reduction's (none at stage 4), the patch embedding's
        # and the stage's last. The blocks' 22 are folded into the maps reading them: no affine left in the graph.
        affines = [node.name for node in nodes if node.name.endswith((".mul", ".add"))]
        assert len(affines) == 2 * 8  # a Mul and an Add for each of the 8 stage norms
    assert engine.session.get_session_options().intra_op_num_threads == torch.get_num_threads()
    for batch, height, width in [(1, 64, 64), (3, 97, 130)]:
        x = torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(height))
        with torch.inference_mode():
            want = model(x)
        got = engine(x)
        assert got.shape == want.shape and got.dtype == torch.float32
        assert (got - want).abs().max() <= 1e-4
    images = val_images(exported["root"])
    torch_labels = Segmenter(model, scale=None).predict_batch(images)
    ort_labels = make_segmenter(model, None, NetworkRunner(model, engine=engine), scale=None).predict_batch(images)
    agree = np.mean([(a == b).mean() for a, b in zip(torch_labels, ort_labels, strict=True)])
    assert agree >= 0.999


def test_int8_model_agrees_with_fp32(exported):
    folder = exported["folder"]
    assert f"wrote {folder / 'model.int8.onnx'} (int8 QDQ, calibrated on 16 custom train images)" in exported["out"]
    fp32, int8 = OnnxRuntimeEngine(folder / "model.onnx"), OnnxRuntimeEngine(folder / "model.int8.onnx")
    model = exported["model"]
    ops = {node.op_type for node in onnx.load(folder / "model.int8.onnx").graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    images = val_images(exported["root"])
    want = make_segmenter(model, None, NetworkRunner(model, engine=fp32), scale=None).predict_batch(images)
    got = make_segmenter(model, None, NetworkRunner(model, engine=int8), scale=None).predict_batch(images)
    agree = np.mean([(a == b).mean() for a, b in zip(want, got, strict=True)])
    assert agree >= 0.98, agree


def test_quantised_export_prints_none_of_the_tools_noise(exported):
    """Neither the exporters' lines nor ONNX Runtime's "Removing initializer" (the quantiser's sessions once read a
    graph whose classifier rewrite had left the conv's weight behind)."""
    for noise in TOOL_NOISE:
        assert noise not in exported["out"] and noise not in exported["err"], exported["out"] + exported["err"]


def test_export_cache_is_reused_and_rebuilt_when_the_weights_change(tmp_path, monkeypatch):
    calls = []

    def fake_export(model, path):  # the real export is covered above; here only the cache logic
        calls.append(path)
        Path(path).write_bytes(b"onnx of " + str(len(calls)).encode())

    monkeypatch.setattr(engines, "export_for_engine", fake_export)
    model = segformer.create_model("b0", num_classes=3)
    model.save_pretrained(tmp_path / "w")
    weights = tmp_path / "w" / "model.safetensors"
    first = cached_onnx(model, weights)
    name = f"model.{weights_hash(weights)}.v{engines.ENGINE_GRAPH}.onnx"
    assert first == tmp_path / "w" / name and first.read_bytes() == b"onnx of 1"
    assert cached_onnx(model, weights) == first and len(calls) == 1
    torch.manual_seed(1)
    segformer.create_model("b0", num_classes=3).save_pretrained(tmp_path / "w")
    second = cached_onnx(model, weights)
    assert second != first and second.read_bytes() == b"onnx of 2" and len(calls) == 2
    monkeypatch.setattr(engines, "ENGINE_GRAPH", engines.ENGINE_GRAPH + 1)  # a new version of the engine's graph
    third = cached_onnx(model, weights)
    assert third not in (first, second) and third.read_bytes() == b"onnx of 3" and len(calls) == 3
    assert not any(p.name.endswith(".tmp") for p in (tmp_path / "w").iterdir())


def test_cache_folder_for_hub_weights(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    (hub / "models--x" / "snapshots" / "abc").mkdir(parents=True)
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("SEGFORMER_CACHE", str(tmp_path / "cache"))
    assert (
        cache_folder(hub / "models--x" / "snapshots" / "abc" / "model.safetensors") == tmp_path / "cache/segformer/onnx"
    )
    (tmp_path / "mine").mkdir()
    assert cache_folder(tmp_path / "mine" / "model.safetensors") == tmp_path / "mine"


def test_build_engine_finds_the_cached_export(exported, monkeypatch):
    model, folder = exported["model"], exported["folder"]
    weights = folder / "weights" / "model.safetensors"
    shutil.copy(
        folder / "model.onnx", folder / "weights" / f"model.{weights_hash(weights)}.v{engines.ENGINE_GRAPH}.onnx"
    )
    engine = build_engine("onnxruntime", model, weights)
    assert isinstance(engine, OnnxRuntimeEngine) and engine.path.parent == folder / "weights"
    assert build_engine("torch", model, weights) is None
    with pytest.raises(ValueError, match="unknown engine 'tensorrt'"):
        build_engine("tensorrt", model, weights)
    monkeypatch.delenv("SEGFORMER_ENGINE")
    assert engines.default_engine() == "torch"  # on every device: ONNX Runtime is opt-in
    monkeypatch.setenv("SEGFORMER_ENGINE", "onnxruntime")
    assert engines.default_engine() == "onnxruntime"
    monkeypatch.setenv("SEGFORMER_ENGINE", "tensorrt")
    with pytest.raises(ValueError, match="SEGFORMER_ENGINE=tensorrt"):
        engines.default_engine()


def test_cli_serve_runs_an_int8_onnx_file(exported):
    """``segformer serve --weights model.int8.onnx --model DIR``: the int8 engine behind the HTTP API."""
    folder = exported["folder"]
    args = ("--weights", str(folder / "model.int8.onnx"), "--model", str(folder / "weights"))
    with cli_server(*args) as (url, process):
        assert httpx.get(f"{url}/v1/model").json()["engine"] == "OnnxRuntimeEngine(model.int8.onnx)"
        image = val_images(exported["root"])[0]
        answer = httpx.post(f"{url}/v1/segment", content=encode(image), timeout=60)
        engine = OnnxRuntimeEngine(folder / "model.int8.onnx")
        int8 = make_segmenter(exported["model"], None, NetworkRunner(exported["model"], engine=engine))
        np.testing.assert_array_equal(labels_of(answer.content), int8.predict(image))
        stop(process)


def test_calibration_inputs_follow_the_test_protocol():
    """int8 calibration sees images as the model is tested: resized by the protocol, normalised by its mean/std."""
    protocol = TestProtocol(scale=(2048, 512), mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 8.0))
    image = np.empty((64, 96, 3), np.uint8)
    image[:] = (12, 24, 38)
    x = network_input([image], protocol)
    assert x.shape == (1, 3, 512, 768) and x.dtype == np.float32  # short side to 512, keeping the ratio
    np.testing.assert_allclose(x[0], np.ones((3, 512, 768)))  # (12 - 10) / 2, (24 - 20) / 4, (38 - 30) / 8


def test_int8_graph_rewrites_keep_the_logits(exported, tmp_path):
    """``classifier_as_product`` and ``shapes_from_quantized`` change how ONNX Runtime runs the graph, not its
    output: logits equal (to float rounding) before and after each rewrite."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    prepared = tmp_path / "prepared.onnx"
    quant_pre_process(str(exported["folder"] / "model.onnx"), str(prepared))
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(0))
    want = OnnxRuntimeEngine(prepared)(x)
    model = onnx.load(prepared)
    assert onnx_passes.classifier_as_product(model)
    assert not onnx_passes.classifier_as_product(model)  # the output now comes from a Transpose: nothing to rewrite
    read = {name for node in model.graph.node for name in node.input}
    assert all(tensor.name in read for tensor in model.graph.initializer)  # the conv's weight went with it
    onnx.save(model, tmp_path / "product.onnx")
    ops = [node.op_type for node in model.graph.node]
    assert ops[-4:] == ["Transpose", "MatMul", "Add", "Transpose"] and "Conv" in ops
    torch.testing.assert_close(OnnxRuntimeEngine(tmp_path / "product.onnx")(x), want, atol=1e-5, rtol=1e-5)

    int8 = onnx.load(exported["folder"] / "model.int8.onnx").graph
    producer = {name: node for node in int8.node for name in node.output}
    shape_sources = [producer.get(node.input[0]) for node in int8.node if node.op_type == "Shape"]
    assert shape_sources and not any(s is not None and s.op_type == "DequantizeLinear" for s in shape_sources)
    last = producer["logits"]  # float logits from the quantised product, its bias fused, then back to NCHW
    assert last.op_type == "Transpose" and producer[last.input[0]].op_type == "MatMulIntegerToFloat"


@pytest.mark.parametrize("affine", ["trained", "folded"])
def test_layer_norms_as_instance_norms_keep_the_numbers(affine, tmp_path):
    """The rewritten graph normalises as ONNX Runtime's LayerNormalization and a NumPy reference do, at any batch and
    token count; a folded affine (scale 1, shift 0) leaves no Mul or Add."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    channels = 24
    scale = rng.uniform(0.5, 1.5, channels) if affine == "trained" else np.ones(channels)
    shift = rng.normal(0.0, 0.5, channels) if affine == "trained" else np.zeros(channels)
    graph = helper.make_graph(
        [helper.make_node("LayerNormalization", ["x", "scale", "shift"], ["y"], name="norm", axis=-1, epsilon=1e-6)],
        "norm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", channels])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", channels])],
        [
            numpy_helper.from_array(scale.astype(np.float32), "scale"),
            numpy_helper.from_array(shift.astype(np.float32), "shift"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx.save(model, tmp_path / "layer_norm.onnx")
    assert onnx_passes.layer_norms_as_instance_norms(model) == 1
    onnx.save(model, tmp_path / "instance_norm.onnx")
    ops = [node.op_type for node in model.graph.node]
    assert "LayerNormalization" not in ops and "InstanceNormalization" in ops
    assert ("Mul" in ops, "Add" in ops) == ((True, True) if affine == "trained" else (False, False))

    import onnxruntime

    for shape in [(1, 37, channels), (3, 5, channels)]:
        x = (rng.normal(2.0, 3.0, shape)).astype(np.float32)
        mean, var = x.mean(-1, keepdims=True, dtype=np.float64), x.var(-1, keepdims=True, dtype=np.float64)
        want = (x - mean) / np.sqrt(var + 1e-6) * scale + shift
        for file in ("layer_norm.onnx", "instance_norm.onnx"):
            session = onnxruntime.InferenceSession(tmp_path / file, providers=["CPUExecutionProvider"])
            np.testing.assert_allclose(session.run(None, {"x": x})[0], want, atol=2e-5, rtol=0)
