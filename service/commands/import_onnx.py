"""`moe-alexnet import-onnx`: an ONNX AlexNet-family model into the repository."""

from __future__ import annotations

import argparse
from pathlib import Path

from experts.model.repository import Repository
from service.commands import args as common
from service.failures import UsageError

HELP = "add an ONNX AlexNet-family model to the repository"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", type=Path, help="the .onnx file")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--labels", type=Path, default=None, help="text file, one label per line")
    common.models_dir_arg(p)
    p.add_argument("--force", action="store_true", help="replace an existing model")


def run(args: argparse.Namespace) -> int:
    from experts.onnx.importer import import_onnx  # onnx: the optional extra

    settings = common.settings(args, flags=())
    if not args.file.is_file():
        raise UsageError(f"{args.file}: no such file")
    labels = None
    if args.labels is not None:
        try:
            text = args.labels.read_text(encoding="utf-8")
        except OSError as exc:
            raise UsageError(f"{args.labels}: cannot read labels: {exc.strerror}") from exc
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    meta, weights = import_onnx(args.file, args.name, labels)
    path = Repository(settings.model_repository).save(
        args.name, meta, weights, overwrite=args.force
    )
    n_params = sum(w.size for w in weights.values())
    print(
        f"imported {args.file} as {args.name}: {len(meta['layers'])} layers, "
        f"{n_params / 1e6:.1f} M parameters -> {path}"
    )
    return 0
