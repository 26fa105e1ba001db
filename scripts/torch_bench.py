"""PyTorch's speed on the same network and weights, the reference the GPU figures are
compared with (issue 21: alexnet fp32 against PyTorch CUDA with cuDNN, TF32 off).

    python scripts/torch_bench.py --model alexnet --random-weights --batch 1,8,64,256 \
        --device cuda --out torch.json

Builds the model's layer list as torch modules (experts/training/nets.py) with the
weights our engine runs (a repository model, or the seeded random weights of
`--random-weights`, the same as `moe-alexnet bench --random-weights`), then times
eager forward passes per batch size: CUDA events on a GPU, wall time on a CPU; the
median of `--iterations` after `--warmup`. Prints and writes one JSON row per batch.
Needs torch (the `train` extra).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from experts.model.resolve import resolve_model  # noqa: E402
from service.settings import Settings  # noqa: E402


def _batches(text: str) -> list[int]:
    return [int(b) for b in text.split(",") if b.strip()]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="alexnet")
    p.add_argument("--random-weights", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=_batches, default=[1, 8])
    p.add_argument("--device", default="cuda", help="torch device: cuda or cpu")
    p.add_argument("--iterations", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--out", type=Path, default=None, help="also write the rows here (JSON)")
    args = p.parse_args(argv)

    import torch

    from experts.training.nets import build_model, load_weights

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("torch_bench: error: this torch sees no CUDA GPU", file=sys.stderr)
        return 1
    # fp32 as the issue asks it: no TF32 in matrix products or convolutions.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cudnn.benchmark = True
    model = resolve_model(args.model, Settings().model_repository, args.random_weights, args.seed)
    net = build_model(model.meta)
    load_weights(net, {k: np.asarray(v) for k, v in model.weights.items()})
    net = net.to(args.device).eval()
    cuda = args.device.startswith("cuda")
    rows = []
    rng = np.random.default_rng(args.seed)
    for batch in args.batch:
        x = torch.from_numpy(rng.standard_normal((batch, *model.input_shape), np.float32))
        x = x.to(args.device)
        times = []
        with torch.inference_mode():
            for i in range(args.warmup + args.iterations):
                if cuda:
                    start, end = (
                        torch.cuda.Event(enable_timing=True),
                        torch.cuda.Event(enable_timing=True),
                    )
                    start.record()
                    net(x)
                    end.record()
                    torch.cuda.synchronize()
                    ms = start.elapsed_time(end)
                else:
                    t0 = time.perf_counter()
                    net(x)
                    ms = (time.perf_counter() - t0) * 1e3
                if i >= args.warmup:
                    times.append(ms)
        p50 = statistics.median(times)
        rows.append(
            {
                "runtime": f"torch {torch.__version__}",
                "device": torch.cuda.get_device_name() if cuda else "cpu",
                "model": args.model,
                "batch": batch,
                "latency_ms_p50": round(p50, 4),
                "images_per_s": round(batch / p50 * 1e3, 1),
                "tf32": False,
            }
        )
        print(json.dumps(rows[-1]))
    if args.out is not None:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
