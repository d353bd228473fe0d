"""Every public checkpoint layout loads and gives the reference logits; bad files give clear errors.

The foreign layouts are built here from transformers' own state dict with renames written in this
file (not with segformer.layouts), so the test is an independent check of the mapping.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import time
import warnings

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from transformers import SegformerForSemanticSegmentation, SegformerImageProcessor

import segformer
import segformer.pretrained
from reference import make_hf_model, perturb_batchnorm
from segformer import CheckpointError, LoadWarning, TestProtocol
from segformer.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_thread")

X = torch.randn(1, 3, 70, 90, generator=torch.Generator().manual_seed(3))
CLASS_NAMES = [f"thing{i}" for i in range(7)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(HF model, its hub-layout dir, its logits, its hub-layout state dict) for B1 (2 blocks per stage)."""
    hf = make_hf_model("b1", id2label=dict(enumerate(CLASS_NAMES)), label2id={n: i for i, n in enumerate(CLASS_NAMES)})
    folder = tmp_path_factory.mktemp("hf")
    hf.save_pretrained(folder)
    with torch.no_grad():
        logits = hf(X).logits
    from safetensors.torch import load_file

    return hf, folder, logits, load_file(folder / "model.safetensors")


def _sub(state: dict, rules: list[tuple[str, str]]) -> dict:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


def official_state(hub: dict) -> dict:
    """HF hub names → NVlabs names, with key;value stacked into kv (written independently of the package)."""
    plus1 = lambda m: str(int(m.group(1)) + 1)  # noqa: E731
    rules = [
        (r"^segformer\.encoder\.patch_embeddings\.(\d)\.", lambda m: f"backbone.patch_embed{plus1(m)}."),
        (r"^segformer\.encoder\.block\.(\d)\.", lambda m: f"backbone.block{plus1(m)}."),
        (r"^segformer\.encoder\.layer_norm\.(\d)\.", lambda m: f"backbone.norm{plus1(m)}."),
        (r"^decode_head\.linear_c\.(\d)\.", lambda m: f"decode_head.linear_c{plus1(m)}."),
        (r"\.layer_norm_1\.", ".norm1."),
        (r"\.layer_norm_2\.", ".norm2."),
        (r"\.attention\.self\.query\.", ".attn.q."),
        (r"\.attention\.self\.sr\.", ".attn.sr."),
        (r"\.attention\.self\.layer_norm\.", ".attn.norm."),
        (r"\.attention\.output\.dense\.", ".attn.proj."),
        (r"\.mlp\.dense1\.", ".mlp.fc1."),
        (r"\.mlp\.dense2\.", ".mlp.fc2."),
        (r"patch_embed(\d)\.layer_norm\.", r"patch_embed\1.norm."),
        (r"^decode_head\.linear_fuse\.weight", "decode_head.linear_fuse.conv.weight"),
        (r"^decode_head\.batch_norm\.", "decode_head.linear_fuse.bn."),
        (r"^decode_head\.classifier\.", "decode_head.linear_pred."),
    ]
    state = _sub(hub, rules)
    for key in [k for k in state if ".attention.self.key." in k]:
        value_key = key.replace(".key.", ".value.")
        state[key.replace(".attention.self.key.", ".attn.kv.")] = torch.cat([state.pop(key), state.pop(value_key)])
    return state


def mmseg_state(official: dict) -> dict:
    """NVlabs names → mmsegmentation 1.x MixVisionTransformer names (q;k;v stacked, FFN as 1×1 convs)."""
    out = {}
    for key, value in official.items():
        if not key.startswith("backbone."):
            out[key.replace("decode_head.", "decode_head.mmseg_design.")] = value  # a head that cannot map
            continue
        if ".attn.kv." in key:
            continue
        if ".attn.q." in key:
            kv = official[key.replace(".attn.q.", ".attn.kv.")]
            key, value = key.replace(".attn.q.", ".attn.attn.in_proj_"), torch.cat([value, kv])
            key = key.replace("in_proj_.", "in_proj_")
        if ".mlp.fc" in key and key.endswith("weight"):
            value = value[:, :, None, None]
        key = re.sub(
            r"backbone\.patch_embed(\d)\.proj\.", lambda m: f"backbone.layers.{int(m[1]) - 1}.0.projection.", key
        )
        key = re.sub(r"backbone\.patch_embed(\d)\.norm\.", lambda m: f"backbone.layers.{int(m[1]) - 1}.0.norm.", key)
        key = re.sub(r"backbone\.block(\d)\.", lambda m: f"backbone.layers.{int(m[1]) - 1}.1.", key)
        key = re.sub(r"backbone\.norm(\d)\.", lambda m: f"backbone.layers.{int(m[1]) - 1}.2.", key)
        key = key.replace(".attn.proj.", ".attn.attn.out_proj.").replace(".mlp.fc1.", ".ffn.layers.0.")
        key = key.replace(".mlp.dwconv.dwconv.", ".ffn.layers.1.").replace(".mlp.fc2.", ".ffn.layers.4.")
        out[key] = value
    return out


def smp_state(official: dict) -> dict:
    out = {}
    for key, value in official.items():
        key = key.replace("backbone.", "encoder.")
        key = re.sub(r"decode_head\.linear_c(\d)\.proj\.", lambda m: f"decoder.mlp_stage.{4 - int(m[1])}.linear.", key)
        key = key.replace("decode_head.linear_fuse.conv.", "decoder.fuse_stage.0.")
        key = key.replace("decode_head.linear_fuse.bn.", "decoder.fuse_stage.1.")
        out[key.replace("decode_head.linear_pred.", "segmentation_head.0.")] = value
    return out


def load_quietly(source, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LoadWarning)
        return segformer.from_pretrained(source, **kwargs)


def logits_of(model: torch.nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(X)


def test_hf_hub_layout_reads_variant_classes_and_names(reference):
    _, folder, logits, _ = reference
    with warnings.catch_warnings():
        warnings.simplefilter("error", LoadWarning)  # a clean load warns about nothing
        model = segformer.from_pretrained(folder, layer_norm_eps=1e-5)
    assert model.config.variant == "b1" and model.num_classes == 7 and model.class_names == CLASS_NAMES
    torch.testing.assert_close(logits_of(model), logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["official-pth", "transformers5", "smp", "hf-bin"])
def test_full_model_layouts(layout, reference, tmp_path):
    hf, _, logits, hub = reference
    official = official_state(hub)
    if layout == "official-pth":  # NVlabs release: {"state_dict", "meta"} with an unused conv_seg
        official["decode_head.conv_seg.weight"] = torch.zeros(7, 256, 1, 1)
        path = tmp_path / "segformer.b1.512x512.ade.160k.pth"
        torch.save({"state_dict": official, "meta": {"CLASSES": tuple(CLASS_NAMES), "iter": 160000}}, path)
    elif layout == "transformers5":  # the module names of transformers >= 5, straight from its state_dict
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, path)
        assert any(".stages.0.blocks.0.attention.q_proj." in k for k in hf.state_dict())
    elif layout == "smp":
        path = tmp_path / "smp.pth"
        torch.save({"model": smp_state(official)}, path)
    else:  # the hub's older pytorch_model.bin next to config.json
        torch.save(hub, tmp_path / "pytorch_model.bin")
        (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
        path = tmp_path
    model = load_quietly(path, layer_norm_eps=1e-5)
    assert model.config.variant == "b1" and model.num_classes == 7
    if layout in ("official-pth", "hf-bin"):
        assert model.class_names == CLASS_NAMES
    torch.testing.assert_close(logits_of(model), logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["mit-imagenet", "mmseg"])
def test_backbone_layouts_load_the_encoder_and_initialise_the_decoder(layout, reference, tmp_path):
    hf, _, _, hub = reference
    official = official_state(hub)
    if layout == "mit-imagenet":
        state = {k.removeprefix("backbone."): v for k, v in official.items() if k.startswith("backbone.")}
        state["head.weight"] = torch.zeros(1000, 512)
    else:
        state = mmseg_state(official)
    path = tmp_path / f"{layout}.pth"
    torch.save({"state_dict": state, "meta": {}}, path)
    with pytest.warns(LoadWarning, match="decoder is initialised"):
        model = segformer.from_pretrained(path, num_classes=5, layer_norm_eps=1e-5)
    assert model.config.variant == "b1" and model.num_classes == 5
    with torch.no_grad():
        ours = model.eval().backbone(X)
        theirs = hf(X, output_hidden_states=True).hidden_states
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


def test_backbone_only_needs_num_classes(reference, tmp_path):
    state = {k.removeprefix("backbone."): v for k, v in official_state(reference[3]).items() if "backbone." in k}
    torch.save(state, tmp_path / "mit_b1.pth")
    with pytest.raises(ValueError, match="backbone-only checkpoint; pass num_classes="):
        load_quietly(tmp_path / "mit_b1.pth")


def test_save_pretrained_round_trip_is_bit_exact(tmp_path):
    model = segformer.create_model("b0", num_classes=3, class_names=["sky", "road", "car"], drop_path_rate=0.2)
    perturb_batchnorm(model.decode_head.linear_fuse.bn)
    model.save_pretrained(tmp_path)
    loaded = segformer.from_pretrained(tmp_path)
    assert loaded.config == model.config
    expected, got = model.state_dict(), loaded.state_dict()
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    assert torch.equal(logits_of(model), logits_of(loaded))


def test_hf_export_loads_in_transformers_with_our_logits(tmp_path):
    model = segformer.create_model("b0", num_classes=4, class_names=["a", "b", "c", "d"], layer_norm_eps=1e-5)
    perturb_batchnorm(model.decode_head.linear_fuse.bn)
    model.save_pretrained(tmp_path, layout="hf")
    hf = SegformerForSemanticSegmentation.from_pretrained(tmp_path).eval()
    assert hf.config.id2label == {0: "a", 1: "b", 2: "c", 3: "d"}
    with torch.no_grad():
        theirs = hf(X).logits
    # The mapping is checked on the reference decoder form, which rounds like transformers does; the
    # fast form differs from it by float rounding only (tests/test_fast_path.py).
    model.decode_head.fast = False
    torch.testing.assert_close(theirs, logits_of(model), atol=1e-5, rtol=1e-5)


def test_convert_cli_both_layouts(reference, tmp_path):
    _, folder, logits, _ = reference
    assert cli_main(["convert", str(folder), str(tmp_path / "ours")]) == 0
    assert json.loads((tmp_path / "ours" / "config.json").read_text())["format"] == "segformer"
    torch.testing.assert_close(
        logits_of(load_quietly(tmp_path / "ours", layer_norm_eps=1e-5)), logits, atol=1e-5, rtol=0
    )
    assert cli_main(["convert", str(tmp_path / "ours"), str(tmp_path / "hf"), "--layout", "hf"]) == 0
    hf = SegformerForSemanticSegmentation.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(X).logits, logits, atol=1e-5, rtol=0)


def test_other_num_classes_reinitialises_the_classifier(reference):
    _, folder, _, _ = reference
    with pytest.warns(LoadWarning, match="checkpoint has 7 classes but num_classes=3"):
        model = segformer.from_pretrained(folder, num_classes=3)
    full = load_quietly(folder)
    assert model.num_classes == 3 and model.decode_head.linear_pred.weight.shape == (3, 256, 1, 1)
    assert torch.equal(model.decode_head.linear_fuse.conv.weight, full.decode_head.linear_fuse.conv.weight)


@pytest.mark.parametrize("in_channels", [1, 4])
def test_other_input_channels_adapt_the_first_conv(reference, in_channels):
    _, folder, _, _ = reference
    rgb = load_quietly(folder).eval()
    with pytest.warns(LoadWarning, match=f"adapted from 3 to {in_channels} input channels"):
        model = segformer.from_pretrained(folder, in_channels=in_channels).eval()
    w = rgb.backbone.patch_embed1.proj.weight
    if in_channels == 1:  # a grey image through the summed filter = that image repeated as RGB
        grey = X[:, :1]
        with torch.no_grad():
            torch.testing.assert_close(model(grey), rgb(grey.repeat(1, 3, 1, 1)), atol=1e-5, rtol=1e-4)
    else:  # timm: RGB filters repeated, cut to 4, scaled by 3/4
        expected = torch.cat([w, w[:, :1]], dim=1) * 0.75
        torch.testing.assert_close(model.backbone.patch_embed1.proj.weight, expected)


def test_wrong_variant_names_first_mismatched_key_and_shapes(reference):
    _, folder, _, _ = reference
    with pytest.raises(ValueError, match=r"backbone\.patch_embed1\.proj\.weight.*\(64, 3, 7, 7\).*\(32, 3, 7, 7\)"):
        load_quietly(folder, variant="b0")
    with pytest.raises(
        ValueError, match=r"do not fit SegFormer-b2: key 'backbone\.block1\.2\.norm1\.weight' is absent"
    ):
        load_quietly(folder, variant="b2")


def test_wrong_shape_names_the_key(tmp_path):
    model = segformer.create_model("b0", num_classes=3)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    state["backbone.block2.1.mlp.fc1.weight"] = torch.zeros(256, 32)
    save_file(state, tmp_path / "bad.safetensors")
    with pytest.raises(
        ValueError, match=r"'backbone\.block2\.1\.mlp\.fc1\.weight' has shape \(256, 32\) .* \(256, 64\)"
    ):
        segformer.from_pretrained(tmp_path / "bad.safetensors")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_truncated_file_is_reported_by_name(tmp_path, suffix):
    model = segformer.create_model("b0", num_classes=3)
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
    else:
        torch.save(model.state_dict(), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(path))):
        segformer.from_pretrained(path)


def test_garbage_and_missing_files(tmp_path):
    (tmp_path / "noise.pth").write_bytes(os.urandom(1000))
    with pytest.raises(CheckpointError, match="noise.pth: corrupt"):
        segformer.from_pretrained(tmp_path / "noise.pth")
    with pytest.raises(CheckpointError, match="nowhere.pth: no such file"):
        segformer.from_pretrained(tmp_path / "nowhere.pth")
    torch.save({"optimizer": {"lr": torch.tensor(1.0)}}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match=r"other.pth: no state dict found; top-level keys are \['optimizer'\]"):
        segformer.from_pretrained(tmp_path / "other.pth")
    save_file({"fc.weight": torch.zeros(2, 2)}, tmp_path / "resnet.safetensors")
    with pytest.raises(CheckpointError, match="resnet.safetensors: not a SegFormer checkpoint.*first keys: fc.weight"):
        segformer.from_pretrained(tmp_path / "resnet.safetensors")


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_checkpoint",))


def test_malicious_pickle_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"state_dict": {"x": torch.zeros(1)}, "payload": _Exploit()}, tmp_path / "evil.pth")
    with pytest.raises(CheckpointError, match="evil.pth: refused to load.*arbitrary code"):
        segformer.from_pretrained(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned_by_checkpoint").exists()


HINT = (
    "pass a local folder or file (segformer eval/predict: --weights DIR; segformer train: --set model.init=DIR), "
    "or set HF_HUB_OFFLINE=1 to use only the cache"
)


@pytest.fixture
def empty_hub_cache(tmp_path, monkeypatch):
    """An empty huggingface_hub cache folder, and the current folder empty too (relative paths resolve there)."""
    cache = tmp_path / "hub-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.chdir(tmp_path)
    return cache


def fails_quickly(source: str, match: str) -> None:
    start = time.monotonic()
    with pytest.raises(CheckpointError, match=match):
        segformer.from_pretrained(source)
    assert time.monotonic() - start < 10


@pytest.mark.parametrize("source", ["./nowhere", "/abs/nowhere", "~/nowhere-segformer", "nowhere/best/", "a/b/c"])
def test_missing_paths_never_go_to_the_hub(source, empty_hub_cache, monkeypatch):
    monkeypatch.setattr(segformer.pretrained, "hub_folder", lambda repo_id: pytest.fail(f"{repo_id} went to the hub"))
    fails_quickly(source, f"^{re.escape(source)}: no such file or folder$")


@pytest.mark.parametrize("how", ["offline", "unreachable-probe", "closed-port"])
@pytest.mark.parametrize("repo_id", ["nowhere/best", "segformer-dem/run"])
def test_uncached_hub_id_without_hub_fails_at_once(repo_id, how, empty_hub_cache, monkeypatch):
    """One message: the id, the cache folder looked in, why the hub was not asked, what to do instead."""
    if how == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        reason = "HF_HUB_OFFLINE is set"
    elif how == "unreachable-probe":
        monkeypatch.setattr(segformer.pretrained, "hub_reachable", lambda endpoint: False)
        reason = "cannot be reached"
    else:  # the real probe, against a port where nothing listens
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", "http://127.0.0.1:9")
        reason = "http://127.0.0.1:9 cannot be reached"
    expected = f"^{re.escape(repo_id)}: .*{re.escape(str(empty_hub_cache))}.*{re.escape(reason)}.*{re.escape(HINT)}$"
    fails_quickly(repo_id, expected)


def test_hub_id_in_the_cache_loads_offline(empty_hub_cache, monkeypatch):
    """A hub id is looked up in the huggingface_hub cache first (its refs/main → snapshots layout)."""
    model = segformer.create_model("b0", num_classes=3)
    snapshot = empty_hub_cache / "models--segformer-dem--run" / "snapshots" / ("0" * 40)
    model.save_pretrained(snapshot)
    (empty_hub_cache / "models--segformer-dem--run" / "refs").mkdir()
    (empty_hub_cache / "models--segformer-dem--run" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setattr(segformer.pretrained, "hub_reachable", lambda endpoint: pytest.fail("probed the hub"))
    loaded = segformer.from_pretrained("segformer-dem/run")
    assert loaded.config == model.config
    assert torch.equal(loaded.decode_head.linear_pred.weight, model.decode_head.linear_pred.weight)


def test_from_pretrained_returns_the_model_in_eval_mode(tmp_path):
    segformer.create_model("b0", num_classes=3).save_pretrained(tmp_path)
    models = [segformer.from_pretrained(tmp_path, drop_path_rate=0.5, decoder_dropout=0.5) for _ in range(2)]
    assert all(m.training is False for m in models)
    assert models[0].config.drop_path_rate == 0.5
    with torch.no_grad():
        torch.testing.assert_close(models[0](X), models[1](X), atol=0, rtol=0)


# The official mmseg 0.x test pipelines, written out here (local_configs/_base_/datasets/ade20k.py, cityscapes.py).
ADE20K_PROTOCOL = {"mode": "whole", "scale": (2048, 512), "reduce_zero_label": True}
CITYSCAPES_PROTOCOL = {"mode": "slide", "scale": (2048, 1024), "crop": (1024, 1024), "stride": (768, 768)}


@pytest.mark.parametrize("dataset", ["ade20k", "cityscapes"])
def test_hub_folder_of_a_known_dataset_gets_its_official_protocol(dataset, tmp_path):
    """A transformers folder (config.json + preprocessor_config.json as on the hub) of ADE20K or Cityscapes."""
    names = list(segformer.DATASETS[dataset].classes)
    hf = make_hf_model("b0", num_labels=len(names), id2label=dict(enumerate(names)))
    hf.save_pretrained(tmp_path)
    reduce = dataset == "ade20k"
    preprocessor = {"image_processor_type": "SegformerImageProcessor", "do_reduce_labels": reduce, "do_normalize": True}
    preprocessor |= {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(preprocessor))
    protocol = segformer.from_pretrained(tmp_path).config.protocol
    expected = ADE20K_PROTOCOL if dataset == "ade20k" else CITYSCAPES_PROTOCOL
    assert {k: getattr(protocol, k) for k in expected} == expected
    assert protocol.reduce_zero_label is reduce
    assert protocol.mean == pytest.approx((123.675, 116.28, 103.53))
    assert protocol.std == pytest.approx((58.395, 57.12, 57.375))


def custom_protocol() -> TestProtocol:
    return TestProtocol(mode="slide", scale=(1024, 512), crop=(256, 256), stride=(170, 170), mean=(1, 2, 3))


@pytest.mark.parametrize("layout", ["ours", "hf"])
def test_protocol_palette_and_names_survive_both_layouts(layout, tmp_path):
    palette = [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    config = {"class_names": ["sky", "road", "car"], "palette": palette, "protocol": custom_protocol()}
    model = segformer.create_model("b0", num_classes=3, layer_norm_eps=1e-5, **config)
    model.save_pretrained(tmp_path, layout=layout)
    assert segformer.from_pretrained(tmp_path).config == model.config
    if layout == "ours":
        written = json.loads((tmp_path / "config.json").read_text())
        assert written["format"] == "segformer" and written["protocol"]["crop"] == [256, 256]
        assert written["palette"] == [list(c) for c in palette]


def test_hf_layout_preprocessor_loads_in_transformers(tmp_path):
    protocol = TestProtocol(crop=(384, 320), mean=(127.5, 127.5, 127.5), std=(51.0, 51.0, 51.0), reduce_zero_label=True)
    segformer.create_model("b0", num_classes=3, protocol=protocol).save_pretrained(tmp_path, layout="hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # without torchvision, transformers says it falls back to its PIL backend
        processor = SegformerImageProcessor.from_pretrained(tmp_path)
    assert processor.image_mean == pytest.approx([0.5, 0.5, 0.5]) and processor.image_std == pytest.approx([0.2] * 3)
    assert processor.do_reduce_labels is True and processor.size == {"height": 384, "width": 320}
    pixels = processor(np.full((40, 50, 3), 255, np.uint8), return_tensors="np")["pixel_values"]
    assert pixels.shape == (1, 3, 384, 320) and np.allclose(pixels, 2.5)  # (255 / 255 − 0.5) / 0.2


def test_no_recorded_protocol_stays_none(tmp_path):
    for layout in ("ours", "hf"):
        segformer.create_model("b0", num_classes=3).save_pretrained(tmp_path / layout, layout=layout)
        assert segformer.from_pretrained(tmp_path / layout).config.protocol is None


def test_overrides_replace_stored_config_fields(tmp_path):
    segformer.create_model("b0", num_classes=3, class_names=["a", "b", "c"]).save_pretrained(tmp_path)
    protocol = custom_protocol()
    model = segformer.from_pretrained(
        tmp_path, class_names=["x", "y", "z"], palette=[(0, 0, 0)] * 3, protocol=protocol, layer_norm_eps=1e-5
    )
    assert model.class_names == ["x", "y", "z"] and model.config.palette == ((0, 0, 0),) * 3
    assert model.config.protocol == protocol and model.backbone.norm1.eps == 1e-5
    with pytest.raises(ValueError, match="unknown option 'colours'"):
        segformer.from_pretrained(tmp_path, colours=[])
    with pytest.raises(ValueError, match="class_names has 2 names but num_classes is 3"):
        segformer.from_pretrained(tmp_path, class_names=["x", "y"])


def test_model_config_is_read_only():
    model = segformer.create_model("b0", num_classes=3)
    with pytest.raises(AttributeError):
        model.config = model.config.replace(num_classes=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.config.num_classes = 4


def test_attention_dropout_maps_to_transformers_both_ways(tmp_path):
    """``attn_drop_rate`` is transformers' ``attention_probs_dropout_prob``, written and read back."""
    segformer.create_model("b0", num_classes=3, attn_drop_rate=0.2).save_pretrained(tmp_path / "to-hf", layout="hf")
    hf = SegformerForSemanticSegmentation.from_pretrained(tmp_path / "to-hf")
    assert hf.config.attention_probs_dropout_prob == 0.2
    dropouts = [m.attention_dropout for m in hf.modules() if hasattr(m, "attention_dropout")]
    assert len(dropouts) == 8 and set(dropouts) == {0.2}  # transformers applies it in every block
    make_hf_model("b0", attention_probs_dropout_prob=0.15).save_pretrained(tmp_path / "hf")
    loaded = segformer.from_pretrained(tmp_path / "hf")
    assert loaded.config.attn_drop_rate == 0.15 and loaded.backbone.block4[1].attn.attn_drop == 0.15
    segformer.create_model("b0", num_classes=3, attn_drop_rate=0.25).save_pretrained(tmp_path / "ours")
    assert segformer.from_pretrained(tmp_path / "ours").config.attn_drop_rate == 0.25


def test_config_from_dict_warns_naming_unknown_keys():
    config = segformer.SegFormerConfig("b1", num_classes=3, protocol=TestProtocol(scale=None))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the "format" bookkeeping key of our config.json is not unknown
        assert segformer.SegFormerConfig.from_dict({"format": "segformer", **config.to_dict()}) == config
    with pytest.warns(UserWarning, match=r"model config: unknown key\(s\) 'colours', 'depth' ignored") as record:
        assert segformer.SegFormerConfig.from_dict({**config.to_dict(), "colours": [], "depth": 3}) == config
    assert len(record) == 1


def test_stored_config_with_an_unknown_key_warns_naming_file_and_key(tmp_path):
    segformer.create_model("b0", num_classes=3, class_names=["a", "b", "c"]).save_pretrained(tmp_path)
    stored = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**stored, "future_option": 1}))
    with pytest.warns(UserWarning, match=rf"{re.escape(str(tmp_path / 'config.json'))} .*'future_option' ignored"):
        assert segformer.from_pretrained(tmp_path).class_names == ["a", "b", "c"]


def test_replace_applies_none_values():
    config = segformer.SegFormerConfig("b0", num_classes=3, class_names=["a", "b", "c"], protocol=TestProtocol())
    assert config.replace(protocol=None, class_names=None) == segformer.SegFormerConfig("b0", num_classes=3)


def test_unknown_save_layout_names_the_written_ones(tmp_path):
    with pytest.raises(ValueError, match="unknown layout 'smp': expected one of 'ours', 'hf'"):
        segformer.create_model("b0", num_classes=3).save_pretrained(tmp_path, layout="smp")
