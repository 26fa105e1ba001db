#!/usr/bin/env python3
"""Top-1 agreement of a model with and without its little modules (dual-module
inference) where no labelled set exists: alexnet on seeded random weights. Real
photos (scikit-image's astronaut, coffee, chelsea, rocket) and synthetic images.

    python scripts/dual_agreement.py --model alexnet --random-weights --layers fc6,fc7

One line per precision: how many top-1 answers the little modules left unchanged.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="alexnet")
    parser.add_argument("--random-weights", action="store_true")
    parser.add_argument("--precision", default="fp32,fp16,int16,int8")
    parser.add_argument("--layers", default="fc6,fc7", help="as --dual-module takes them")
    parser.add_argument("--synthetic", type=int, default=256, help="synthetic images")
    parser.add_argument("--models-dir", default=str(ROOT / "models"))
    args = parser.parse_args(argv)
    try:
        import skimage.data
    except ImportError:
        print("dual_agreement: needs scikit-image (the test extra) for its photos", file=sys.stderr)
        return 2
    from PIL import Image

    from experts.model.dual_module import parse_dual_request
    from experts.model.resolve import resolve_model
    from experts.networks.build import build_network, little_modules
    from experts.networks.calibrate import synthetic_images
    from kernels.runtime import Device
    from service.images import preprocess

    device = Device()
    try:
        model = resolve_model(args.model, args.models_dir, args.random_weights, 0)
        littles = little_modules(model, parse_dual_request(args.layers))
    except ValueError as exc:  # an unknown model, a layer without a little module
        print(f"dual_agreement: {exc}", file=sys.stderr)
        return 2
    rgb = [Image.fromarray(getattr(skimage.data, n)()).convert("RGB") for n in PHOTOS]
    sets = {
        "photos": np.stack([preprocess(im, model.meta["input"]) for im in rgb]),
        "synthetic": synthetic_images(model.meta, args.synthetic, seed=7),
    }
    for precision in args.precision.split(","):
        plain = build_network(model, device, precision, {})
        dual = plain.with_dual_module(littles)
        counts = []
        for name, images in sets.items():
            same = sum(
                int((plain.run(b).scores.argmax(1) == dual.run(b).scores.argmax(1)).sum())
                for b in np.array_split(images, -(-len(images) // 8))
            )
            counts.append(f"{name} {same}/{len(images)}")
        print(precision, ", ".join(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
