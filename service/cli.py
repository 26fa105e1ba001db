"""The `moe-alexnet` command: devices, classify, bench, import-onnx.

Every expected failure (bad input, unknown model, no device, ...) ends as one line on
stderr and exit status 1; usage errors exit 2 (argparse).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from kernels.precision import PRECISIONS as TABLE
from service.scores import probabilities, top_predictions
from service.settings import Settings

PRECISIONS = tuple(TABLE)  # kernels/precision.py


class CliError(Exception):
    """A failure to report in one line."""


def _csv(kind: type) -> Any:
    def parse(text: str) -> list:
        try:
            values = [kind(part) for part in text.split(",") if part.strip()]
        except ValueError as exc:
            raise argparse.ArgumentTypeError(
                f"not a comma list of {kind.__name__}: {text!r}"
            ) from exc
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return values

    return parse


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _precisions(text: str) -> list[str]:
    values = _csv(str)(text)
    unknown = [p for p in values if p not in PRECISIONS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown precision {', '.join(unknown)}; supported: {', '.join(PRECISIONS)}"
        )
    return values


def _layer_map(text: str) -> dict[str, str]:
    from experts.calibration import CalibrationError, parse_layer_precisions

    try:
        layers = parse_layer_precisions(text)
    except CalibrationError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    _precisions(",".join(layers.values()))
    return layers


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-alexnet",
        description="Mixture-of-experts AlexNet inference on OpenCL devices.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def model_args(p: argparse.ArgumentParser, many: bool = False) -> None:
        p.add_argument("--model", type=_csv(str) if many else str, default=None,
                       help="model name%s (default: setting MOE_DEFAULT_MODEL)"
                       % (" or comma list" if many else ""))  # fmt: skip
        p.add_argument("--precision", type=_precisions, default=None,
                       help=f"{', '.join(PRECISIONS)}%s (default: setting "
                       "MOE_DEFAULT_PRECISION)" % (", comma list" if many else ""))  # fmt: skip
        p.add_argument("--layer-precision", type=_layer_map, default=None,
                       metavar="LAYER=PRECISION,...",
                       help="per-layer precision over --precision, e.g. conv1=fp32 "
                       "(default: MOE_LAYER_PRECISION; mixtures: stem.conv1, "
                       "experts.0.fc6, ...)")  # fmt: skip
        p.add_argument("--device", default=None, help="OpenCL device (default: MOE_DEVICE)")
        p.add_argument("--models-dir", type=Path, default=None,
                       help="model repository (default: MOE_MODEL_REPOSITORY)")  # fmt: skip
        p.add_argument("--random-weights", action="store_true",
                       help="run a built-in architecture (alexnet, caffenet, alexnet-moe, "
                       "fashion-alexnet, fashion-moe) on seeded random weights")  # fmt: skip
        p.add_argument("--seed", type=int, default=0, help="seed for --random-weights")
        p.add_argument("--experts", type=_csv(_positive) if many else _positive, default=None,
                       help="mixtures: experts per image, k%s (default: the model's own)"
                       % (" (comma list)" if many else ""))  # fmt: skip

    p = sub.add_parser("devices", help="list OpenCL platforms and devices")
    p.add_argument("--json", action="store_true", help="print JSON")

    p = sub.add_parser("classify", help="classify images or preprocessed .npy tensors")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file or .npy tensor")
    model_args(p)
    p.add_argument("--top-k", type=_positive, default=5, help="predictions per input")
    p.add_argument("--json", action="store_true", help="print one JSON document")

    p = sub.add_parser("bench", help="latency, throughput and memory per model/batch")
    model_args(p, many=True)
    p.add_argument("--batch", type=_csv(_positive), default=[1, 8], help="batch sizes")
    p.add_argument("--iterations", type=_positive, default=20, help="timed runs per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    p.add_argument("--rounds", type=_positive, default=3,
                   help="rows of one precision and batch (models, k, runtimes) take turns "
                   "in this many rounds")  # fmt: skip
    p.add_argument("--compare", choices=["onnxruntime"], default=None,
                   help="also run the same network and weights in onnxruntime")  # fmt: skip
    p.add_argument("--dataset", choices=["fashion-mnist"], default=None,
                   help="time on real test images, a different batch each run (a "
                   "mixture's speed depends on how its gate spreads them), not noise")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=None,
                   help="Fashion-MNIST idx files (default: MOE_FASHION_MNIST_DIR or "
                   "/usr/share/datasets/fashion-mnist)")  # fmt: skip
    p.add_argument("--profile", action="store_true",
                   help="also the device time of each layer (OpenCL profiling events, "
                   "medians of a few more runs per row)")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object per row")

    p = sub.add_parser("serve", help="serve the models over HTTP (v1 JSON and KServe v2 APIs)")
    p.add_argument("--host", default=None, help="bind address (default: MOE_HOST or 0.0.0.0)")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: MOE_PORT or 8000)")
    p.add_argument("--models", type=_csv(str), default=None,
                   help="comma list of models (default: MOE_MODELS, else every model in the "
                   "repository)")  # fmt: skip
    p.add_argument("--precisions", type=_csv(str), default=None,
                   help="comma list of precisions (default: MOE_PRECISIONS or fp32)")  # fmt: skip
    p.add_argument("--device", default=None, help="OpenCL device (default: MOE_DEVICE)")
    p.add_argument("--models-dir", type=Path, default=None,
                   help="model repository (default: MOE_MODEL_REPOSITORY)")  # fmt: skip
    p.add_argument("--random-weights", action="store_true", default=None,
                   help="serve built-in architectures (alexnet, caffenet) on seeded random "
                   "weights (default models: MOE_DEFAULT_MODEL)")  # fmt: skip
    p.add_argument("--seed", type=int, default=None, help="seed for --random-weights")
    p.add_argument("--log-level", default=None, help="default: MOE_LOG_LEVEL or info")

    p = sub.add_parser("eval", help="accuracy on the Fashion-MNIST test images")
    model_args(p)
    p.add_argument("--dataset", choices=["fashion-mnist"], default="fashion-mnist")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="Fashion-MNIST idx files (default: MOE_FASHION_MNIST_DIR or "
                   "/usr/share/datasets/fashion-mnist)")  # fmt: skip
    p.add_argument("--limit", type=_positive, default=None, help="first N test images only")
    p.add_argument("--batch", type=_positive, default=64, help="images per run")
    p.add_argument("--parity", action="store_true",
                   help="also run the weights in PyTorch (training extra) and report the "
                   "share of equal top-1 predictions")  # fmt: skip
    p.add_argument("--json", action="store_true", help="one JSON object per precision")

    p = sub.add_parser("calibrate", help="measure layer input ranges for int8/int16 "
                       "(writes calibration.json beside the weights)")  # fmt: skip
    p.add_argument("--model", default=None, help="model in the repository (default: "
                   "MOE_DEFAULT_MODEL)")  # fmt: skip
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--images", type=Path, default=None,
                        help="a folder of images (or preprocessed .npy tensors)")  # fmt: skip
    source.add_argument("--dataset", choices=["fashion-mnist"], default=None,
                        help="the Fashion-MNIST training images")  # fmt: skip
    p.add_argument("--samples", type=_positive, default=512, help="images to use, at most")
    p.add_argument("--method", choices=["minmax", "percentile"], default="minmax",
                   help="range of each layer's input: all values seen, or the "
                   "0.01-99.99th percentiles (clips outliers)")  # fmt: skip
    p.add_argument("--batch", type=_positive, default=64, help="images per run")
    p.add_argument("--data-dir", type=Path, default=None,
                   help="Fashion-MNIST idx files (default: MOE_FASHION_MNIST_DIR or "
                   "/usr/share/datasets/fashion-mnist)")  # fmt: skip
    p.add_argument("--models-dir", type=Path, default=None,
                   help="model repository (default: MOE_MODEL_REPOSITORY)")  # fmt: skip

    p = sub.add_parser("import-onnx", help="add an ONNX AlexNet-family model to the repository")
    p.add_argument("file", type=Path, help="the .onnx file")
    p.add_argument("--name", required=True, help="model name in the repository")
    p.add_argument("--labels", type=Path, default=None, help="text file, one label per line")
    p.add_argument("--models-dir", type=Path, default=None, help="model repository")
    p.add_argument("--force", action="store_true", help="replace an existing model")

    p = sub.add_parser("train", help="train a Fashion-MNIST model with PyTorch")
    p.add_argument("--arch", required=True, choices=["fashion-moe", "fashion-alexnet"],
                   help="architecture (experts/architectures.py)")  # fmt: skip
    p.add_argument("--epochs", type=_positive, default=None,
                   help="epochs (default: the recommended count for --arch)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of every random generator")
    p.add_argument("--out", type=Path, default=None,
                   help="model repository to save in (default: MOE_MODEL_REPOSITORY)")  # fmt: skip
    p.add_argument("--limit", type=_positive, default=None,
                   help="use only the first N images of each split (quick trials)")  # fmt: skip
    p.add_argument("--batch-size", type=_positive, default=128, help="images per step")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default 2e-3)")
    p.add_argument("--dropout", type=float, default=None,
                   help="dropout while training (default: 0.25 mixture, spec's else)")  # fmt: skip
    p.add_argument("--clean-fraction", type=float, default=None,
                   help="mixtures: last share of epochs routed without gate noise "
                   "(default 0.2)")  # fmt: skip
    p.add_argument("--route-clean", action=argparse.BooleanOptionalAction, default=None,
                   help="mixtures: the gate routes each training image by its un-augmented "
                   "original, as it will be served (default: on)")  # fmt: skip
    p.add_argument("--device", dest="torch_device", default="cpu",
                   help="PyTorch device to train on: cpu (default), cuda, cuda:N")  # fmt: skip
    p.add_argument("--threads", type=_positive, default=None,
                   help="torch CPU threads (default: every core)")  # fmt: skip
    p.add_argument("--teacher", default=None,
                   help="distil from this model of the repository (its scores for each "
                   "training image become soft targets)")  # fmt: skip
    p.add_argument("--distill", type=float, default=None,
                   help="with --teacher: the distillation loss's weight, 0-1 "
                   "(default 0.5)")  # fmt: skip
    p.add_argument("--autocast", choices=["auto", "bf16", "off"], default=None,
                   help="forward passes in bfloat16, weights float32 (default: auto for "
                   "fashion-alexnet: bf16 where the device has it natively; off for "
                   "fashion-moe)")  # fmt: skip
    p.add_argument("--data-dir", type=Path, default=None,
                   help="Fashion-MNIST idx files (default: MOE_FASHION_MNIST_DIR or "
                   "/usr/share/datasets/fashion-mnist)")  # fmt: skip
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if getattr(args, "device", None) is not None:
        settings.device = args.device
    if getattr(args, "models_dir", None) is not None:
        settings.model_repository = args.models_dir
    if getattr(args, "layer_precision", None) is not None:
        settings.layer_precision = args.layer_precision
    return settings


def _open_device(settings: Settings) -> Any:
    from kernels.runtime import Device

    return Device(settings.device)


def cmd_devices(args: argparse.Namespace) -> int:
    from kernels.runtime import Device, DeviceError, default_index, list_devices

    devices = list_devices()
    if not devices:
        raise CliError("no OpenCL device found: install pocl-opencl-icd or an OpenCL driver")
    default = default_index(devices)
    rows = []
    for i, (info, _) in enumerate(devices):
        dot4 = False  # int8 byte dot products (AVX-512 VNNI): CPU devices only
        if info.kind == "CPU":
            try:
                dot4 = Device(info.index).dot4
            except DeviceError:  # listed but cannot be opened: listed all the same
                pass
        rows.append({**info.__dict__, "int8_dot_products": dot4, "default": i == default})
    if args.json:
        print(json.dumps({"devices": rows}, indent=2))
        return 0
    for row in rows:
        mark = "*" if row["default"] else " "
        print(
            f"{mark} {row['index']:5s} {row['platform']} / {row['name']}\n"
            f"        {row['kind']}, {row['compute_units']} compute units, "
            f"{row['global_mem_bytes'] / 2**30:.1f} GiB, max alloc "
            f"{row['max_alloc_bytes'] / 2**30:.1f} GiB, fp16 {'yes' if row['fp16'] else 'no'}, "
            f"int8 dot products {'yes' if row['int8_dot_products'] else 'no'}, "
            f"{row['opencl_c']}"
        )
    print("* default (select another with --device or MOE_DEVICE: 'P:D', 'pocl:0', a name)")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    from experts.loading import build_network, forward, resolve_model
    from service.images import load_input

    settings = _settings(args)
    if args.precision and len(args.precision) > 1:
        raise CliError("classify runs one precision at a time; eval and bench compare several")
    precision = (args.precision or [settings.default_precision])[0]
    name = args.model or settings.default_model
    model = resolve_model(name, settings.model_repository, args.random_weights, args.seed)
    batches = [(path, load_input(path, model.meta["input"])) for path in args.inputs]
    device = _open_device(settings)
    network = build_network(model, device, precision, settings.layer_precision)
    results = []
    for path, x in batches:
        scores, routing = forward(network, x, args.experts)
        probs = probabilities(model, scores)
        for j, row in enumerate(probs):
            label = path if len(probs) == 1 else f"{path}[{j}]"
            preds = top_predictions(row, model.labels, min(args.top_k, len(row)))
            result: dict[str, Any] = {"input": label, "predictions": preds}
            if routing is not None:
                result["experts"] = [
                    {"expert": int(e), "weight": round(float(w), 6)}
                    for e, w in zip(routing.indices[j], routing.gates[j], strict=True)
                ]
            results.append(result)
    doc = {"model": model.name, "version": model.version, "precision": precision,
           "device": device.name, "results": results}  # fmt: skip
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    print(f"model {model.name} v{model.version}, {precision}, on {device.name}")
    for result in results:
        print(result["input"])
        if "experts" in result:
            chosen = ", ".join(f"{x['expert']} ({x['weight']:.2f})" for x in result["experts"])
            print(f"  experts: {chosen}")
        for p in result["predictions"]:
            print(f"  {p['score']:8.4f}  {p['index']:5d}  {p['label']}")
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from experts.datasets import DatasetError
    from service.calibrate import run_calibrate

    try:
        return run_calibrate(args, _settings(args))
    except DatasetError as exc:
        raise CliError(str(exc)) from exc


def cmd_import_onnx(args: argparse.Namespace) -> int:
    from experts.onnx_import import import_onnx
    from experts.repository import Repository

    settings = _settings(args)
    if not args.file.is_file():
        raise CliError(f"{args.file}: no such file")
    labels = None
    if args.labels is not None:
        try:
            text = args.labels.read_text(encoding="utf-8")
        except OSError as exc:
            raise CliError(f"{args.labels}: cannot read labels: {exc.strerror}") from exc
        labels = [line.strip() for line in text.splitlines() if line.strip()]
    meta, weights = import_onnx(args.file, args.name, labels)
    path = Repository(settings.model_repository).save(
        args.name, meta, weights, overwrite=args.force
    )
    n_params = sum(w.size for w in weights.values())
    print(f"imported {args.file} as {args.name}: {len(meta['layers'])} layers, "
          f"{n_params / 1e6:.1f} M parameters -> {path}")  # fmt: skip
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    from experts.datasets import DatasetError
    from service.evaluate import run_eval

    try:
        return run_eval(args, _settings(args))
    except DatasetError as exc:
        raise CliError(str(exc)) from exc


def cmd_bench(args: argparse.Namespace) -> int:
    from experts.datasets import DatasetError
    from service.bench import run_bench

    settings = _settings(args)
    try:
        return run_bench(args, settings)
    except DatasetError as exc:
        raise CliError(str(exc)) from exc


def cmd_serve(args: argparse.Namespace) -> int:
    from service.server import ServeError, serve

    try:
        return serve(args)
    except ServeError as exc:
        raise CliError(str(exc)) from exc


def _train_options(args: argparse.Namespace) -> dict[str, float | bool | str]:
    """The recipe options given (--lr, --dropout, --teacher, ...: unset ones keep the
    per-arch defaults), and the torch device."""
    options = {"lr": args.lr, "dropout": args.dropout, "clean_fraction": args.clean_fraction,
               "route_clean": args.route_clean, "device": args.torch_device,
               "autocast": args.autocast, "teacher": args.teacher,
               "distill": args.distill}  # fmt: skip
    return {key: value for key, value in options.items() if value is not None}


def cmd_train(args: argparse.Namespace) -> int:
    from experts.datasets import DatasetError
    from experts.training import TrainingError, routing_warning, summary_line, train

    repository = _settings(args).model_repository
    out = args.out if args.out is not None else repository
    try:
        summary = train(args.arch, args.epochs, args.seed, out, args.batch_size,
                        data_dir=args.data_dir, limit=args.limit, threads=args.threads,
                        teacher_dir=repository,
                        **_train_options(args))  # fmt: skip
    except (TrainingError, DatasetError) as exc:
        raise CliError(str(exc)) from exc
    print(summary_line(summary))
    warning = routing_warning(summary)
    if warning:
        print(f"moe-alexnet: {warning}", file=sys.stderr)
    return 0


COMMANDS = {
    "devices": cmd_devices,
    "classify": cmd_classify,
    "bench": cmd_bench,
    "calibrate": cmd_calibrate,
    "eval": cmd_eval,
    "import-onnx": cmd_import_onnx,
    "serve": cmd_serve,
    "train": cmd_train,
}


def expected_errors() -> tuple[type[BaseException], ...]:
    """Failures that are the user's input or environment, reported in one line."""
    from experts.repository import ModelError
    from experts.spec import SpecError
    from kernels.runtime import DeviceError, KernelError
    from service.calibrate import CalibrateError
    from service.images import InputError

    errors: list[type[BaseException]] = [
        CliError, ModelError, SpecError, DeviceError, KernelError, InputError, OSError,
        CalibrateError,
    ]  # fmt: skip
    try:
        from experts.onnx_import import OnnxImportError

        errors.append(OnnxImportError)
    except ImportError:  # onnx not installed: import-onnx reports that itself
        pass
    return tuple(errors)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("moe-alexnet: interrupted", file=sys.stderr)
        return 130
    except ImportError as exc:
        print(f"moe-alexnet: error: {exc} (pip install 'moe-alexnet[onnx]')", file=sys.stderr)
        return 1
    except expected_errors() as exc:
        message = " ".join(str(exc).split()) if not isinstance(exc, OSError) else _os_error(exc)
        print(f"moe-alexnet: error: {message}", file=sys.stderr)
        return 1


def _os_error(exc: OSError) -> str:
    where = f"{exc.filename}: " if exc.filename else ""
    return f"{where}{exc.strerror or exc}"


if __name__ == "__main__":
    sys.exit(main())
