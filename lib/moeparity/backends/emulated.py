"""emulated-cuda: the CUDA kernels' algorithm on the CPU, for machines without a GPU.

Same factorised weights (quant/dequant.py's parts8: q, dl, ml per 8 weights, what the kernels'
Q::unit computes), same x staging (group sums Σx in the same order, or q8_1 block sums), same
per-lane arithmetic (in each chunk of CW weights lane L takes the 32-weight units L, L+32, …; per
8-weight group s = q0·x0, then fma(q_j, x_j, s); acc = fma(dl, s, acc); acc = fma(-ml, Σx, acc)),
same xor-butterfly reduction and chunk size (gpu_layout.py), in numba without fastmath. The GPU's
fused multiply-add is reproduced exactly: the float64 product of two floats is exact, the float64
sum is rounded to odd (TwoSum), and rounding that to float32 is then the correctly rounded fma.
Every output is labelled emulated.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from ..qtypes import QTYPES
from ..quant import dequant as dq
from . import gpu_layout as L
from .base import Backend, check_shapes

F32 = np.float32


@njit(inline="always")
def fmaf(a, b, c):
    """float32 fma(a, b, c), correctly rounded (as the GPU's FFMA)."""
    p = np.float64(a) * np.float64(b)                  # exact: 24 + 24 bits
    cc = np.float64(c)
    s = p + cc
    bb = s - p
    err = (p - (s - bb)) + (cc - bb)                   # s + err == p + c exactly (TwoSum)
    if err != 0.0 and math.isfinite(s):
        m, _ = math.frexp(s)
        if np.int64(m * 9007199254740992.0) & 1 == 0:  # round to odd: make the last bit sticky
            s = np.nextafter(s, np.inf if err > 0 else -np.inf)
    return np.float32(s)


def group_sums(X: np.ndarray) -> np.ndarray:
    """Σx per 8 weights in the kernel's staging order (sequential float32 adds)."""
    g = X.reshape(X.shape[0], -1, 8)
    s = g[:, :, 0].copy()
    for j in range(1, 8):
        s = s + g[:, :, j]
    return s


def staged_sums(X: np.ndarray, S: np.ndarray, qt, mode: int) -> np.ndarray:
    """The 4 per-unit floats the kernel stages after x: group sums, or (S, 0, 0, 0) in q8_1 mode
    for formats whose min uses llama.cpp's block sum."""
    if mode == 1 and qt.name in L.MIN_FORMATS:
        sig = np.zeros((X.shape[0], X.shape[1] // 8), F32)
        sig[:, ::4] = S
        return sig
    return group_sums(X)


@njit(parallel=True, cache=True)
def kernel_rows(Q, DL, ML, X, SIG, cw, uses_min, out):
    """out[p, r] = the kernel's reduction of row r (Q, DL, ML) against x row p (X, SIG).

    Chunks of cw weights; in a chunk lane L takes units (32 weights) L, L+32, …; each unit adds its
    four 8-weight groups in order; then the xor butterfly, lane 0's value.
    """
    R, n = Q.shape
    P = X.shape[0]
    nunits = n // 32
    upc = cw // 32
    for job in prange(P * R):
        p = job // R
        r = job % R
        acc = np.zeros(32, np.float32)
        for u in range(nunits):
            lane = (u % upc) % 32
            a = acc[lane]
            for g in range(4 * u, 4 * u + 4):
                e = 8 * g
                s = np.float32(Q[r, e] * X[p, e])
                for j in range(1, 8):
                    s = fmaf(Q[r, e + j], X[p, e + j], s)
                a = fmaf(DL[r, g], s, a)
                if uses_min:
                    a = fmaf(-ML[r, g], SIG[p, g], a)
            acc[lane] = a
        off = 16
        while off > 0:
            nxt = np.empty(32, np.float32)
            for lane in range(32):
                nxt[lane] = acc[lane] + acc[lane ^ off]
            acc = nxt
            off //= 2
        out[p, r] = acc[0]


class EmulatedCudaBackend(Backend):
    name = "emulated-cuda"
    label = "emulated-cuda (no GPU: CUDA kernel algorithm on the CPU)"
    act_modes = ("f32", "q8_1")

    def _rows(self, tensor, qt, e):
        q, dl, ml = dq.parts8(np.asarray(tensor.expert(int(e))).reshape(-1, qt.nbytes), qt)
        return q.reshape(tensor.n_out, -1), dl.reshape(tensor.n_out, -1), ml.reshape(tensor.n_out, -1)

    def moe_matvec(self, tensor, ids, x, act="f32", nw: int = 1):
        self.check_act(act)
        qt = QTYPES[self.dispatch(tensor.type_id, tensor.name)]
        L.check_n_in(tensor, act)
        ids, xb = check_shapes(tensor, ids, x)
        T, k = ids.shape
        X = np.ascontiguousarray(xb.reshape(T * k, -1), F32)
        Xq, S, mode = L.activations(X, qt, act)
        sig = staged_sums(Xq, S, qt, mode)
        cw = L.chunk_weights(qt, L.tcap_of(L.layout(ids, True)[1]), tensor.n_in, nw)
        uses_min = qt.name in L.USES_MIN
        out = np.empty((T * k, tensor.n_out), F32)
        flat = ids.reshape(-1)
        for e in np.unique(flat):
            Q, DL, ML = self._rows(tensor, qt, e)
            sel = np.nonzero(flat == e)[0]
            res = np.empty((len(sel), tensor.n_out), F32)
            kernel_rows(Q, DL, ML, np.ascontiguousarray(Xq[sel]), np.ascontiguousarray(sig[sel]), cw, uses_min, res)
            out[sel] = res
        return out.reshape(T, k, tensor.n_out)

    def moe_gate_up(self, gate, up, ids, x, kind, hp, act="f32"):
        g = self.moe_matvec(gate, ids, x, act, nw=2)
        u = self.moe_matvec(up, ids, x, act, nw=2)
        return g, u, L.act_np(kind, g, u, hp.swiglu_alpha, hp.swiglu_limit).astype(F32)
