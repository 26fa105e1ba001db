"""The OpenCL runtime (kernels/runtime.py): work-group sizes that divide the per-image
extents, and the profiling device's labelled events, direct and replayed from a tape."""

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
