"""Training recipes: flat TOML files where every value is written out, plus ``--set key=value`` overrides.

A recipe has top-level keys (``seed``, ``precision``, ``accumulate``, ``clip_grad``) and the sections
``model``, ``data``, ``optim``, ``schedule``, ``loss`` and ``train`` (how the steps run: compile, memory
layout, activation checkpointing; the published batch the run is compared with); the dataclasses below
list every key and its type. Every key must be present (no defaults, no inheritance), so a recipe file
shows the whole setting. The packaged recipes (``segformer/recipes/*.toml``)
are loaded by name, e.g. "ade20k-b0".
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

PRECISIONS = ("fp32", "bf16", "fp16")


@dataclass
class ModelRecipe:
    variant: str  # "b0" … "b5"
    num_classes: int  # 0 = take the number of classes from the dataset
    init: str  # weights to start from (path or hub id; backbone-only sources init the decoder); "" = random
    drop_path_rate: float
    decoder_dropout: float


@dataclass
class DataRecipe:
    dataset: str  # a segformer.data.DATASETS name
    root: str  # dataset folder ("" in packaged recipes: pass --data-root)
    options: dict  # extra build_dataset options (custom: binary, reduce_zero_label)
    crop: list[int]  # (h, w) training crop
    scale: list[int]  # (long, short) base scale of the random resize
    ratio_range: list[float]
    cat_max_ratio: float
    flip_prob: float
    photometric: bool
    test_scale: list[int]  # (long, short) keep-ratio resize at validation
    batch_size: int  # per process
    workers: int  # DataLoader worker processes per process (capped at the CPU cores available)
    check: bool  # read every image and mask before training, refusing a broken dataset up front


@dataclass
class OptimRecipe:
    lr: float
    betas: list[float]
    weight_decay: float
    head_lr_mult: float
    warmup_iters: int
    warmup_ratio: float
    power: float
    min_lr: float


@dataclass
class ScheduleRecipe:
    iters: int
    val_interval: int  # 0 = validate only at the end
    ckpt_interval: int
    log_interval: int


LOSS_TERMS = ("cross_entropy", "focal", "dice", "lovasz")  # segformer.training.losses implements each


@dataclass
class LossRecipe:
    """The training loss (``segformer.training.losses``): a weighted sum of mmseg losses, as mmseg's list of
    ``loss_decode``; ``class_weights`` apply to cross_entropy, focal and lovasz (mmseg's ``class_weight``)."""

    terms: list[str]  # names from LOSS_TERMS, summed
    weights: list[float]  # one per term (mmseg's loss_weight)
    class_weights: list[float] | str  # [] = unweighted, one weight per class, or "auto" (median-frequency balancing)
    avg_non_ignore: bool  # cross_entropy: false = mean over all pixels (ignored as 0), true = over labelled pixels
    ohem: bool  # mmseg's OHEMPixelSampler: the pixel-wise terms (cross_entropy, focal) see the hard pixels only
    ohem_thresh: float  # hard = true-class probability below this; 0 = the ohem_min_kept highest losses
    ohem_min_kept: int  # at least this many pixels kept per image
    focal_gamma: float
    focal_alpha: float
    dice_naive: bool  # false = V-Net dice (squared denominator terms), true = naive dice


@dataclass
class TrainRecipe:
    compile: bool | str  # torch.compile the model: true, false or "auto" (on for CUDA, off elsewhere)
    channels_last: bool | str  # feed the images in channels-last layout: true, false or "auto" (CUDA only)
    checkpointing: bool  # activation checkpointing per encoder block: recompute in backward, for less memory
    published_batch: int  # the batch the recipe's published mIoU was trained with; 0 = none (no batch warning)


@dataclass
class Recipe:
    seed: int
    precision: str  # "fp32", "bf16" or "fp16" (fp16 uses a GradScaler); falls back to fp32 where unsupported
    accumulate: int  # micro-batches per optimiser step
    clip_grad: float  # max gradient norm; 0 = no clipping
    model: ModelRecipe
    data: DataRecipe
    optim: OptimRecipe
    schedule: ScheduleRecipe
    loss: LossRecipe
    train: TrainRecipe

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _hints(cls: type) -> dict[str, typing.Any]:
    return typing.get_type_hints(cls)


def _section_types() -> dict[str, type]:
    return {name: hint for name, hint in _hints(Recipe).items() if dataclasses.is_dataclass(hint)}


def _check(value: object, hint: object, where: str) -> object:
    """Return ``value`` as type ``hint`` (int accepted for float), or raise ValueError naming ``where``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        for option in options:  # the option of the value's kind checks it (list[float] | str: the list's items)
            if isinstance(value, typing.get_origin(option) or option):
                return _check(value, option, where)
        expected = " or ".join(option.__name__ for option in options)
        raise ValueError(f"{where}: expected {expected}, got {type(value).__name__} {value!r}")
    if origin is list:
        (item,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise ValueError(f"{where}: expected a list of {item.__name__}, got {value!r}")
        return [_check(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if hint is dict:
        if not isinstance(value, dict):
            raise ValueError(f"{where}: expected a table like {{key = value}}, got {value!r}")
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ValueError(f"{where}: expected {hint.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, table: dict, where: str, source: str) -> object:
    hints = _hints(cls)
    unknown = [k for k in table if k not in hints]
    if unknown:
        section = where.rstrip(".") or "the top level"
        raise ValueError(f"{source}: unknown key {where}{unknown[0]}; {section} has: {', '.join(hints)}")
    missing = [k for k in hints if k not in table]
    if missing:
        key = f"{where}{missing[0]}"
        if dataclasses.is_dataclass(hints[missing[0]]):
            sets = " ".join(f"--set {key}.{name}=VALUE" for name in _hints(hints[missing[0]]))
            raise ValueError(f"{source}: missing section [{key}] (every recipe key must be given): add it, or {sets}")
        raise ValueError(
            f"{source}: missing key {key} (every recipe key must be given): add it to the file or pass "
            f"--set {key}=VALUE (a run folder from an older version lacks the keys added since)"
        )
    values = {}
    for key, hint in hints.items():
        if dataclasses.is_dataclass(hint):
            if not isinstance(table[key], dict):
                raise ValueError(f"{source}: {key} must be a [{key}] section")
            values[key] = _build(hint, table[key], f"{key}.", source)
        else:
            values[key] = _check(table[key], hint, f"{source}: {where}{key}")
    return cls(**values)


def check_recipe(recipe: Recipe, source: str) -> Recipe:
    """Check values that types cannot: choices, lengths, positive counts."""

    def need(ok: bool, key: str, expected: str) -> None:
        if not ok:
            raise ValueError(f"{source}: {key} must be {expected}")

    need(recipe.precision in PRECISIONS, "precision", f"one of {', '.join(PRECISIONS)}")
    need(recipe.accumulate >= 1, "accumulate", ">= 1")
    need(recipe.clip_grad >= 0, "clip_grad", ">= 0 (0 = off)")
    for key in ("crop", "scale", "ratio_range", "test_scale"):
        value = getattr(recipe.data, key)
        need(len(value) == 2 and min(value) > 0, f"data.{key}", "two positive numbers")
    need(recipe.data.batch_size >= 1, "data.batch_size", ">= 1")
    need(recipe.data.workers >= 0, "data.workers", ">= 0")
    need(0 < recipe.data.cat_max_ratio <= 1, "data.cat_max_ratio", "in (0, 1] (1 = no retries)")
    need(len(recipe.optim.betas) == 2, "optim.betas", "two numbers")
    need(recipe.schedule.iters >= 1, "schedule.iters", ">= 1")
    for key in ("val_interval", "ckpt_interval", "log_interval"):
        need(getattr(recipe.schedule, key) >= 0, f"schedule.{key}", ">= 0")
    need(recipe.model.num_classes >= 0, "model.num_classes", ">= 0 (0 = from the dataset)")
    for key in ("compile", "channels_last"):
        need(getattr(recipe.train, key) in (True, False, "auto"), f"train.{key}", 'true, false or "auto"')
    need(recipe.train.published_batch >= 0, "train.published_batch", ">= 0 (0 = no published batch)")
    _check_loss(recipe.loss, recipe.model.num_classes, need)
    return recipe


def _check_loss(loss: LossRecipe, num_classes: int, need: typing.Callable[[bool, str, str], None]) -> None:
    """The ``[loss]`` values: known, distinct terms with one positive weight each; class weights; OHEM; focal."""
    need(bool(loss.terms) and set(loss.terms) <= set(LOSS_TERMS), "loss.terms", f"a list of: {', '.join(LOSS_TERMS)}")
    need(len(set(loss.terms)) == len(loss.terms), "loss.terms", f"distinct names (got {loss.terms})")
    need(
        len(loss.weights) == len(loss.terms),
        "loss.weights",
        f"one weight per term of loss.terms ({len(loss.terms)} terms, got {len(loss.weights)} weights)",
    )
    need(all(w > 0 for w in loss.weights), "loss.weights", "> 0 each")
    weights = loss.class_weights
    if isinstance(weights, str):
        need(weights == "auto", "loss.class_weights", '[] (unweighted), a list of one weight per class, or "auto"')
    else:
        need(
            all(w >= 0 for w in weights) and (not weights or max(weights) > 0), "loss.class_weights", ">= 0, not all 0"
        )
        need(
            not weights or not num_classes or len(weights) == num_classes,
            "loss.class_weights",
            f"one weight per class (model.num_classes = {num_classes}, got {len(weights)} weights)",
        )
    need(0 <= loss.ohem_thresh <= 1, "loss.ohem_thresh", "in [0, 1] (0 = keep the ohem_min_kept highest losses)")
    need(loss.ohem_min_kept >= 1, "loss.ohem_min_kept", ">= 1")
    pixel_terms = {"cross_entropy", "focal"} & set(loss.terms)
    need(not loss.ohem or bool(pixel_terms), "loss.ohem", "false unless loss.terms has cross_entropy or focal")
    need(loss.focal_gamma >= 0, "loss.focal_gamma", ">= 0")
    need(0 <= loss.focal_alpha <= 1, "loss.focal_alpha", "in [0, 1]")


def packaged_recipes() -> list[str]:
    """Names of the recipes shipped with the package."""
    folder = resources.files("segformer") / "recipes"
    return sorted(p.name.removesuffix(".toml") for p in folder.iterdir() if p.name.endswith(".toml"))


def recipe_text(name_or_path: str | Path) -> tuple[str, str]:
    """(TOML text, source description) of a recipe file path or a packaged recipe name."""
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.is_file():
        if not path.is_file():
            raise FileNotFoundError(f"{path}: recipe file not found")
        return path.read_text(), str(path)
    name = str(name_or_path)
    if name not in packaged_recipes():
        raise ValueError(f"unknown recipe {name!r}: not a file, nor one of: {', '.join(packaged_recipes())}")
    return (resources.files("segformer") / "recipes" / f"{name}.toml").read_text(), f"recipe {name!r}"


def parse_value(text: str) -> object:
    """A ``--set`` value as TOML (``1e-4``, ``true``, ``[512, 512]``, ``"x"``); anything else is a string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(table: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` / ``section.key=value`` overrides to a parsed recipe table (in place)."""
    sections = _section_types()
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. optim.lr=1e-4")
        section, _, name = key.strip().rpartition(".")
        if section:
            if section not in sections:
                raise ValueError(f"--set {key}: unknown section {section!r}; sections: {', '.join(sections)}")
            keys = list(_hints(sections[section]))
            target = table.setdefault(section, {})
        else:
            keys = [k for k in _hints(Recipe) if k not in sections]
            target = table
        if name not in keys:
            raise ValueError(f"--set {key}: unknown key {name!r}; {section or 'top level'} has: {', '.join(keys)}")
        target[name] = parse_value(text.strip())
    return table


def load_recipe(name_or_path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe (file path or packaged name), apply ``--set`` overrides, check every key and type.

    Raises:
        ValueError: unknown recipe, unknown/missing key (naming it and listing the section's keys), wrong type.
        FileNotFoundError: a recipe path that does not exist.
    """
    text, source = recipe_text(name_or_path)
    try:
        table = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{source}: not valid TOML ({e})") from None
    apply_overrides(table, overrides or [])
    return check_recipe(_build(Recipe, table, "", source), source)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def dump_recipe(recipe: Recipe, header: str = "") -> str:
    """The recipe as TOML text that ``load_recipe`` reads back to an equal recipe."""
    data = recipe.to_dict()
    sections = _section_types()
    lines = [f"# {line}" for line in header.splitlines()]
    lines += [f"{k} = {_toml_value(v)}" for k, v in data.items() if k not in sections]
    for section in sections:
        lines += ["", f"[{section}]"] + [f"{k} = {_toml_value(v)}" for k, v in data[section].items()]
    return "\n".join(lines) + "\n"
