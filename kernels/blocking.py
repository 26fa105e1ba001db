"""Sizes that the Python launchers and the OpenCL C kernels must agree on.

Every program is built with these as `-D` defines (kernels/runtime.py), and gemm.cl
refuses to build with other values than the ones its unrolled macros are written for:
a change here that the kernels do not follow fails at build time, naming the file.
"""

ROW_BLOCK = 8  # rows of C (output channels) per GEMM register block; A is packed so
LANES = 16  # floats per vector: a GEMM panel is LANES * NV columns wide

DEFINES = {"ROW_BLOCK": ROW_BLOCK, "LANES": LANES}
