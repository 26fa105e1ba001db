"""The `moe-alexnet` command: one subcommand per module of this package.

Every expected failure (bad input, unknown model, no device, ...) ends as one line on
stderr and exit status 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from service.commands import (
    bench,
    calibrate,
    classify,
    devices,
    evaluate,
    import_onnx,
    quantize,
    serve,
    train,
    tune,
)
from service.failures import EXPECTED

COMMANDS = {
    "devices": devices,
    "classify": classify,
    "bench": bench,
    "calibrate": calibrate,
    "quantize": quantize,
    "tune": tune,
    "eval": evaluate,
    "import-onnx": import_onnx,
    "serve": serve,
    "train": train,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-alexnet",
        description="Mixture-of-experts AlexNet inference on OpenCL devices.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.HELP))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command].run(args)
    except KeyboardInterrupt:
        print("moe-alexnet: interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:  # an optional extra (onnx, torch) that is not installed
        print(f"moe-alexnet: error: {exc} (pip install 'moe-alexnet[onnx]')", file=sys.stderr)
        return 1
    except EXPECTED as exc:
        message = " ".join(str(exc).split()) if not isinstance(exc, OSError) else _os_error(exc)
        print(f"moe-alexnet: error: {message}", file=sys.stderr)
        return 1


def _os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


if __name__ == "__main__":
    sys.exit(main())
