"""Write weights and config in our layout or in transformers' (read back by ``segformer.pretrained``).

It works on a state dict and a ``SegFormerConfig``, not on the model class, so ``SegFormer.save_pretrained``
(the one public save path; ``segformer.save_pretrained(model, …)`` calls it) can use it without an import cycle.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from segformer.config import CONFIG_FORMAT_KEY, SegFormerConfig
from segformer.fileio import atomic_write, atomic_write_json
from segformer.layouts import to_layout

CONFIG_FORMAT = "segformer"  # the value of the "format" key (CONFIG_FORMAT_KEY) of our config.json
# Names of the layouts written here (``segformer.layouts.LAYOUTS`` holds every layout read).
SAVE_LAYOUT_NAMES = ("ours", "hf")


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
    if layout not in SAVE_LAYOUT_NAMES:
        raise ValueError(f"unknown layout {layout!r}: expected one of {', '.join(map(repr, SAVE_LAYOUT_NAMES))}")
    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    if layout == "ours":
        files = {"config.json": {CONFIG_FORMAT_KEY: CONFIG_FORMAT, **config.to_dict()}}
    else:
        state = to_layout(state, "hf")
        files = {"config.json": config.to_hf_config(), "preprocessor_config.json": config.to_hf_preprocessor()}
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    for name, data in files.items():
        atomic_write_json(directory / name, data)
    return directory
