"""`moe-alexnet train`: train a Fashion-MNIST model with PyTorch (the train extra)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from experts.training.report import routing_warning, summary_line
from experts.training.train import ARCHS, train
from service.commands import args as common

HELP = "train a Fashion-MNIST model with PyTorch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--arch",
        required=True,
        choices=list(ARCHS),
        help="architecture (experts/model/architectures.py)",
    )
    p.add_argument(
        "--epochs",
        type=common.positive,
        default=None,
        help="epochs (default: the recommended count for --arch)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of every random generator")
    p.add_argument(
        "--out",
        type=Path,
        default=None,
        help="model repository to save in (default: MOE_MODEL_REPOSITORY)",
    )
    p.add_argument(
        "--limit",
        type=common.positive,
        default=None,
        help="use only the first N images of each split (quick trials)",
    )
    p.add_argument("--batch-size", type=common.positive, default=128, help="images per step")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3)")
    p.add_argument(
        "--dropout",
        type=float,
        default=None,
        help="dropout while training (default: 0.25 mixture, spec's else)",
    )
    p.add_argument(
        "--clean-fraction",
        type=float,
        default=None,
        help="mixtures: last share of epochs routed without gate noise (default 0.2)",
    )
    p.add_argument(
        "--route-clean",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="mixtures: the gate routes each training image by its un-augmented "
        "original, as it will be served (default: on)",
    )
    p.add_argument(
        "--device",
        dest="torch_device",
        default="cpu",
        help="PyTorch device to train on: cpu (default), cuda, cuda:N",
    )
    p.add_argument(
        "--threads",
        type=common.positive,
        default=None,
        help="torch CPU threads (default: every core)",
    )
    p.add_argument(
        "--teacher",
        default=None,
        help="distil from this model of the repository (its scores for each "
        "training image become soft targets)",
    )
    p.add_argument(
        "--distill",
        type=float,
        default=None,
        help="with --teacher: the distillation loss's weight, 0-1 (default 0.5)",
    )
    p.add_argument(
        "--autocast",
        choices=["auto", "bf16", "off"],
        default=None,
        help="forward passes in bfloat16, weights float32 (default: auto for "
        "fashion-alexnet: bf16 where the device has it natively; off for "
        "fashion-moe)",
    )
    p.add_argument("--data-dir", type=Path, default=None, help=common.FASHION_DIR_HELP)


def _options(args: argparse.Namespace) -> dict[str, float | bool | str]:
    """The recipe options given (--lr, --dropout, --teacher, ...: unset ones keep the
    per-arch defaults), and the torch device."""
    options = {
        "lr": args.lr,
        "dropout": args.dropout,
        "clean_fraction": args.clean_fraction,
        "route_clean": args.route_clean,
        "device": args.torch_device,
        "autocast": args.autocast,
        "teacher": args.teacher,
        "distill": args.distill,
    }
    return {key: value for key, value in options.items() if value is not None}


def run(args: argparse.Namespace) -> int:
    repository = common.settings(args, flags=()).model_repository
    out = args.out if args.out is not None else repository
    summary = train(
        args.arch,
        args.epochs,
        args.seed,
        out,
        args.batch_size,
        data_dir=args.data_dir,
        limit=args.limit,
        threads=args.threads,
        teacher_dir=repository,
        **_options(args),
    )
    print(summary_line(summary))
    warning = routing_warning(summary)
    if warning:
        print(f"moe-alexnet: {warning}", file=sys.stderr)
    return 0
