"""The command-level sections of benchmarks/gpu.sh: the machine, ``segformer predict`` and ``segformer eval`` on new
image sizes (seconds per new size, graphs compiled), and the label agreement of the default path with fp32 eager.

* ``machine``: the card, torch, CUDA, cuDNN, transformers, the default precision.
* ``predict``: a random B0 (150 classes) with an ADE20K-like protocol (short side 512, sides rounded to 32) predicts
  one image, then N images of N other sizes (each a size the network has not seen); seconds per new size =
  (t(N) − t(1)) / (N − 1), the model's loading cancelling out. A first run (one more size) pays for the process's
  one-time start-up (CUDA context, libraries) and is not counted.
* ``eval``: the same for ``segformer eval`` on a custom set of 30 images of 30 sizes (``--limit 1``, then all).
* ``agreement``: ``segformer train demo`` (the demo's recipe and synthetic scenes, not compiled) on the device,
  then ``benchmarks/precision_agreement.py``: the held-out labels of the default path (bf16, CUDA graphs) against
  fp32 eager. Target: at least 99.9%.

Every section counts the graphs Dynamo compiled in it (``torch._dynamo.utils.counters``): the default path must
compile none. ``--tiny``: 64-pixel sides and few images (the smoke run and the CPU dry run).

    PYTHONPATH=src python3 benchmarks/gpu_commands.py predict --device cuda [--tiny] [--json S.jsonl]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from argparse import Namespace
from pathlib import Path

import torch
from PIL import Image

from segformer.benchmark.summary import append_records
from segformer.cli import main as segformer
from segformer.config import TestProtocol
from segformer.data import SyntheticDataset, write_synthetic
from segformer.model import create_model

SIZE_STEP = 32  # AlignedResize's divisor: every size below is one the network sees as it is


def network_sizes(count: int, short: int) -> list[tuple[int, int]]:
    """``count`` distinct (h, w) sizes with ``short`` as their short side, landscape and portrait in turn."""
    sizes = []
    for k in range(count):
        long = short + SIZE_STEP * (k // 2 + 1)
        sizes.append((short, long) if k % 2 == 0 else (long, short))
    return sizes


def save_random_model(folder: Path, num_classes: int, short: int) -> Path:
    """A random B0 whose protocol keeps images of short side ``short`` at their size (``AlignedResize`` to 32)."""
    torch.manual_seed(0)
    protocol = TestProtocol(scale=(2048, short), size_divisor=SIZE_STEP)
    create_model("b0", num_classes=num_classes, protocol=protocol).save_pretrained(folder)
    return folder


def compiled_graphs() -> int:
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def timed(argv: list[str]) -> float:
    """Seconds of one ``segformer`` command run in this process (it must succeed)."""
    start = time.perf_counter()
    status = segformer(argv)
    if status:
        raise SystemExit(f"segformer {argv[0]} failed (exit {status}): segformer {' '.join(argv)}")
    return time.perf_counter() - start


def write_images(folder: Path, sizes: list[tuple[int, int]], seed: int) -> Path:
    """One synthetic scene per size, as PNG files in ``folder``."""
    folder.mkdir(parents=True)
    for index, size in enumerate(sizes):
        image, _ = SyntheticDataset(1, size, seed=seed + index).load(0)
        Image.fromarray(image).save(folder / f"{index:05d}.png", compress_level=1)
    return folder


def machine(args: Namespace, tmp: Path) -> dict:
    from segformer.device import default_precision

    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"no GPU ({platform.processor() or 'CPU'})"
    try:
        import transformers

        hf = transformers.__version__
    except ImportError:
        hf = None
    figures = {
        "card": card,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None,
        "transformers": hf,
        "python": platform.python_version(),
        "cpu_cores": len(os.sched_getaffinity(0)),
        "default_precision": default_precision(device),
    }
    print(", ".join(f"{key} {value}" for key, value in figures.items()))
    return figures


def predict(args: Namespace, tmp: Path) -> dict:
    count, short = (3, 64) if args.tiny else (args.images, 512)
    weights = save_random_model(tmp / "model", 150, short)
    warm, one, many = (network_sizes(count + 2, short)[i:j] for i, j in ((0, 1), (1, 2), (2, count + 2)))
    command = ["predict", "--weights", str(weights), "--device", args.device, "-q"]
    timed([*command, str(write_images(tmp / "warm", warm, 0)), "--out", str(tmp / "out-warm")])
    graphs = compiled_graphs()
    first = timed([*command, str(write_images(tmp / "one", one, 1)), "--out", str(tmp / "out-one")])
    all_ = timed([*command, str(write_images(tmp / "many", many, 2)), "--out", str(tmp / "out-many")])
    per_size = (all_ - first) / (count - 1)
    figures = {"images": count, "one_image_s": first, "n_images_s": all_, "per_new_size_s": per_size}
    figures["compiled_graphs"] = compiled_graphs() - graphs
    print(
        f"segformer predict on {args.device}: 1 image {first:.2f} s (loading the model included), {count} images of "
        f"{count} new sizes {all_:.2f} s: {per_size:.3f} s per new size (target <= 1 s); "
        f"graphs compiled: {figures['compiled_graphs']}"
    )
    return figures


def custom_set(root: Path, sizes: list[tuple[int, int]]) -> Path:
    """A custom-folder set of one synthetic scene per size (``write_synthetic`` per size, gathered in one split)."""
    for index, size in enumerate(sizes):
        part = write_synthetic(root / "parts" / str(index), 0, 1, size=size, seed=index)
        for kind in ("images", "masks"):
            (root / kind / "val").mkdir(parents=True, exist_ok=True)
            shutil.move(part / kind / "val" / "00000.png", root / kind / "val" / f"{index:05d}.png")
        shutil.copy(part / "classes.txt", root / "classes.txt")
    shutil.rmtree(root / "parts")
    return root


def evaluate(args: Namespace, tmp: Path) -> dict:
    count, short = (3, 64) if args.tiny else (args.images, 512)
    root = custom_set(tmp / "data", network_sizes(count, short))
    weights = save_random_model(tmp / "model", 6, short)
    command = ["eval", "--weights", str(weights), "--dataset", "custom", "--data-root", str(root), "-q"]
    command += ["--device", args.device]
    timed([*command, "--limit", "1"])  # the process's start-up
    graphs = compiled_graphs()
    first = timed([*command, "--limit", "1"])
    all_ = timed(command)
    per_size = (all_ - first) / (count - 1)
    figures = {"images": count, "sizes": count, "one_image_s": first, "n_images_s": all_, "per_new_size_s": per_size}
    figures["compiled_graphs"] = compiled_graphs() - graphs
    print(
        f"segformer eval on {args.device}, {count} images of {count} sizes: {all_:.2f} s ({per_size:.3f} s per new "
        f"size beyond the first image's {first:.2f} s); graphs compiled: {figures['compiled_graphs']} (target: 0)"
    )
    return figures


def agreement(args: Namespace, tmp: Path) -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    import precision_agreement

    from segformer.cli.demo import NUM_TRAIN, NUM_VAL, SIZE

    scenes, iters = ((16, 8), 20) if args.tiny else ((NUM_TRAIN, NUM_VAL), args.iters)
    root = write_synthetic(tmp / "data", *scenes, size=(SIZE, SIZE), seed=0)
    sets = ["--set", "train.compile=false", "--set", f"schedule.iters={iters}"]
    start = time.perf_counter()
    timed(["train", "demo", "--data-root", str(root), "--out", str(tmp / "run"), "--device", args.device, "-q", *sets])
    trained = time.perf_counter() - start
    graphs = compiled_graphs()
    options = {"weights": str(tmp / "run" / "best"), "dataset": "custom", "data_root": str(root), "split": "val"}
    figures = precision_agreement.run(Namespace(**options, dtype="bf16", threads=args.threads, device=args.device))
    figures |= {"train_iters": iters, "train_s": trained, "compiled_graphs": compiled_graphs() - graphs}
    print(f"demo model trained in {trained:.0f} s ({iters} iterations); agreement target: >= 99.9%")
    return figures


SECTIONS = {"machine": machine, "predict": predict, "eval": evaluate, "agreement": agreement}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("section", choices=list(SECTIONS))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tiny", action="store_true", help="64-pixel sides, few images (smoke and dry runs)")
    parser.add_argument("--images", type=int, help="predict: images of new sizes (default 8); eval: 30")
    parser.add_argument("--iters", type=int, default=800, help="agreement: demo training iterations (default: 800)")
    parser.add_argument("--threads", type=int, default=min(len(os.sched_getaffinity(0)), 8))
    parser.add_argument("--json", help="append the figures to this JSON Lines summary")
    parser.add_argument("--section-name", help="their section in --json (default: the section)")
    args = parser.parse_args()
    args.images = args.images or (8 if args.section == "predict" else 30)
    if args.images < 2:
        parser.error("--images must be at least 2")
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix=f"segformer-gpu-{args.section}-") as tmp:
        figures = SECTIONS[args.section](args, Path(tmp))
    if args.json:
        append_records(args.json, args.section_name or args.section, [{"device": args.device, **figures}])


if __name__ == "__main__":
    main()
