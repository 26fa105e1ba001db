"""The OpenCL runtime (kernels/runtime.py): work-group sizes that divide the per-image
extents, the profiling device's labelled events, direct and replayed from a tape, a
tape's input rebound to the caller's array, weights on huge pages (kernels/hugepages.py),
and PoCL's workers pinned (kernels/devices.py)."""

from __future__ import annotations

import numpy as np
import pytest

from kernels import ops


@pytest.mark.parametrize(
    ("extents", "limit", "units", "want"),
    [
        ((27, 64), 4096, 2, (27, 32)),
        ((13, 192), 4096, 2, (13, 96)),
        ((16, 256), 4096, 2, (16, 128)),
        ((13, 640), 4096, 1, (13, 160)),
        ((7, 1), 4096, 2, (1, 1)),
        ((1, 40), 4096, 16, (1, 2)),
        ((64, 64), 256, 2, (64, 4)),
        ((97,), 64, 2, (1,)),
        ((1,), 4096, 8, (1,)),
    ],
)
def test_work_group_divides_the_per_image_extents(extents, limit, units, want):
    """PoCL's own choices at batch 1 on 2 compute units are the first three."""
    from kernels.runtime import _work_group

    local = _work_group(extents, limit, units)
    assert local == want
    assert all(e % g == 0 for e, g in zip(extents, local, strict=True))
    assert int(np.prod(local)) <= limit


def test_profiling_labels_direct_and_recorded_launches(device, rng):
    """A profiling device keeps an event per launch with the label in force when it was
    made, or recorded (a tape's replays keep the recording's labels); nested labels
    join with dots. A device without profiling keeps nothing."""
    from kernels.runtime import Device

    assert device.events is None
    prof = Device(device.info.index, profile=True)
    x = rng.standard_normal((7, 3, 20), np.float32)
    op = ops.SwapOuter(prof, 20, True)
    src, dst = prof.upload(x), prof.alloc(x.nbytes)
    with prof.labelled("net"):
        with prof.labelled("swap"):
            op(7, 3, src, dst)
        with prof.record() as launches, prof.labelled("taped"):
            op(7, 3, src, dst)
    prof.tape(launches).replay()
    prof.finish()
    assert [(label, name) for label, name, _ in prof.events] == [
        ("net.swap", "swap_outer"),
        ("net.taped", "swap_outer"),
    ]
    assert all(e.profile.end >= e.profile.start > 0 for _, _, e in prof.events)


def test_a_tape_reads_what_it_is_fed_then_its_own_input_again(device, rng):
    """`Device.feed` on a CPU device hands the tape a buffer over the array itself (no
    copy); a replay without one reads the recorded input buffer again, and an array fed
    after the copy was queued is what the launch sees."""
    from kernels.runtime import Held

    op = ops.SwapOuter(device, 20, True)
    own, dst = device.alloc(7 * 3 * 20 * 4), device.alloc(7 * 3 * 20 * 4)
    with device.record() as launches:
        op(7, 3, own, dst)
    tape = device.tape(launches, own)
    xs = [rng.standard_normal((7, 3, 20), np.float32) for _ in range(3)]
    want = [x.transpose(1, 0, 2) for x in xs]
    source, kept = device.feed(own, xs[0])
    assert (source is not own) == device.is_cpu and isinstance(kept, Held) == device.is_cpu
    tape.replay(source)
    np.testing.assert_array_equal(device.read(dst, (3, 7, 20)), want[0])
    kept.wait()
    device.write(own, xs[1]).wait()
    tape.replay()
    np.testing.assert_array_equal(device.read(dst, (3, 7, 20)), want[1])
    source, kept = device.feed(own, xs[2])
    tape.replay(source)
    np.testing.assert_array_equal(device.read(dst, (3, 7, 20)), want[2])


def test_device_selectors(device):
    """`P:D`, a vendor word with an index (`pocl:0` also where PoCL's platform calls
    itself "Portable Computing Language"), a name part; an unknown one is refused
    naming the devices there are."""
    from kernels.devices import DeviceError, select

    info, _ = select(device.info.index)
    assert info.index == device.info.index
    if device.info.is_pocl:
        assert select("pocl:0")[0].is_pocl
    assert select(device.info.name[:6])[0].name == device.info.name
    with pytest.raises(DeviceError, match="no OpenCL device matches 'nothing-like-it'"):
        select("nothing-like-it")


def test_huge_page_copy_is_aligned_and_equal(rng):
    from kernels.hugepages import HUGE_PAGE, huge_page_copy

    for shape in [(3, 5), (1000, 777)]:
        a = rng.standard_normal(shape).astype(np.float32)
        h = huge_page_copy(a)
        assert h.ctypes.data % HUGE_PAGE == 0
        assert h.dtype == a.dtype and h.shape == a.shape and h.flags.c_contiguous
        np.testing.assert_array_equal(h, a)
        a[0, 0] += 1  # a copy, not a view
        assert h[0, 0] != a[0, 0]


def test_large_uploads_on_a_cpu_lie_on_huge_pages(device, rng):
    """A CPU device reads weights of 2 MiB and more from a huge-page copy it keeps
    (the buffer holds it); smaller ones are copied by the driver. Both read back."""
    from kernels.hugepages import HUGE_PAGE, MIN_BYTES

    big = rng.standard_normal(MIN_BYTES // 4 + 5).astype(np.float32)
    small = rng.standard_normal(1000).astype(np.float32)
    for array in (big, small):
        buf = device.upload(array)
        np.testing.assert_array_equal(device.read(buf, array.shape), array)
    if not device.is_cpu:
        pytest.skip(f"{device.name} is not a CPU device")
    buf = device.upload(big)
    assert buf.hostbuf is not None and buf.hostbuf.ctypes.data % HUGE_PAGE == 0
    assert device.upload(small).hostbuf is None


def test_shared_buffers_are_one_per_key_and_grow():
    """`shared` hands every caller of a key the same buffer, replaces it when asked for
    more (the old one stays valid for whoever holds it), and keeps keys apart."""
    from kernels.runtime import Device

    device = Device()  # its own: the session's device has shared buffers of the tests
    first = device.shared("a", 100)
    assert device.shared("a", 64) is first and device.is_shared("a", first)
    assert device.shared("b", 100) is not first
    grown = device.shared("a", 1000)
    assert grown is not first and grown.size >= 1000
    assert not device.is_shared("a", first) and device.is_shared("a", grown)
    assert device.shared_bytes == grown.size + device.shared("b", 1).size
    data = np.arange(25, dtype=np.float32)
    device.write(first, data).wait()
    np.testing.assert_array_equal(device.read(first, data.shape), data)


@pytest.mark.parametrize(("env", "want"), [(None, "1"), ("0", "0")])
def test_pocl_workers_are_pinned_unless_the_environment_says(env, want):
    """kernels.devices asks PoCL to pin its workers (POCL_AFFINITY=1) before any
    platform loads; a value the user set stays."""
    import os
    import subprocess
    import sys

    environ = {k: v for k, v in os.environ.items() if k != "POCL_AFFINITY"}
    if env is not None:
        environ["POCL_AFFINITY"] = env
    code = "import os, kernels.devices; print(os.environ['POCL_AFFINITY'])"
    out = subprocess.run(
        [sys.executable, "-c", code], env=environ, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == want
