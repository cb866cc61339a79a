"""The tensor-core kernels' arithmetic (kernels/moe_mma.cuh), Q4_K and Q6_K in f32 mode.

Why: a float dot product costs a multiply-add per weight on CUDA cores, which is more than an H100
can issue at memory speed once a few tokens share the weights. Integer tensor cores do the
products and sums exactly, so the only roundings left are few and easy to state:

1. Activations enter as block fixed point: per token and 256-value superblock, σ = 2^(E−22) with
   max|x| < 2^E (E ≥ −96), X = rint(x/σ), so |X| ≤ 2^22: 23 bits against the superblock's
   largest |x|, float32's 24 against each x. The rounding is at most 2^−23·max|x| per value,
   within the float32 bound of a dot product (n ≥ 256 terms) — and three signed 8-bit digits
   hold X, so the 8-token kernel runs 3 MMAs per weight group, not 4 (session 6: 30 bits cost a
   fourth digit that bought nothing a float32 reference can see). A superblock holding inf or NaN
   gets σ = NaN (its outputs are NaN) and X = 0. The kernel feeds X to int8 tensor cores as signed
   8-bit digits; that is exact, so it does not show here.
2. Per row and superblock, with the format's integer parts (weight = d·sc_g·q, minus dm·cm_g
   where the format has a min):
       I  = Σ_g sc_g · Σ_{j∈g} q_j·X_j                      exact (int64)
       acc = fma(d, f32(I)·σ, acc)
       with a min:  mm = fma chain over g of (cm_g, Mx_g), from 0;  Mx_g = f32(Σ_{j∈g} X_j)·σ
                    acc = fma(−dm, mm, acc)
   Q4_K: groups of 32, sc = 6-bit scale, q = nibble, cm = 6-bit min, dm = dmin.
   Q6_K: groups of 16, sc = int8 scale, q = the signed value (6-bit code − 32), no min: the bias is
   inside the exact sum (the kernel's MMA takes 4q as a signed byte, session 6; until then the
   −32 bias was a float min term that cost 16 FMAs per row and member and cancelled against I).
3. acc starts at 0 and takes the row's superblocks in order (one warp holds a row's whole sum).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..quant import dequant as dq
from .emulated import fmaf

F32 = np.float32
SB = 256            # superblock: the unit of the activation scale and of one acc step
XBITS = 22          # |X| ≤ 2^XBITS: three signed 8-bit digits
EMIN = -96          # smallest exponent E: σ stays a normal float
GROUP = {"Q4_K": 32, "Q6_K": 16}   # weights per scale group
WITH_MIN = {"Q4_K"}                # formats with a min term (its groups: GROUP's)


def serves(name: str, act: str) -> bool:
    """Whether a launch takes the tensor-core kernels: f32 mode and Q4_K/Q6_K, for any number of
    tokens (one token too: faster than the float kernels since the weights' tiled layout, measured
    on an H100 in session 5). Else the float kernels: q8_1 mode reproduces llama.cpp's MMVQ, and
    other formats have no integer path."""
    return act == "f32" and name in GROUP


def fixed_point(X: np.ndarray, gs: int):
    """x rows (P, n) float32 → X (P, S, 256) int64, σ (P, S) float32, Mx (P, S, 256/gs) float32
    (the group sums a min term needs)."""
    P, n = X.shape
    x = np.asarray(X, F32).reshape(P, n // SB, SB)
    finite = np.isfinite(x).all(axis=2)
    x = np.where(finite[..., None], x, F32(0))              # a non-finite superblock: X = 0, σ = NaN
    E = np.maximum(np.frexp(np.abs(x).max(axis=2))[1], EMIN)
    Xi = np.rint(x.astype(np.float64) * np.ldexp(1.0, XBITS - E)[..., None]).astype(np.int64)
    sig = np.ldexp(F32(1), E - XBITS).astype(F32)
    sig[~finite] = np.nan
    sums = Xi.reshape(P, n // SB, SB // gs, gs).sum(axis=3)
    return Xi, sig, (sums.astype(F32) * sig[..., None]).astype(F32)


def int_parts(blocks: np.ndarray, name: str):
    """Superblocks (nb, nbytes) uint8 → q (nb, 256) int64, sc (nb, G) int64, cm (nb, G) float32,
    d (nb,) float32, dm (nb,) float32, as stated in the module docstring (no min: cm, dm zeros,
    and nothing reads them)."""
    b = np.asarray(blocks, np.uint8)
    if name == "Q4_K":
        sc, mn = dq.kquant_scale_min(b[:, 4:16])
        q = dq._q4_k_q(b[:, 16:144]).reshape(-1, SB)
        return (q.astype(np.int64), sc.astype(np.int64), mn.astype(F32),
                dq._f16(b[:, 0:2]).reshape(-1), dq._f16(b[:, 2:4]).reshape(-1))
    if name == "Q6_K":
        q, _, _ = dq._q6_k(b)
        sc = np.ascontiguousarray(b[:, 192:208]).view(np.int8)
        d = dq._f16(b[:, 208:210]).reshape(-1)
        return q.astype(np.int64), sc.astype(np.int64), np.zeros(sc.shape, F32), d, np.zeros_like(d)
    raise ValueError(f"no integer kernel for {name}")


@njit(parallel=True, cache=True)
def int_rows(q, sc, cm, d, dm, Xi, sig, Mx, gs, with_min, out):
    """out[p, r] for rows r of q (R, S, 256) … against x rows p of Xi (T, S, 256) …"""
    R, S, _ = q.shape
    T = Xi.shape[0]
    G = SB // gs
    for job in prange(T * R):
        p = job // R
        r = job % R
        acc = np.float32(0.0)
        for s in range(S):
            big = np.int64(0)
            mm = np.float32(0.0)
            for g in range(G):
                dot = np.int64(0)
                for j in range(g * gs, g * gs + gs):
                    dot += q[r, s, j] * Xi[p, s, j]
                big += sc[r, s, g] * dot
                if with_min:
                    mm = fmaf(cm[r, s, g], Mx[p, s, g], mm)
            acc = fmaf(d[r, s], np.float32(big) * sig[p, s], acc)
            if with_min:
                acc = fmaf(-dm[r, s], mm, acc)
        out[p, r] = acc


def matvec(raw_rows: np.ndarray, name: str, X: np.ndarray) -> np.ndarray:
    """One expert's rows (R, row_bytes) uint8 against x rows X (T, n) float32 → (T, R) float32."""
    R = raw_rows.shape[0]
    n = X.shape[1]
    S = n // SB
    gs = GROUP[name]
    q, sc, cm, d, dm = int_parts(raw_rows.reshape(R * S, -1), name)
    Xi, sig, Mx = fixed_point(X, gs)
    out = np.empty((X.shape[0], R), F32)
    int_rows(q.reshape(R, S, SB), sc.reshape(R, S, -1), cm.reshape(R, S, -1), d.reshape(R, S), dm.reshape(R, S),
             Xi, sig, Mx, gs, name in WITH_MIN, out)
    return out
