#!/usr/bin/env python3
"""Resident memory of a server holding one model, by precision: steady after warm-up,
and the peak while loading (the kernel's VmHWM), with and without quantised copies.

Makes a repository of its own (the built-in model on seeded random weights, saved,
calibrated on synthetic images, with its int8 and fp16 copies), then starts one server
per configuration on loopback and reads its /proc status once it is ready:

    python scripts/serve_memory.py --model alexnet
    python scripts/serve_memory.py --model fashion-moe --cold-cache
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

CONFIGS = [  # (label, precisions, keep the copies)
    ("fp32", "fp32", True),
    ("int8, from the float32 weights", "int8", False),
    ("int8, from its copy", "int8", True),
    ("fp16, from its copy", "fp16", True),
    ("fp32, fp16 and int8 (for precision=auto)", "fp32,fp16,int8", True),
]


def prepare(root: Path, name: str) -> None:
    from experts.model.architectures import ARCHITECTURES, random_weights
    from experts.model.quantized import copy_name, make_copy
    from experts.model.repository import Repository
    from experts.networks.calibrate import calibrate, synthetic_images

    repo = Repository(root)
    meta = ARCHITECTURES[name]()
    repo.save(name, meta, random_weights(meta, seed=0))
    model = repo.load(name)
    ranges = calibrate(model.meta, model.weights, [synthetic_images(model.meta, 16)])
    repo.write_file(name, "calibration.json", ranges.to_json(model.meta).encode())
    model = repo.load(name)
    for precision in ("int8", "fp16"):
        repo.write_file(name, copy_name(precision), make_copy(model, precision))


def status(pid: int) -> dict[str, float]:
    """VmRSS, VmHWM (peak), RssAnon and RssFile (mapped files: libraries) of a process,
    in MiB."""
    return parse_status(Path(f"/proc/{pid}/status").read_text())


def parse_status(text: str) -> dict[str, float]:
    out = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0]) / 1024
    return out


# What every server holds before any model: its imports, and PoCL (with LLVM) loaded
# by opening the OpenCL device.
NO_MODEL = (
    "import uvicorn, service.commands.main, service.http.app\n"
    "from kernels.runtime import Device\n"
    "Device()\n"
    "print(open('/proc/self/status').read())"
)


def no_model() -> dict[str, float]:
    """The RSS of a process holding the server's imports and the device, no model."""
    text = subprocess.run(
        [sys.executable, "-c", NO_MODEL], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    return parse_status(text)


def weight_mib(url: str) -> float:
    """The server's resident weights (/metrics: moe_resident_weight_bytes), in MiB."""
    import httpx

    lines = httpx.get(f"{url}/metrics", timeout=10).text.splitlines()
    rows = [line for line in lines if line.startswith("moe_resident_weight_bytes{")]
    total = sum(float(line.split()[-1]) for line in rows)
    return total / 2**20


def measure(
    root: Path, name: str, precisions: str, copies: bool, cold: bool = False
) -> dict[str, float]:
    """One server's figures; `cold`: with an empty PoCL kernel cache of its own."""
    from loadtest import start_server, stop_server

    folder = root / name
    hidden = list(folder.glob("weights.*.safetensors")) if not copies else []
    for p in hidden:
        p.rename(p.with_suffix(".off"))
    saved = os.environ.get("POCL_CACHE_DIR")
    cache = tempfile.TemporaryDirectory() if cold else None
    if cache is not None:
        os.environ["POCL_CACHE_DIR"] = cache.name
    try:
        start = time.monotonic()
        proc, url = start_server(
            ["--models-dir", str(root), "--models", name, "--precisions", precisions], 900
        )
        loaded = time.monotonic() - start
        time.sleep(2)  # settled
        mem = status(proc.pid)
        weights = weight_mib(url)
        stop_server(proc)
    finally:
        for p in hidden:
            p.with_suffix(".off").rename(p)
        if cache is not None:
            cache.cleanup()
            if saved is None:
                os.environ.pop("POCL_CACHE_DIR", None)
            else:
                os.environ["POCL_CACHE_DIR"] = saved
    return {
        "rss_mib": mem["VmRSS"],
        "peak_mib": mem["VmHWM"],
        "anon_mib": mem["RssAnon"],
        "files_mib": mem["RssFile"],
        "weights_mib": weights,
        "ready_s": loaded,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="alexnet", help="a built-in architecture")
    parser.add_argument(
        "--cold-cache",
        action="store_true",
        help="each server with an empty PoCL kernel cache (a new container: every kernel "
        "compiled in the server)",
    )
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepare(root, args.model)
        rows = []
        for label, precisions, copies in CONFIGS:
            row = {
                "config": label,
                **measure(root, args.model, precisions, copies, args.cold_cache),
            }
            rows.append(row)
            if args.json:
                print(json.dumps(row), flush=True)
            else:
                print(
                    f"{label:32s} RSS {row['rss_mib']:7.1f} MiB  peak {row['peak_mib']:7.1f} MiB "
                    f"(x{row['peak_mib'] / row['rss_mib']:.2f})  anonymous {row['anon_mib']:.1f}, "
                    f"files {row['files_mib']:.1f}, weights {row['weights_mib']:.1f}  "
                    f"ready in {row['ready_s']:.1f} s",
                    flush=True,
                )
        base = no_model()["VmRSS"]
        fp32 = rows[0]["rss_mib"]
        for row in rows[1:]:
            print(f"{row['config']}: steady RSS {row['rss_mib'] / fp32:.2f}x fp32's")
        # The least any server could hold: no model's RSS plus the weights alone.
        print(f"no model (imports, device open): RSS {base:.1f} MiB, {base / fp32:.2f}x fp32's")
        for row in rows[1:]:
            least = base + row["weights_mib"]
            print(f"{row['config']}: no model + its weights {least:.1f} MiB, {least / fp32:.2f}x")
        if args.json:
            print(json.dumps({"config": "no model", "rss_mib": base}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
