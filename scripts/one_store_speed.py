#!/usr/bin/env python3
"""int8 from one weight store (int16's high byte plane) against int8 with weights of its
own, timed in turns in one process (BENCHMARKS.md, "One store for int16 and int8").

The shared int8 reads the planes in the float-lane GEMM's layout, so its convolutions
leave the byte dot products (DOT4) that int8 of its own uses on VNNI CPUs; its fully
connected layers read the same bytes either way.

    python scripts/one_store_speed.py --model fashion-alexnet --batch 8
    python scripts/one_store_speed.py --model alexnet --random-weights --batch 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--iterations", type=int, default=10, help="runs per round and network")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    from experts.model.repository import default_root
    from experts.model.resolve import resolve_model
    from experts.networks.build import build_network, store_for
    from kernels.runtime import Device

    device = Device(None)
    model = resolve_model(args.model, default_root(), args.random_weights, 0)
    store = store_for(["int16", "int8"])
    networks = {
        "int8, own weights": build_network(model, device, "int8"),
        "int16, one store": build_network(model, device, "int16", store=store),
        "int8, one store": build_network(model, device, "int8", store=store),
    }
    x = np.random.default_rng(0).random((args.batch, *model.input_shape), np.float32)
    rates: dict[str, list[float]] = {name: [] for name in networks}
    for network in networks.values():
        network.run(x)
    for _ in range(args.rounds):
        for name, network in networks.items():
            start = time.perf_counter()
            for _ in range(args.iterations):
                network.run(x)
            rates[name].append(args.iterations * args.batch / (time.perf_counter() - start))
    own = rates["int8, own weights"]
    for name, r in rates.items():
        ratio = [a / b for a, b in zip(r, own, strict=True)]
        print(
            f"{args.model} b{args.batch} {name}: {statistics.median(r):8.1f} img/s "
            f"({min(r):.1f}-{max(r):.1f}), weights {networks[name].weight_bytes / 2**20:7.2f} MiB, "
            f"vs int8 own weights {statistics.median(ratio):.2f}x "
            f"({min(ratio):.2f}-{max(ratio):.2f})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
