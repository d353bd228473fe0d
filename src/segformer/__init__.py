"""SegFormer semantic segmentation: a faithful MiT encoder + All-MLP decoder in plain PyTorch."""

from segformer.config import VARIANTS, SegFormerConfig, TestProtocol
from segformer.data import DATASETS, SegmentationDataset, SyntheticDataset, build_dataset
from segformer.evaluate import evaluate
from segformer.fileio import CheckpointError
from segformer.inference import Segmenter
from segformer.metrics import ConfusionMatrix
from segformer.model import MIN_INPUT_SIZE, AllMLPDecoder, MixTransformer, SegFormer, create_model
from segformer.pretrained import LoadWarning, from_pretrained, save_pretrained
from segformer.recipe import Recipe, load_recipe

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
