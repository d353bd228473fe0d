"""``segformer predict INPUT... --out DIR``: label maps and overlays with a legend for images, rasters and videos.

Photos give ``<stem>_label.png`` and ``<stem>_overlay.png`` (``--scores``: ``<stem>_confidence.png`` and
``<stem>_entropy.png``, 16-bit, ``segformer.scores``). Rasters and videos take their own paths
(``segformer.cli.predict_media``: which input takes which, their outputs).

Bulk runs: under ``torchrun --nproc_per_node N`` rank r predicts the inputs r, r + N, r + 2N … of the
expanded input list (its order depends only on the arguments), on GPU ``LOCAL_RANK`` when the device is CUDA.
Every file is written atomically (temporary file, then rename), so an output that exists is complete, and
``--skip-existing`` makes a killed run resume where it stopped. The manifest (``--manifest``, default
``OUT/manifest.jsonl``) has one JSON line per input: the input, its outputs (relative to OUT), its size and the
pixels of each class present (a video: its frame count), or the error that stopped it. Ranks send their lines to
rank 0, which writes the whole file atomically at the end: the lines of earlier runs into the same manifest, less
those this run replaces (same input or same label map), then this run's in input order. The lines of skipped
inputs are rebuilt from their label maps, so a resumed run writes the same manifest as an uninterrupted one. A raster
or video is skipped or redone whole: a raster interrupted midway restarts from its first row.
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
    error_line,
    plural,
    segmenter_options,
)
from segformer.cli.predict_media import (
    LIVE_STEM,
    Job,
    add_media_arguments,
    existing_raster_entry,
    existing_video_entry,
    input_kind,
    live_source,
    manifest_entry,
    outputs_of,
    predict_raster_job,
    predict_video_job,
    raster_segmenter,
    require_libraries,
    video_suffixes,
    written_note,
)

if TYPE_CHECKING:
    import numpy as np
    import torch

DEFAULT_WEIGHTS = "nvidia/segformer-b0-finetuned-ade-512-512"
# Largest image read without Pillow's decompression-bomb error (it warns above this, refuses above twice this).
MAX_IMAGE_PIXELS = 1 << 30


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="*",
        metavar="INPUT",
        help="image, raster and video files, folders (searched recursively), globs",
    )
    parser.add_argument("--out", required=True, help="output folder for <stem>_label.png, <stem>_overlay.png …")
    parser.add_argument(
        "--weights",
        default=DEFAULT_WEIGHTS,
        help=f"checkpoint file, folder or hub id (default: {DEFAULT_WEIGHTS}, NVIDIA non-commercial licence)",
    )
    add_protocol_arguments(parser)
    parser.add_argument(
        "--batch-size", type=int, help="images (video frames) per step; equal sizes share a pass (default: 1 (8))"
    )
    add_engine_arguments(parser)
    add_fast_path_arguments(parser)
    add_device_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--alpha", type=float, default=0.5, help="overlay colour weight in 0..1 (default: 0.5)")
    parser.add_argument(
        "--overlay-format", choices=["png", "jpg"], default="png", help="overlay file type (default: png)"
    )
    parser.add_argument(
        "--scores",
        action="store_true",
        help="also write the max probability and entropy (16-bit): images <stem>_confidence.png and "
        "<stem>_entropy.png, rasters <stem>_scores.tif, videos <stem>_scores.mkv",
    )
    add_media_arguments(parser)
    parser.add_argument(
        "--skip-existing", action="store_true", help="skip inputs whose outputs exist (resume a stopped run)"
    )
    parser.add_argument("--manifest", help="JSON-lines file, one line per input (default: OUT/manifest.jsonl)")
    add_quiet_argument(parser)


def known_suffixes() -> tuple[str, ...]:
    """Suffixes of the files taken from input folders: images (the reader's list) and videos."""
    from segformer.data import IMAGE_SUFFIXES

    return IMAGE_SUFFIXES + video_suffixes()


def expand_inputs(inputs: list[str]) -> tuple[list[Path], list[Path]]:
    """Files named, images and videos under folders (recursively) and files matching glob patterns, without
    repeats; and the files under those folders that are neither (by suffix)."""
    suffixes = known_suffixes()
    files: list[Path] = []
    skipped: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file())
            files += [p for p in found if p.suffix.lower() in suffixes]
            skipped += [p for p in found if p.suffix.lower() not in suffixes]
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
    names = ", ".join(str(path) for path in skipped[:shown]) + (", …" if len(skipped) > shown else "")
    return (
        f"segformer predict: skipped {plural(len(skipped), 'file')} of the input folders that "
        f"{'is' if len(skipped) == 1 else 'are'} not an image or a video ({' '.join(known_suffixes())}): {names}"
    )


def output_stems(files: list[Path]) -> list[str]:
    """File stems, with "-2", "-3" … appended to repeated ones so no output overwrites another."""
    seen: dict[str, int] = {}
    stems = []
    for file in files:
        seen[file.stem] = seen.get(file.stem, 0) + 1
        stems.append(file.stem if seen[file.stem] == 1 else f"{file.stem}-{seen[file.stem]}")
    return stems


def class_pixels(label: np.ndarray, names: list[str]) -> dict[str, int]:
    """Pixels of each class present in ``label`` (ignored pixels left out)."""
    import numpy as np

    from segformer.constants import IGNORE_INDEX

    ids, counts = np.unique(label, return_counts=True)
    return {names[i]: int(c) for i, c in zip(ids.tolist(), counts.tolist(), strict=True) if i != IGNORE_INDEX}


def image_entry(job: Job, label: np.ndarray, names: list[str], out: Path) -> dict:
    """The manifest line of a photo: paths, size and pixels per class present."""
    height, width = label.shape
    return manifest_entry(job, out, height=height, width=width, class_pixels=class_pixels(label, names))


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


def predict_images(segmenter, jobs: list[Job], args: argparse.Namespace, out: Path):
    """Predict and write the outputs of the photo ``jobs``, a batch at a time; return manifest lines, failures."""
    from segformer.data import read_image
    from segformer.progress import progress_bar
    from segformer.scores import confidence_maps, save_confidence_maps
    from segformer.visualize import model_palette, overlay, save_image, save_label_png

    names = segmenter.model.class_names
    palette = model_palette(segmenter.model.config)
    entries, failed, batch_size = [], 0, args.batch_size or 1
    bar = progress_bar(total=len(jobs), desc="predict", unit="image", quiet=args.quiet, disable=len(jobs) < 2)
    for start in range(0, len(jobs), batch_size):
        batch = []
        for job in jobs[start : start + batch_size]:
            try:
                batch.append((job, read_image(job.source)))
            except (OSError, ValueError) as e:
                failed += 1
                entries.append((job.index, {"input": str(job.source), "error": str(e)}))
                bar.write(f"segformer predict: error: {e}", file=sys.stderr)
                bar.update()
        labels = segmenter.predict_batch([image for _, image in batch])
        for (job, image), label in zip(batch, labels, strict=True):
            save_label_png(label, job.outputs["label"], palette)
            save_image(overlay(image, label, palette, names, alpha=args.alpha), job.outputs["overlay"])
            if "confidence" in job.outputs:
                save_confidence_maps(*confidence_maps(segmenter, image), out, job.stem)
            entries.append((job.index, image_entry(job, label, names, out)))
            bar.update()
    bar.close()
    return entries, failed


def predict_media(segmenter, jobs: list[Job], args: argparse.Namespace, out: Path):
    """Segment the raster and video ``jobs`` one at a time; return manifest lines, failures (each named)."""
    rasters = raster_segmenter(segmenter) if any(job.kind == "raster" for job in jobs) else None
    entries, failed = [], 0
    for job in jobs:
        try:
            if job.kind == "raster":
                entry = predict_raster_job(rasters, job, args, out)
            else:
                entry = predict_video_job(segmenter, job, args, out)
        except (OSError, ValueError) as e:
            failed += 1
            entry = {"input": str(job.source), "error": error_line(e)}
            print(f"segformer predict: error: {error_line(e)}", file=sys.stderr)
        entries.append((job.index, entry))
    return entries, failed


def existing_entries(jobs: list[Job], names: list[str], out: Path) -> list:
    """Manifest lines of inputs whose outputs exist, rebuilt from their label maps (a video's from its overlay)."""
    import numpy as np
    from PIL import Image

    entries = []
    for job in jobs:
        if job.kind == "raster":
            entry = existing_raster_entry(job, names, out)
        elif job.kind == "video":
            entry = existing_video_entry(job, out)
        else:
            with Image.open(job.outputs["label"]) as png:
                entry = image_entry(job, np.array(png), names, out)
        entries.append((job.index, entry))
    return entries


def write_summary(parts: list, manifest: Path, earlier: list[dict], out: Path, segmenter) -> None:
    """On rank 0: the manifest, from every rank's ``(entries, counts)`` in ``parts``, and the summary lines.
    ``counts``: images, rasters and videos written, inputs skipped, inputs failed."""
    from segformer.fileio import atomic_write

    entries = [entry for part, _ in parts for entry in part]
    images, rasters, videos, skipped, failed = (sum(column) for column in zip(*(c for _, c in parts), strict=True))
    ordered = merge_manifest(earlier, [entry for _, entry in sorted(entries, key=lambda e: e[0])])
    lines = "".join(json.dumps(entry) + "\n" for entry in ordered)
    atomic_write(manifest, lambda tmp: Path(tmp).write_text(lines, encoding="utf-8"))
    skip_note = f"; skipped {plural(skipped, 'input')} with existing outputs" if skipped else ""
    written = written_note(images, rasters, videos)
    how = describe_segmenter(segmenter) if images or videos else segmenter.runner.describe()  # rasters: their line
    print(f"wrote {written} to {out} ({how}){skip_note}; manifest {manifest}")
    if failed:
        print(f"segformer predict: {failed} of {len(entries)} inputs could not be segmented", file=sys.stderr)


def plan_jobs(args: argparse.Namespace, out: Path, rank: int, world: int) -> list[Job]:
    """This rank's jobs: inputs r, r + N … of the expanded input list (``--source``: one live job, on rank 0)."""
    if args.source is not None:
        if args.inputs:
            raise ValueError("--source segments one live stream; give it without INPUT files")
        source = live_source(args.source)
        return [Job(0, source, "video", LIVE_STEM, outputs_of("video", out, LIVE_STEM, args))][rank:]
    if not args.inputs:
        raise ValueError("give INPUT files, folders or patterns, or --source for a live stream")
    files, unknown = expand_inputs(args.inputs)
    if not files:
        raise FileNotFoundError(f"no images or videos found in {' '.join(args.inputs)}")
    if unknown and rank == 0:
        print(skipped_note(unknown), file=sys.stderr)
    stems = output_stems(files)
    jobs = []
    for index in range(rank, len(files), world):
        kind = input_kind(files[index], args.bands is not None)
        jobs.append(Job(index, files[index], kind, stems[index], outputs_of(kind, out, stems[index], args)))
    return jobs


def check_arguments(args: argparse.Namespace) -> None:
    if args.batch_size is not None and args.batch_size < 1:
        raise ValueError(f"--batch-size must be at least 1, got {args.batch_size}")
    if not 0.0 <= args.alpha <= 1.0:
        raise ValueError(f"--alpha must be between 0 and 1, got {args.alpha}")


def segment(segmenter, todo: list[Job], args: argparse.Namespace, out: Path) -> tuple[list, list[int]]:
    """Manifest lines of the jobs ``todo`` and the images, rasters and videos written, and failures."""
    entries, failed = predict_images(segmenter, [job for job in todo if job.kind == "image"], args, out)
    media_entries, media_failed = predict_media(segmenter, [job for job in todo if job.kind != "image"], args, out)
    kinds = {job.index: job.kind for job in todo}
    done = [kinds[index] for index, entry in entries + media_entries if "error" not in entry]
    written = [done.count(kind) for kind in ("image", "raster", "video")]
    return entries + media_entries, [*written, failed + media_failed]


def run(args: argparse.Namespace) -> int:
    import torch
    from PIL import Image

    from segformer.distributed import any_process, close_distributed, gather_objects, init_distributed

    check_arguments(args)
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
        mine = plan_jobs(args, out, processes.rank, processes.world_size)
        require_libraries({job.kind for job in mine})
        live = args.source is not None
        exists = [args.skip_existing and not live and all(p.is_file() for p in job.outputs.values()) for job in mine]
        done = [job for job, skip in zip(mine, exists, strict=True) if skip]
        todo = [job for job, skip in zip(mine, exists, strict=True) if not skip]
        segmenter = build_segmenter(args, processes.device)
        out.mkdir(parents=True, exist_ok=True)
        entries, (images, rasters, videos, failed) = segment(segmenter, todo, args, out)
        entries += existing_entries(done, segmenter.model.class_names, out)
        counts = [images, rasters, videos, len(done), failed]
        parts = gather_objects((entries, counts), main_only=True)
        if processes.is_main:
            write_summary(parts, manifest, earlier, out, segmenter)
        # Every rank waits here until rank 0 has written the manifest, and all exit with the same status.
        failed_anywhere = any_process(failed > 0, torch.device("cpu"))
    finally:
        close_distributed()
    return 1 if failed_anywhere else 0
