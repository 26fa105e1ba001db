"""`moe-alexnet bench`: latency, throughput and memory per (model, precision, batch),
optionally beside onnxruntime on the same network and weights, in the same process."""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from service.settings import Settings


def peak_rss_bytes() -> int:
    """The process's peak resident set so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def rss_bytes() -> int | None:
    """The process's resident set now (Linux; None elsewhere): unlike the peak, it
    drops again once loading and calibration have freed their temporaries."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return pages * resource.getpagesize()


def time_runs(run: Callable[[], Any], warmup: int, iterations: int, label: str) -> list[float]:
    for _ in range(warmup):
        run()
    times = []
    for _ in tqdm(range(iterations), desc=label, unit="run", leave=False, file=sys.stderr,
                  disable=None):  # fmt: skip
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def summarise(times: list[float], batch: int) -> dict[str, float]:
    """Median and p90 latency; throughput from the median (robust to a noisy machine)."""
    p50, p90 = np.percentile(times, [50, 90])
    return {
        "images_per_s": round(batch / p50, 2),
        "latency_ms_p50": round(p50 * 1e3, 3),
        "latency_ms_p90": round(p90 * 1e3, 3),
    }


def onnxruntime_session(model: Any) -> Any:
    import onnxruntime as ort

    from experts.onnx_export import to_onnx

    options = ort.SessionOptions()
    options.intra_op_num_threads = os.cpu_count() or 1
    proto = to_onnx(model.meta, model.weights)
    return ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])  # fmt: skip


def run_bench(args: argparse.Namespace, settings: Settings) -> int:
    from experts.loading import build_network, forward, resolve_model
    from experts.repository import ModelError
    from kernels.runtime import Device

    names = args.model or [settings.default_model]
    precisions = args.precision or [settings.default_precision]
    device = Device(settings.device)
    rng = np.random.default_rng(args.seed)
    for name in names:
        model = resolve_model(name, settings.model_repository, args.random_weights, args.seed)
        if args.compare and model.is_mixture:
            raise ModelError(f"{name}: --compare onnxruntime runs sequential models only")
        ks = (args.experts or [model.mixture.k]) if model.is_mixture else [None]
        session = onnxruntime_session(model) if args.compare else None
        for precision in precisions:
            network = build_network(model, device, precision, settings.layer_precision)
            for batch in args.batch:
                x = rng.standard_normal((batch, *model.input_shape), dtype=np.float32)
                for k in ks:
                    runners = {"moe-alexnet": partial(forward, network, x, k)}
                    if session is not None:
                        feed = {session.get_inputs()[0].name: x}
                        runners["onnxruntime"] = partial(session.run, None, feed)
                    label = f"{name} {precision} b{batch}" + (f" k{k}" if k else "")
                    times = time_rounds(runners, args, label)
                    row = {"runtime": "moe-alexnet", "model": name, "precision": precision,
                           "batch": batch, **({"experts_per_image": k} if k else {}),
                           **summarise(times["moe-alexnet"], batch),
                           "weight_bytes": network.weight_bytes,
                           "activation_bytes": _activation_bytes(network, batch),
                           "rss_bytes": rss_bytes(), "peak_rss_bytes": peak_rss_bytes(),
                           "device": device.name}  # fmt: skip
                    _emit(row, args.json)
                    if session is not None:
                        _emit(_onnxruntime_row(model, times, row), args.json)
    return 0


def _activation_bytes(network: Any, batch: int) -> int:
    if hasattr(network, "activation_bytes"):  # a mixture: stem, gate, head and experts
        return int(network.activation_bytes(batch))
    return network.plan(batch).activation_bytes


def _onnxruntime_row(model: Any, times: dict[str, list[float]], ours: dict[str, Any]) -> dict:
    row = {"runtime": "onnxruntime", "model": ours["model"], "precision": "fp32",
           "batch": ours["batch"], **summarise(times["onnxruntime"], ours["batch"]),
           "weight_bytes": sum(w.nbytes for w in model.weights.values()),
           "peak_rss_bytes": peak_rss_bytes(), "device": "CPUExecutionProvider"}  # fmt: skip
    row["ratio"] = round(ours["images_per_s"] / row["images_per_s"], 3)
    return row


def time_rounds(
    runners: dict[str, Callable[[], Any]], args: argparse.Namespace, label: str
) -> dict[str, list[float]]:
    """Time each runner in turn, in `args.rounds` rounds of blocks.

    Runtimes take turns by blocks, not by single runs: onnxruntime's threads keep
    spinning for a while after a run and would slow whatever runs next. Several
    rounds spread the machine's slow drifts (other tenants) over both runtimes. Each
    block starts with untimed warm-up runs (all of them in the first round, one after).
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    per_round = -(-args.iterations // args.rounds)
    for r in range(args.rounds):
        for name, run in runners.items():
            warmup = args.warmup if r == 0 else 1
            times[name] += time_runs(run, warmup, per_round, f"{label} {name}")
    return times


def _emit(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(row), flush=True)
        return
    k = f" k={row['experts_per_image']}" if "experts_per_image" in row else ""
    line = (
        f"{row['runtime']:12s} {row['model']:15s} {row['precision']:5s} b={row['batch']:<3d}{k} "
        f"{row['images_per_s']:9.1f} img/s  p50 {row['latency_ms_p50']:8.2f} ms  "
        f"p90 {row['latency_ms_p90']:8.2f} ms  weights {row['weight_bytes'] / 2**20:7.1f} MiB  "
        + (f"activations {row['activation_bytes'] / 2**20:6.1f} MiB  "
           if "activation_bytes" in row else "")
        + (f"RSS {row['rss_bytes'] / 2**20:7.1f} MiB  " if row.get("rss_bytes") else "")
        + f"peak RSS {row['peak_rss_bytes'] / 2**20:7.1f} MiB"
    )  # fmt: skip
    if "ratio" in row:
        line += f"  (moe-alexnet / onnxruntime = {row['ratio']:.2f}x)"
    print(line, flush=True)
