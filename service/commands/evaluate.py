"""`moe-alexnet eval`: accuracy on real labelled images (the 10,000 Fashion-MNIST test
images), per precision, with the routing of a mixture of experts."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from experts.data.fashion_mnist import load_fashion_mnist, to_model_input
from experts.model.model import Model
from experts.model.resolve import resolve_model
from experts.networks.base import Runnable
from experts.networks.build import build_network, little_modules, storage_note, store_for
from kernels.runtime import Device
from service.commands import args as common

HELP = "accuracy on the Fashion-MNIST test images"


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.model_args(p)
    p.add_argument("--dataset", choices=["fashion-mnist"], default="fashion-mnist")
    p.add_argument("--data-dir", type=Path, default=None, help=common.FASHION_DIR_HELP)
    p.add_argument("--limit", type=common.positive, default=None, help="first N test images only")
    p.add_argument("--batch", type=common.positive, default=64, help="images per run")
    p.add_argument(
        "--parity",
        action="store_true",
        help="also run the weights in PyTorch (training extra) and report the "
        "share of equal top-1 predictions",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per precision")


def evaluate(
    network: Runnable, x: np.ndarray, labels: np.ndarray, k: int | None, batch: int, label: str
) -> dict[str, Any]:
    """Top-1/top-5 accuracy and images/s of one network over a labelled set; for a
    mixture also the routing histogram, per-expert accuracy and mean gate weight."""
    top1, top5, chosen, weight = [], [], [], []
    elapsed = 0.0
    for start in tqdm(
        range(0, len(x), batch),
        desc=label,
        unit="batch",
        leave=False,
        file=sys.stderr,
        disable=None,
    ):
        xb, yb = x[start : start + batch], labels[start : start + batch]
        t0 = time.perf_counter()
        out = network.run(xb, k)
        elapsed += time.perf_counter() - t0
        scores, routing = out.scores, out.routing
        order = np.argsort(-scores, axis=1, kind="stable")
        top1.append(order[:, 0])
        top5.append((order[:, :5] == yb[:, None]).any(axis=1))
        if routing is not None:
            chosen.append(routing.indices[:, 0])
            weight.append(routing.confidence)
    pred = np.concatenate(top1)
    result: dict[str, Any] = {
        "images": len(x),
        "top1": round(float((pred == labels).mean()), 5),
        "top5": round(float(np.concatenate(top5).mean()), 5),
        "images_per_s": round(len(x) / elapsed, 1),
        "predictions": pred,
    }
    if chosen:
        result.update(
            routing_report(
                np.concatenate(chosen),
                np.concatenate(weight),
                pred == labels,
                network.mixture.experts,
            )
        )
    return result


def routing_report(
    expert: np.ndarray, gate: np.ndarray, correct: np.ndarray, experts: int
) -> dict[str, Any]:
    """Share of images whose first choice is each expert, accuracy on those images,
    and the mean gate probability of the first choice (softmax over all experts)."""
    counts = np.bincount(expert, minlength=experts)
    accuracy = [
        round(float(correct[expert == e].mean()), 5) if counts[e] else None for e in range(experts)
    ]
    return {
        "routing_share": [round(float(c) / len(expert), 5) for c in counts],
        "expert_top1": accuracy,
        "mean_gate_weight": round(float(gate.mean()), 5),
        "max_share_over_fair": round(float(counts.max()) * experts / len(expert), 3),
    }


def run(args: argparse.Namespace) -> int:
    settings = common.settings(args)
    name = args.model or settings.default_model
    model = resolve_model(name, settings.model_repository, args.random_weights, args.seed)
    images, labels = load_fashion_mnist("test", args.data_dir)
    if args.limit:
        images, labels = images[: args.limit], labels[: args.limit]
    x = to_model_input(images, model.meta["input"])
    device = Device(settings.device)
    reference = None
    torch_top1 = _torch_top1(model, x) if args.parity else None
    littles = little_modules(model, settings.dual_module) if settings.dual_module else {}
    precisions = args.precision or [settings.default_precision]
    store = store_for(precisions)  # int16 and int8 share a store, as a server's do
    for precision in precisions:
        network = build_network(model, device, precision, settings.layer_precisions, store=store)
        variants = [(network, None)]
        if littles:  # with and without, so the accuracy cost is measured, not assumed
            variants.append((network.with_dual_module(littles), list(littles)))
        plain: dict[str, Any] = {}
        plain_pred = None
        for net, dual in variants:
            label = f"{name} {precision}" + (" dual-module" if dual else "")
            result = evaluate(net, x, labels, args.k, args.batch, label)
            pred = result.pop("predictions")
            if reference is None:
                reference = pred
            row = {
                "model": name,
                "precision": precision,
                **storage_note(precision, net, store),
                "dataset": "fashion-mnist",
                **({"k": args.k or model.mixture.k} if model.is_mixture else {}),
                **result,
                "agreement_with_first": round(float((pred == reference).mean()), 5),
                **(
                    {"agreement_with_torch": round(float((pred == torch_top1).mean()), 5)}
                    if torch_top1 is not None
                    else {}
                ),
                "device": device.name,
            }
            if dual:
                row["dual_module"] = {
                    "top1_without": plain["top1"],
                    "agreement_without": round(float((pred == plain_pred).mean()), 5),
                    "layers": {n: s.as_dict() for n, s in net.take_skip_stats().items()},
                }
            else:
                plain, plain_pred = row, pred
            _emit(row, args.json)
    return 0


def _torch_top1(model: Model, x: np.ndarray) -> np.ndarray:
    """Top-1 of the same weights run by PyTorch (the training extra): the parity check
    between the model as trained and as our kernels run it."""
    from experts.training.nets import build_model, load_weights, torch_predictions  # torch

    net = build_model(model.meta)
    load_weights(net, model.weights)
    return np.argsort(-torch_predictions(net, x), axis=1, kind="stable")[:, 0]


def _emit(result: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(result), flush=True)
        return
    print(
        f"{result['model']} {result['precision']}: top-1 {100 * result['top1']:.2f}%  "
        f"top-5 {100 * result['top5']:.2f}%  on {result['images']} images  "
        f"{result['images_per_s']:.0f} img/s  agreement {100 * result['agreement_with_first']:.2f}%"
        + (
            f"  with torch {100 * result['agreement_with_torch']:.2f}%"
            if "agreement_with_torch" in result
            else ""
        )
    )
    if "weights" in result:
        print(f"  weights: {result['weights']}")
    if "bits_per_weight" in result:
        layers = "  ".join(f"{k} {v:.2f}" for k, v in result["bits_per_weight"].items())
        print(f"  bits per weight: {layers}")
    dual = result.get("dual_module")
    if dual:
        print(
            f"  dual module: top-1 {100 * result['top1']:.2f}% against "
            f"{100 * dual['top1_without']:.2f}% without; same top-1 on "
            f"{100 * dual['agreement_without']:.2f}% of images"
        )
        for layer, s in dual["layers"].items():
            print(
                f"    {layer:16s} big module computed {100 * s['computed_share']:5.1f}% of "
                f"outputs; weight bytes read at batch 1: "
                f"{100 * s['read_share_at_batch_1']:5.1f}% (little module included)"
            )
    if "routing_share" in result:
        shares = " ".join(f"{100 * s:.1f}%" for s in result["routing_share"])
        accs = " ".join("-" if a is None else f"{100 * a:.1f}%" for a in result["expert_top1"])
        print(f"  routing share per expert: {shares}")
        print(f"  top-1 per expert:         {accs}")
        print(f"  mean gate probability of the first choice: {result['mean_gate_weight']:.3f}")
