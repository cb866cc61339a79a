"""Activation quantisation as the engines do it before an integer dot product.

Each function returns x' — the float values the engine's integer dot effectively multiplies by —
so a float dot over x' reproduces the engine's activation error exactly (the integer part of
the engine's dot is exact; only float32 rounding of the scale products differs).
"""
from __future__ import annotations

import numpy as np

F32 = np.float32


def _blocks(x, n):
    x = np.asarray(x, F32)
    if x.shape[-1] % n:
        raise ValueError(f"activation length {x.shape[-1]} is not a multiple of {n}")
    return x.reshape(*x.shape[:-1], -1, n)


def q8_0(x):
    """quantize_row_q8_0_ref: d = amax/127 stored as fp16, q = roundf(x/d) (half away from zero)."""
    b = _blocks(x, 32)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    d = amax / F32(127)
    with np.errstate(divide="ignore"):
        inv = np.where(d == 0, F32(0), F32(1) / d).astype(F32)
    v = b * inv
    q = np.sign(v) * np.floor(np.abs(v) + F32(0.5))
    dh = d.astype(np.float16).astype(F32)
    return (dh * q).astype(F32).reshape(np.shape(x))


def q8_k(x):
    """quantize_row_q8_K_ref: iscale = -127/max (max = signed value of largest |x|), q = nearest, d float32."""
    b = _blocks(x, 256)
    i = np.abs(b).argmax(axis=-1)[..., None]
    mx = np.take_along_axis(b, i, axis=-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        iscale = np.where(mx == 0, F32(0), F32(-127) / mx).astype(F32)
        q = np.minimum(np.rint(iscale * b), 127)
        d = np.where(mx == 0, F32(0), F32(1) / iscale).astype(F32)
    return (d * q).astype(F32).reshape(np.shape(x))


def q8_1_cuda(x):
    """llama.cpp CUDA quantize_q8_1: d = amax/127, q = roundf(x/d); the dot uses d as fp16.

    Returns (x', s) where s is the fp16-rounded sum of the *unquantised* x per 32-block, which
    CUDA's kernels use for the min terms of Q4_1/Q5_1/Q2_K/Q4_K/Q5_K.
    """
    b = _blocks(x, 32)
    amax = np.abs(b).max(axis=-1, keepdims=True)
    d = amax / F32(127)
    with np.errstate(divide="ignore", invalid="ignore"):
        q = np.where(amax == 0, F32(0), np.sign(b) * np.floor(np.abs(b / d) + F32(0.5)))
    dh = d.astype(np.float16).astype(F32)
    s = b.sum(axis=-1, dtype=F32).astype(np.float16).astype(F32)
    return (dh * q).astype(F32).reshape(np.shape(x)), s


def to_f16(x):
    return np.asarray(x, F32).astype(np.float16).astype(F32)


def to_bf16(x):
    """Round-to-nearest-even to bf16 (ggml_compute_fp32_to_bf16), back to float32."""
    u = np.ascontiguousarray(x, F32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16) << 16
    return r.astype(np.uint32).view(F32).reshape(np.shape(x))


CPU_ACT = {"F32": None, "F16": to_f16, "BF16": to_bf16, "Q8_0": q8_0, "Q8_K": q8_k}


def cpu_q8(x, act_q8: str):
    """x as llama.cpp's CPU backend feeds it to a weight whose vec_dot_type is `act_q8`."""
    f = CPU_ACT[act_q8]
    return np.asarray(x, F32) if f is None else f(x)
