"""`moe-alexnet bench`: latency, throughput and memory per (model, precision, batch),
optionally beside onnxruntime on the same network and weights, in the same process."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from itertools import cycle
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from experts.data.fashion_mnist import DatasetError, load_fashion_mnist, to_model_input
from experts.model.model import ModelError
from experts.model.resolve import resolve_model
from experts.networks.base import Runnable
from experts.networks.build import build_network, little_modules, storage_note, store_for
from experts.networks.tune import is_tuned
from kernels.runtime import Device
from service.commands import args as common
from service.commands import onnxruntime_compare

HELP = "latency, throughput and memory per model/batch"
BLOCK_PAUSE_S = 0.2  # between runners' blocks of timed runs (see time_rounds)


def add_arguments(p: argparse.ArgumentParser) -> None:
    common.model_args(p, many=True)
    p.add_argument("--batch", type=common.csv(common.positive), default=[1, 8], help="batch sizes")
    p.add_argument("--iterations", type=common.positive, default=20, help="timed runs per row")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs before timing")
    p.add_argument(
        "--rounds",
        type=common.positive,
        default=3,
        help="rows of one precision and batch (models, k, runtimes) take turns in this many rounds",
    )
    p.add_argument(
        "--compare",
        choices=["onnxruntime"],
        default=None,
        help="also run the same network and weights in onnxruntime",
    )
    p.add_argument(
        "--untuned",
        action="store_true",
        help="also time each network with the built-in kernel choices (no tuning "
        "database), in turns with the tuned one: rows marked tuned false",
    )
    p.add_argument(
        "--dataset",
        choices=["fashion-mnist"],
        default=None,
        help="time on real test images, a different batch each run (a "
        "mixture's speed depends on how its gate spreads them), not noise",
    )
    p.add_argument("--data-dir", type=Path, default=None, help=common.FASHION_DIR_HELP)
    p.add_argument(
        "--profile",
        action="store_true",
        help="also the device time of each layer (OpenCL profiling events, "
        "medians of a few more runs per row)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per row")


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
    for _ in tqdm(
        range(iterations), desc=label, unit="run", leave=False, file=sys.stderr, disable=None
    ):
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


def run(args: argparse.Namespace) -> int:
    """Rows per (precision, batch), each for every model (and k) and runtime asked for.

    The rows of one (precision, batch) are timed together, taking turns in
    `args.rounds` rounds, so the machine's drifts (other tenants) fall on all of them
    alike and their ratios hold even where the absolute figures wander.
    """
    settings = common.settings(args)
    names = args.model or [settings.default_model]
    precisions = args.precision or [settings.default_precision]
    device = Device(settings.device, profile=args.profile)
    # --untuned: the same device again, without its tuning database
    untuned = Device(settings.device, args.profile, tuned=False) if args.untuned else None
    rng = np.random.default_rng(args.seed)
    images = None
    if args.dataset is not None:  # read once, however many models and batch sizes
        images = load_fashion_mnist("test", args.data_dir)[0]
    models = []
    for name in names:
        model = resolve_model(name, settings.model_repository, args.random_weights, args.seed)
        if args.compare and model.is_mixture:
            raise ModelError(f"{name}: --compare onnxruntime runs sequential models only")
        sessions: dict[str, Any] | None = {} if args.compare else None  # by kind, made once
        ks = (args.k or [model.mixture.k]) if model.is_mixture else [None]
        models.append((name, model, sessions, ks))
    littles = [
        little_modules(m, settings.dual_module) if settings.dual_module else {}
        for _, m, _, _ in models
    ]
    stores = {name: store_for(precisions) for name, *_ in models}  # int16 and int8: one copy
    for precision in precisions:
        networks = []
        for (name, m, _, _), little in zip(models, littles, strict=True):
            store = stores[name]
            network = build_network(m, device, precision, settings.layer_precisions, store=store)
            # With the little modules beside the same network without: one run compares.
            dual = network.with_dual_module(little) if little else None
            plain = None
            if untuned is not None:
                plain = build_network(m, untuned, precision, settings.layer_precisions)
            networks.append((network, dual, plain))
        for batch in args.batch:
            rows, runners, spreads = [], {}, {}
            for (name, model, sessions, ks), pair in zip(models, networks, strict=True):
                inputs = _inputs(images, model, batch, rng)
                session = _session(sessions, model, precision, args.data_dir)
                for k in ks:
                    base = f"{name} {precision} b{batch}" + (f" k{k}" if k else "")
                    for network, suffix in zip(pair, ("", " dual-module", " untuned"), strict=True):
                        if network is None:
                            continue
                        key = base + suffix
                        spreads[key] = []
                        runners[key] = partial(_run, network, cycle(inputs), k, spreads[key])
                        rows.append((key, name, None if suffix else session, network, k))
                    if session is not None:
                        feeds = [{session.get_inputs()[0].name: x} for x in inputs]
                        ort = partial(_run_session, session, cycle(feeds))
                        runners[f"{base} onnxruntime"] = ort
            # Warm-up sees every input batch once: a mixture plans buffers per expert
            # sub-batch size the first time each size occurs.
            warmup = max(args.warmup, BATCHES if args.dataset else 0)
            for _, dual, _ in networks:
                if dual is not None:
                    dual.take_skip_stats()  # counted from here: the timed runs' inputs
            times = time_rounds(runners, args, warmup)
            skips = {r[0]: r[3].take_skip_stats() for r in rows}  # the timed runs' counts
            profiles = {}
            if args.profile:
                profiles = profile_layers({r[0]: (r[3].device, runners[r[0]]) for r in rows})
            for key, name, session, network, k in rows:
                row = {
                    "runtime": "moe-alexnet",
                    "model": name,
                    "precision": precision,
                    "batch": batch,
                    **({"k": k} if k else {}),
                    **summarise(times[key], batch),
                    "weight_bytes": network.weight_bytes,
                    **storage_note(precision, network, stores[name]),
                    "activation_bytes": network.activation_bytes(batch),
                    "rss_bytes": rss_bytes(),
                    "peak_rss_bytes": peak_rss_bytes(),
                    "device": device.name,
                    "int8_dot_products": device.dot4,
                    "tuned": is_tuned(network),
                    "inputs": args.dataset or "noise",
                }
                if spreads[key]:  # a mixture: distinct experts per batch run
                    row["experts_per_batch"] = round(float(np.mean(spreads[key])), 2)
                stats = skips[key]
                if stats:
                    row["dual_module"] = {n: st.as_dict() for n, st in stats.items()}
                if args.profile:
                    row["profile"] = profiles[key]
                _emit(row, args.json)
                if session is not None:
                    ort = times[f"{key} onnxruntime"]  # the plain row's key
                    _emit(_onnxruntime_row(session, ort, row), args.json)
    return 0


BATCHES = 16  # distinct input batches per row, taken in turn
PROFILE_RUNS = 25  # profiled runs per row (`--profile`), after the timed ones: the median
# of 9 moved by a third between runs for layers of a few microseconds


def profile_layers(
    runs: dict[str, tuple[Any, Callable[[], Any]]],
) -> dict[str, list[dict[str, Any]]]:
    """Device time per layer of each (device, run) by key: each launch's OpenCL
    profiling event, summed per label (the layer's name, "stem.conv1" in a mixture;
    the kernel's where a launch has none), over PROFILE_RUNS runs (`_typical`), in
    first-launch order. The keys take turns, a run each, as the timed rounds do: one
    after another, a layer of a few microseconds drifted with the machine between them."""
    seen: dict[str, list[dict[str, float]]] = {key: [] for key in runs}
    kernels: dict[str, dict[str, list[str]]] = {key: {} for key in runs}
    for _ in range(PROFILE_RUNS):
        for key, (device, run) in runs.items():
            device.events.clear()
            run()
            device.finish()
            ms: dict[str, float] = {}
            for label, name, event in device.events:
                layer = label or name
                ms[layer] = ms.get(layer, 0.0) + (event.profile.end - event.profile.start) * 1e-6
                names = kernels[key].setdefault(layer, [])
                if name not in names:
                    names.append(name)
            seen[key].append(ms)
            device.events.clear()
    return {
        key: [
            {"layer": layer, "kernels": names, "ms": round(_typical(seen[key], layer), 4)}
            for layer, names in kernels[key].items()
        ]
        for key in runs
    }


def _typical(runs: list[dict[str, float]], layer: str) -> float:
    """The median over the runs of a layer every run reached; the mean (0 for runs that
    did not) of one they did not all reach: a mixture's expert, whose median would be 0
    when most batches went elsewhere, so summing the experts gives the time per batch."""
    values = [r.get(layer, 0.0) for r in runs]
    if all(layer in r for r in runs):
        return float(np.median(values))
    return float(np.mean(values))


def _inputs(
    images: np.ndarray | None, model: Any, batch: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Input batches: standard normal noise, or consecutive real test images (uint8)."""
    if images is None:
        return [rng.standard_normal((batch, *model.input_shape), dtype=np.float32)]
    if len(images) < batch:
        raise DatasetError(f"the test split has {len(images)} images, fewer than batch {batch}")
    x = to_model_input(images[: batch * BATCHES], model.meta["input"])
    return [x[i : i + batch] for i in range(0, len(x) - batch + 1, batch)]


def _run(
    network: Runnable, batches: Iterator[np.ndarray], k: int | None, spread: list[int]
) -> None:
    """Forward the next input batch; for a mixture note how many experts it used."""
    routing = network.run(next(batches), k).routing
    if routing is not None:
        spread.append(len(np.unique(routing.indices)))


def _run_session(session: Any, feeds: Iterator[dict[str, np.ndarray]]) -> None:
    session.run(None, next(feeds))


def _session(
    sessions: dict[str, Any] | None, model: Any, precision: str, data_dir: Path | None
) -> Any:
    """The onnxruntime session an ours row at `precision` is compared with (None without
    --compare): onnxruntime's static int8 for int8 rows, fp32 for the others."""
    if sessions is None:
        return None
    kind = "int8" if precision in onnxruntime_compare.QUANTISED else "fp32"
    if kind not in sessions:
        sessions[kind] = onnxruntime_compare.session(model, kind, data_dir)
    return sessions[kind]


def _onnxruntime_row(session: Any, times: list[float], ours: dict[str, Any]) -> dict:
    row = {
        "runtime": "onnxruntime",
        "model": ours["model"],
        "precision": onnxruntime_compare.STATIC_INT8 if session.calibration else "fp32",
        "batch": ours["batch"],
        **summarise(times, ours["batch"]),
        "peak_rss_bytes": peak_rss_bytes(),
        "device": "CPUExecutionProvider",
    }
    row["weight_bytes"] = session.weight_bytes
    if session.calibration:
        row["calibration"] = session.calibration
    row["ratio"] = round(ours["images_per_s"] / row["images_per_s"], 3)
    return row


def time_rounds(
    runners: dict[str, Callable[[], Any]], args: argparse.Namespace, warmup: int
) -> dict[str, list[float]]:
    """Time each runner in turn, in `args.rounds` rounds of blocks.

    Runners (models, k, runtimes) take turns by blocks, not by single runs:
    onnxruntime's threads keep spinning for a while after a run and would slow
    whatever runs next, so each block waits BLOCK_PAUSE_S after the one before (one
    untimed run was not enough: the row after onnxruntime's came out 3-12% slower
    than the same network after its own kind). Several rounds spread the machine's
    slow drifts (other tenants) over all of them, and every other round runs them in
    reverse order, so that none always follows the same one. Each block starts with
    untimed warm-up runs (all of them in the first round, one after).
    """
    times: dict[str, list[float]] = {name: [] for name in runners}
    per_round = -(-args.iterations // args.rounds)
    for r in range(args.rounds):
        order = list(runners.items())
        for name, run in reversed(order) if r % 2 else order:
            time.sleep(BLOCK_PAUSE_S)
            times[name] += time_runs(run, warmup if r == 0 else 1, per_round, name)
    return times


def _emit(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(row), flush=True)
        return
    k = f" k={row['k']}" if "k" in row else ""
    if "experts_per_batch" in row:
        k += f" ({row['experts_per_batch']:.1f} experts/batch)"
    line = (
        f"{row['runtime']:12s} {row['model']:15s} {row['precision']:5s} b={row['batch']:<3d}{k} "
        f"{row['images_per_s']:9.1f} img/s  p50 {row['latency_ms_p50']:8.2f} ms  "
        f"p90 {row['latency_ms_p90']:8.2f} ms  weights {row['weight_bytes'] / 2**20:7.1f} MiB  "
        + (
            f"activations {row['activation_bytes'] / 2**20:6.1f} MiB  "
            if "activation_bytes" in row
            else ""
        )
        + (f"RSS {row['rss_bytes'] / 2**20:7.1f} MiB  " if row.get("rss_bytes") else "")
        + f"peak RSS {row['peak_rss_bytes'] / 2**20:7.1f} MiB"
    )
    if "ratio" in row:
        line += f"  (moe-alexnet / onnxruntime = {row['ratio']:.2f}x)"
    if "bits_per_weight" in row:
        line += f"  {row['bits_per_weight']['model']:.2f} bits/weight"
    if "weights" in row:
        line += f"  (weights: {row['weights']})"
    if "tuned" in row:
        line += "  tuned" if row["tuned"] else "  untuned"
    print(line, flush=True)
    for layer, s in row.get("dual_module", {}).items():
        print(
            f"    dual module {layer:14s} big module computed {100 * s['computed_share']:5.1f}% "
            f"of outputs, read {s['big_bytes_per_image'] / 2**10:8.1f} KiB of "
            f"{s['big_bytes'] / 2**10:8.1f} KiB per image (+ little module "
            f"{s['little_bytes'] / 2**10:.1f} KiB)"
        )
    layers = row.get("profile")
    if layers:
        total = sum(layer["ms"] for layer in layers)
        print(
            f"    device time per layer ({PROFILE_RUNS} runs: median, or mean where not every "
            f"run reached it): {total:.3f} ms in all"
        )
        for layer in layers:
            share = 100 * layer["ms"] / total if total else 0.0
            print(
                f"    {layer['layer']:24s} {layer['ms']:8.3f} ms {share:5.1f}%  "
                f"{' '.join(layer['kernels'])}"
            )
