#!/usr/bin/env python3
"""How far grouped precision (int8g, int16g: kernels/bitgroups.py) is from the bound
of any lossless code of the same integers: per fully connected layer, the bits per
weight the packing stores against the entropy of the int8 / int16 integers.

    python scripts/weight_entropy.py --model alexnet --random-weights
    python scripts/weight_entropy.py --model fashion-alexnet

The integers are quantised as the layers quantise them (one scale per output row);
a mixture's experts are counted together, layer by layer.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def layer_rows(weights: dict[str, np.ndarray]) -> dict[str, list[np.ndarray]]:
    """Fully connected weight matrices by layer name ("fc6"; a mixture's experts'
    "experts.<i>.fc6" gathered under "experts.fc6")."""
    out: dict[str, list[np.ndarray]] = {}
    for key, w in weights.items():
        if w.ndim != 2 or not key.endswith(".weight"):
            continue
        name = key[: -len(".weight")]
        parts = name.split(".")
        if parts[0] == "experts" and len(parts) == 3:
            name = f"experts.{parts[2]}"
        out.setdefault(name, []).append(w)
    return out


def measure(weights: dict[str, np.ndarray]) -> list[dict[str, float | str]]:
    from kernels.bitgroups import encode, entropy_bits
    from kernels.precision import PRECISIONS

    rows = []
    for name, mats in layer_rows(weights).items():
        row: dict[str, float | str] = {"layer": name, "weights": sum(m.size for m in mats)}
        for precision in ("int8", "int16"):
            p = PRECISIONS[precision]
            qs = [p.quantize_weights(m)[0] for m in mats]
            count = sum(q.size for q in qs)
            packed = sum(encode(q, p.bits).bits_per_weight * q.size for q in qs) / count
            row[f"{precision}g_bits"] = round(packed, 3)
            row[f"{precision}_entropy_bits"] = round(
                entropy_bits(np.concatenate([q.ravel() for q in qs])), 3
            )
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    parser.add_argument("--random-weights", action="store_true", help="seeded He-normal")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    from experts.model.model import ModelError
    from experts.model.resolve import resolve_model

    try:
        model = resolve_model(args.model, args.models_dir, args.random_weights, args.seed)
    except ModelError as exc:
        print(f"weight_entropy: {exc}", file=sys.stderr)
        return 2
    rows = measure(model.weights)
    for row in rows:
        if args.json:
            print(json.dumps(row))
            continue
        print(
            f"{row['layer']:14s} {row['weights']:>10,d} weights  int8g {row['int8g_bits']:6.2f} "
            f"bits/weight, entropy of int8 {row['int8_entropy_bits']:5.2f} "
            f"({row['int8_entropy_bits'] / 8:.3f}x int8)  int16g {row['int16g_bits']:6.2f}, "
            f"entropy of int16 {row['int16_entropy_bits']:5.2f} "
            f"({row['int16_entropy_bits'] / 16:.3f}x int16)"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
