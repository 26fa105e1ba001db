"""What the commands share: argument types, the model and device flags, and the
settings a command runs with (the environment's MOE_* values, under its flags)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from experts.model.calibration import CalibrationError, parse_layer_precisions
from experts.model.dual_module import DualModuleError, parse_dual_request
from kernels.precision import PRECISIONS, check_precisions
from service.failures import UsageError
from service.settings import Settings

FASHION_DIR_HELP = (
    "Fashion-MNIST idx files (default: MOE_FASHION_MNIST_DIR or /usr/share/datasets/fashion-mnist)"
)


def csv(kind: Callable[[str], Any]) -> Callable[[str], list[Any]]:
    """A comma list of `kind`, as an argparse type."""

    def parse(text: str) -> list[Any]:
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"not a comma list of {getattr(kind, '__name__', 'values')}: {text!r}"
            ) from exc
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return values

    return parse


def positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def precisions(text: str) -> list[str]:
    try:
        return check_precisions(csv(str)(text))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def layer_precisions(text: str) -> dict[str, str]:
    try:
        return parse_layer_precisions(text)
    except CalibrationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def dual_module(text: str) -> tuple[str, ...]:
    try:
        return parse_dual_request(text)
    except DualModuleError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def model_args(p: argparse.ArgumentParser, many: bool = False) -> None:
    """--model, --precision, --layer-precisions, --k and the model source flags;
    `many`: comma lists where a command compares several."""
    lists = " (comma list)" if many else ""
    p.add_argument(
        "--model",
        type=csv(str) if many else str,
        default=None,
        help=f"model name{lists} (default: setting MOE_DEFAULT_MODEL)",
    )
    p.add_argument(
        "--precision",
        type=precisions,
        default=None,
        help=f"{', '.join(PRECISIONS)}{lists} (default: setting MOE_DEFAULT_PRECISION)",
    )
    # --layer-precision: the older spelling, still accepted
    p.add_argument(
        "--layer-precisions",
        "--layer-precision",
        dest="layer_precisions",
        type=layer_precisions,
        default=None,
        metavar="LAYER=PRECISION,...",
        help="per-layer precision over --precision, e.g. conv1=fp32 (default: "
        "MOE_LAYER_PRECISIONS; mixtures: stem.conv1, experts.0.fc6, ...)",
    )
    dual_module_arg(p)
    # --experts: the older spelling, still accepted
    p.add_argument(
        "--k",
        "--experts",
        dest="k",
        type=csv(positive) if many else positive,
        default=None,
        help=f"mixtures: experts per image{lists} (default: the model's own)",
    )
    source_args(p)
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="run a built-in architecture (alexnet, caffenet, alexnet-moe, "
        "fashion-alexnet, fashion-moe) on seeded random weights",
    )
    p.add_argument("--seed", type=int, default=0, help="seed for --random-weights")


def dual_module_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dual-module",
        type=dual_module,
        default=None,
        metavar="LAYERS",
        help="run these fully connected layers with their little modules (dual-module "
        "inference), e.g. fc6,fc7 or all; none: off (default: MOE_DUAL_MODULE)",
    )


def source_args(p: argparse.ArgumentParser) -> None:
    """--device and --models-dir."""
    p.add_argument("--device", default=None, help="OpenCL device (default: MOE_DEVICE)")
    models_dir_arg(p)


def models_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="model repository (default: MOE_MODEL_REPOSITORY)",
    )


# Flags that set the setting of their name (and --models-dir, model_repository).
MODEL_FLAGS = ("device", "layer_precisions", "dual_module")


def settings(args: argparse.Namespace, flags: tuple[str, ...] = MODEL_FLAGS) -> Settings:
    """The environment's settings (MOE_*) under the given flags, each checked as it
    enters: a bad one is a UsageError naming the variable and the flag."""
    overrides: dict[str, Any] = {
        name: getattr(args, name) for name in flags if getattr(args, name, None) is not None
    }
    if getattr(args, "models_dir", None) is not None:
        overrides["model_repository"] = args.models_dir
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise UsageError(_one_line(exc)) from exc


def _one_line(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(x) for x in err.get("loc", ()))
        env = field.upper() if field.upper().startswith("MOE_") else f"MOE_{field.upper()}"
        flag = env.removeprefix("MOE_").lower().replace("_", "-")
        message = str(err.get("msg")).removeprefix("Value error, ")
        parts.append(f"{env} (--{flag}): {message}")
    return "invalid setting " + "; ".join(parts)
