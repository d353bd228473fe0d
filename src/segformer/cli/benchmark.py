"""``segformer benchmark``: latency, throughput, GMACs and peak memory, optionally against transformers."""

from __future__ import annotations

# The library and torch are imported inside the functions below: `segformer --help` and
# `segformer COMMAND --help` stay fast.
import argparse
import re

from segformer.cli.common import add_device_argument, add_fast_path_arguments, add_threads_argument
from segformer.config import VARIANTS


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[x×](\d+)", text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected HEIGHTxWIDTH, e.g. 512x512")
    return int(match.group(1)), int(match.group(2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", default=["b0"], choices=list(VARIANTS), help="default: b0")
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(512, 512)], help="HxW … (default: 512x512)")
    parser.add_argument("--batch-size", type=int, help="images per step (default: 1; --data: the recipe's)")
    add_device_argument(parser, default="cpu")
    add_fast_path_arguments(parser)  # --dtype, --compile, --no-graphs: as predict and eval take them
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per model (default: 10)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first (default: 3)")
    add_threads_argument(parser)
    parser.add_argument("--num-classes", type=int, default=150, help="classes of the random model (default: 150)")
    parser.add_argument("--weights", help="checkpoint to benchmark instead of random weights (sets variant)")
    parser.add_argument("--compare-hf", action="store_true", help="also run transformers' model, same weights")
    parser.add_argument(
        "--hf-attention",
        nargs="+",
        choices=["eager", "sdpa"],
        default=["eager", "sdpa"],
        help="transformers' attention implementations to time with --compare-hf (default: both)",
    )
    parser.add_argument("--train", action="store_true", help="time a training step (forward, backward, AdamW)")
    parser.add_argument(
        "--fast",
        action="store_true",
        help="also time our default path: predict/eval's runner (CUDA: bf16, channels-last, CUDA graphs; "
        "--no-graphs: eager), or the trainer's step; with --compile also the opt-in compiled one. Without --dtype "
        "this row runs in the default precision, ours and transformers' rows in fp32",
    )
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--json", metavar="PATH", help="append every row to this JSON Lines summary")
    parser.add_argument("--section", default="benchmark", help="the rows' section name in --json (default: benchmark)")
    data = parser.add_argument_group("input pipeline (--data)")
    data.add_argument("--data", action="store_true", help="measure the training input pipeline's img/s instead")
    data.add_argument("--dataset", help="dataset name (default: the recipe's)")
    data.add_argument("--data-root", help="dataset folder")
    data.add_argument("--workers", type=int, help="loader worker processes (default: the recipe's data.workers)")
    data.add_argument("--recipe", help="recipe whose augmentation runs (default: DATASET-b0 if packaged, else custom)")


FOOTNOTES = """\
GMACs: multiply-accumulates (FLOPs / 2, the paper's unit), FlopCounterMode
peak MiB: rise during one step (CUDA: max_memory_allocated; CPU: peak RSS, fresh subprocess)
1st/2nd call ms: a runner row's first two calls at this shape (CUDA: eager, then the graph capture; compiled: the \
compile), before the timed calls
agree %: logit pixels whose argmax equals our fp32 eager model's"""


def cases(args: argparse.Namespace):
    """The benchmark cases of the arguments: one per variant (or the --weights checkpoint) and size."""
    from segformer.benchmark import Case

    for variant in [None] if args.weights else args.variants:
        for height, width in args.sizes:
            yield Case(
                variant=variant or "b0",
                height=height,
                width=width,
                batch_size=args.batch_size,
                device=args.device,
                dtype=args.dtype,
                train=args.train,
                num_classes=args.num_classes,
                compile=args.compile,
                graphs=not args.no_graphs,
            )


def run(args: argparse.Namespace) -> int:
    import torch

    from segformer.benchmark import format_timings, num_threads, result_row, run_case
    from segformer.benchmark.summary import append_records
    from segformer.device import resolve_device

    if (args.batch_size is not None and args.batch_size < 1) or args.repeats < 1 or args.warmup < 0:
        raise ValueError("--batch-size and --repeats must be >= 1 and --warmup >= 0")
    if args.data:
        return run_data(args)
    args.batch_size = args.batch_size or 1
    resolve_device(args.device)
    if args.compare_hf:
        import transformers  # noqa: F401  (fail before measuring: main turns a missing package into its pip hint)
    with num_threads(args.threads):
        threads = torch.get_num_threads()
        for case in cases(args):
            results = run_case(
                case,
                compare_hf=args.compare_hf,
                repeats=args.repeats,
                warmup=args.warmup,
                memory=not args.no_memory,
                weights=args.weights,
                threads=args.threads,
                fast=args.fast,
                hf_attentions=args.hf_attention,
            )
            print(format_timings(results) + "\n", flush=True)  # each case as it is measured
            if args.json:
                append_records(args.json, args.section, [result_row(r) | {"threads": threads} for r in results])
    print(f"torch {torch.__version__}, {threads} threads, device {args.device}")
    print(FOOTNOTES)
    if args.compare_hf:
        print("speed-up: transformers' fastest row / ours; max |Δ|: vs our eager logits")
    return 0


def data_recipe(args: argparse.Namespace):
    """The recipe ``--data`` runs: ``--recipe`` (or the dataset's B0 recipe, else custom) with the flags applied."""
    from segformer.data import canonical_name
    from segformer.recipe import load_recipe, packaged_recipes

    if not args.data_root:
        raise ValueError("--data needs --data-root DIR (the dataset folder)")
    name = args.recipe
    if name is None:
        if not args.dataset:
            raise ValueError("--data needs --dataset NAME or --recipe R")
        name = f"{canonical_name(args.dataset)}-b0"
        name = name if name in packaged_recipes() else "custom"
    recipe = load_recipe(name)
    recipe.data.dataset = args.dataset or recipe.data.dataset
    recipe.data.root = args.data_root
    recipe.data.batch_size = args.batch_size or recipe.data.batch_size
    if args.workers is not None:
        if args.workers < 0:
            raise ValueError(f"--workers must be >= 0, got {args.workers}")
        recipe.data.workers = args.workers
    return recipe, name


def run_data(args: argparse.Namespace) -> int:
    """``--data``: images/s of the training input pipeline with N workers."""
    from segformer.benchmark import data_images_per_s

    recipe, name = data_recipe(args)
    data = recipe.data
    rate = data_images_per_s(recipe, data.workers, args.repeats, args.warmup)
    print(
        f"input pipeline: {rate:.1f} img/s ({data.dataset} at {data.root}, recipe {name}: crop {data.crop[0]}x"
        f"{data.crop[1]}, photometric {str(data.photometric).lower()}; batch {data.batch_size}, {data.workers} "
        f"workers, {args.repeats} batches after {args.warmup} warm-up)"
    )
    return 0
