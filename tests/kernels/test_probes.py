"""The instruction probes (kernels/probes.py): a path is taken only where its probe
kernel builds, runs and computes the dot products right."""

from __future__ import annotations

from kernels import probes

# The probes' contract in portable C: each int lane the sum of its four unsigned x
# signed byte products (OFF_BY_ONE gets one lane wrong, as a miscompiled
# instruction would).
PORTABLE = """
__kernel void probe(__global const uchar *u, __global const char *s, __global int *out)
{
    const int i = get_global_id(0);
    int d = 0;
    for (int k = 0; k < 4; ++k) d += u[4 * i + k] * s[4 * i + k];
    out[i] = d + OFF;
}
"""


def test_a_probe_passes_only_where_it_builds_and_computes_right(device):
    assert probes._dot_products(device, "#define OFF 0\n" + PORTABLE, 16, 16)
    assert not probes._dot_products(device, "#define OFF (i == 5)\n" + PORTABLE, 16, 16)
    assert not probes._dot_products(device, PORTABLE, 16, 16)  # OFF undefined: no build


def test_dp4a_is_nvidias_only(device):
    """PTX is NVIDIA's: elsewhere the tiled GEMM's int8 steps are portable C."""
    if "nvidia" not in device.info.platform.lower():
        assert device.dp4a is False
    else:
        assert device.dp4a == probes.dp4a_works(device)
