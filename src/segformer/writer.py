"""Write weights and config in our layout or in transformers' (read back by ``segformer.pretrained``).

It works on a state dict and a ``SegFormerConfig``, not on the model class, so ``SegFormer.save_pretrained``
can use it without an import cycle.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from segformer.config import SegFormerConfig
from segformer.fileio import atomic_write, atomic_write_json
from segformer.layouts import to_layout

CONFIG_FORMAT = "segformer"  # the "format" key of our config.json
LAYOUTS = ("ours", "hf")


def write_pretrained(
    state: dict[str, torch.Tensor], config: SegFormerConfig, directory: str | Path, layout: str = "ours"
) -> Path:
    """Write ``model.safetensors`` and ``config.json`` (and for "hf" ``preprocessor_config.json``).

    Args:
        state: the model's state dict (our names).
        config: the model's config; written whole (protocol, palette and class names included).
        directory: output folder, created if needed.
        layout: "ours" (read back bit-exactly by ``from_pretrained``) or "hf" (loadable by
            ``transformers.SegformerForSemanticSegmentation`` and ``SegformerImageProcessor``).
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: expected 'ours' or 'hf'")
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if layout == "ours":
        files = {"config.json": {"format": CONFIG_FORMAT, **config.to_dict()}}
    else:
        state = to_layout(state, "hf")
        files = {"config.json": config.to_hf_config(), "preprocessor_config.json": config.to_hf_preprocessor()}
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    for name, data in files.items():
        atomic_write_json(directory / name, data)
    return directory
