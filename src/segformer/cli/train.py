"""``segformer train RECIPE --data-root DIR``: train with a recipe, on one process or under torchrun."""

from __future__ import annotations

# The library and torch are imported inside the functions below: `segformer --help` and
# `segformer COMMAND --help` stay fast.
import argparse
import sys
import warnings
from pathlib import Path

from segformer.cli.common import add_device_argument, add_quiet_argument, add_threads_argument, apply_threads

# --from-scratch: random initial weights, and the learning rates the demo recipe trains from scratch with (the
# packaged recipes' lr 6e-5 and decoder × 10 are for an ImageNet-pretrained encoder); --set overrides them.
FROM_SCRATCH = {"model.init": "''", "optim.lr": "1e-3", "optim.head_lr_mult": "1.0"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "recipe", nargs="?", help="recipe file (.toml) or packaged recipe name, e.g. ade20k-b0 (not with --resume)"
    )
    parser.add_argument("--data-root", help="dataset folder (sets data.root)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a recipe value, e.g. --set optim.lr=1e-4 --set data.crop=[256,256] (repeatable)",
    )
    parser.add_argument("--out", help="run folder (default: runs/<recipe name>)")
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    parser.add_argument(
        "--from-checkpoint",
        default="last.pt",
        metavar="NAME",
        help="with --resume: the checkpoint in RUN_DIR to continue from (default: last.pt; e.g. last.prev.pt)",
    )
    parser.add_argument(
        "--from-scratch",
        action="store_true",
        help="random initial weights, offline, with the demo recipe's from-scratch learning rates: "
        + ", ".join(f"{key} = {value}" for key, value in FROM_SCRATCH.items())
        + " (--set overrides them)",
    )
    add_device_argument(parser)
    add_threads_argument(parser)
    parser.add_argument("--no-check-data", action="store_true", help="skip reading every image and mask up front")
    add_quiet_argument(parser)
    parser.add_argument("--list", action="store_true", help="list the packaged recipes and exit")


def train_and_report(command: str, *args, **kwargs) -> tuple[int, dict | None]:
    """``segformer.train.train(*args, **kwargs)``; Ctrl-C, divergence, write failures and warnings told in one line.

    Returns:
        (exit status, the training summary or None): 130 after Ctrl-C, 1 after an error, else 0.
    """
    from segformer.train import train  # imported here: keeps `segformer --help` fast
    from segformer.training.run import CheckpointWriteError

    def show(message: Warning | str, *_: object) -> None:  # one plain line, not the warning's source line
        print(f"segformer {command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show
            return 0, train(*args, **kwargs)
    except KeyboardInterrupt as e:  # Ctrl-C: where the work is and how to continue, no traceback
        print(f"segformer {command}: {e or 'interrupted'}", file=sys.stderr)
        return 130, None
    except (FloatingPointError, CheckpointWriteError) as e:  # a diverged run, a full disk: what was kept
        print(f"segformer {command}: error: {e}", file=sys.stderr)
        return 1, None


def run(args: argparse.Namespace) -> int:
    from segformer.recipe import packaged_recipes  # imported here: keeps `segformer --help` fast

    if args.list:
        print("\n".join(packaged_recipes()))
        return 0
    recipe, run_dir = run_recipe(args)
    apply_threads(args.threads)
    kwargs = {"resume": bool(args.resume), "device": args.device, "checkpoint": args.from_checkpoint}
    return train_and_report("train", recipe, run_dir, quiet=args.quiet, **kwargs)[0]


def run_recipe(args: argparse.Namespace):
    """(recipe, run folder) of the command: the run's own recipe with --resume, else RECIPE; the flags applied."""
    from segformer.recipe import load_recipe, packaged_recipes  # imported here: keeps `segformer --help` fast

    if args.resume:
        if args.recipe or args.out:
            raise ValueError("--resume RUN_DIR continues with RUN_DIR/recipe.toml: pass no RECIPE nor --out")
        if args.from_scratch:
            raise ValueError("--from-scratch starts a new run: not with --resume (which continues RUN_DIR's weights)")
        run_dir = Path(args.resume)
        if not (run_dir / "recipe.toml").is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no run to resume there ({run_dir / 'recipe.toml'} not found)")
        recipe = load_recipe(run_dir / "recipe.toml", args.overrides)
    else:
        if args.from_checkpoint != "last.pt":
            raise ValueError("--from-checkpoint NAME picks the checkpoint of --resume RUN_DIR: pass --resume too")
        if not args.recipe:
            raise ValueError(f"pass a RECIPE (a .toml file or one of: {', '.join(packaged_recipes())})")
        scratch = [f"{key}={value}" for key, value in FROM_SCRATCH.items()] if args.from_scratch else []
        recipe = load_recipe(args.recipe, scratch + args.overrides)  # --set comes last: it wins
        run_dir = Path(args.out or Path("runs") / Path(args.recipe).stem)
    if args.data_root:
        recipe.data.root = str(Path(args.data_root).expanduser().resolve())
    if args.no_check_data:
        recipe.data.check = False
    return recipe, run_dir
