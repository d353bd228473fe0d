"""The model card of a run's ``best/`` and ``last/`` folders: ``README.md`` in the Hugging Face hub's format.

A hub model card is Markdown under a YAML front matter (the hub's ``modelcard.md`` template and its metadata
fields: ``library_name``, ``tags``, ``datasets``, ``metrics``, ``license``, ``pipeline_tag`` and
``model-index``, the machine-readable results). ``model_card`` writes both from what the run knows: the
model's config (classes, test protocol), the recipe, and the last validation (per-class IoU as logged in
``metrics.jsonl``), so the folder can be uploaded to the hub as it is. Weights that start from NVIDIA's
official SegFormer/MiT weights keep their licence (the NVIDIA Source Code License for SegFormer,
non-commercial; NVlabs/SegFormer ``LICENSE``); for others no licence is claimed.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

from segformer.config import SegFormerConfig, TestProtocol
from segformer.data import canonical_name
from segformer.fileio import atomic_write
from segformer.recipe import Recipe, dump_recipe

CARD_FILE = "README.md"
# Hub dataset ids of the packaged datasets, where the hub has one (the official nvidia/segformer-* cards' ids).
HUB_DATASETS = {"ade20k": "scene_parse_150", "cityscapes": "cityscapes"}
DATASET_TITLES = {
    "ade20k": "ADE20K",
    "cityscapes": "Cityscapes",
    "coco-stuff": "COCO-Stuff 164k",
    "voc": "PASCAL VOC 2012",
}
NVIDIA_LICENSE = {
    "license": "other",
    "license_name": "nvidia-source-code-license",
    "license_link": "https://github.com/NVlabs/SegFormer/blob/master/LICENSE",
}
# NVIDIA's releases: hub ids nvidia/mit-b* and nvidia/segformer-*, NVlabs files mit_b2.pth, segformer.b2.….pth.
_NVLABS_FILE = re.compile(r"^(mit_b[0-5]|segformer\.b[0-5]\..+)\.(pth|pt|bin|safetensors)$")


def official_init(init: str) -> bool:
    """Whether ``model.init`` names NVIDIA's official weights (hub ``nvidia/…`` or an NVlabs release file)."""
    return init.startswith("nvidia/") or bool(_NVLABS_FILE.match(Path(init).name))


def yaml_scalar(value: object) -> str:
    """A YAML scalar: true/false, null, numbers, ``.nan``; strings double-quoted (JSON strings are YAML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, float) and math.isnan(value):
        return ".nan"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value), ensure_ascii=False)


def yaml_lines(value: object, indent: int = 0) -> list[str]:
    """Block-style YAML of nested dicts, lists and scalars (the front matter's subset)."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for key, item in value.items():
            if isinstance(item, (dict, list)) and item:
                lines += [f"{pad}{key}:", *yaml_lines(item, indent + 2)]
            else:
                lines.append(f"{pad}{key}: {yaml_scalar(item)}")
        return lines
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, (dict, list)) and item:
                first, *rest = yaml_lines(item, indent + 2)
                lines += [f"{pad}- {first.lstrip()}", *rest]
            else:
                lines.append(f"{pad}- {yaml_scalar(item)}")
        return lines
    return [pad + yaml_scalar(value)]


def percent(value: float | None) -> float | None:
    """A 0–1 metric in percent, two decimals; None for a class without a result (NaN)."""
    return None if value is None or math.isnan(value) else round(100 * value, 2)


def shown(value: float | None) -> str:
    """A 0–1 metric as the card's tables show it: percent with two decimals, "n/a" for no result."""
    value = percent(value)
    return "n/a" if value is None else f"{value:.2f}"


def dataset_title(recipe: Recipe) -> str:
    """The dataset's name: ADE20K …, or for a custom dataset its folder's name."""
    data, dataset = recipe.data, canonical_name(recipe.data.dataset)
    return DATASET_TITLES.get(dataset, f"{Path(data.root).name or dataset} ({dataset} dataset)")


def front_matter(recipe: Recipe, validation: dict | None) -> dict:
    """The card's metadata: library, tags, datasets, metrics, licence where known, and ``model-index``."""
    dataset, variant = canonical_name(recipe.data.dataset), recipe.model.variant
    meta: dict = {
        "library_name": "segformer",
        "tags": ["segformer", "semantic-segmentation", "image-segmentation", "pytorch"],
    }
    if dataset in HUB_DATASETS:
        meta["datasets"] = [HUB_DATASETS[dataset]]
    meta["metrics"] = ["mean_iou"]
    if official_init(recipe.model.init):
        meta |= NVIDIA_LICENSE
    meta["pipeline_tag"] = "image-segmentation"
    miou = percent(validation["mIoU"]) if validation else None
    if miou is not None:
        result = {
            "task": {"type": "image-segmentation", "name": "Semantic Segmentation"},
            "dataset": {"type": HUB_DATASETS.get(dataset, dataset), "name": dataset_title(recipe), "split": "val"},
            "metrics": [{"type": "mean_iou", "value": miou, "name": "mIoU (single-scale)"}],
        }
        meta["model-index"] = [{"name": f"segformer-{variant}-{dataset}", "results": [result]}]
    return meta


def results_section(class_names: tuple[str, ...], validation: dict | None) -> list[str]:
    """Per-class IoU and the mean of the last validation, in percent, as ``metrics.jsonl`` logged them."""
    if not validation:
        return ["## Results", "", "Not validated yet (no validation before these weights were saved).", ""]
    lines = ["## Results", ""]
    summary = ", ".join(f"{k} {shown(validation[k])}" for k in ("mIoU", "mAcc", "aAcc") if k in validation)
    lines += [f"Validation at iteration {validation['iter']}, single-scale, with the protocol below: {summary}.", ""]
    per_class = validation.get("IoU")
    if per_class is None or len(per_class) != len(class_names):
        return [*lines, "(Per-class IoU was not logged for this validation.)", ""]
    lines += ["| class | IoU (%) |", "|---|---:|"]
    for name, iou in zip(class_names, per_class, strict=True):
        lines.append(f"| {name.replace('|', '/')} | {shown(iou)} |")
    lines += [f"| **mIoU** | **{shown(validation['mIoU'])}** |", ""]
    if None in per_class:
        lines += ["n/a: the class is in neither the labels nor the predictions of the validation split.", ""]
    return lines


def protocol_section(protocol: TestProtocol | None) -> list[str]:
    """How the numbers were measured; stored in ``config.json``, which ``segformer eval/predict`` follow."""
    lines = ["## Test protocol", ""]
    if protocol is None:
        return [*lines, "No test protocol is recorded with these weights.", ""]
    mode = "whole image, one forward pass"
    if protocol.mode == "slide":
        (ch, cw), (sh, sw) = protocol.crop, protocol.stride
        mode = f"sliding windows of {ch}×{cw}, stride {sh}×{sw}"
    scale = "the image's own size"
    if protocol.scale is not None:
        scale = f"keep-ratio resize to fit {protocol.scale[0]}×{protocol.scale[1]} (long × short side)"
    divisor = f"both sides then rounded to multiples of {protocol.size_divisor}" if protocol.size_divisor else "none"
    ratios = ", ".join(f"{r:g}" for r in protocol.aug_ratios)
    lines += [
        "| setting | value |",
        "|---|---|",
        f"| mode | {mode} |",
        f"| scale | {scale} |",
        f"| size divisor | {divisor} |",
        f"| multi-scale (`--aug`, not used above) | ratios {ratios}{', with flip' if protocol.flip else ''} |",
        f"| mean / std (RGB, 0–255) | {list(protocol.mean)} / {list(protocol.std)} |",
        f"| reduce_zero_label | {str(protocol.reduce_zero_label).lower()} |",
        "",
        "The protocol is stored in `config.json`: `segformer eval` and `segformer predict` test the weights with it.",
        "",
    ]
    return lines


def recipe_section(recipe: Recipe, processes: int) -> list[str]:
    """The training setting in short, and the whole resolved recipe (the run folder's ``recipe.toml``)."""
    data, optim = recipe.data, recipe.optim
    batch = data.batch_size * processes * recipe.accumulate
    lines = [
        "## Training recipe",
        "",
        "| setting | value |",
        "|---|---|",
        f"| variant | SegFormer-{recipe.model.variant.upper()} |",
        f"| initial weights | {recipe.model.init or 'random'} |",
        f"| iterations | {recipe.schedule.iters} |",
        f"| batch | {batch} = {processes} process(es) × {data.batch_size} × {recipe.accumulate} accumulated |",
        f"| learning rate | AdamW {optim.lr:g} (decoder × {optim.head_lr_mult:g}), poly {optim.power:g}, "
        f"{optim.warmup_iters} warm-up iterations |",
        f"| crop | {data.crop[0]}×{data.crop[1]} |",
        f"| precision | {recipe.precision} |",
        f"| loss | {' + '.join(f'{w:g} × {t}' for t, w in zip(recipe.loss.terms, recipe.loss.weights, strict=True))} |",
        "",
        "The resolved recipe is the run folder's [recipe.toml](../recipe.toml):",
        "",
        "<details><summary>recipe.toml</summary>",
        "",
        "```toml",
        dump_recipe(recipe).rstrip(),
        "```",
        "",
        "</details>",
        "",
    ]
    return lines


def usage_section(folder: Path, recipe: Recipe) -> list[str]:
    """Loading the weights with this library and, after ``segformer convert --layout hf``, with transformers."""
    path, hf = folder.as_posix(), f"{folder.as_posix()}-hf"
    data = recipe.data
    return [
        "## How to use",
        "",
        "With this `segformer` library (the folder, or its hub id once uploaded):",
        "",
        "```python",
        "import segformer",
        "",
        f'model = segformer.from_pretrained("{path}")',
        'labels = segformer.Segmenter(model).predict("image.jpg")  # H×W class ids, tested as above',
        "```",
        "",
        "```bash",
        f"segformer predict image.jpg --weights {path} --out predictions/",
        f"segformer eval --weights {path} --dataset {data.dataset} --data-root DATA",
        "```",
        "",
        "With transformers: convert the weights to its layout first, then load them there (its image processor",
        "resizes to a fixed size; the protocol above is this library's):",
        "",
        "```bash",
        f"segformer convert {path} {hf} --layout hf",
        "```",
        "",
        "```python",
        "from transformers import SegformerForSemanticSegmentation",
        "",
        f'model = SegformerForSemanticSegmentation.from_pretrained("{hf}")',
        "```",
        "",
    ]


def model_card(
    config: SegFormerConfig,
    recipe: Recipe,
    *,
    folder: Path,
    iteration: int,
    processes: int = 1,
    validation: dict | None = None,
) -> str:
    """The ``README.md`` of the weights in ``folder`` (``best/`` or ``last/`` of a run).

    Args:
        config: the model's config (class names, test protocol).
        recipe: the run's resolved recipe.
        folder: where the weights are (named in the loading examples).
        iteration: the iteration the weights are from.
        processes: training processes (for the effective batch).
        validation: the last validation's ``metrics.jsonl`` record (``iter``, ``mIoU``, ``mAcc``, ``aAcc`` and
            ``IoU``, one value per class, None for a class without a result), or None before the first.
    """
    kind = "best weights (highest validation mIoU)" if folder.name == "best" else "weights"
    title = f"SegFormer-{recipe.model.variant.upper()} trained on {dataset_title(recipe)}"
    lines = ["---", *yaml_lines(front_matter(recipe, validation)), "---", "", f"# {title}", ""]
    lines += [
        f"The {kind} of a `segformer train` run at iteration {iteration} of {recipe.schedule.iters}: SegFormer "
        "(Xie et al., NeurIPS 2021, [arXiv 2105.15203](https://arxiv.org/abs/2105.15203)), "
        f"{config.num_classes} classes.",
        "",
    ]
    if official_init(recipe.model.init):
        lines += [
            f"**Licence.** Trained from `{recipe.model.init}`, NVIDIA's official weights, which are under the NVIDIA "
            "Source Code License for SegFormer (non-commercial use; "
            f"[LICENSE]({NVIDIA_LICENSE['license_link']})); these weights derive from them and keep that licence.",
            "",
        ]
    lines += results_section(config.names, validation)
    lines += protocol_section(config.protocol)
    lines += recipe_section(recipe, processes)
    lines += usage_section(folder, recipe)
    return "\n".join(lines)


def write_model_card(folder: Path, text: str) -> None:
    """``folder/README.md``, written atomically."""
    atomic_write(folder / CARD_FILE, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
