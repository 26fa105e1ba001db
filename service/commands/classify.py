"""`moe-alexnet classify`: the top-k labels of image files or preprocessed tensors."""

from __future__ import annotations

import argparse
import json
from typing import Any

from experts.model.dual_module import resolve_layers
from experts.model.resolve import resolve_model
from experts.networks.build import build_network
from kernels.runtime import Device
from service.commands import args as common
from service.failures import UsageError
from service.images import load_input
from service.scores import probabilities, top_predictions

HELP = "classify images or preprocessed .npy tensors"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image file or .npy tensor")
    common.model_args(p)
    p.add_argument("--top-k", type=common.positive, default=5, help="predictions per input")
    p.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    settings = common.settings(args)
    if args.precision and len(args.precision) > 1:
        raise UsageError("classify runs one precision at a time; eval and bench compare several")
    precision = (args.precision or [settings.default_precision])[0]
    name = args.model or settings.default_model
    model = resolve_model(name, settings.model_repository, args.random_weights, args.seed)
    batches = [(path, load_input(path, model.meta["input"])) for path in args.inputs]
    device = Device(settings.device)
    network = build_network(
        model, device, precision, settings.layer_precisions, settings.dual_module
    )
    results = []
    for path, x in batches:
        out = network.run(x, args.k)
        probs = probabilities(network, out.scores)
        for j, row in enumerate(probs):
            label = path if len(probs) == 1 else f"{path}[{j}]"
            preds = top_predictions(row, model.labels, min(args.top_k, len(row)))
            result: dict[str, Any] = {"input": label, "predictions": preds}
            if out.routing is not None:
                result["experts"] = [
                    {"expert": int(e), "weight": round(float(w), 6)}
                    for e, w in zip(out.routing.indices[j], out.routing.gates[j], strict=True)
                ]
            results.append(result)
    doc: dict[str, Any] = {
        "model": model.name,
        "version": model.version,
        "precision": precision,
        "device": device.name,
    }
    if settings.dual_module:
        doc["dual_module"] = resolve_layers(model.meta, settings.dual_module)
    doc["results"] = results
    if args.json:
        print(json.dumps(doc, indent=2))
        return 0
    dual = f", little modules on {','.join(doc['dual_module'])}" if "dual_module" in doc else ""
    print(f"model {model.name} v{model.version}, {precision}{dual}, on {device.name}")
    for result in results:
        print(result["input"])
        if "experts" in result:
            chosen = ", ".join(f"{x['expert']} ({x['weight']:.2f})" for x in result["experts"])
            print(f"  experts: {chosen}")
        for p in result["predictions"]:
            print(f"  {p['score']:8.4f}  {p['index']:5d}  {p['label']}")
    return 0
