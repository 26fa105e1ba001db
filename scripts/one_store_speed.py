#!/usr/bin/env python3
"""int16 and int8 from one weight store against each with weights of its own, timed in
turns in one process (BENCHMARKS.md, "One store for int16 and int8").

On VNNI CPUs the store holds the convolutions int8 runs on byte dot products in their
layout, which int16 then reads a byte at a time (gemm.cl's TAPS); the fully connected
layers read the same bytes either way.

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
        "int16 alone": build_network(model, device, "int16"),
        "int8 alone": build_network(model, device, "int8"),
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
    for name, r in rates.items():
        alone = rates[name.split(",")[0].replace(" alone", "") + " alone"]
        ratio = [a / b for a, b in zip(r, alone, strict=True)]
        print(
            f"{args.model} b{args.batch} {name}: {statistics.median(r):8.1f} img/s "
            f"({min(r):.1f}-{max(r):.1f}), weights {networks[name].weight_bytes / 2**20:7.2f} MiB, "
            f"vs the same precision alone {statistics.median(ratio):.2f}x "
            f"({min(ratio):.2f}-{max(ratio):.2f})",
            flush=True,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
