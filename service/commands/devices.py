"""`moe-alexnet devices`: every OpenCL platform and device, and which is the default."""

from __future__ import annotations

import argparse
import json

from kernels.devices import DeviceError, default_index, list_devices
from kernels.runtime import Device
from service.failures import UsageError

HELP = "list OpenCL platforms and devices"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print JSON")


def run(args: argparse.Namespace) -> int:
    devices = list_devices()
    if not devices:
        raise UsageError("no OpenCL device found: install pocl-opencl-icd or an OpenCL driver")
    default = default_index(devices)
    rows = []
    for i, (info, _) in enumerate(devices):
        dot4 = False  # int8 byte dot products (AVX-512 VNNI): CPU devices only
        tuned = {"tuned_layers": 0, "tuning_database": None}
        try:
            opened = Device(info.index)
            dot4 = info.kind == "CPU" and opened.dot4
            tuned = {
                "tuned_layers": len(opened.tuning.entries),
                "tuning_database": opened.tuning.source or None,
            }
        except DeviceError:  # listed but cannot be opened: listed all the same
            pass
        rows.append({**info.__dict__, "int8_dot_products": dot4, **tuned, "default": i == default})
    if args.json:
        print(json.dumps({"devices": rows}, indent=2))
        return 0
    for row in rows:
        mark = "*" if row["default"] else " "
        print(
            f"{mark} {row['index']:5s} {row['platform']} / {row['name']}\n"
            f"        {row['kind']}, {row['compute_units']} compute units, "
            f"{row['global_mem_bytes'] / 2**30:.1f} GiB, max alloc "
            f"{row['max_alloc_bytes'] / 2**30:.1f} GiB, fp16 {'yes' if row['fp16'] else 'no'}, "
            f"int8 dot products {'yes' if row['int8_dot_products'] else 'no'}, "
            f"{row['opencl_c']}\n        "
            + (
                f"tuned: {row['tuned_layers']} entries in {row['tuning_database']}"
                if row["tuned_layers"]
                else "not tuned (built-in kernel choices; `moe-alexnet tune` tunes it)"
            )
        )
    print("* default (select another with --device or MOE_DEVICE: 'P:D', 'pocl:0', a name)")
    return 0
