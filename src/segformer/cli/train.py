"""``segformer train RECIPE --data-root DIR``: train with a recipe, on one process or under torchrun."""

from __future__ import annotations

import argparse


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
    parser.add_argument("--device", help="cuda, cpu, cuda:1 … (default: cuda when available)")
    parser.add_argument("--list", action="store_true", help="list the packaged recipes and exit")


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from segformer.recipe import load_recipe, packaged_recipes
    from segformer.train import train

    if args.list:
        print("\n".join(packaged_recipes()))
        return 0
    if args.resume:
        if args.recipe or args.out:
            raise ValueError("--resume RUN_DIR continues with RUN_DIR/recipe.toml: pass no RECIPE nor --out")
        run_dir = Path(args.resume)
        if not (run_dir / "last.pt").is_file():
            raise FileNotFoundError(f"--resume {run_dir}: no run to resume there ({run_dir / 'last.pt'} not found)")
        recipe = load_recipe(run_dir / "recipe.toml", args.overrides)
    else:
        if not args.recipe:
            raise ValueError(f"pass a RECIPE (a .toml file or one of: {', '.join(packaged_recipes())})")
        recipe = load_recipe(args.recipe, args.overrides)
        run_dir = Path(args.out or Path("runs") / Path(args.recipe).stem)
    if args.data_root:
        recipe.data.root = str(Path(args.data_root).expanduser().resolve())
    try:
        train(recipe, run_dir, resume=bool(args.resume), device=args.device)
    except FloatingPointError as e:  # a diverged run: say where it stopped and what was kept, no traceback
        print(f"segformer train: {e}", file=sys.stderr)
        return 1
    return 0
