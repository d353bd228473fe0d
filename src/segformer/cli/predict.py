"""``segformer predict INPUT... --out DIR``: label PNGs and overlays with a legend for images.

Bulk runs: under ``torchrun --nproc_per_node N`` rank r predicts the inputs r, r + N, r + 2N … of the
expanded input list (its order depends only on the arguments), on GPU ``LOCAL_RANK`` when the device is CUDA.
Every file is written atomically (temporary file, then rename), so an output that exists is complete, and
``--skip-existing`` makes a killed run resume where it stopped. The manifest (``--manifest``, default
``OUT/manifest.jsonl``) has one JSON line per input: the input, its label map and overlay (relative to OUT), its
size and the pixels of each class present, or the error that stopped it. Ranks send their lines to rank 0,
which writes the whole file atomically at the end: the lines of earlier runs into the same manifest, less those
this run replaces (same input or same label map), then this run's in input order. The lines of skipped inputs
are rebuilt from their label maps, so a resumed run writes the same manifest as an uninterrupted one.
"""

from __future__ import annotations

# The library and torch are imported inside the functions below: `segformer --help` and
# `segformer COMMAND --help` stay fast.
import argparse
import glob
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from segformer.cli.common import (
    add_device_argument,
    add_engine_arguments,
    add_fast_path_arguments,
    add_protocol_arguments,
    add_quiet_argument,
    add_threads_argument,
    apply_threads,
    describe_segmenter,
    plural,
    segmenter_options,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

DEFAULT_WEIGHTS = "nvidia/segformer-b0-finetuned-ade-512-512"
# Largest image read without Pillow's decompression-bomb error (it warns above this, refuses above twice this).
MAX_IMAGE_PIXELS = 1 << 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, folders (searched recursively), globs")
    parser.add_argument("--out", required=True, help="output folder for <stem>_label.png and <stem>_overlay.png")
    parser.add_argument(
        "--weights",
        default=DEFAULT_WEIGHTS,
        help=f"checkpoint file, folder or hub id (default: {DEFAULT_WEIGHTS}, NVIDIA non-commercial licence)",
    )
    add_protocol_arguments(parser)
    parser.add_argument("--batch-size", type=int, default=1, help="images per step; equal sizes share a forward pass")
    add_engine_arguments(parser)
    add_fast_path_arguments(parser)
    add_device_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay colour weight in 0..1 (default: 0.5)")
    parser.add_argument(
        "--overlay-format", choices=["png", "jpg"], default="png", help="overlay file type (default: png)"
    )
    parser.add_argument(
        "--skip-existing", action="store_true", help="skip inputs whose outputs exist (resume a stopped run)"
    )
    parser.add_argument("--manifest", help="JSON-lines file, one line per input (default: OUT/manifest.jsonl)")
    add_quiet_argument(parser)


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[Path]]:
    """Files named, images under folders (recursively) and files matching glob patterns, without repeats; and
    the files under those folders that are not images (``segformer.data.IMAGE_SUFFIXES``, the reader's list)."""
    from segformer.data import IMAGE_SUFFIXES

    files: list[Path] = []
    skipped: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file())
            files += [p for p in found if p.suffix.lower() in IMAGE_SUFFIXES]
            skipped += [p for p in found if p.suffix.lower() not in IMAGE_SUFFIXES]
        elif path.is_file():
            files.append(path)
        else:
            matches = sorted(Path(m) for m in glob.glob(item, recursive=True))
            if not matches:
                raise FileNotFoundError(f"{item}: no such file or folder, and no file matches it as a pattern")
            more_files, more_skipped = expand_inputs([str(m) for m in matches])
            files += more_files
            skipped += more_skipped
    return list(dict.fromkeys(files)), list(dict.fromkeys(skipped))


def skipped_note(skipped: list[Path], shown: int = 5) -> str:
    """One line naming the files of the input folders that were left out, e.g. for ``notes.txt``."""
    from segformer.data import IMAGE_SUFFIXES

    names = ", ".join(str(path) for path in skipped[:shown]) + (", …" if len(skipped) > shown else "")
    return (
        f"segformer predict: skipped {plural(len(skipped), 'file')} of the input folders that "
        f"{'is' if len(skipped) == 1 else 'are'} not an image ({' '.join(IMAGE_SUFFIXES)}): {names}"
    )


def output_stems(files: list[Path]) -> list[str]:
    """File stems, with "-2", "-3" … appended to repeated ones so no output overwrites another."""
    seen: dict[str, int] = {}
    stems = []
    for file in files:
        seen[file.stem] = seen.get(file.stem, 0) + 1
        stems.append(file.stem if seen[file.stem] == 1 else f"{file.stem}-{seen[file.stem]}")
    return stems


def manifest_entry(file: Path, outputs: tuple[Path, Path], label: np.ndarray, names: list[str], out: Path) -> dict:
    """The manifest line of one input: paths, size and pixels per class present (ignored pixels left out)."""
    import numpy as np

    from segformer.constants import IGNORE_INDEX

    ids, counts = np.unique(label, return_counts=True)
    pixels = {names[i]: int(c) for i, c in zip(ids.tolist(), counts.tolist(), strict=True) if i != IGNORE_INDEX}
    height, width = label.shape
    label_path, overlay_path = (str(path.relative_to(out)) for path in outputs)
    return {
        "input": str(file),
        "label": label_path,
        "overlay": overlay_path,
        "height": height,
        "width": width,
        "class_pixels": pixels,
    }


def read_manifest(path: Path) -> list[dict]:
    """The lines of an earlier run's manifest (none when there is no such file).

    Raises:
        ValueError: naming the file and line that is not a JSON object with an "input".
    """
    if not path.is_file():
        return []
    entries = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            entry = e.msg
        if not isinstance(entry, dict) or not isinstance(entry.get("input"), str):
            raise ValueError(
                f'--manifest {path}, line {number}: expected a JSON object with an "input" (a manifest of '
                f"segformer predict), got {line[:80]!r}; pass another --manifest or remove the file"
            )
        entries.append(entry)
    return entries


def merge_manifest(earlier: list[dict], entries: list[dict]) -> list[dict]:
    """The earlier lines that no line of ``entries`` replaces (same input, or same label map), then ``entries``."""
    inputs = {entry["input"] for entry in entries}
    labels = {entry["label"] for entry in entries if "label" in entry}
    kept = [entry for entry in earlier if entry["input"] not in inputs and entry.get("label") not in labels]
    return kept + entries


def build_segmenter(args: argparse.Namespace, device: torch.device):
    """The model from ``--weights`` on ``device`` and its Segmenter."""
    from segformer.engines import load_for_inference
    from segformer.inference import Segmenter

    model, engine, _ = load_for_inference(args.weights, device, args.engine, args.model)
    return Segmenter(model, engine=engine, **segmenter_options(args))


def predict_jobs(segmenter, jobs: list[tuple[int, Path, tuple[Path, Path]]], args: argparse.Namespace, out: Path):
    """Predict and write the outputs of ``jobs`` (index, input, (label, overlay)); return manifest lines, failures."""
    from segformer.data import read_image
    from segformer.progress import progress_bar
    from segformer.visualize import model_palette, overlay, save_image, save_label_png

    names = segmenter.model.class_names
    palette = model_palette(segmenter.model.config)
    entries, failed = [], 0
    bar = progress_bar(total=len(jobs), desc="predict", unit="image", quiet=args.quiet, disable=len(jobs) < 2)
    for start in range(0, len(jobs), args.batch_size):
        batch = []
        for index, file, outputs in jobs[start : start + args.batch_size]:
            try:
                batch.append((index, file, outputs, read_image(file)))
            except (OSError, ValueError) as e:
                failed += 1
                entries.append((index, {"input": str(file), "error": str(e)}))
                bar.write(f"segformer predict: error: {e}", file=sys.stderr)
                bar.update()
        labels = segmenter.predict_batch([image for *_, image in batch])
        for (index, file, outputs, image), label in zip(batch, labels, strict=True):
            save_label_png(label, outputs[0], palette)
            save_image(overlay(image, label, palette, names, alpha=args.alpha), outputs[1])
            entries.append((index, manifest_entry(file, outputs, label, names, out)))
            bar.update()
    bar.close()
    return entries, failed


def existing_entries(jobs: list[tuple[int, Path, tuple[Path, Path]]], names: list[str], out: Path) -> list:
    """Manifest lines of inputs whose outputs exist, rebuilt from their label maps."""
    import numpy as np
    from PIL import Image

    entries = []
    for index, file, outputs in jobs:
        with Image.open(outputs[0]) as png:
            entries.append((index, manifest_entry(file, outputs, np.array(png), names, out)))
    return entries


def write_summary(parts: list, files: list[Path], earlier: list[dict], manifest: Path, out: Path, segmenter) -> None:
    """On rank 0: the manifest, from every rank's ``(entries, counts)`` in ``parts``, and the summary lines."""
    from segformer.fileio import atomic_write

    entries = [entry for part, _ in parts for entry in part]
    written, skipped, failed = (sum(column) for column in zip(*(counts for _, counts in parts), strict=True))
    ordered = merge_manifest(earlier, [entry for _, entry in sorted(entries, key=lambda e: e[0])])
    lines = "".join(json.dumps(entry) + "\n" for entry in ordered)
    atomic_write(manifest, lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))
    skip_note = f"; skipped {plural(skipped, 'input')} with existing outputs" if skipped else ""
    maps = plural(written, "label map and overlay", "label maps and overlays")
    print(f"wrote {maps} to {out} ({describe_segmenter(segmenter)}){skip_note}; manifest {manifest}")
    if failed:
        print(f"segformer predict: {failed} of {len(files)} images could not be read", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from segformer.distributed import any_process, close_distributed, gather_objects, init_distributed

    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be between 0 and 1, got {args.alpha}")
    out = Path(args.out)
    manifest = Path(args.manifest) if args.manifest else out / "manifest.jsonl"
    for path, flag, kind in ((out, "--out", "a folder"), (manifest, "--manifest", "a file")):
        if path.exists() and path.is_dir() != (flag == "--out"):
            raise FileExistsError(f"{flag} {path}: exists and is not {kind}")
    earlier = read_manifest(manifest)
    apply_threads(args.threads)
    if Image.MAX_IMAGE_PIXELS is not None:
        Image.MAX_IMAGE_PIXELS = max(Image.MAX_IMAGE_PIXELS, MAX_IMAGE_PIXELS)
    processes = init_distributed(args.device, backend="gloo")  # CPU collectives: they carry manifest lines
    earlier = earlier if processes.is_main else []  # every rank checked the file; rank 0 writes it
    try:
        files, not_images = expand_inputs(args.inputs)
        if not files:
            raise FileNotFoundError(f"no images found in {' '.join(args.inputs)}")
        if not_images and processes.is_main:
            print(skipped_note(not_images), file=sys.stderr)
        rank, world = processes.rank, processes.world_size
        outputs = [(out / f"{s}_label.png", out / f"{s}_overlay.{args.overlay_format}") for s in output_stems(files)]
        mine = [(i, files[i], outputs[i]) for i in range(rank, len(files), world)]
        exists = [args.skip_existing and all(path.is_file() for path in job[2]) for job in mine]
        done = [job for job, skip in zip(mine, exists, strict=True) if skip]
        todo = [job for job, skip in zip(mine, exists, strict=True) if not skip]
        segmenter = build_segmenter(args, processes.device)
        out.mkdir(parents=True, exist_ok=True)
        entries, failed = predict_jobs(segmenter, todo, args, out)
        entries += existing_entries(done, segmenter.model.class_names, out)
        parts = gather_objects((entries, [len(todo) - failed, len(done), failed]), main_only=True)
        if processes.is_main:
            write_summary(parts, files, earlier, manifest, out, segmenter)
        # Every rank waits here until rank 0 has written the manifest, and all exit with the same status.
        failed_anywhere = any_process(failed > 0, torch.device("cpu"))
    finally:
        close_distributed()
    return 1 if failed_anywhere else 0
