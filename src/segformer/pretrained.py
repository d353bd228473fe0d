"""``from_pretrained`` and ``save_pretrained``: weights in, weights out, in every public layout.

A source is a local file, a local directory (ours, a transformers ``save_pretrained`` folder, or a
folder holding one ``.pth``/``.safetensors``), or a Hugging Face hub id. The official SegFormer
weights (``nvidia/segformer-*``, ``nvidia/mit-*``) are under NVIDIA's non-commercial licence.
"""

from __future__ import annotations

import logging
import re
import warnings
from pathlib import Path

import torch

from segformer.checkpoints import adapt_input_conv, infer_architecture, to_layout, to_ours, unwrap
from segformer.fileio import CheckpointError, atomic_write, atomic_write_json, read_json, read_tensors
from segformer.model import VARIANTS, SegFormer, normalize_variant

log = logging.getLogger("segformer")

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
CONFIG_FORMAT = "segformer"


class LoadWarning(UserWarning):
    """Something about a checkpoint that the user should know: missing keys, a new classifier …"""


def _find_weights(directory: Path) -> Path:
    for name in WEIGHT_FILES:
        if (directory / name).is_file():
            return directory / name
    found = sorted(p for p in directory.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise CheckpointError(
            f"{directory}: no weights found (expected model.safetensors, pytorch_model.bin or one .pth)"
        )
    raise CheckpointError(f"{directory}: several weight files ({', '.join(p.name for p in found)}); pass one file")


def _download(repo_id: str) -> Path:
    """Fetch config and weights of a hub repo into the huggingface_hub cache; return the folder."""
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise CheckpointError(f"{repo_id!r} is not a local path, and huggingface_hub is not installed") from None
    folder = None
    errors = []
    for name in ("config.json", *WEIGHT_FILES):
        try:
            folder = Path(hf_hub_download(repo_id, name)).parent
            if name != "config.json":
                return folder
        except Exception as e:  # offline, missing file, unknown repo: all reported together below
            errors.append(f"{name}: {type(e).__name__}")
    raise CheckpointError(
        f"could not fetch {repo_id!r} from the Hugging Face hub ({'; '.join(errors)}). If this machine is "
        "offline, download the repository elsewhere (config.json and model.safetensors) and pass its local "
        "directory instead, e.g. from_pretrained('/path/to/segformer-b0-finetuned-ade-512-512')."
    )


def resolve_source(source: str | Path) -> tuple[Path, dict | None, dict]:
    """Find the weights file and config of ``source``; return (weights path, config or None, raw object)."""
    path = Path(source)
    if not path.exists():
        if isinstance(source, str) and re.fullmatch(r"[\w.-]+/[\w.-]+", source):
            path = _download(source)
        else:
            raise CheckpointError(f"{source}: no such file or directory (nor a hub id like 'nvidia/mit-b0')")
    weights = _find_weights(path) if path.is_dir() else path
    config_file = weights.parent / "config.json"
    config = read_json(config_file) if config_file.is_file() else None
    return weights, config, read_tensors(weights)


def _config_options(config: dict | None) -> dict:
    """Model options from our config.json or a transformers one."""
    if not config:
        return {}
    if config.get("format") == CONFIG_FORMAT:
        return {
            k: config[k]
            for k in (
                "variant",
                "num_classes",
                "class_names",
                "drop_path_rate",
                "decoder_dropout",
                "layer_norm_eps",
                "in_channels",
            )
            if config.get(k) is not None
        }
    if config.get("model_type") == "segformer":
        options = {}
        id2label = config.get("id2label") or {}
        names = [id2label[k] for k in sorted(id2label, key=int)]
        if names and not all(re.fullmatch(r"LABEL_\d+", n) for n in names):
            options["class_names"] = names
        for ours, theirs in (("drop_path_rate", "drop_path_rate"), ("decoder_dropout", "classifier_dropout_prob")):
            if theirs in config:
                options[ours] = config[theirs]
        return options
    return {}


def _class_names_from_meta(raw: object) -> list[str] | None:
    meta = raw.get("meta") if isinstance(raw, dict) else None
    names = meta.get("CLASSES") if isinstance(meta, dict) else None
    return list(names) if names else None


def from_pretrained(
    source: str | Path,
    *,
    variant: str | None = None,
    num_classes: int | None = None,
    map_location: str | torch.device = "cpu",
    **options,
) -> SegFormer:
    """Build a SegFormer from a checkpoint in any public layout (SPEC §3).

    Args:
        source: local file or directory, or a Hugging Face hub id.
        variant: "b0" … "b5"; read from the weights when not given.
        num_classes: read from the weights when not given; a different number re-initialises the
            classifier (with a warning).
        map_location: device for the loaded tensors.
        **options: other ``SegFormer`` options (``in_channels``, ``drop_path_rate``, ``layer_norm_eps`` …).

    Raises:
        CheckpointError: the file is missing, corrupt or unsafe.
        ValueError: the weights do not fit the requested variant (naming the first mismatched key).
    """
    weights, config, raw = resolve_source(source)
    try:
        state, layout, dropped = to_ours(unwrap(raw))
        arch = infer_architecture(state)
    except ValueError as e:
        raise CheckpointError(f"{weights}: {e}") from None
    log.info("loading %s (%s layout)", weights, layout.name)
    if layout.note:
        warnings.warn(f"{weights}: {layout.note}", LoadWarning, stacklevel=2)

    stored = _config_options(config)
    names = stored.pop("class_names", None) or _class_names_from_meta(raw)
    stored.pop("variant", None)
    stored_classes = stored.pop("num_classes", None)
    if variant is None:
        variant = arch["variant"]
        if variant is None:
            raise ValueError(
                f"{weights}: encoder widths {arch['widths']} and depths {arch['depths']} match no MiT variant "
                f"({', '.join(VARIANTS)})"
            )
    variant = normalize_variant(variant)
    ckpt_classes = arch["num_classes"] or stored_classes
    if num_classes is None:
        if ckpt_classes is None:
            raise ValueError(f"{weights}: backbone-only checkpoint; pass num_classes= to build the decoder")
        num_classes = ckpt_classes
    if names is not None and len(names) != num_classes:
        names = None
    kwargs = {**stored, "in_channels": arch["in_channels"], **options}
    model = SegFormer(variant, num_classes, class_names=names, **kwargs)
    expected = model.state_dict()
    _check_fits(state, expected, variant, weights)

    if model.backbone.in_channels != arch["in_channels"]:
        key = "backbone.patch_embed1.proj.weight"
        state[key] = adapt_input_conv(state[key], model.backbone.in_channels)
        warnings.warn(
            f"{weights}: first conv adapted from {arch['in_channels']} to {model.backbone.in_channels} input channels",
            LoadWarning,
            stacklevel=2,
        )
    if arch["num_classes"] is not None and arch["num_classes"] != num_classes:
        for suffix in ("weight", "bias"):
            state.pop(f"decode_head.linear_pred.{suffix}", None)
        warnings.warn(
            f"{weights}: checkpoint has {arch['num_classes']} classes but num_classes={num_classes}: "
            "the classifier (decode_head.linear_pred) is re-initialised and needs training",
            LoadWarning,
            stacklevel=2,
        )
    _check_shapes(state, expected, weights)
    missing, unexpected = model.load_state_dict(state, strict=False)
    _report(weights, missing, unexpected, dropped, layout.drop)
    return model.to(map_location)


def _check_fits(state: dict, expected: dict, variant: str, weights: Path) -> None:
    """Refuse weights whose encoder has other blocks than the variant (first mismatched key named)."""
    ours = [k for k in expected if k.startswith("backbone.block")]
    theirs = [k for k in state if k.startswith("backbone.block")]
    if set(ours) == set(theirs):
        return
    first = next((k for k in ours if k not in state), None) or next(k for k in theirs if k not in expected)
    got = tuple(state[first].shape) if first in state else "absent"
    want = tuple(expected[first].shape) if first in expected else "absent"
    raise ValueError(
        f"{weights}: weights do not fit SegFormer-{variant}: key {first!r} is {got} in the checkpoint "
        f"but {want} in the model (pass the right variant, or none to read it from the weights)"
    )


def _check_shapes(state: dict, expected: dict, weights: Path) -> None:
    for key, want in expected.items():  # in model order, so the first mismatch is the earliest layer
        if key in state and state[key].shape != want.shape:
            raise ValueError(
                f"{weights}: key {key!r} has shape {tuple(state[key].shape)} in the checkpoint but "
                f"{tuple(want.shape)} in the model"
            )


def _report(weights: Path, missing: list[str], unexpected: list[str], dropped: list[str], drop: tuple) -> None:
    if all(k.startswith("decode_head.") for k in missing) and "decode_head.linear_fuse.conv.weight" in missing:
        warnings.warn(f"{weights}: backbone-only checkpoint: the decoder is initialised", LoadWarning, stacklevel=3)
        missing = []
    missing = [k for k in missing if not k.startswith("decode_head.linear_pred.")]
    unknown = [k for k in dropped if not k.startswith(drop)]
    for what, keys in (("missing", missing), ("unexpected", unexpected + unknown)):
        if keys:
            warnings.warn(f"{weights}: {len(keys)} {what} keys: {', '.join(keys)}", LoadWarning, stacklevel=3)
    ignored = [k for k in dropped if k not in unknown]
    if ignored:
        log.info("%s: ignored %d keys with no counterpart (%s …)", weights, len(ignored), ignored[0])


def save_pretrained(model: SegFormer, directory: str | Path, layout: str = "ours") -> None:
    """Write ``model.safetensors`` and ``config.json`` to ``directory``.

    Args:
        layout: "ours" (read back bit-exactly by ``from_pretrained``) or "hf" (loadable by
            ``transformers.SegformerForSemanticSegmentation.from_pretrained``).
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    if layout == "ours":
        config = {"format": CONFIG_FORMAT, **model.config}
    elif layout == "hf":
        state = to_layout(state, "hf")
        config = hf_config(model)
    else:
        raise ValueError(f"unknown layout {layout!r}: expected 'ours' or 'hf'")
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / "model.safetensors", lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
    atomic_write_json(directory / "config.json", config)


def hf_config(model: SegFormer) -> dict:
    """A transformers ``SegformerConfig`` as JSON for this model."""
    variant = VARIANTS[model.config["variant"]]
    id2label = {str(i): name for i, name in enumerate(model.class_names)}
    return {
        "architectures": ["SegformerForSemanticSegmentation"],
        "model_type": "segformer",
        "num_channels": model.config["in_channels"],
        "num_encoder_blocks": 4,
        "depths": list(variant.depths),
        "hidden_sizes": list(variant.widths),
        "num_attention_heads": list(variant.num_heads),
        "sr_ratios": list(variant.sr_ratios),
        "mlp_ratios": [variant.mlp_ratio] * 4,
        "patch_sizes": [7, 3, 3, 3],
        "strides": [4, 2, 2, 2],
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "classifier_dropout_prob": model.config["decoder_dropout"],
        "drop_path_rate": model.config["drop_path_rate"],
        "initializer_range": 0.02,
        "layer_norm_eps": model.config["layer_norm_eps"],
        "decoder_hidden_size": variant.decoder_dim,
        "semantic_loss_ignore_index": 255,
        "reshape_last_stage": True,
        "id2label": id2label,
        "label2id": {name: int(i) for i, name in id2label.items()},
    }
