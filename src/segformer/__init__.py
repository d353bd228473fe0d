"""SegFormer semantic segmentation: a faithful MiT encoder + All-MLP decoder in plain PyTorch."""

from segformer.fileio import CheckpointError
from segformer.model import MIN_INPUT_SIZE, VARIANTS, AllMLPDecoder, MixTransformer, SegFormer, create_model
from segformer.pretrained import LoadWarning, from_pretrained, save_pretrained

__version__ = "0.1.0"

__all__ = [
    "MIN_INPUT_SIZE",
    "VARIANTS",
    "AllMLPDecoder",
    "CheckpointError",
    "LoadWarning",
    "MixTransformer",
    "SegFormer",
    "create_model",
    "from_pretrained",
    "save_pretrained",
]
