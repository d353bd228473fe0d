"""The trainer: the official SegFormer recipe (paper §4.1), on one process or many under ``torchrun``.

``train(recipe, run_dir)`` reads top to bottom, each helper below it in the order it is called: resume
(read ``RUN_DIR/last.pt``), build (data, model, optimiser), then the loop of poly-scheduled AdamW steps on
the recipe's loss, validating with the recipe's test protocol and keeping the best weights, and saving
checkpoints as the recipe says. The pieces live in ``segformer.training``: the step (``step``), the
optimiser and schedule (``optim``), the data stream and its check (``data``), the state (``state``), the
run folder, its checkpoints and Ctrl-C (``run``), and the logs (``runlog``).

A run directory holds ``recipe.toml`` (the resolved recipe), ``metrics.jsonl`` (one JSON record per
log or validation), ``curves.png``, TensorBoard events when tensorboard is installed, ``last.pt``,
``last.prev.pt`` (the generation before) and ``best.pt`` (full training states), and ``best/`` and
``last/`` (weights in the ``from_pretrained`` layout, their config holding the test protocol, class
names and palette, so ``segformer eval/predict --weights RUN/best`` test them right, and a Hugging Face
model card, ``README.md``, with the last validation's per-class IoU). Only rank 0 writes files and shows
progress. Ctrl-C finishes the current iteration, saves and stops.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from segformer.config import TestProtocol
from segformer.data import SegmentationDataset
from segformer.device import autocast_dtype
from segformer.distributed import (
    Distributed,
    all_reduce_mean,
    any_process,
    close_distributed,
    convert_sync_batchnorm,
    init_distributed,
)
from segformer.evaluation import evaluate
from segformer.fileio import CheckpointError, atomic_write
from segformer.inference import Segmenter
from segformer.metrics import format_table
from segformer.model import SegFormer, create_model
from segformer.pretrained import from_pretrained
from segformer.progress import progress_bar
from segformer.recipe import Recipe, dump_recipe
from segformer.training.data import TimedBatches, build_datasets, check_data, train_batches
from segformer.training.losses import resolve_class_weights
from segformer.training.optim import recipe_optimizer, set_lr
from segformer.training.run import (
    LAST,
    Run,
    StopRequest,
    TrainingInterrupted,
    discard_newer_last,
    read_resume_state,
    save_best,
    save_last,
)
from segformer.training.runlog import RunLog
from segformer.training.state import TrainState
from segformer.training.step import forward_module, grad_scaler, step_settings, train_step

FROM_SCRATCH_HINT = "or train from random weights: segformer train … --from-scratch"


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
    train_set, val_set = build_datasets(recipe.data)
    check_data({"train": train_set, "val": val_set}, recipe.data, progress=dist_info.is_main and not quiet)
    run = Run(recipe, run_dir, dist_info, recipe_protocol(recipe, train_set), quiet)
    seed_everything(recipe.seed)
    model = build_model(recipe, train_set, run.protocol, load_init=saved is None)
    recipe = run.recipe = resolve_loss(run, train_set)
    state = build_state(run, model, saved, run_dir / checkpoint)
    write_recipe(run)
    if resume:
        discard_newer_last(run, checkpoint)
    run.log = RunLog(run_dir, run.is_main, state.iteration if resume else None)
    run.validation = run.log.last_validation()  # resumed: the model cards start from the last logged validation
    network = training_network(run, state.model)
    batches, workers = train_batches(recipe, dist_info, train_set, state.micro_batches)
    announce(run, train_set, workers, resume, state.iteration)
    # the loop, with validation, best tracking and saving
    try:
        metrics = train_loop(run, state, network, batches, val_set, stop)
    except TrainingInterrupted:
        run.log.plot()
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once, pointing at the last checkpoint
        raise TrainingInterrupted(run_dir, run.checkpoint_iteration) from None
    finally:
        run.log.close()
    return finish(run, state, metrics)


def recipe_protocol(recipe: Recipe, dataset: SegmentationDataset) -> TestProtocol:
    """The dataset's official test protocol at the recipe's ``data.test_scale``: how the trained weights are tested."""
    return dataset.info.protocol.replace(scale=tuple(recipe.data.test_scale))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def build_model(
    recipe: Recipe, dataset: SegmentationDataset, protocol: TestProtocol, load_init: bool = True
) -> SegFormer:
    """SegFormer per ``recipe.model`` for ``dataset``: weights from ``model.init`` when set (and ``load_init``).

    The config records the dataset's class names and palette and the test ``protocol``, so that the
    saved weights are tested and drawn right. When ``model.init`` cannot be loaded, the error also names
    ``segformer train --from-scratch``.
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
    if not (cfg.init and load_init):
        return create_model(cfg.variant, len(classes), **options)
    try:
        return from_pretrained(cfg.init, variant=cfg.variant, num_classes=len(classes), **options)
    except CheckpointError as error:  # not found (locally, in the cache, on the hub) or unreadable
        raise CheckpointError(f"model.init: {error}; {FROM_SCRATCH_HINT}") from None


def resolve_loss(run: Run, dataset: SegmentationDataset) -> Recipe:
    """The run's recipe with ``loss.class_weights = "auto"`` replaced by numbers from the training split
    (``resolve_class_weights``), so that ``recipe.toml`` records them.

    Every process counts the same masks and gets the same numbers, with no collective to time out meanwhile.
    """
    recipe = run.recipe
    progress = run.is_main and not run.quiet
    loss = resolve_class_weights(recipe.loss, dataset, len(dataset.classes), progress=progress)
    if loss is recipe.loss:
        return recipe
    if run.is_main:
        print(f'loss.class_weights = "auto": {loss.class_weights} (median-frequency balancing)', flush=True)
    return dataclasses.replace(recipe, loss=loss)


def build_state(run: Run, model: SegFormer, saved: dict | None, source: Path) -> TrainState:
    """The optimiser, GradScaler and progress for ``model`` (moved to the device): new, or restored from ``saved``."""
    recipe, dist_info = run.recipe, run.dist_info
    model = model.to(dist_info.device)
    if dist_info.world_size > 1:
        model.decode_head = convert_sync_batchnorm(model.decode_head, dist_info.device)
    seed_everything(recipe.seed + dist_info.rank)  # the same initial weights on every rank, then per-rank randomness
    optimizer = recipe_optimizer(model, recipe.optim, dist_info.device)
    scaler = grad_scaler(autocast_dtype(recipe.precision, dist_info.device), dist_info.device)
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


def training_network(run: Run, model: SegFormer) -> nn.Module:
    """What the steps call: ``model``, compiled when ``train.compile`` says so, in DDP under several processes."""
    dist_info = run.dist_info
    network = forward_module(run.recipe, model, dist_info.device)
    if dist_info.world_size > 1:
        device_ids = [dist_info.device.index] if dist_info.device.type == "cuda" else None
        network = DistributedDataParallel(network, device_ids=device_ids)
    return network


def announce(run: Run, train_set: SegmentationDataset, workers: str, resumed: bool, start: int) -> None:
    """The start line (rank 0) with the effective batch; a warning when the warm-up outlasts the run, and one
    when the effective batch is far from the recipe's published batch (``batch_warning``)."""
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
    advice = batch_warning(data.batch_size, dist_info.world_size, recipe.accumulate, recipe.train.published_batch)
    if advice:
        warnings.warn(advice, stacklevel=4)  # the caller of train()
    print(
        f"training SegFormer-{recipe.model.variant.upper()} on {len(train_set)} {data.dataset} images "
        f"({images} per step = {dist_info.world_size} process(es) × {data.batch_size} × {recipe.accumulate} "
        f"accumulated), {schedule.iters} iterations on {dist_info.device} with {torch.get_num_threads()} thread(s) "
        f"and {workers}; run folder {run.dir}" + (f", resumed at iteration {start}" if resumed else ""),
        flush=True,
    )


def batch_warning(batch_size: int, processes: int, accumulate: int, published: int) -> str | None:
    """What to change when the effective batch (``batch_size × processes × accumulate``) is under half or over
    twice ``published`` (``train.published_batch``, 0 = none): the lr and schedule of a published setting
    assume its batch, and a far smaller one is the common reason a paper's mIoU is not reached."""
    images = batch_size * processes * accumulate
    if not published or published / 2 <= images <= 2 * published:
        return None
    per_step = batch_size * processes
    steps = max(1, round(published / per_step))
    change = "raise" if images < published else "lower"
    fix = f"accumulate={steps}" if per_step <= 2 * published else f"data.batch_size={max(1, published // processes)}"
    return (
        f"effective batch {images} is far from the recipe's published {published}: the published mIoU assumes "
        f"{published}; {change} data.batch_size or accumulate (segformer train … --set {fix})"
    )


def train_loop(
    run: Run,
    state: TrainState,
    network: nn.Module,
    batches: TimedBatches,
    val_set: SegmentationDataset,
    stop: StopRequest,
) -> dict | None:
    """Iterations ``state.iteration + 1`` … ``schedule.iters``; returns the last validation metrics.

    Each iteration: set the lr, step ``network`` (``training_network``), log (with ``data_wait``, the
    share of the logged interval spent waiting for the next batch); validate and keep the best, save
    ``last.pt`` when due; stop (after saving the last finished iteration) once Ctrl-C was pressed on any process.
    """
    recipe, schedule, device = run.recipe, run.recipe.schedule, run.dist_info.device
    lr_schedule = {k: getattr(recipe.optim, k) for k in ("power", "min_lr", "warmup_iters", "warmup_ratio")}
    settings = step_settings(recipe, state.model.num_classes, device)
    step_options = {"network": network, "optimizer": state.optimizer, "scaler": state.scaler, "device": device}
    bar = progress_bar(
        total=schedule.iters, initial=state.iteration, desc="train", unit="it", quiet=run.quiet, disable=not run.is_main
    )
    losses, metrics, tic, data_wait = [], None, time.perf_counter(), 0.0
    with bar:
        while state.iteration < schedule.iters and not any_process(stop.requested, device):
            state.model.train()  # the loop owns the mode: validation leaves the model in eval mode
            lr = set_lr(state.optimizer, state.iteration, schedule.iters, **lr_schedule)
            step = [next(batches) for _ in range(recipe.accumulate)]
            loss = all_reduce_mean(train_step(batches=step, **step_options, **settings)).item()
            state.iteration += 1
            state.micro_batches += recipe.accumulate
            done = state.iteration
            check_finite(run, loss, done)
            losses.append(loss)
            bar.update(1)
            if due(schedule.log_interval, done, schedule.iters):
                data_wait = write_log_record(run, batches, losses, lr, done, time.perf_counter() - tic)
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


def due(interval: int, done: int, total: int) -> bool:
    """Whether an every-``interval`` event (0 = never) happens after iteration ``done``; always after the last."""
    return (interval > 0 and done % interval == 0) or done == total


def write_log_record(
    run: Run, batches: TimedBatches, losses: list[float], lr: float, done: int, elapsed: float
) -> float:
    """Log the mean loss, lr, seconds per iteration and data-wait share since the last record; return the share."""
    data_wait = batches.take_share(elapsed)
    mean = sum(losses) / len(losses)
    run.log.log({"iter": done, "loss": mean, "lr": lr, "sec_per_iter": elapsed / len(losses), "data_wait": data_wait})
    return data_wait


def validate_and_keep_best(run: Run, state: TrainState, val_set: SegmentationDataset, bar) -> dict:
    """Validate with the run's protocol, report, log (per-class IoU too, which the model cards show), and save
    the best state when the mIoU improved."""
    progress = run.is_main and not run.quiet and sys.stderr.isatty()
    metrics = evaluate_model(state.model, run.protocol, val_set, progress)
    done = state.iteration
    improved = not metrics["mIoU"] <= state.best["mIoU"]  # the first result always counts (best starts NaN)
    if improved:
        state.best = {"mIoU": float(metrics["mIoU"]), "iteration": done}
    summary = {k: float(metrics[k]) for k in ("mIoU", "mAcc", "aAcc")}
    per_class = [None if math.isnan(v) else float(v) for v in metrics["IoU"]]  # None: a class with no result
    run.validation = {"iter": done, **summary, "IoU": per_class}
    if run.is_main:
        if run.quiet:
            bar.write(f"validation at iteration {done}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary.items()))
        else:
            bar.write(f"validation at iteration {done}:\n{format_table(metrics, val_set.classes)}")
        run.log.log(run.validation)
        run.log.plot()
    if improved:
        save_best(run, state)
    return metrics


def evaluate_model(model: nn.Module, protocol: TestProtocol, dataset, progress: bool) -> dict:
    """Metrics of ``model`` on ``dataset`` tested with ``protocol`` in fp32, uncompiled (leaves it in eval mode)."""
    return evaluate(Segmenter(model, protocol, dtype="fp32", compile=False), dataset, progress=progress)


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
