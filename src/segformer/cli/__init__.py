"""The ``segformer`` command: ``segformer COMMAND [options]``.

Each command lives in its own module ``segformer.cli.<name>`` with ``add_arguments(parser)`` and
``run(args) -> int``; a module is imported only when its command runs, so ``segformer --help``
stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from segformer.cli.common import error_line, missing_package_hint

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("convert", "convert a checkpoint of any layout to ours or to transformers' layout"),
    "export": ("export", "export to ONNX or torch.export (.pt2) with dynamic batch, height and width"),
    "benchmark": ("benchmark", "latency, GMACs and peak memory, optionally against transformers"),
    "predict": ("predict", "segment images: label PNGs and overlays with a legend"),
    "eval": ("eval", "mIoU of a model on a dataset split (torchrun for several processes)"),
    "check-data": ("check_data", "check a dataset before training: every image/mask pair, class ids, pixel shares"),
    "import-coco": ("import_coco", "COCO instances/panoptic annotations to a custom dataset of class-id masks"),
    "train": ("train", "train with a recipe (paper settings packaged), resumable, torchrun for several GPUs"),
    "serve": ("serve", "HTTP API and web page for segmentation (concurrent requests batched)"),
    "demo": ("demo", "train a B0 from scratch on synthetic shapes, offline, in minutes on a CPU"),
}


def build_parser(command: str) -> argparse.ArgumentParser:
    module = importlib.import_module(f"segformer.cli.{COMMANDS[command][0]}")
    parser = argparse.ArgumentParser(prog=f"segformer {command}", description=COMMANDS[command][1])
    module.add_arguments(parser)
    parser.set_defaults(run=module.run)
    return parser


def usage() -> str:
    lines = ["usage: segformer COMMAND [options]   (segformer COMMAND --help for its options)", "", "commands:"]
    lines += [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run ``segformer COMMAND [options]``; return the exit status.

    User errors (bad values, missing or existing files, unwritable outputs, a missing optional package) print
    one line ``segformer COMMAND: error: ...`` and return 1; Ctrl-C prints one line and returns 130. Any other
    exception is a bug and keeps its traceback.
    """
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        print(usage(), file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from segformer import __version__

        print(f"segformer {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"segformer: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    prefix = f"segformer {argv[0]}"
    try:
        args = build_parser(argv[0]).parse_args(argv[1:])
        return args.run(args) or 0
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except ImportError as e:
        hint = missing_package_hint(e)
        if hint is None:
            raise
        print(f"{prefix}: error: {hint}", file=sys.stderr)
        return 1
    except (ValueError, OSError) as e:  # user errors (CheckpointError is a ValueError): one line, no traceback
        print(f"{prefix}: error: {error_line(e)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
