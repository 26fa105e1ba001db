// Weight storage by precision (kernels/precision.py): float, or half read through
// vload_half (which needs no cl_khr_fp16: the arithmetic stays in float).
// Defines: WEIGHT_HALF (0/1).
#ifndef WEIGHT_HALF
#define WEIGHT_HALF 0
#endif
#if WEIGHT_HALF
#define wtype half
#define LOADW(i, p) vload_half((i), (p))
#define LOADW8(i, p) vload_half8((i), (p))
#define LOADW16(i, p) vload_half16((i), (p))
#else
#define wtype float
#define LOADW(i, p) ((p)[i])
#define LOADW8(i, p) vload8((i), (p))
#define LOADW16(i, p) vload16((i), (p))
#endif
