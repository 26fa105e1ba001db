"""Finding OpenCL devices: what each platform offers, the embedded default, the
selectors users write (`--device`, MOE_DEVICE), and OpenCL errors in words."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import pyopencl as cl

# PoCL's CPU device pins its worker threads one to a core when asked (read when the
# platform first loads, so set before any device is listed; the environment wins).
# Unpinned, Linux often left both workers on one of these machines' two cores after
# an idle moment: a lone launch of alexnet's conv1 took 1.6-2.0 ms against 1.0-1.1
# pinned, and fashion-alexnet after 20 ms idle 3.7-3.8 ms against 2.3-2.5
# (docs/benchmark-log.md). Busy back-to-back runs did not change.
os.environ.setdefault("POCL_AFFINITY", "1")


class DeviceError(RuntimeError):
    """No usable OpenCL device, or a device selector that matches nothing."""


class KernelError(RuntimeError):
    """An OpenCL call or program build that failed, with the kernel named."""


def _error_name(code: int) -> str:
    for name in dir(cl.status_code):
        if not name.startswith("_") and getattr(cl.status_code, name) == code:
            return f"CL_{name}"
    return "CL_UNKNOWN_ERROR"


def describe_cl_error(exc: Exception, what: str) -> str:
    """`what`: the kernel or source being built or run, named in the message."""
    code = getattr(exc, "code", None)
    if code is None and exc.args and hasattr(exc.args[0], "code"):
        code = exc.args[0].code()
    name = f"OpenCL error {code} ({_error_name(code)})" if isinstance(code, int) else "OpenCL error"
    detail = str(exc).strip().splitlines()
    return f"{name} in {what}: {detail[0] if detail else type(exc).__name__}"


@dataclass(frozen=True)
class DeviceInfo:
    index: str  # "platform:device", e.g. "0:0"
    platform: str
    name: str
    kind: str  # CPU, GPU, ACCELERATOR
    compute_units: int
    global_mem_bytes: int
    max_alloc_bytes: int
    fp16: bool
    opencl_c: str

    @property
    def is_pocl(self) -> bool:
        platform = self.platform.lower()
        return "portable computing language" in platform or "pocl" in platform


def _kind(device: Any) -> str:
    t = device.type
    if t & cl.device_type.GPU:
        return "GPU"
    if t & cl.device_type.CPU:
        return "CPU"
    return "ACCELERATOR"


def list_devices() -> list[tuple[DeviceInfo, Any]]:
    """Every OpenCL device on every platform, in platform order."""
    try:
        platforms = cl.get_platforms()
    except cl.Error:  # the ICD loader found no platform at all
        return []
    found = []
    for pi, platform in enumerate(platforms):
        try:
            devices = platform.get_devices()
        except cl.Error:
            continue
        for di, device in enumerate(devices):
            info = DeviceInfo(
                index=f"{pi}:{di}",
                platform=platform.name.strip(),
                name=device.name.strip(),
                kind=_kind(device),
                compute_units=device.max_compute_units,
                global_mem_bytes=device.global_mem_size,
                max_alloc_bytes=device.max_mem_alloc_size,
                fp16="cl_khr_fp16" in device.extensions,
                opencl_c=device.opencl_c_version.strip(),
            )
            found.append((info, device))
    return found


def default_index(devices: list[tuple[DeviceInfo, Any]]) -> int:
    """The embedded default: the first PoCL CPU device, else the first GPU, else the first."""
    for i, (info, _) in enumerate(devices):
        if info.is_pocl and info.kind == "CPU":
            return i
    for i, (info, _) in enumerate(devices):
        if info.kind == "GPU":
            return i
    return 0


def _vendor_matches(word: str, info: DeviceInfo) -> bool:
    """A selector's vendor word against a platform: part of its name, or "pocl" for
    PoCL, whose Debian build calls itself "Portable Computing Language"."""
    return word in info.platform.lower() or (word == "pocl" and info.is_pocl)


def select(selector: str | None = None) -> tuple[DeviceInfo, Any]:
    """Resolve a device selector.

    `selector` (default: env MOE_DEVICE): empty for the default; "P:D" platform and
    device index; "vendor:N" (pocl, nvidia, amd, intel, ... matched against the
    platform name) for the N-th device of that platform; or any substring of the
    device or platform name, case-insensitive.
    """
    if selector is None:
        selector = os.environ.get("MOE_DEVICE", "")
    devices = list_devices()
    if not devices:
        raise DeviceError(
            "no OpenCL device found: install an OpenCL driver (e.g. apt-get install "
            "pocl-opencl-icd, or pip install pocl-binary-distribution)"
        )
    sel = selector.strip().lower()
    if not sel:
        return devices[default_index(devices)]
    if ":" in sel:
        left, _, right = sel.rpartition(":")
        if right.isdigit():
            n = int(right)
            if left.isdigit():
                for info, dev in devices:
                    if info.index == f"{int(left)}:{n}":
                        return info, dev
            else:
                matches = [(i, d) for i, d in devices if _vendor_matches(left, i)]
                if n < len(matches):
                    return matches[n]
    for info, dev in devices:
        if sel in info.name.lower() or sel in info.platform.lower():
            return info, dev
    known = "; ".join(f"{i.index} {i.platform} / {i.name}" for i, _ in devices)
    raise DeviceError(f"no OpenCL device matches {selector!r}; devices: {known}")


@lru_cache(maxsize=1)
def host_cpu_flags() -> frozenset[str]:
    """The instruction-set flags of this machine's CPU (Linux; empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()
