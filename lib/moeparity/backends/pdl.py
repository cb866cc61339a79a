"""Programmatic dependent launch (Hopper and later): a kernel launched this way may start while
the kernel before it in the stream is still running, and waits (`griddepcontrol.wait`) only
before it reads that kernel's output. The tensor-core matvec uses it to issue its weight loads
while x_fixed converts the activations: one token's x_fixed is a few µs of latency, ≈ 8 % of a
tensor's time on an H100.

What a kernel reads before its `griddepcontrol.wait` must be complete before the kernel it follows
starts: the matvec's weight copies read mma_tiles' output that early, so x_fixed, which follows
mma_tiles, is an ordinary launch (with PDL too it could start before mma_tiles' writes were visible:
session 8, tests/test_gpu.py::test_first_call_of_a_fresh_launch_is_complete). The one exception,
moe_ffn's down (cuda.Launch.follow): its x_fixed follows gate+up's matvec, not mma_tiles, and
waits before it reads anything; the down's tiled copy was enqueued before gate+up's own x_fixed, an
ordinary launch, so it is complete before the down's matvec can start.

CuPy has no launch-attribute API, so this calls the driver's cuLaunchKernelEx through ctypes.
Where that is missing or refuses (older driver or GPU), `launch` falls back to an ordinary launch:
the kernels' `griddepcontrol` instructions are then no-ops, and the results are the same.
"""
from __future__ import annotations

import ctypes

import numpy as np

PROGRAMMATIC_STREAM_SERIALIZATION = 6      # CUlaunchAttributeID


class _Attr(ctypes.Structure):
    _fields_ = [("id", ctypes.c_int), ("pad", ctypes.c_char * 4), ("value", ctypes.c_int * 16)]


class _Config(ctypes.Structure):
    _fields_ = [("grid", ctypes.c_uint * 3), ("block", ctypes.c_uint * 3), ("smem", ctypes.c_uint),
                ("stream", ctypes.c_void_p), ("attrs", ctypes.POINTER(_Attr)), ("n_attrs", ctypes.c_uint)]


_state = {}


def _driver():
    if "fn" not in _state:
        try:
            _state["fn"] = ctypes.CDLL("libcuda.so.1").cuLaunchKernelEx
        except (OSError, AttributeError):
            _state["fn"] = None
    return _state["fn"]


def _c(a):
    """A kernel argument as the ctypes value the driver reads."""
    if hasattr(a, "data") and hasattr(a.data, "ptr"):
        return ctypes.c_void_p(a.data.ptr)
    if isinstance(a, np.float32):
        return ctypes.c_float(a)
    if isinstance(a, np.int64):
        return ctypes.c_int64(int(a))
    if isinstance(a, np.int32):
        return ctypes.c_int32(int(a))
    raise TypeError(f"kernel argument of type {type(a).__name__}")


def launch(cp, fn, grid, block, args, smem=0):
    """fn(grid, block, args) with programmatic stream serialization, else an ordinary launch."""
    drv = _driver()
    if drv is not None and _state.get("ok", True):
        vals = [_c(a) for a in args]
        params = (ctypes.c_void_p * len(vals))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in vals])
        attr = _Attr(id=PROGRAMMATIC_STREAM_SERIALIZATION)
        attr.value[0] = 1
        g, b = tuple(grid) + (1,) * (3 - len(grid)), tuple(block) + (1,) * (3 - len(block))
        cfg = _Config((ctypes.c_uint * 3)(*g), (ctypes.c_uint * 3)(*b), smem,
                      ctypes.c_void_p(cp.cuda.get_current_stream().ptr), ctypes.pointer(attr), 1)
        func = getattr(fn, "kernel", fn).ptr               # a RawKernel's CUfunction
        if drv(ctypes.byref(cfg), ctypes.c_void_p(func), params, None) == 0:
            return
        _state["ok"] = False                       # refused once: ordinary launches from now on
    fn(grid, block, args, shared_mem=smem)
