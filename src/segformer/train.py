"""The trainer: the official SegFormer recipe (paper §4.1), on one process or many under ``torchrun``.

``train(recipe, run_dir)`` reads top to bottom: resume (read ``RUN_DIR/last.pt``), build (data, model,
optimiser), then the loop of poly-scheduled AdamW steps on cross-entropy, validating with the
recipe's test protocol and keeping the best weights, and saving checkpoints as the recipe says.

A run directory holds ``recipe.toml`` (the resolved recipe), ``metrics.jsonl`` (one JSON record per
log or validation), ``curves.png``, TensorBoard events when tensorboard is installed, ``last.pt``,
``last.prev.pt`` (the generation before) and ``best.pt`` (full training states), and ``best/`` and
``last/`` (weights in the ``from_pretrained`` layout, their config holding the test protocol, class
names and palette, so ``segformer eval/predict --weights RUN/best`` test them right). Only rank 0
writes files and shows progress. Ctrl-C finishes the current iteration, saves and stops.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from segformer.config import TestProtocol
from segformer.constants import IGNORE_INDEX
from segformer.data import SegmentationDataset, build_dataset, canonical_name
from segformer.data.check import check_dataset
from segformer.device import autocast_dtype
from segformer.distributed import (
    Distributed,
    all_reduce_mean,
    any_process,
    close_distributed,
    convert_sync_batchnorm,
    init_distributed,
)
from segformer.evaluate import evaluate
from segformer.fileio import CheckpointError, atomic_write
from segformer.inference import Segmenter
from segformer.metrics import format_table
from segformer.model import SegFormer, create_model
from segformer.pretrained import from_pretrained
from segformer.progress import progress_bar
from segformer.recipe import DataRecipe, Recipe, dump_recipe
from segformer.training.checkpoint import load_checkpoint, previous_path, save_checkpoint
from segformer.training.data import TimedBatches, build_train_loader
from segformer.training.optim import build_optimizer, set_lr
from segformer.training.runlog import RunLog
from segformer.training.state import TrainState
from segformer.transforms import train_transforms

LAST, BEST = "last.pt", "best.pt"


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C stopped the run; the message says where its last checkpoint is and how to continue."""

    def __init__(self, run_dir: Path, iteration: int | None) -> None:
        self.run_dir, self.iteration = run_dir, iteration
        if iteration is None:
            text = "interrupted before the first checkpoint: nothing to resume"
        else:
            text = (
                f"interrupted: the last checkpoint is {run_dir / LAST} (iteration {iteration}); "
                f"continue with: segformer train --resume {run_dir}"
            )
        super().__init__(text)


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (disk full, …); the file it would have replaced is intact."""


class StopRequest:
    """Turns the first Ctrl-C (SIGINT) into a request to stop after the current iteration; a second one stops at once.

    Installed only in the main thread (Python runs signal handlers there) over Python's default handler;
    elsewhere Ctrl-C behaves as usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous = None

    def __enter__(self) -> StopRequest:
        main_thread = threading.current_thread() is threading.main_thread()
        if main_thread and signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, self._previous)
        print(
            "\nCtrl-C: stopping after this iteration to save a checkpoint (Ctrl-C again to quit now)", file=sys.stderr
        )

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class Run:
    """What a run works with besides its ``TrainState``: recipe, folder, processes, protocol and outputs."""

    recipe: Recipe
    dir: Path
    dist_info: Distributed
    protocol: TestProtocol
    quiet: bool
    log: RunLog | None = None
    checkpoint_iteration: int | None = None  # iteration of the newest last.pt

    @property
    def is_main(self) -> bool:
        return self.dist_info.is_main


# --------------------------------------------------------------------------------------------- building blocks


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_auto(value: bool | str, device: torch.device) -> bool:
    """A ``[train]`` switch of the recipe: true, false, or "auto" (on for CUDA, off elsewhere)."""
    return device.type == "cuda" if value == "auto" else bool(value)


def forward_module(recipe: Recipe, model: nn.Module, device: torch.device) -> nn.Module:
    """What the training steps call: ``model``, compiled (``torch.compile``) when ``train.compile`` says so.

    The compiled module shares ``model``'s parameters, so checkpoints and validation use ``model`` itself.
    """
    return torch.compile(model) if resolve_auto(recipe.train.compile, device) else model


def recipe_protocol(recipe: Recipe, dataset: SegmentationDataset) -> TestProtocol:
    """The dataset's official test protocol at the recipe's ``data.test_scale``: how the trained weights are tested."""
    return dataset.info.protocol.replace(scale=tuple(recipe.data.test_scale))


def build_model(
    recipe: Recipe, dataset: SegmentationDataset, protocol: TestProtocol, load_init: bool = True
) -> SegFormer:
    """SegFormer per ``recipe.model`` for ``dataset``: weights from ``model.init`` when set (and ``load_init``).

    The config records the dataset's class names and palette and the test ``protocol``, so that the
    saved weights are tested and drawn right.
    """
    cfg = recipe.model
    classes = list(dataset.classes)
    if cfg.num_classes and cfg.num_classes != len(classes):
        raise ValueError(
            f"model.num_classes = {cfg.num_classes} but the {recipe.data.dataset} dataset has {len(classes)} "
            "classes (set model.num_classes = 0 to take them from the dataset)"
        )
    options = {
        "drop_path_rate": cfg.drop_path_rate,
        "decoder_dropout": cfg.decoder_dropout,
        "class_names": classes,
        "palette": np.asarray(dataset.palette).tolist(),
        "protocol": protocol,
    }
    if cfg.init and load_init:
        return from_pretrained(cfg.init, variant=cfg.variant, num_classes=len(classes), **options)
    return create_model(cfg.variant, len(classes), **options)


def segmentation_loss(logits: torch.Tensor, masks: torch.Tensor, class_weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy of logits resized bilinearly (align_corners False) to the label size, ignoring 255.

    As mmseg's ``CrossEntropyLoss`` (``avg_non_ignore=False``), the per-pixel losses (× class weight)
    are averaged over all pixels, ignored ones counting as zero.
    """
    logits = F.interpolate(logits.float(), size=masks.shape[-2:], mode="bilinear", align_corners=False)
    loss = F.cross_entropy(logits, masks, weight=class_weights, ignore_index=IGNORE_INDEX, reduction="none")
    return loss.mean()


def train_step(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    amp_dtype: torch.dtype | None = None,
    clip_grad: float = 0.0,
    class_weights: torch.Tensor | None = None,
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """One optimiser step over ``batches`` (gradient accumulation); returns their mean loss (detached).

    Under DDP the gradients are all-reduced only after the last micro-batch. The images are moved to
    ``device`` in ``memory_format`` (channels-last lets cuDNN skip layout conversions).
    """
    optimizer.zero_grad(set_to_none=True)
    total = torch.zeros((), device=device)
    for i, (images, masks) in enumerate(batches):
        images = images.to(device, non_blocking=True, memory_format=memory_format)
        masks = masks.to(device, non_blocking=True)
        last = i == len(batches) - 1
        no_sync = isinstance(model, DistributedDataParallel) and not last
        with model.no_sync() if no_sync else contextlib.nullcontext():
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(images)
            loss = segmentation_loss(logits, masks, class_weights)
            scaler.scale(loss / len(batches)).backward()
        total += loss.detach()
    if clip_grad > 0:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
    scaler.step(optimizer)
    scaler.update()
    return total / len(batches)


def evaluate_model(model: nn.Module, protocol: TestProtocol, dataset, progress: bool) -> dict:
    """Metrics of ``model`` on ``dataset`` tested with ``protocol`` in fp32, uncompiled (leaves it in eval mode)."""
    return evaluate(Segmenter(model, protocol, dtype="fp32", compile=False), dataset, progress=progress)


def build_datasets(recipe: Recipe) -> tuple[SegmentationDataset, SegmentationDataset]:
    """(train, val) datasets of ``recipe.data``, untransformed."""
    if not recipe.data.root:
        raise ValueError("data.root is empty: pass --data-root DIR (or --set data.root=DIR)")
    name = canonical_name(recipe.data.dataset)
    options = recipe.data.options
    return (
        build_dataset(name, recipe.data.root, "train", **options),
        build_dataset(name, recipe.data.root, "val", **options),
    )


def check_data(train_set: SegmentationDataset, val_set: SegmentationDataset, recipe: Recipe, progress: bool) -> None:
    """Refuse a broken dataset before the first iteration, naming the first bad file (unless ``data.check`` is off)."""
    if not recipe.data.check:
        return
    for dataset in (train_set, val_set):
        check_dataset(dataset, progress=progress, fast=True).raise_if_broken()


def data_workers(requested: int) -> tuple[int, str]:
    """``data.workers`` capped at the CPU cores this process may use, and how to say so."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    if requested <= cores:
        return requested, f"{requested} data workers"
    return cores, f"{cores} data workers (data.workers = {requested}, capped at the {cores} CPU cores here)"


def class_weight_tensor(recipe: Recipe, num_classes: int, device: torch.device) -> torch.Tensor | None:
    """``loss.class_weights`` as a tensor, None when empty."""
    weights = recipe.loss.class_weights
    if not weights:
        return None
    if len(weights) != num_classes:
        raise ValueError(f"loss.class_weights has {len(weights)} values for {num_classes} classes")
    return torch.tensor(weights, dtype=torch.float32, device=device)


# --------------------------------------------------------------------------------------------------- the steps


def read_resume_state(run_dir: Path, checkpoint: str) -> dict:
    """The training state in ``run_dir/checkpoint``; a bad ``last.pt`` names the previous good one, if any.

    Raises:
        CheckpointError: missing or corrupt, with the ``--from-checkpoint`` command to use ``last.prev.pt``.
    """
    path = run_dir / checkpoint
    try:
        return load_checkpoint(path)
    except CheckpointError as error:
        previous = previous_path(path)
        if checkpoint != LAST or not previous.is_file():
            raise
        try:
            iteration = load_checkpoint(previous)["iteration"]
        except CheckpointError:
            raise error from None
        raise CheckpointError(
            f"{error}; the previous checkpoint {previous} (iteration {iteration}) is intact: resume from it with "
            f"segformer train --resume {run_dir} --from-checkpoint {previous.name}"
        ) from None


def discard_newer_last(run: Run, checkpoint: str) -> None:
    """Resuming from an older checkpoint: move ``last.pt`` aside (``last.discarded.pt``) so it is never rotated in."""
    last = run.dir / LAST
    if checkpoint == LAST or not run.is_main or not last.exists():
        return
    os.replace(last, run.dir / "last.discarded.pt")
    print(f"resuming from {run.dir / checkpoint}: {last} moved to {run.dir / 'last.discarded.pt'}")


def build_state(run: Run, model: SegFormer, saved: dict | None, source: Path) -> TrainState:
    """The optimiser, GradScaler and progress for ``model`` (moved to the device): new, or restored from ``saved``."""
    recipe, dist_info = run.recipe, run.dist_info
    model = model.to(dist_info.device)
    if dist_info.world_size > 1:
        model.decode_head = convert_sync_batchnorm(model.decode_head, dist_info.device)
    seed_everything(recipe.seed + dist_info.rank)  # the same initial weights on every rank, then per-rank randomness
    optim = recipe.optim
    fused = True if dist_info.device.type == "cuda" else None  # fused AdamW: one kernel per step on CUDA
    optimizer = build_optimizer(model, optim.lr, tuple(optim.betas), optim.weight_decay, optim.head_lr_mult, fused)
    amp_dtype = autocast_dtype(recipe.precision, dist_info.device)
    scaler = torch.amp.GradScaler(dist_info.device.type, enabled=amp_dtype == torch.float16)
    state = TrainState(model, optimizer, scaler, world_size=dist_info.world_size, rank=dist_info.rank)
    if saved is not None:
        state.load_state_dict(saved, str(source))
        run.checkpoint_iteration = state.iteration
    return state


def write_recipe(run: Run) -> None:
    """``recipe.toml`` of the run; written once data and weights are found, so a misconfigured run leaves nothing."""
    if run.is_main:
        run.dir.mkdir(parents=True, exist_ok=True)
        text = dump_recipe(run.recipe, f"resolved recipe of the run in {run.dir}")
        atomic_write(run.dir / "recipe.toml", lambda tmp: Path(tmp).write_text(text))


def announce(run: Run, train_set: SegmentationDataset, workers: str, resumed: bool, start: int) -> None:
    """The start line (rank 0), and one warning when the warm-up outlasts the run."""
    recipe, dist_info = run.recipe, run.dist_info
    if not run.is_main:
        return
    data, schedule = recipe.data, recipe.schedule
    if recipe.optim.warmup_iters > schedule.iters:
        warnings.warn(
            f"optim.warmup_iters = {recipe.optim.warmup_iters} is longer than the whole run (schedule.iters = "
            f"{schedule.iters}): the learning rate never reaches optim.lr",
            stacklevel=4,  # the caller of train()
        )
    images = data.batch_size * dist_info.world_size * recipe.accumulate
    print(
        f"training SegFormer-{recipe.model.variant.upper()} on {len(train_set)} {data.dataset} images "
        f"({images} per step = {dist_info.world_size} process(es) × {data.batch_size} × {recipe.accumulate} "
        f"accumulated), {schedule.iters} iterations on {dist_info.device} with {torch.get_num_threads()} thread(s) "
        f"and {workers}; run folder {run.dir}" + (f", resumed at iteration {start}" if resumed else ""),
        flush=True,
    )


def save_last(run: Run, state: TrainState) -> None:
    """``last.pt`` (the previous one kept as ``last.prev.pt``) and the ``last/`` weights; collective (every rank)."""
    checkpoint = state.state_dict()
    if run.is_main:
        with checkpoint_writing(run, run.dir / LAST):
            save_checkpoint(run.dir / LAST, checkpoint, keep_previous=True)
            state.model.save_pretrained(str(run.dir / "last"))
    run.checkpoint_iteration = state.iteration


def save_best(run: Run, state: TrainState) -> None:
    """``best.pt`` and the ``best/`` weights; collective (every rank)."""
    checkpoint = state.state_dict()
    if run.is_main:
        with checkpoint_writing(run, run.dir / BEST):
            save_checkpoint(run.dir / BEST, checkpoint)
            state.model.save_pretrained(str(run.dir / "best"))


@contextlib.contextmanager
def checkpoint_writing(run: Run, path: Path) -> Iterator[None]:
    """Turn an OSError while saving (disk full …) into a CheckpointWriteError saying what is kept."""
    try:
        yield
    except OSError as e:
        kept = f"the previous {path.name} is intact" if path.exists() else "no earlier checkpoint was written"
        raise CheckpointWriteError(
            f"could not write {path} ({e.strerror or e}): {kept}; free some space in {run.dir} "
            f"and continue with: segformer train --resume {run.dir}"
        ) from None


def validate_and_keep_best(run: Run, state: TrainState, val_set: SegmentationDataset, bar) -> dict:
    """Validate with the run's protocol, report, and save the best state when the mIoU improved."""
    progress = run.is_main and not run.quiet and sys.stderr.isatty()
    metrics = evaluate_model(state.model, run.protocol, val_set, progress)
    done = state.iteration
    improved = not metrics["mIoU"] <= state.best["mIoU"]  # the first result always counts (best starts NaN)
    if improved:
        state.best = {"mIoU": float(metrics["mIoU"]), "iteration": done}
    if run.is_main:
        summary = {k: float(metrics[k]) for k in ("mIoU", "mAcc", "aAcc")}
        if run.quiet:
            bar.write(f"validation at iteration {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))
        else:
            bar.write(f"validation at iteration {done}:\n{format_table(metrics, val_set.classes)}")
        run.log.log({"iter": done, **summary})
        run.log.plot()
    if improved:
        save_best(run, state)
    return metrics


def due(interval: int, done: int, total: int) -> bool:
    """Whether an every-``interval`` event (0 = never) happens after iteration ``done``; always after the last."""
    return (interval > 0 and done % interval == 0) or done == total


def train_loop(
    run: Run,
    state: TrainState,
    ddp_model: nn.Module,
    batches: TimedBatches,
    val_set: SegmentationDataset,
    stop: StopRequest,
) -> dict | None:
    """Iterations ``state.iteration + 1`` … ``schedule.iters``; returns the last validation metrics.

    Each iteration: set the lr, step, log (with ``data_wait``, the share of the logged interval spent
    waiting for the next batch); validate and keep the best, save ``last.pt`` when due; stop
    (after saving the last finished iteration) once Ctrl-C was pressed on any process.
    """
    recipe, schedule, device = run.recipe, run.recipe.schedule, run.dist_info.device
    lr_schedule = {k: getattr(recipe.optim, k) for k in ("power", "min_lr", "warmup_iters", "warmup_ratio")}
    amp_dtype = autocast_dtype(recipe.precision, device)
    class_weights = class_weight_tensor(recipe, state.model.num_classes, device)
    layout = torch.channels_last if resolve_auto(recipe.train.channels_last, device) else torch.contiguous_format
    bar = progress_bar(
        total=schedule.iters, initial=state.iteration, desc="train", unit="it", quiet=run.quiet, disable=not run.is_main
    )
    losses, metrics, tic, data_wait = [], None, time.perf_counter(), 0.0
    with bar:
        while state.iteration < schedule.iters and not any_process(stop.requested, device):
            state.model.train()  # the loop owns the mode: validation leaves the model in eval mode
            lr = set_lr(state.optimizer, state.iteration, schedule.iters, **lr_schedule)
            step = [next(batches) for _ in range(recipe.accumulate)]
            loss = train_step(
                ddp_model,
                step,
                state.optimizer,
                state.scaler,
                device,
                amp_dtype,
                recipe.clip_grad,
                class_weights,
                layout,
            )
            loss = all_reduce_mean(loss).item()
            state.iteration += 1
            state.micro_batches += recipe.accumulate
            done = state.iteration
            check_finite(run, loss, done)
            losses.append(loss)
            bar.update(1)
            if due(schedule.log_interval, done, schedule.iters):
                data_wait = log_interval(run, batches, losses, lr, done, time.perf_counter() - tic)
                losses, tic = [], time.perf_counter()
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.3g}", data_wait=f"{data_wait:.0%}")
            if due(schedule.val_interval, done, schedule.iters):
                metrics = validate_and_keep_best(run, state, val_set, bar)
            if due(schedule.ckpt_interval, done, schedule.iters):
                save_last(run, state)
    if state.iteration < schedule.iters:  # stopped by Ctrl-C: keep the last finished iteration
        if run.checkpoint_iteration != state.iteration and state.iteration > 0:
            save_last(run, state)
        raise TrainingInterrupted(run.dir, run.checkpoint_iteration)
    return metrics


def log_interval(run: Run, batches: TimedBatches, losses: list[float], lr: float, done: int, elapsed: float) -> float:
    """Log the interval's mean loss, lr, seconds per iteration and data-wait share; return the share."""
    data_wait = batches.take_share(elapsed)
    mean = sum(losses) / len(losses)
    run.log.log({"iter": done, "loss": mean, "lr": lr, "sec_per_iter": elapsed / len(losses), "data_wait": data_wait})
    return data_wait


def check_finite(run: Run, loss: float, done: int) -> None:
    """Stop a diverged run, naming the iteration and the last good checkpoint."""
    if math.isfinite(loss):
        return
    last = run.dir / LAST
    kept = f"the last good checkpoint is {last}" if last.exists() else "no checkpoint was written"
    raise FloatingPointError(
        f"loss is {loss} at iteration {done}: stopping ({kept}; lower optim.lr, set clip_grad, "
        'or use precision = "bf16" instead of fp16)'
    )


# ------------------------------------------------------------------------------------------------------- train


def train(
    recipe: Recipe,
    run_dir: str | Path,
    resume: bool = False,
    device: str | None = None,
    *,
    checkpoint: str = LAST,
    quiet: bool = False,
) -> dict:
    """Train a SegFormer as ``recipe`` says, writing the run into ``run_dir``.

    Args:
        recipe: a loaded recipe (``segformer.recipe.load_recipe``).
        run_dir: output folder.
        resume: continue the run in ``run_dir`` exactly where ``checkpoint`` stopped.
        device: "cuda", "cpu", "cuda:1" …; default CUDA when available. Under torchrun each process
            takes GPU LOCAL_RANK.
        checkpoint: the checkpoint in ``run_dir`` to resume from ("last.pt", or "last.prev.pt" …).
        quiet: no progress bars, one line per validation.

    Returns:
        Summary: ``best_miou``, ``best_iteration``, ``iterations`` and the final validation ``metrics``.

    Raises:
        TrainingInterrupted: Ctrl-C; a checkpoint of the last finished iteration was saved when possible.
        FloatingPointError: the loss became NaN or infinite (the last good checkpoint stays in ``run_dir``).
        CheckpointWriteError: a checkpoint could not be written (disk full …); the previous one is intact.
    """
    dist_info = init_distributed(device)
    try:
        with StopRequest() as stop:
            return _train(recipe, Path(run_dir), dist_info, resume, checkpoint, quiet, stop)
    finally:
        close_distributed()


def _train(
    recipe: Recipe,
    run_dir: Path,
    dist_info: Distributed,
    resume: bool,
    checkpoint: str,
    quiet: bool,
    stop: StopRequest,
) -> dict:
    # resume
    saved = read_resume_state(run_dir, checkpoint) if resume else None
    if not resume and (run_dir / LAST).exists():
        raise ValueError(f"{run_dir} already holds a run (last.pt): resume it with --resume {run_dir} or pick --out")
    # build: data, model, optimiser
    train_set, val_set = build_datasets(recipe)
    check_data(train_set, val_set, recipe, progress=dist_info.is_main and not quiet)
    run = Run(recipe, run_dir, dist_info, recipe_protocol(recipe, train_set), quiet)
    seed_everything(recipe.seed)
    model = build_model(recipe, train_set, run.protocol, load_init=saved is None)
    state = build_state(run, model, saved, run_dir / checkpoint)
    write_recipe(run)
    if resume:
        discard_newer_last(run, checkpoint)
    run.log = RunLog(run_dir, run.is_main, state.iteration if resume else None)
    ddp_model = forward_module(recipe, state.model, dist_info.device)
    if dist_info.world_size > 1:
        device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        ddp_model = DistributedDataParallel(ddp_model, device_ids=device_ids)
    batches, workers = train_batches(run, train_set, state.micro_batches)
    announce(run, train_set, workers, resume, state.iteration)
    # the loop, with validation, best tracking and saving
    try:
        metrics = train_loop(run, state, ddp_model, batches, val_set, stop)
    except TrainingInterrupted:
        run.log.plot()
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, pointing at the last checkpoint
        raise TrainingInterrupted(run_dir, run.checkpoint_iteration) from None
    finally:
        run.log.close()
    return finish(run, state, metrics)


def recipe_transforms(data: DataRecipe) -> Callable:
    """The training augmentation of ``recipe.data`` (``segformer.transforms.train_transforms``)."""
    return train_transforms(
        data.crop, data.scale, data.ratio_range, data.cat_max_ratio, data.flip_prob, data.photometric
    )


def train_batches(run: Run, train_set: SegmentationDataset, start: int) -> tuple[TimedBatches, str]:
    """The endless augmented micro-batches of this rank from micro-batch ``start``, and the workers' description."""
    data, dist_info = run.recipe.data, run.dist_info
    workers, description = data_workers(data.workers)
    loader = build_train_loader(
        train_set,
        recipe_transforms(data),
        data.batch_size,
        seed=run.recipe.seed,
        rank=dist_info.rank,
        world_size=dist_info.world_size,
        start=start,
        workers=workers,
        pin_memory=dist_info.device.type == "cuda",
    )
    return TimedBatches(iter(loader)), description


def finish(run: Run, state: TrainState, metrics: dict | None) -> dict:
    """The curves, the closing line (rank 0) and the run's summary."""
    best = state.best
    run.log.plot()
    if run.is_main:
        print(
            f"done: best mIoU {best['mIoU']:.4f} at iteration {best['iteration']}; weights {run.dir / 'best'} "
            f"(segformer eval/predict --weights {run.dir / 'best'}); last checkpoint {run.dir / LAST}; "
            f"curves {run.log.curves}"
        )
    return {
        "run_dir": str(run.dir),
        "iterations": run.recipe.schedule.iters,
        "best_miou": best["mIoU"],
        "best_iteration": best["iteration"],
        "metrics": metrics,
    }
