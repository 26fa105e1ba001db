"""`moe-alexnet quantize`: write quantised copies of a model's weights beside them
(weights.<precision>.safetensors, experts/model/quantized.py), so that a network built
at those precisions reads the copy and never the float32 weights."""

from __future__ import annotations

import argparse
import math
import sys
import time

from tqdm import tqdm

from experts.model.quantized import PRECISIONS, check_copy_precision, copy_name, make_copy
from experts.model.repository import Repository
from service.commands import args as common

HELP = (
    "write quantised copies of a model's weights (weights.<precision>.safetensors): "
    "loading at those precisions then never reads the float32 weights"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        type=common.csv(str),
        default=None,
        help="models in the repository, comma list (default: MOE_DEFAULT_MODEL)",
    )
    p.add_argument(
        "--precision",
        type=common.precisions,
        default=["int8"],
        help=f"copies to write, comma list of {', '.join(PRECISIONS)} (default: int8; "
        "quantised ones need the model's calibration.json)",
    )
    common.models_dir_arg(p)


def run(args: argparse.Namespace) -> int:
    settings = common.settings(args, flags=())
    precisions = [check_copy_precision(p) for p in args.precision]
    repository = Repository(settings.model_repository)
    for name in args.model or [settings.default_model]:
        model = repository.load(name)
        floats = sum(4 * math.prod(shape) for shape in model.params.values())
        bar = tqdm(precisions, desc=f"quantize {name}", file=sys.stderr, leave=False, disable=None)
        for precision in bar:  # a bar on terminals only: errors stay one line
            start = time.perf_counter()
            data = make_copy(model, precision)
            path = repository.write_file(name, copy_name(precision), data)
            print(
                f"quantised {name} at {precision}: {len(data) / 2**20:.1f} MiB "
                f"({len(data) / floats:.2f}x the float32 weights), "
                f"{time.perf_counter() - start:.1f} s -> {path}"
            )
    return 0
