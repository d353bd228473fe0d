"""``from_pretrained`` and ``save_pretrained``: weights in, weights out, in every public layout.

A source is a local file, a local folder (ours, a transformers ``save_pretrained`` folder, or a
folder holding one ``.pth``/``.safetensors``), or a Hugging Face hub id. The official SegFormer
weights (``nvidia/segformer-*``, ``nvidia/mit-*``) are under NVIDIA's non-commercial licence.

Loading goes in named steps: resolve the source, read the state dict and its layout, infer the
architecture from the weights, build the config (weights, stored files, then keyword overrides),
adapt the weights to it, load, report.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import socket
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import torch

from segformer.config import CONFIG_FORMAT_KEY, VARIANTS, SegFormerConfig, TestProtocol, known_fields
from segformer.data import DATASETS
from segformer.fileio import CheckpointError, read_json, read_tensors
from segformer.layouts import Layout, State, to_ours, unwrap
from segformer.model import SegFormer
from segformer.writer import CONFIG_FORMAT

log = logging.getLogger("segformer")

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin", ".ckpt")
PREPROCESSOR_FILE = "preprocessor_config.json"
CONFIG_FIELDS = tuple(f.name for f in dataclasses.fields(SegFormerConfig))
HUB_PROBE_TIMEOUT_S = 3.0
# namespace/name with the hub's characters; anything else (./x, /x, ~/x, x/y/, a/b/c) is a path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
_OFFLINE_HINT = (
    "pass a local folder or file (segformer eval/predict: --weights DIR; segformer train: --set model.init=DIR), "
    "or set HF_HUB_OFFLINE=1 to use only the cache"
)


class LoadWarning(UserWarning):
    """Something about a checkpoint that the user should know: missing keys, a new classifier …"""


@dataclass(frozen=True)
class Source:
    """The files of a checkpoint: weights, and the JSON files found next to them (None where absent)."""

    weights: Path
    config: dict | None = None
    preprocessor: dict | None = None


@dataclass(frozen=True)
class Architecture:
    """What the weights say about the model: variant (None when no variant fits), classes (None
    without a classifier), input channels, stage widths and depths."""

    variant: str | None
    num_classes: int | None
    in_channels: int
    widths: tuple[int, ...]
    depths: tuple[int, ...]


# --- 1. resolve the source -------------------------------------------------------------------------------------


def resolve_source(source: str | Path) -> Source:
    """Find the weights of ``source`` (file, folder or hub id) and read the JSON files next to them.

    Raises:
        CheckpointError: a path that does not exist, or a hub id neither cached nor downloadable.
    """
    path = Path(source).expanduser()
    if not path.exists():
        if isinstance(source, Path) or not looks_like_hub_id(source):
            raise CheckpointError(f"{source}: no such file or folder")
        path = hub_folder(source)
    weights = _find_weights(path) if path.is_dir() else path
    config, preprocessor = (weights.parent / name for name in ("config.json", PREPROCESSOR_FILE))
    return Source(
        weights,
        read_json(config) if config.is_file() else None,
        read_json(preprocessor) if preprocessor.is_file() else None,
    )


def looks_like_hub_id(text: str) -> bool:
    """``namespace/name`` as the hub spells repository ids; "./x", "/x", "~/x" and "x/y/" are paths."""
    return _HUB_ID.fullmatch(text) is not None and ".." not in text and "--" not in text


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


def hub_folder(repo_id: str) -> Path:
    """The cached snapshot folder of hub repository ``repo_id``, downloading it when the hub answers.

    The cache is looked in first; without a cached copy, an offline setting or an unreachable hub
    fails at once, with one message that names the cache folder and what to do instead.
    """
    try:  # optional dependency (transformers brings it), imported only for hub ids
        from huggingface_hub import constants
    except ImportError:
        raise CheckpointError(f"{repo_id}: not a local path, and huggingface_hub is not installed") from None
    cached = _fetch(repo_id, local_files_only=True)
    if cached is not None:
        return cached
    if constants.HF_HUB_OFFLINE or os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE"):
        reason = "HF_HUB_OFFLINE is set"
    elif not hub_reachable(constants.ENDPOINT):
        reason = f"{constants.ENDPOINT} cannot be reached"
    else:
        folder = _fetch(repo_id, local_files_only=False)
        if folder is not None:
            return folder
        reason = f"{constants.ENDPOINT} has no weights for it (model.safetensors or pytorch_model.bin)"
    raise CheckpointError(
        f"{repo_id}: not a local file or folder, not in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
        f"and {reason}: {_OFFLINE_HINT}"
    )


def _fetch(repo_id: str, local_files_only: bool) -> Path | None:
    """Get config, preprocessor and weights of a hub repo into the cache; the folder, or None without weights."""
    from huggingface_hub import hf_hub_download  # optional dependency, as in hub_folder

    for name in ("config.json", PREPROCESSOR_FILE, *WEIGHT_FILES):
        try:
            folder = Path(hf_hub_download(repo_id, name, local_files_only=local_files_only, etag_timeout=3))
        except Exception as e:  # missing file, unknown repo, not cached, network: the caller says what to do
            log.debug("%s/%s: %s", repo_id, name, e)
            continue
        if name in WEIGHT_FILES:
            return folder.parent
    return None


def hub_reachable(endpoint: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to the hub's host opens within ``timeout`` seconds, name lookup included.

    The probe runs in a daemon thread because a name lookup cannot be given a timeout.
    """
    url = urlparse(endpoint)
    address = (url.hostname, url.port or (443 if url.scheme == "https" else 80))
    opened: list[bool] = []
    done = threading.Event()

    def probe() -> None:
        try:
            with socket.create_connection(address, timeout=timeout):
                opened.append(True)
        except OSError:
            pass
        done.set()

    threading.Thread(target=probe, daemon=True).start()
    done.wait(timeout)
    return bool(opened)


# --- 2. read the state and its layout; 3. infer the architecture ----------------------------------------------


def read_state(weights: Path, map_location: str | torch.device = "cpu") -> tuple[State, Layout, list[str], object]:
    """Our-layout state dict of a weights file, its layout, the keys dropped, and the raw loaded object."""
    raw = read_tensors(weights, map_location)
    try:
        state, layout, dropped = to_ours(unwrap(raw))
    except ValueError as e:
        raise CheckpointError(f"{weights}: {e}") from None
    log.info("loading %s (%s layout)", weights, layout.name)
    if layout.note:
        warnings.warn(f"{weights}: {layout.note}", LoadWarning, stacklevel=3)
    return state, layout, dropped, raw


def infer_architecture(state: State) -> Architecture:
    """Read variant, class count and input channels from our-layout weights."""
    if "backbone.patch_embed1.proj.weight" not in state:
        raise ValueError("checkpoint has no 'backbone.patch_embed1.proj.weight': not a SegFormer encoder")
    widths = tuple(state[f"backbone.patch_embed{i}.proj.weight"].shape[0] for i in range(1, 5))
    depths = tuple(len({k.split(".")[2] for k in state if k.startswith(f"backbone.block{i}.")}) for i in range(1, 5))
    variant = next((n for n, v in VARIANTS.items() if v.widths == widths and v.depths == depths), None)
    pred = state.get("decode_head.linear_pred.weight")
    return Architecture(
        variant=variant,
        num_classes=None if pred is None else pred.shape[0],
        in_channels=state["backbone.patch_embed1.proj.weight"].shape[1],
        widths=widths,
        depths=depths,
    )


# --- 4. build the config ----------------------------------------------------------------------------------------


def stored_fields(source: Source, raw: object) -> dict:
    """SegFormerConfig fields recorded with the weights: our config.json, or a transformers config.json and
    preprocessor_config.json, or the class names in an mmseg checkpoint's ``meta``."""
    config = source.config or {}
    if config.get(CONFIG_FORMAT_KEY) == CONFIG_FORMAT:  # ours records everything, a missing protocol included
        fields = {k: v for k, v in config.items() if k != CONFIG_FORMAT_KEY}
        return known_fields(SegFormerConfig, fields, f"{source.weights.parent / 'config.json'} (model config)")
    fields: dict = {}
    if config.get("model_type") == "segformer":
        try:
            hf = SegFormerConfig.from_hf_config(config)
        except ValueError as e:
            raise CheckpointError(f"{source.weights.parent / 'config.json'}: {e}") from None
        fields = {k: getattr(hf, k) for k in CONFIG_FIELDS}
    else:
        meta = raw.get("meta") if isinstance(raw, dict) else None
        fields["class_names"] = (meta.get("CLASSES") or None) if isinstance(meta, dict) else None
    base = dataset_protocol(fields.get("class_names"))
    preprocessor = source.preprocessor
    fields["protocol"] = base if preprocessor is None else TestProtocol.from_hf_preprocessor(preprocessor, base)
    return fields


def dataset_protocol(class_names: tuple[str, ...] | list[str] | None) -> TestProtocol | None:
    """The official test protocol of the dataset whose class list is ``class_names``, if any."""
    if not class_names:
        return None
    key = [name.strip().lower() for name in class_names]
    for info in DATASETS.values():
        if info.classes and [name.strip().lower() for name in info.classes] == key:
            return info.protocol
    return None


def build_config(
    stored: dict, arch: Architecture, weights: Path, variant: str | None, num_classes: int | None, overrides: dict
) -> SegFormerConfig:
    """The model's config: variant and classes from the arguments or the weights, the rest as stored,
    then ``overrides``. Stored names and palette are dropped when the class count changes."""
    unknown = sorted(set(overrides) - set(CONFIG_FIELDS))
    if unknown:
        raise ValueError(f"unknown option {unknown[0]!r}: expected SegFormerConfig fields ({', '.join(CONFIG_FIELDS)})")
    variant = variant or arch.variant
    if variant is None:
        raise ValueError(
            f"{weights}: encoder widths {arch.widths} and depths {arch.depths} match no MiT variant "
            f"({', '.join(VARIANTS)})"
        )
    num_classes = num_classes or arch.num_classes
    if num_classes is None:
        raise ValueError(f"{weights}: backbone-only checkpoint; pass num_classes= to build the decoder")
    fields = {**stored, "variant": variant, "num_classes": num_classes, "in_channels": arch.in_channels}
    for key in ("class_names", "palette"):
        if fields.get(key) is not None and len(fields[key]) != num_classes:
            fields[key] = None
    return SegFormerConfig(**{**fields, **overrides})


# --- 5. adapt the weights; 6. load and report -------------------------------------------------------------------


def adapt_state(state: State, arch: Architecture, model: SegFormer, weights: Path) -> State:
    """Fit the weights to the model: check the encoder, adapt the first conv, drop a classifier of other classes."""
    expected = model.state_dict()
    _check_fits(state, expected, model.config.variant, weights)
    in_channels = model.config.in_channels
    if in_channels != arch.in_channels:
        key = "backbone.patch_embed1.proj.weight"
        state[key] = adapt_input_conv(state[key], in_channels)
        message = f"{weights}: first conv adapted from {arch.in_channels} to {in_channels} input channels"
        warnings.warn(message, LoadWarning, stacklevel=3)
    if arch.num_classes is not None and arch.num_classes != model.num_classes:
        for suffix in ("weight", "bias"):
            state.pop(f"decode_head.linear_pred.{suffix}", None)
        warnings.warn(
            f"{weights}: checkpoint has {arch.num_classes} classes but num_classes={model.num_classes}: "
            "the classifier (decode_head.linear_pred) is re-initialised and needs training",
            LoadWarning,
            stacklevel=3,
        )
    _check_shapes(state, expected, weights)
    return state


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Adapt a 3-channel first conv to ``in_channels`` as timm does.

    One channel: the sum over RGB. More or other: RGB repeated, cut to ``in_channels`` and scaled
    by 3 / in_channels so that the activation scale is kept.
    """
    if weight.shape[1] == in_channels:
        return weight
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeat = -(-in_channels // weight.shape[1])
    return weight.repeat(1, repeat, 1, 1)[:, :in_channels] * (weight.shape[1] / in_channels)


def _check_fits(state: State, expected: State, variant: str, weights: Path) -> None:
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


def _check_shapes(state: State, expected: State, weights: Path) -> None:
    for key, want in expected.items():  # in model order, so the first mismatch is the earliest layer
        if key in state and state[key].shape != want.shape:
            raise ValueError(
                f"{weights}: key {key!r} has shape {tuple(state[key].shape)} in the checkpoint but "
                f"{tuple(want.shape)} in the model"
            )


def load_state(model: SegFormer, state: State, dropped: list[str], layout: Layout, weights: Path) -> None:
    """Load ``state`` non-strictly and warn about what did not fit (see ``_report``)."""
    missing, unexpected = model.load_state_dict(state, strict=False)
    _report(weights, missing, unexpected, dropped, layout.drop)


def _report(weights: Path, missing: list[str], unexpected: list[str], dropped: list[str], drop: tuple) -> None:
    if all(k.startswith("decode_head.") for k in missing) and "decode_head.linear_fuse.conv.weight" in missing:
        warnings.warn(f"{weights}: backbone-only checkpoint: the decoder is initialised", LoadWarning, stacklevel=4)
        missing = []
    missing = [k for k in missing if not k.startswith("decode_head.linear_pred.")]
    unknown = [k for k in dropped if not k.startswith(drop)]
    for what, keys in (("missing", missing), ("unexpected", unexpected + unknown)):
        if keys:
            warnings.warn(f"{weights}: {len(keys)} {what} keys: {', '.join(keys)}", LoadWarning, stacklevel=4)
    ignored = [k for k in dropped if k not in unknown]
    if ignored:
        log.info("%s: ignored %d keys with no counterpart (%s …)", weights, len(ignored), ignored[0])


# --- the entry points -------------------------------------------------------------------------------------------


def from_pretrained(
    source: str | Path,
    *,
    variant: str | None = None,
    num_classes: int | None = None,
    map_location: str | torch.device = "cpu",
    **config_overrides,
) -> SegFormer:
    """Build a SegFormer from a checkpoint in any public layout, in eval mode.

    Args:
        source: local file or folder, or a Hugging Face hub id ("nvidia/segformer-b0-finetuned-ade-512-512").
        variant: "b0" … "b5"; read from the weights when not given.
        num_classes: read from the weights when not given; a different number re-initialises the
            classifier (with a warning).
        map_location: device of the model.
        **config_overrides: other ``SegFormerConfig`` fields (class_names, palette, protocol,
            drop_path_rate, attn_drop_rate, decoder_dropout, layer_norm_eps, in_channels); they replace what is
            stored.

    Raises:
        CheckpointError: the file is missing, corrupt or unsafe, or the hub id cannot be fetched.
        ValueError: the weights do not fit the requested variant (naming the first mismatched key),
            or an override is not a config field.
    """
    source = resolve_source(source)
    state, layout, dropped, raw = read_state(source.weights)
    try:
        arch = infer_architecture(state)
    except ValueError as e:
        raise CheckpointError(f"{source.weights}: {e}") from None
    config = build_config(stored_fields(source, raw), arch, source.weights, variant, num_classes, config_overrides)
    model = SegFormer(config)
    load_state(model, adapt_state(state, arch, model, source.weights), dropped, layout, source.weights)
    return model.to(map_location).eval()


def save_pretrained(model: SegFormer, directory: str | Path, layout: str = "ours") -> Path:
    """``model.save_pretrained(directory, layout)``, the one save path, as a function beside ``from_pretrained``."""
    return model.save_pretrained(directory, layout)
