"""`moe-alexnet tune`: search each layer's kernel parameters on a device and write
the winners to the device's tuning database (kernels/tuning.py, kernels/tuner.py)."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from experts.model.resolve import resolve_model
from experts.networks.build import build_network
from experts.networks.tune import tuning_cases
from kernels.runtime import Device
from kernels.tuner import Case, tune
from kernels.tuning import Tuning, file_name, read_usable, tuning_dir
from service.commands import args as common
from service.failures import UsageError

HELP = "tune the kernels of a model's layers for a device (writes its tuning database)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        type=common.csv(str),
        default=None,
        help="models to tune, comma list (default: MOE_DEFAULT_MODEL)",
    )
    p.add_argument(
        "--precision",
        type=common.precisions,
        default=["fp32"],
        help="precisions, comma list (default: fp32)",
    )
    p.add_argument(
        "--batch", type=common.csv(common.positive), default=[1, 8], help="batch sizes (1,8)"
    )
    p.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="seconds of search in all, shared by the layers (default 60; each layer "
        "tries at least the built-in choice and one candidate per algorithm)",
    )
    p.add_argument(
        "--output",
        type=Path,
        default=None,
        help="directory of the database (default: MOE_TUNING_DIR, else "
        "~/.cache/moe-alexnet/tuning)",
    )
    p.add_argument("--json", action="store_true", help="print JSON rows")
    common.source_args(p)
    p.add_argument(
        "--random-weights", action="store_true", help="a built-in architecture, seeded weights"
    )
    p.add_argument("--seed", type=int, default=0, help="seed for the weights and the search")


def _writable(directory: Path) -> None:
    """Fail now, in one line, where the database could not be written at the end."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as exc:
        raise UsageError(
            f"{directory}: cannot write the tuning database there ({exc.strerror or exc}); "
            "choose another with --output or MOE_TUNING_DIR"
        ) from exc


def run(args: argparse.Namespace) -> int:
    if not args.budget > 0:
        raise UsageError(f"--budget must be more than 0 seconds, got {args.budget}")
    settings = common.settings(args, flags=("device",))
    directory = args.output or tuning_dir()
    _writable(directory)
    device = Device(settings.device, profile=True)
    cases: list[Case] = []
    for name in args.model or [settings.default_model]:
        model = resolve_model(name, settings.model_repository, args.random_weights, args.seed)
        for precision in args.precision:
            network = build_network(model, device, precision)
            found, left_out = tuning_cases(network, model.weights, args.batch, args.seed)
            cases += found
            for line in left_out:
                print(f"{name}: not tuned: {line}", file=sys.stderr)
    if not cases:
        raise UsageError("nothing to tune: no convolution or fully connected layer of its own")
    # The file's own entries and the new ones (whether or not MOE_TUNING reads it).
    key = device.tuning.key
    path = directory / file_name(key)
    tuning = read_usable(path, key) or Tuning(key)
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + args.budget
    bar = tqdm(cases, desc=f"tune {device.name}", unit="layer", file=sys.stderr, disable=None)
    try:
        for i, case in enumerate(bar):
            share = max(0.0, deadline - time.monotonic()) / (len(cases) - i)
            outcome = tune(device, case, share, args.seed)
            tuning.put(
                case.op, case.shape, case.precision.name, case.batch, outcome.params, outcome.ms
            )
            tuning.save(directory)  # after every layer: an interruption keeps what was found
            rows.append(
                {
                    "layer": case.label,
                    "shape": case.shape,
                    "builtin_ms": round(outcome.builtin_ms, 4),
                    "tuned_ms": round(outcome.ms, 4),
                    "speedup": round(outcome.builtin_ms / outcome.ms, 3) if outcome.ms else None,
                    "params": outcome.params,
                    "tried": outcome.tried,
                    "rejected": outcome.wrong,
                    "skipped": outcome.failed,
                    "not_sampled": outcome.hopeless,
                }
            )
            bar.set_postfix_str(f"{case.label}: {rows[-1]['speedup']}x")
    except KeyboardInterrupt:
        print(f"moe-alexnet: interrupted: {len(rows)} layers kept in {path}", file=sys.stderr)
        return 130
    finally:
        bar.close()
    _report(rows, path, args.json)
    return 0


def _report(rows: list[dict[str, Any]], path: Path, as_json: bool) -> None:
    if as_json:
        print(json.dumps({"database": str(path), "layers": rows}, indent=1))
        return
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "built-in"
        slow = ", ".join(r["not_sampled"])
        print(
            f"{r['layer']:34s} {r['builtin_ms']:9.4f} -> {r['tuned_ms']:9.4f} ms "
            f"({r['speedup']}x) {params}; tried {r['tried']}, rejected {r['rejected']}, "
            f"skipped {r['skipped']}" + (f"; not sampled (3x slower): {slow}" if slow else "")
        )
    print(f"database: {path}")
