"""SegFormer semantic segmentation: a faithful MiT encoder + All-MLP decoder in plain PyTorch.

The names below are imported on first use (PEP 562), so that ``segformer COMMAND --help`` does not load torch.
"""

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from segformer.config import VARIANTS, SegFormerConfig, TestProtocol
    from segformer.data import DATASETS, SegmentationDataset, SyntheticDataset, build_dataset
    from segformer.evaluation import evaluate
    from segformer.fileio import CheckpointError
    from segformer.inference import Segmenter
    from segformer.metrics import ConfusionMatrix
    from segformer.model import MIN_INPUT_SIZE, AllMLPDecoder, MixTransformer, SegFormer, create_model
    from segformer.pretrained import LoadWarning, from_pretrained, save_pretrained
    from segformer.recipe import Recipe, load_recipe

# public name -> the module that defines it
_PUBLIC = {
    **dict.fromkeys(("VARIANTS", "SegFormerConfig", "TestProtocol"), "config"),
    **dict.fromkeys(("DATASETS", "SegmentationDataset", "SyntheticDataset", "build_dataset"), "data"),
    "evaluate": "evaluation",
    "CheckpointError": "fileio",
    "Segmenter": "inference",
    "ConfusionMatrix": "metrics",
    **dict.fromkeys(("MIN_INPUT_SIZE", "AllMLPDecoder", "MixTransformer", "SegFormer", "create_model"), "model"),
    **dict.fromkeys(("LoadWarning", "from_pretrained", "save_pretrained"), "pretrained"),
    **dict.fromkeys(("Recipe", "load_recipe"), "recipe"),
}


def __getattr__(name: str):
    """A public name from its module, or a submodule (``segformer.constants``), imported on first use."""
    if name in _PUBLIC:
        value = getattr(importlib.import_module(f"segformer.{_PUBLIC[name]}"), name)
        globals()[name] = value
        return value
    if name.startswith("__"):  # dunder look-ups (pickle, inspect) are not submodules
        raise AttributeError(f"module 'segformer' has no attribute {name!r}")
    try:
        return importlib.import_module(f"segformer.{name}")
    except ModuleNotFoundError as e:
        if e.name != f"segformer.{name}":
            raise
        raise AttributeError(f"module 'segformer' has no attribute {name!r}") from None


def __dir__() -> list[str]:
    return sorted({*globals(), *_PUBLIC})


__version__ = "0.1.0"

__all__ = [
    "MIN_INPUT_SIZE",
    "VARIANTS",
    "DATASETS",
    "AllMLPDecoder",
    "CheckpointError",
    "ConfusionMatrix",
    "LoadWarning",
    "MixTransformer",
    "Recipe",
    "SegFormer",
    "SegFormerConfig",
    "SegmentationDataset",
    "Segmenter",
    "SyntheticDataset",
    "TestProtocol",
    "build_dataset",
    "create_model",
    "evaluate",
    "from_pretrained",
    "load_recipe",
    "save_pretrained",
]
