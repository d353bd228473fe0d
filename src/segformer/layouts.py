"""Map every public SegFormer checkpoint layout onto this package's parameter names: renaming and tensor surgery.

Our names are the official NVlabs ones (``backbone.block1.0.attn.kv.weight`` …). A layout is a
list of two-way rename rules written as templates: ``{s}`` is the stage (1-based in our names,
0-based in theirs) and ``{b}`` the block index. Tensor surgery that renaming cannot express is
done in ``_merge_and_split`` (k and v into kv, mmseg's q;k;v into q and kv, 1×1 convs into Linear
weights) and, for export, ``_split_kv``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

State = dict[str, torch.Tensor]

_BLOCK = "backbone.block{s}.{b}."
_OURS_TO_HF_BLOCK = [
    ("norm1.", "layer_norm_1."),
    ("norm2.", "layer_norm_2."),
    ("attn.q.", "attention.self.query."),
    ("attn.k.", "attention.self.key."),
    ("attn.v.", "attention.self.value."),
    ("attn.sr.", "attention.self.sr."),
    ("attn.norm.", "attention.self.layer_norm."),
    ("attn.proj.", "attention.output.dense."),
    ("mlp.fc1.", "mlp.dense1."),
    ("mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."),
    ("mlp.fc2.", "mlp.dense2."),
]
_OURS_TO_HF5_BLOCK = [
    ("norm1.", "layernorm_before."),
    ("norm2.", "layernorm_after."),
    ("attn.q.", "attention.q_proj."),
    ("attn.k.", "attention.k_proj."),
    ("attn.v.", "attention.v_proj."),
    ("attn.sr.", "attention.sequence_reduction.sequence_reduction."),
    ("attn.norm.", "attention.sequence_reduction.layer_norm."),
    ("attn.proj.", "attention.o_proj."),
    ("mlp.fc1.", "mlp.fc1."),
    ("mlp.dwconv.dwconv.", "mlp.dwconv.dwconv."),
    ("mlp.fc2.", "mlp.fc2."),
]
_OURS_TO_MMSEG_BLOCK = [
    ("norm1.", "norm1."),
    ("norm2.", "norm2."),
    ("attn.qkv.weight", "attn.attn.in_proj_weight"),
    ("attn.qkv.bias", "attn.attn.in_proj_bias"),
    ("attn.sr.", "attn.sr."),
    ("attn.norm.", "attn.norm."),
    ("attn.proj.", "attn.attn.out_proj."),
    ("mlp.fc1.", "ffn.layers.0."),
    ("mlp.dwconv.dwconv.", "ffn.layers.1."),
    ("mlp.fc2.", "ffn.layers.4."),
]
_HF_DECODER = [
    ("decode_head.linear_fuse.conv.", "decode_head.linear_fuse."),
    ("decode_head.linear_fuse.bn.", "decode_head.batch_norm."),
    ("decode_head.linear_pred.", "decode_head.classifier."),
]


@dataclass(frozen=True)
class Layout:
    """A checkpoint layout: how to recognise it and how its names map onto ours."""

    name: str
    marker: str  # a key prefix found only in this layout
    rules: list[tuple[str, str]]  # (our template, their template)
    drop: tuple[str, ...] = ()  # their key prefixes that have no counterpart here
    strip: str = ""  # optional prefix removed from their keys first
    note: str = ""  # said when the layout is loaded


LAYOUTS: list[Layout] = [
    Layout("official", "backbone.patch_embed1.", [("", "")], drop=("decode_head.conv_seg.",)),
    Layout("mit-imagenet", "patch_embed1.", [("backbone.", "")], drop=("head.",)),
    Layout(
        "hf",
        "encoder.patch_embeddings.",
        [
            ("backbone.patch_embed{s}.proj.", "encoder.patch_embeddings.{s}.proj."),
            ("backbone.patch_embed{s}.norm.", "encoder.patch_embeddings.{s}.layer_norm."),
            ("backbone.norm{s}.", "encoder.layer_norm.{s}."),
            ("decode_head.linear_c{s}.proj.", "decode_head.linear_c.{s}.proj."),
            *[(_BLOCK + ours, "encoder.block.{s}.{b}." + theirs) for ours, theirs in _OURS_TO_HF_BLOCK],
            *_HF_DECODER,
        ],
        drop=("classifier.",),
        strip="segformer.",
    ),
    Layout(
        "hf5",
        "stages.0.patch_embeddings.",
        [
            ("backbone.patch_embed{s}.proj.", "stages.{s}.patch_embeddings.proj."),
            ("backbone.patch_embed{s}.norm.", "stages.{s}.patch_embeddings.layer_norm."),
            ("backbone.norm{s}.", "stages.{s}.layer_norm."),
            ("decode_head.linear_c{s}.proj.", "decode_head.linear_projections.{s}.proj."),
            *[(_BLOCK + ours, "stages.{s}.blocks.{b}." + theirs) for ours, theirs in _OURS_TO_HF5_BLOCK],
            *_HF_DECODER,
        ],
        drop=("classifier.",),
        strip="segformer.",
    ),
    Layout(
        "mmseg",
        "backbone.layers.0.0.projection.",
        [
            ("backbone.patch_embed{s}.proj.", "backbone.layers.{s}.0.projection."),
            ("backbone.patch_embed{s}.norm.", "backbone.layers.{s}.0.norm."),
            ("backbone.norm{s}.", "backbone.layers.{s}.2."),
            *[(_BLOCK + ours, "backbone.layers.{s}.1.{b}." + theirs) for ours, theirs in _OURS_TO_MMSEG_BLOCK],
        ],
        drop=("decode_head.", "auxiliary_head."),
        note="mmsegmentation 1.x: its decode head is a different design (per-stage conv+BN+ReLU), so "
        "only the backbone is loaded and the decoder is initialised",
    ),
    Layout(
        "smp",
        "encoder.patch_embed1.",
        [
            ("backbone.", "encoder."),
            *[(f"decode_head.linear_c{i + 1}.proj.", f"decoder.mlp_stage.{3 - i}.linear.") for i in range(4)],
            ("decode_head.linear_fuse.conv.", "decoder.fuse_stage.0."),
            ("decode_head.linear_fuse.bn.", "decoder.fuse_stage.1."),
            ("decode_head.linear_pred.", "segmentation_head.0."),
        ],
    ),
]
LAYOUT_NAMES = [layout.name for layout in LAYOUTS]


def _template_regex(template: str) -> re.Pattern:
    pattern = re.escape(template).replace(r"\{s\}", r"(?P<s>\d+)").replace(r"\{b\}", r"(?P<b>\d+)")
    return re.compile("^" + pattern)


def _rename(key: str, rules: list[tuple[str, str]], to_ours: bool) -> str | None:
    for ours, theirs in rules:
        src, dst = (theirs, ours) if to_ours else (ours, theirs)
        m = _template_regex(src).match(key)
        if m is None:
            continue
        values = m.groupdict()
        if "s" in values:
            values["s"] = int(values["s"]) + (1 if to_ours else -1)
        return dst.format(**values) + key[m.end() :]
    return None


def find_layout(state: State) -> Layout:
    """Recognise the layout of a state dict; raise ValueError when none fits."""
    for layout in LAYOUTS:
        keys = (k.removeprefix(layout.strip) for k in state) if layout.strip else state
        if any(k.startswith(layout.marker) for k in keys):
            return layout
    sample = ", ".join(list(state)[:5])
    raise ValueError(
        f"not a SegFormer checkpoint in any known layout ({', '.join(LAYOUT_NAMES)}); first keys: {sample}"
    )


def unwrap(obj: object) -> State:
    """Find the tensor dict inside a checkpoint object ({"state_dict": …}, {"model": …}, DDP prefixes)."""
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in ("state_dict", "model", "module", "weights") if k in obj), None)
        if inner is None:
            raise ValueError(f"no state dict found; top-level keys are {list(obj)[:10]}")
        obj = inner
    if not isinstance(obj, dict):
        raise ValueError(f"expected a dict of tensors, found {type(obj).__name__}")
    state = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def to_ours(state: State) -> tuple[State, Layout, list[str]]:
    """Convert a state dict of any layout to our names.

    Returns:
        (converted state, detected layout, their keys that were dropped on purpose or not understood).
    """
    layout = find_layout(state)
    out: State = {}
    dropped: list[str] = []
    for key, value in state.items():
        name = key.removeprefix(layout.strip) if layout.strip else key
        if name.startswith(layout.drop):
            dropped.append(key)
            continue
        ours = _rename(name, layout.rules, to_ours=True)
        if ours is None:
            dropped.append(key)
        else:
            out[ours] = value
    return _merge_and_split(out), layout, dropped


def _merge_and_split(state: State) -> State:
    out: State = {}
    for key, value in state.items():
        if ".attn.k." in key:
            v = state[key.replace(".attn.k.", ".attn.v.")]
            out[key.replace(".attn.k.", ".attn.kv.")] = torch.cat([value, v])
        elif ".attn.v." in key:
            continue
        elif ".attn.qkv." in key:
            c = value.shape[0] // 3
            out[key.replace(".attn.qkv.", ".attn.q.")] = value[:c]
            out[key.replace(".attn.qkv.", ".attn.kv.")] = value[c:]
        elif (".mlp.fc1.weight" in key or ".mlp.fc2.weight" in key) and value.ndim == 4:
            out[key] = value.flatten(1)
        else:
            out[key] = value
    return out


def _split_kv(state: State) -> State:
    out: State = {}
    for key, value in state.items():
        if ".attn.kv." in key:
            k, v = value.chunk(2)
            out[key.replace(".attn.kv.", ".attn.k.")] = k
            out[key.replace(".attn.kv.", ".attn.v.")] = v
        else:
            out[key] = value
    return out


def to_layout(state: State, name: str) -> State:
    """Convert our state dict to the layout ``name`` ("hf", "hf5", "official", "smp", …)."""
    layout = next((lay for lay in LAYOUTS if lay.name == name), None)
    if layout is None:
        raise ValueError(f"unknown layout {name!r}: expected one of {', '.join(LAYOUT_NAMES)}")
    if name == "mmseg":
        raise ValueError("export to the mmsegmentation 1.x layout is not supported (its decode head differs)")
    if name in ("hf", "hf5"):
        state = _split_kv(state)
    out: State = {}
    for key, value in state.items():
        theirs = _rename(key, layout.rules, to_ours=False)
        if theirs is None:
            continue  # e.g. the decoder when exporting a backbone-only layout
        if layout.strip and not theirs.startswith("decode_head."):
            theirs = layout.strip + theirs
        out[theirs] = value
    return out
