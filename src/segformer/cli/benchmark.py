"""``segformer benchmark``: latency, throughput, GMACs and peak memory, optionally against transformers."""

from __future__ import annotations

import argparse
import re
import sys

from segformer.cli.common import add_device_argument, add_threads_argument
from segformer.config import VARIANTS


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"(\d+)[x×](\d+)", text.strip().lower())
    if not match:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected HEIGHTxWIDTH, e.g. 512x512")
    return int(match.group(1)), int(match.group(2))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--variants", nargs="+", default=["b0"], choices=list(VARIANTS), help="default: b0")
    parser.add_argument("--sizes", nargs="+", type=_size, default=[(512, 512)], help="HxW … (default: 512x512)")
    parser.add_argument("--batch-size", type=int, default=1, help="images per step (default: 1)")
    add_device_argument(parser, default="cpu")
    parser.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32", help="autocast dtype")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per model (default: 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs first (default: 2)")
    add_threads_argument(parser)
    parser.add_argument("--num-classes", type=int, default=150, help="classes of the random model (default: 150)")
    parser.add_argument("--weights", help="checkpoint to benchmark instead of random weights (sets variant)")
    parser.add_argument("--compare-hf", action="store_true", help="also run transformers' model, same weights")
    parser.add_argument("--train", action="store_true", help="time a training step (forward, backward, AdamW)")
    parser.add_argument("--compile", action="store_true", help="torch.compile our model first")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")


def run(args: argparse.Namespace) -> int:
    import torch

    from segformer.benchmark import Case, format_table, num_threads, run_case
    from segformer.device import resolve_device

    if args.batch_size < 1 or args.repeats < 1 or args.warmup < 0:
        raise ValueError("--batch-size and --repeats must be >= 1 and --warmup >= 0")
    resolve_device(args.device)
    if args.compare_hf:
        import transformers  # noqa: F401  (fail before measuring: main turns a missing package into its pip hint)
    results = []
    with num_threads(args.threads):
        threads = torch.get_num_threads()
        for variant in [None] if args.weights else args.variants:
            for height, width in args.sizes:
                case = Case(
                    variant=variant or "b0",
                    height=height,
                    width=width,
                    batch_size=args.batch_size,
                    device=args.device,
                    dtype=args.dtype,
                    train=args.train,
                    num_classes=args.num_classes,
                    compile=args.compile,
                )
                results += run_case(
                    case,
                    compare_hf=args.compare_hf,
                    repeats=args.repeats,
                    warmup=args.warmup,
                    memory=not args.no_memory,
                    weights=args.weights,
                    threads=args.threads,
                )
                print(f"measured {case.label}", file=sys.stderr, flush=True)
    print(format_table(results))
    print(f"\ntorch {torch.__version__}, {threads} threads, device {args.device}")
    print("GMACs: multiply-accumulates (FLOPs / 2, the paper's unit), FlopCounterMode")
    print("peak MiB: rise during one step (CUDA: max_memory_allocated; CPU: peak RSS, fresh subprocess)")
    if args.compare_hf:
        print("speed-up: transformers' faster attention implementation / ours; max |Δ|: vs our logits")
    return 0
