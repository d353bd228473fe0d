"""What a SegFormer is and how it is tested: the variants table, the model config and the test protocol.

``SegFormerConfig`` is the one description of a model: it builds ``SegFormer``, is written to
``config.json`` by ``save_pretrained`` and read back by ``from_pretrained``. Its ``protocol`` (a
``TestProtocol``) records how the weights must be tested, so ``Segmenter``, ``segformer eval`` and
``segformer predict`` give the right numbers without flags.

Both also convert to and from transformers' files: ``SegformerConfig`` (``config.json``) and
``SegformerImageProcessor`` (``preprocessor_config.json``), so a model written in the transformers
layout loads there and comes back here with its class names, palette and protocol.

Both dataclasses follow one rule for changes and for stored dictionaries: ``replace(**changes)`` applies every
change as given, None included (``scale=None`` tests at the image's own size, ``protocol=None`` forgets the
protocol), so callers holding optional values (CLI flags) drop the Nones themselves; ``from_dict`` warns naming
the keys it does not know and ignores them, so a file written by a newer version still loads.

Variants are Table 6 of the paper (Xie et al., NeurIPS 2021, arXiv 2105.15203) and the official
``mit_b0`` … ``mit_b5`` classes of ``mmseg/models/backbones/mix_transformer.py`` (NVlabs/SegFormer).
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from dataclasses import dataclass
from typing import Any

from segformer.constants import IGNORE_INDEX, IMAGE_MEAN, IMAGE_STD

# Extra keys in transformers' JSON files that keep what they have no field for (transformers ignores them).
HF_PROTOCOL_KEY = "segformer_protocol"
HF_PALETTE_KEY = "segformer_palette"
# The bookkeeping key of our config.json (``segformer.writer``), beside the SegFormerConfig fields.
CONFIG_FORMAT_KEY = "format"


@dataclass(frozen=True)
class Variant:
    """Hyper-parameters of one MiT-Bx encoder and its decoder (paper Table 6).

    Attributes:
        widths: channels C_i of the four stages.
        depths: blocks L_i per stage.
        decoder_dim: the All-MLP decoder width C (paper §3.2).
        num_heads: attention heads N_i per stage.
        sr_ratios: side of the spatial-reduction conv per stage; the paper's sequence reduction ratio
            R_i (Eq. 2) is ``sr_ratio ** 2`` (64, 16, 4, 1).
        mlp_ratio: Mix-FFN expansion E_i.
    """

    widths: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    decoder_dim: int
    num_heads: tuple[int, int, int, int] = (1, 2, 5, 8)
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    mlp_ratio: int = 4


VARIANTS: dict[str, Variant] = {
    "b0": Variant(widths=(32, 64, 160, 256), depths=(2, 2, 2, 2), decoder_dim=256),
    "b1": Variant(widths=(64, 128, 320, 512), depths=(2, 2, 2, 2), decoder_dim=256),
    "b2": Variant(widths=(64, 128, 320, 512), depths=(3, 4, 6, 3), decoder_dim=768),
    "b3": Variant(widths=(64, 128, 320, 512), depths=(3, 4, 18, 3), decoder_dim=768),
    "b4": Variant(widths=(64, 128, 320, 512), depths=(3, 8, 27, 3), decoder_dim=768),
    "b5": Variant(widths=(64, 128, 320, 512), depths=(3, 6, 40, 3), decoder_dim=768),
}


def normalize_variant(name: str) -> str:
    """Map "B0", "mit-b0", "mit_b0", "segformer-b0" to "b0"; raise ValueError on anything else."""
    key = str(name).strip().lower().replace("_", "-")
    for prefix in ("segformer-", "mit-"):
        key = key.removeprefix(prefix)
    if key not in VARIANTS:
        raise ValueError(f"unknown variant {name!r}: expected one of {', '.join(VARIANTS)} (e.g. 'b0' or 'mit-b0')")
    return key


def _pair(name: str, value: Any) -> tuple[int, int]:
    if not (isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) and v > 0 for v in value)):
        raise ValueError(f"{name} must be two positive integers, got {value!r}")
    return (int(value[0]), int(value[1]))


@dataclass(frozen=True)
class TestProtocol:
    """How a model is tested: the official mmseg 0.x test pipeline of the dataset it was trained on.

    Attributes:
        mode: "whole" (one forward pass on the resized image) or "slide" (sliding windows).
        scale: (long, short) bound of the keep-ratio resize; None tests at the image's own size.
        crop: (h, w) of a sliding window.
        stride: (h, w) step of the sliding windows.
        size_divisor: after the keep-ratio resize, resize again so both sides are multiples of this
            (the official ``AlignedResize``, used by every ADE20K config); None for the plain ``Resize``.
        aug_ratios: multi-scale ratios of ``scale`` used when multi-scale testing is asked for.
        flip: whether multi-scale testing also tests the horizontally flipped image.
        mean: normalisation mean, RGB 0–255.
        std: normalisation std, RGB 0–255.
        reduce_zero_label: the dataset's stored label 0 means "other" and is ignored (ADE20K).
    """

    __test__ = False  # not a pytest test class, despite its name

    mode: str = "whole"
    scale: tuple[int, int] | None = (2048, 512)
    crop: tuple[int, int] = (512, 512)
    stride: tuple[int, int] = (341, 341)
    size_divisor: int | None = None
    aug_ratios: tuple[float, ...] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
    flip: bool = True
    mean: tuple[float, float, float] = IMAGE_MEAN
    std: tuple[float, float, float] = IMAGE_STD
    reduce_zero_label: bool = False

    def __post_init__(self) -> None:
        if self.mode not in ("whole", "slide"):
            raise ValueError(f"mode must be 'whole' or 'slide', got {self.mode!r}")
        set_ = object.__setattr__  # frozen: normalise lists (from JSON) to tuples once, here
        set_(self, "scale", None if self.scale is None else _pair("scale", self.scale))
        set_(self, "crop", _pair("crop", self.crop))
        set_(self, "stride", _pair("stride", self.stride))
        if self.size_divisor is not None and not (isinstance(self.size_divisor, int) and self.size_divisor > 0):
            raise ValueError(f"size_divisor must be a positive integer or None, got {self.size_divisor!r}")
        ratios = tuple(float(r) for r in self.aug_ratios)
        if not ratios or min(ratios) <= 0:
            raise ValueError(f"aug_ratios must be positive numbers, got {self.aug_ratios!r}")
        set_(self, "aug_ratios", ratios)
        for name in ("mean", "std"):
            values = tuple(float(v) for v in getattr(self, name))
            if len(values) != 3:
                raise ValueError(f"{name} must be three numbers (R, G, B), got {getattr(self, name)!r}")
            set_(self, name, values)

    def replace(self, **changes: Any) -> TestProtocol:
        """A copy with ``changes`` applied, None values included (``scale=None``: the image's own size)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TestProtocol:
        """Build from ``to_dict()`` output; unknown keys are named in one warning and ignored."""
        return cls(**known_fields(cls, data, "test protocol"))

    @classmethod
    def from_hf_preprocessor(cls, data: dict[str, Any], base: TestProtocol | None = None) -> TestProtocol | None:
        """Read a transformers ``preprocessor_config.json``.

        Our own protocol, when written there under ``HF_PROTOCOL_KEY``, is returned as it is (None
        included). Otherwise ``base`` (default: ``TestProtocol()``) with the processor's mean and
        std (0–1, scaled to 0–255) and ``do_reduce_labels`` as ``reduce_zero_label``.
        """
        if HF_PROTOCOL_KEY in data:
            stored = data[HF_PROTOCOL_KEY]
            return None if stored is None else cls.from_dict(stored)
        changes: dict[str, Any] = {}
        if data.get("do_reduce_labels") is not None:
            changes["reduce_zero_label"] = data["do_reduce_labels"]
        for name in ("mean", "std"):
            if data.get(f"image_{name}") is not None:
                changes[name] = tuple(round(float(v) * 255, 6) for v in data[f"image_{name}"])
        return (base or cls()).replace(**changes)


@dataclass(frozen=True)
class SegFormerConfig:
    """Everything needed to build a SegFormer and to use it right.

    Attributes:
        variant: "b0" … "b5" ("mit-b0", "B0" … accepted and normalised).
        num_classes: output classes.
        in_channels: image channels.
        drop_path_rate: stochastic depth at the last encoder block (rising linearly from 0).
        attn_drop_rate: dropout on the attention probabilities of every encoder block (official
            ``attn_drop_rate``, 0.0 in every ``mit_b*``; transformers' ``attention_probs_dropout_prob``).
        decoder_dropout: Dropout2d probability before the classifier.
        layer_norm_eps: eps of the encoder's block and stage LayerNorms (official 1e-6; transformers 1e-5).
        class_names: one name per class, or None.
        palette: one (r, g, b) per class for overlays, or None.
        protocol: how to test the weights, or None where it is not known.
    """

    variant: str = "b0"
    num_classes: int = 150
    in_channels: int = 3
    drop_path_rate: float = 0.1
    attn_drop_rate: float = 0.0
    decoder_dropout: float = 0.1
    layer_norm_eps: float = 1e-6
    class_names: tuple[str, ...] | None = None
    palette: tuple[tuple[int, int, int], ...] | None = None
    protocol: TestProtocol | None = None

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "variant", normalize_variant(self.variant))
        if not (isinstance(self.num_classes, int) and self.num_classes >= 1):
            raise ValueError(f"num_classes must be an integer >= 1, got {self.num_classes!r}")
        for name in ("drop_path_rate", "attn_drop_rate", "decoder_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be a probability in [0, 1), got {getattr(self, name)!r}")
        if self.class_names is not None:
            set_(self, "class_names", tuple(str(n) for n in self.class_names))
            if len(self.class_names) != self.num_classes:
                raise ValueError(f"class_names has {len(self.class_names)} names but num_classes is {self.num_classes}")
        if self.palette is not None:
            palette = tuple(tuple(int(c) for c in colour) for colour in self.palette)
            if len(palette) != self.num_classes or any(
                len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in palette
            ):
                raise ValueError(f"palette must hold {self.num_classes} (r, g, b) colours with values 0–255")
            set_(self, "palette", palette)
        if isinstance(self.protocol, dict):
            set_(self, "protocol", TestProtocol.from_dict(self.protocol))

    @property
    def arch(self) -> Variant:
        """The variant's hyper-parameters."""
        return VARIANTS[self.variant]

    @property
    def names(self) -> tuple[str, ...]:
        """Class names, "class_0" … where none are recorded."""
        return self.class_names or tuple(f"class_{i}" for i in range(self.num_classes))

    def replace(self, **changes: Any) -> SegFormerConfig:
        """A copy with ``changes`` applied, None values included (``protocol=None`` forgets the protocol)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = {f.name: _jsonable(getattr(self, f.name)) for f in dataclasses.fields(self) if f.name != "protocol"}
        data["protocol"] = self.protocol.to_dict() if self.protocol is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegFormerConfig:
        """Build from ``to_dict()`` output or our ``config.json``: its "format" key is skipped, other unknown
        keys are named in one warning and ignored; None values keep the defaults."""
        fields = known_fields(cls, {k: v for k, v in data.items() if k != CONFIG_FORMAT_KEY}, "model config")
        return cls(**{k: v for k, v in fields.items() if v is not None})

    def to_hf_config(self) -> dict[str, Any]:
        """transformers' ``SegformerConfig`` as JSON (``config.json`` of the transformers layout)."""
        arch = self.arch
        id2label = {str(i): name for i, name in enumerate(self.names)}
        return {
            "architectures": ["SegformerForSemanticSegmentation"],
            "model_type": "segformer",
            "num_channels": self.in_channels,
            "num_encoder_blocks": 4,
            "depths": list(arch.depths),
            "hidden_sizes": list(arch.widths),
            "num_attention_heads": list(arch.num_heads),
            "sr_ratios": list(arch.sr_ratios),
            "mlp_ratios": [arch.mlp_ratio] * 4,
            "patch_sizes": [7, 3, 3, 3],
            "strides": [4, 2, 2, 2],
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": self.attn_drop_rate,
            "classifier_dropout_prob": self.decoder_dropout,
            "drop_path_rate": self.drop_path_rate,
            "initializer_range": 0.02,
            "layer_norm_eps": self.layer_norm_eps,
            "decoder_hidden_size": arch.decoder_dim,
            "semantic_loss_ignore_index": IGNORE_INDEX,
            "reshape_last_stage": True,
            "id2label": id2label,
            "label2id": {name: int(i) for i, name in id2label.items()},
            HF_PALETTE_KEY: _jsonable(self.palette),
        }

    @classmethod
    def from_hf_config(cls, data: dict[str, Any]) -> SegFormerConfig:
        """Read transformers' ``SegformerConfig`` JSON; generated names ("LABEL_0" …) are not kept.

        Raises:
            ValueError: its ``hidden_sizes`` and ``depths`` match no variant.
        """
        widths, depths = tuple(data.get("hidden_sizes", ())), tuple(data.get("depths", ()))
        variant = next((name for name, v in VARIANTS.items() if (v.widths, v.depths) == (widths, depths)), None)
        if variant is None:
            raise ValueError(f"hidden_sizes {list(widths)} and depths {list(depths)} match no MiT variant")
        id2label = data.get("id2label") or {}
        names = [id2label[k] for k in sorted(id2label, key=int)]
        generated = all(re.fullmatch(r"LABEL_\d+", n) for n in names)
        fields = {
            "variant": variant,
            "num_classes": len(names) or data.get("num_labels", 2),
            "in_channels": data.get("num_channels"),
            "drop_path_rate": data.get("drop_path_rate"),
            "attn_drop_rate": data.get("attention_probs_dropout_prob"),
            "decoder_dropout": data.get("classifier_dropout_prob"),
            "layer_norm_eps": data.get("layer_norm_eps"),
            "class_names": None if generated else names,
            "palette": data.get(HF_PALETTE_KEY),
        }
        return cls(**{k: v for k, v in fields.items() if v is not None})

    def to_hf_preprocessor(self) -> dict[str, Any]:
        """transformers' ``SegformerImageProcessor`` as JSON, with this protocol under ``HF_PROTOCOL_KEY``.

        The processor resizes to a fixed size: the protocol's crop, as on the official hub models
        (512×512 for ADE20K, 1024×1024 for Cityscapes).
        """
        protocol = self.protocol or TestProtocol()
        return {
            "image_processor_type": "SegformerImageProcessor",
            "do_resize": True,
            "size": {"height": protocol.crop[0], "width": protocol.crop[1]},
            "resample": 2,  # PIL bilinear
            "do_rescale": True,
            "rescale_factor": 1 / 255,
            "do_normalize": True,
            "image_mean": [v / 255 for v in protocol.mean],
            "image_std": [v / 255 for v in protocol.std],
            "do_reduce_labels": protocol.reduce_zero_label,
            HF_PROTOCOL_KEY: None if self.protocol is None else self.protocol.to_dict(),
        }


def known_fields(cls: type, data: dict[str, Any], what: str) -> dict[str, Any]:
    """The entries of ``data`` that are fields of dataclass ``cls``; one warning names the others (``what``: e.g.
    "test protocol"), which are ignored."""
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        warnings.warn(
            f"{what}: unknown key(s) {', '.join(map(repr, unknown))} ignored; expected some of {', '.join(names)}",
            UserWarning,
            stacklevel=3,
        )
    return {k: v for k, v in data.items() if k in names}


def _jsonable(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_jsonable(v) for v in value]
    return value


__all__ = [
    "HF_PALETTE_KEY",
    "HF_PROTOCOL_KEY",
    "VARIANTS",
    "SegFormerConfig",
    "TestProtocol",
    "Variant",
    "normalize_variant",
]
