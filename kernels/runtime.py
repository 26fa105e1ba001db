"""The OpenCL device runtime: device choice, program cache, buffers, readable errors.

One `Device` per OpenCL device. Programs are built once per (source, defines) and
memoised here; pyopencl keeps its own binary cache on disk underneath.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any

import numpy as np
import pyopencl as cl

from kernels import probes
from kernels.blocking import DEFINES as BLOCKING
from kernels.devices import DeviceError, KernelError, describe_cl_error, host_cpu_flags, select
from kernels.hugepages import MIN_BYTES, huge_page_copy
from kernels.tuning import Tuning, device_key
from kernels.tuning import load as load_tuning

# Flags that matter for speed on PoCL: without -cl-mad-enable it emits separate
# multiplies and adds; -cl-fast-relaxed-math lets it contract and vectorise freely.
BUILD_OPTIONS = ("-cl-mad-enable", "-cl-fast-relaxed-math", "-cl-std=CL1.2")


def read_source(name: str) -> str:
    """The text of kernels/cl/<name>, with `#include "x.h"` lines replaced by the text
    of kernels/cl/x.h: the program caches key on the source text, so a header edit must
    change it (an -I include would leave stale binaries behind)."""
    text = resources.files("kernels").joinpath("cl", name).read_text(encoding="utf-8")
    return re.sub(
        r'^#include "([\w.]+)"\s*$', lambda m: read_source(m.group(1)), text, flags=re.MULTILINE
    )


def _define(key: str, value: Any) -> str:
    if isinstance(value, bool):
        value = int(value)
    return f"-D{key}={value}"


@lru_cache(maxsize=1024)
def _work_group(extents: tuple[int, ...], limit: int, units: int) -> tuple[int, ...]:
    # one image alone still spreads over every compute unit (PoCL's choice at batch 1)
    budget = max(1, min(limit, int(np.prod(extents)) // units))
    local = []
    for extent in extents:
        size = next(d for d in range(min(extent, budget), 0, -1) if extent % d == 0)
        local.append(size)
        budget //= size
    return tuple(local)


class Device:
    """An OpenCL device with its context, one in-order queue and a program memo.

    Kernel objects are not thread-safe: a Device is used by one thread at a time
    (the server serialises batches per device).
    """

    def __init__(
        self, selector: str | None = None, profile: bool = False, tuned: bool = True
    ) -> None:
        """`profile`: time every launch on the device (OpenCL profiling events, kept in
        `events` with the label in force when the launch was made or recorded).
        `tuned` False: no tuning database, the launchers' built-in choices."""
        self.info, self.cl_device = select(selector)
        try:
            self.context = cl.Context([self.cl_device])
            properties = cl.command_queue_properties.PROFILING_ENABLE if profile else 0
            self.queue = cl.CommandQueue(self.context, properties=properties)
        except cl.Error as exc:
            raise DeviceError(describe_cl_error(exc, f"opening {self.info.name}")) from exc
        self._programs: dict[tuple[str, tuple[str, ...]], Any] = {}
        self._base_defines = {"MAD": "fma" if self.fast_fma else "mad", **BLOCKING}
        self._recording: list[tuple[Any, ...]] | None = None
        self.events: list[tuple[str, str, Any]] | None = [] if profile else None
        self._label = ""
        self._lock = threading.Lock()
        self._tuned = tuned
        self._shared: dict[str, Any] = {}  # `shared`: the current buffer of each key

    @property
    def name(self) -> str:
        return self.info.name

    @cached_property
    def tuning(self) -> Tuning:
        """This device's tuning database (kernels/tuning.py), read once."""
        key = device_key(self.info.platform, self.info.name, self.cl_device.driver_version)
        return load_tuning(key) if self._tuned else Tuning(key)

    @property
    def is_cpu(self) -> bool:
        return self.info.kind == "CPU"

    @property
    def fast_fma(self) -> bool:
        """Whether fma() compiles to fused multiply-add instructions.

        Debian's PoCL (LLVM 15) emits vfmadd for fma() but separate multiplies and adds
        for mad(); the PyPI PoCL (LLVM 14) calls a slow library fma, so there mad() is
        the fast spelling (docs/benchmark-log.md has the measurements).
        """
        version = self.cl_device.platform.version
        if "pocl" not in version.lower():
            return True
        match = re.search(r"LLVM (\d+)", version)
        return bool(match) and int(match.group(1)) >= 15

    def __repr__(self) -> str:
        return f"Device({self.info.index} {self.info.platform} / {self.info.name})"

    def work_group(self, *extents: int) -> tuple[int, ...] | None:
        """A local size that stays the same whatever the batch size, for a launch whose
        global size is, along each axis, a whole multiple of `extents` (the part of the
        axis one image spans: 1 for an axis that is the batch itself).

        PoCL compiles a kernel once per local size, and left to choose (None) it picks
        one from the whole global size: every new batch size would compile every such
        kernel again (seconds at warm-up). What PoCL picks for one image is kept: each axis
        takes the largest divisor of its extent that fits what is left of a budget,
        first axis first; the budget is the work-group limit, or less so that one image
        still makes a work-group per compute unit.
        Other devices compile once per kernel whatever the local size and choose it
        well themselves: None.
        """
        if not self.is_cpu:
            return None
        return _work_group(extents, *self._group_limits)

    def each_alone(self, ndim: int) -> tuple[int, ...] | None:
        """The local size of a kernel whose work-items share nothing (the GEMMs, the
        CPU form of linear): one work-item per work-group on a CPU, where each is one
        explicitly vectorised loop and PoCL spreads the groups over its threads; the
        driver's choice elsewhere, which packs them into warps (one per work-group
        would leave 31 of an NVIDIA warp's 32 lanes idle)."""
        return (1,) * ndim if self.is_cpu else None

    @property
    def widest_panel(self) -> int:
        """NV of the GEMMs' widest 8 x 16*NV register block (kernels/cl/gemm.cl): 3 on a
        CPU; 1 elsewhere, as 8 x 48 float accumulators per work-item exceed the 255
        registers an NVIDIA thread may hold and spill to memory."""
        return 3 if self.is_cpu else 1

    @cached_property
    def dot4(self) -> bool:
        """Whether int8 convolutions and fully connected layers may run on AVX-512
        VNNI's byte dot products (DOT4 in gemm.cl and linear.cl): a PoCL CPU device on a
        host whose CPU has them, where a probe kernel calling the instruction builds and
        computes one dot product right (kernels/probes.py). `MOE_INT8_DOT4=0` turns it
        off (the float-lane int8 path, same results)."""
        if os.environ.get("MOE_INT8_DOT4", "1") == "0" or not self.is_cpu:
            return False
        if not self.info.is_pocl or not {"avx512_vnni", "avx512bw"} <= host_cpu_flags():
            return False
        return probes.vnni_works(self)

    @cached_property
    def dp4a(self) -> bool:
        """Whether int8's tiled GEMM (tiled.cl) may add four byte products a step with
        PTX's dp4a: an NVIDIA device whose OpenCL compiler builds the inline assembly
        and computes one dot product right with it (kernels/probes.py); else portable
        C, the same sums."""
        return "nvidia" in self.info.platform.lower() and probes.dp4a_works(self)

    @cached_property
    def _group_limits(self) -> tuple[int, int]:
        """(work-group size limit, compute units), asked of the driver once: launches
        outside a recorded tape (experts run one by one) ask for local sizes per batch."""
        return int(self.cl_device.max_work_group_size), int(self.cl_device.max_compute_units)

    def program(self, source: str, defines: dict[str, Any] | None = None) -> Any:
        """Build kernels/cl/<source> with -D defines, once per (source, defines)."""
        merged = {**self._base_defines, **(defines or {})}
        options = tuple(sorted(_define(k, v) for k, v in merged.items()))
        key = (source, options)
        with self._lock:
            prog = self._programs.get(key)
            if prog is None:
                prog = self._build(source, options)
                self._programs[key] = prog
        return prog

    def _build(self, source: str, options: tuple[str, ...]) -> Any:
        text = read_source(source)
        try:
            return cl.Program(self.context, text).build(options=[*BUILD_OPTIONS, *options])
        except cl.RuntimeError as exc:
            log = str(exc).strip()
            raise KernelError(
                f"building {source} {' '.join(options)} for {self.info.name} failed:\n{log}"
            ) from exc

    def kernel(self, source: str, name: str, defines: dict[str, Any] | None = None) -> Any:
        """A new kernel object (own argument state) from a memoised program."""
        try:
            return cl.Kernel(self.program(source, defines), name)
        except cl.Error as exc:
            raise KernelError(describe_cl_error(exc, f"kernel {name} in {source}")) from exc

    def alloc(self, nbytes: int) -> Any:
        """A device buffer of at least `nbytes` (never zero-sized)."""
        return cl.Buffer(self.context, cl.mem_flags.READ_WRITE, size=max(int(nbytes), 4))

    def shared(self, key: str, nbytes: int) -> Any:
        """A device buffer of at least `nbytes` that every caller asking for `key`
        shares. The queue runs in order, so buffers that hold one batch's activations
        can serve every batch size, precision and model with the same role: a
        server's activations take the largest batch's bytes once, not a copy per
        batch size and network. A larger request replaces the buffer; holders of the
        old one keep it alive until they drop it (`is_shared` tells them)."""
        found = self._shared.get(key)
        if found is None or found.size < nbytes:
            found = self._shared[key] = self.alloc(nbytes)
        return found

    def is_shared(self, key: str, buffer: Any) -> bool:
        """Whether `buffer` is still the current buffer of `key` (`shared`)."""
        return self._shared.get(key) is buffer

    @property
    def shared_bytes(self) -> int:
        """Device bytes of the current shared buffers."""
        return sum(b.size for b in self._shared.values())

    def upload(self, array: np.ndarray) -> Any:
        """A read-only device buffer holding a copy of `array` (C order); on a CPU
        device a large one lies on huge pages (kernels/hugepages.py)."""
        host = np.ascontiguousarray(array)
        if host.nbytes == 0:
            return self.alloc(4)
        if self.is_cpu and host.nbytes >= MIN_BYTES:  # the device reads this memory itself
            flags = cl.mem_flags.READ_ONLY | cl.mem_flags.USE_HOST_PTR
            return cl.Buffer(self.context, flags, hostbuf=huge_page_copy(host))
        return cl.Buffer(
            self.context, cl.mem_flags.READ_ONLY | cl.mem_flags.COPY_HOST_PTR, hostbuf=host
        )

    def write(self, buffer: Any, array: np.ndarray) -> Any:
        """Queue a copy of `array` into `buffer` and return its event. The event holds
        the host array and, when dropped, waits for the copy (pyopencl's NannyEvent):
        a caller that queues more work behind the copy keeps it until that work is done."""
        return cl.enqueue_copy(self.queue, buffer, np.ascontiguousarray(array), is_blocking=False)

    def feed(self, buffer: Any, array: np.ndarray) -> tuple[Any, Any]:
        """What launches recorded on `buffer` read instead to see `array`, and what to
        wait for before the array may change. A CPU device reads the array's own memory
        (the copy into `buffer` costs 40-180 us for AlexNet's batches, ahead of every
        kernel); any other device gets a copy queued into `buffer`."""
        host = np.ascontiguousarray(array)
        if not self.is_cpu or host.nbytes == 0:
            return buffer, self.write(buffer, host)
        flags = cl.mem_flags.READ_ONLY | cl.mem_flags.USE_HOST_PTR
        view = cl.Buffer(self.context, flags, hostbuf=host)
        return view, Held(view)

    def copy(self, dst: Any, src: Any, nbytes: int, dst_offset: int = 0) -> None:
        """Device-to-device copy of `nbytes` from the start of `src`."""
        cl.enqueue_copy(self.queue, dst, src, byte_count=nbytes, dst_offset=dst_offset)

    def read(self, buffer: Any, shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
        out = np.empty(shape, dtype=dtype)
        cl.enqueue_copy(self.queue, out, buffer, is_blocking=True)
        return out

    def read_later(
        self, buffer: Any, shape: tuple[int, ...], dtype: Any = np.float32
    ) -> tuple[np.ndarray, Any]:
        """Queue a read of `buffer`; the array holds the data once the event is done."""
        out = np.empty(shape, dtype=dtype)
        return out, cl.enqueue_copy(self.queue, out, buffer, is_blocking=False)

    def launch(
        self,
        kernel: Any,
        global_size: tuple[int, ...],
        local_size: tuple[int, ...] | None,
        *args: Any,
    ) -> None:
        """Enqueue `kernel(*args)` (or note it, while recording); errors name the kernel."""
        if self._recording is not None:
            self._recording.append((kernel, global_size, local_size, args, self._label))
            return
        try:
            kernel.set_args(*args)
            event = cl.enqueue_nd_range_kernel(self.queue, kernel, global_size, local_size)
        except cl.Error as exc:
            raise KernelError(
                describe_cl_error(exc, f"kernel {kernel.function_name} global={global_size}")
            ) from exc
        if self.events is not None:
            self.events.append((self._label, kernel.function_name, event))

    def finish(self) -> None:
        self.queue.finish()

    @contextmanager
    def labelled(self, label: str) -> Iterator[None]:
        """Launches made (or recorded) inside the block carry `label` in `events`;
        nested labels join with dots ("stem.conv1")."""
        outer = self._label
        self._label = f"{outer}.{label}" if outer and label else outer or label
        try:
            yield
        finally:
            self._label = outer

    @contextmanager
    def record(self) -> Iterator[list[tuple[Any, ...]]]:
        """Collect the launches made inside the block instead of running them."""
        self._recording = launches = []
        try:
            yield launches
        finally:
            self._recording = None

    def tape(self, launches: list[tuple[Any, ...]], input: Any = None) -> Tape:
        return Tape(self, launches, input)


class Held:
    """Host memory a device reads in place (`Device.feed`), held until waited for."""

    def __init__(self, *objects: Any) -> None:
        self.objects = objects

    def wait(self) -> None:
        self.objects = ()


class Tape:
    """Recorded launches with their arguments bound once, replayed per call.

    A network at one batch size launches the same kernels on the same buffers every
    time; in pyopencl setting a launch's arguments costs several times what enqueueing
    it does, and that host time competes with the device's worker threads for the
    same cores.
    Each launch gets its own kernel object so that tapes never share argument state.
    The arguments that are `input` can be rebound per replay (`Device.feed`); the
    buffer bound last stays referenced until the next replay binds another.
    """

    def __init__(self, device: Device, launches: list[tuple[Any, ...]], input: Any = None) -> None:
        self.device = device
        self.items = []
        self.input = self._bound = input
        self._inputs = []  # (kernel, argument index) of each argument that is `input`
        for kernel, global_size, local_size, args, label in launches:
            own = cl.Kernel(kernel.program, kernel.function_name)
            try:
                own.set_args(*args)
            except cl.Error as exc:
                raise KernelError(describe_cl_error(exc, f"kernel {kernel.function_name}")) from exc
            self.items.append((own, global_size, local_size, label))
            if input is not None:
                self._inputs += [(own, i) for i, arg in enumerate(args) if arg is input]

    def replay(self, input: Any = None) -> None:
        """Enqueue the launches, reading `input` (default: the recorded one) for it."""
        bound = self.input if input is None else input
        if bound is not self._bound:
            for kernel, i in self._inputs:
                kernel.set_arg(i, bound)
            self._bound = bound
        queue, events = self.device.queue, self.device.events
        for kernel, global_size, local_size, label in self.items:
            try:
                event = cl.enqueue_nd_range_kernel(queue, kernel, global_size, local_size)
            except cl.Error as exc:
                raise KernelError(
                    describe_cl_error(exc, f"kernel {kernel.function_name} global={global_size}")
                ) from exc
            if events is not None:
                events.append((label, kernel.function_name, event))
