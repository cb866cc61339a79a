"""emulated-cuda: the CUDA kernels' algorithm on the CPU, for machines without a GPU.

Launches the tensor-core kernels serve (Q4_K/Q6_K in f32 mode: intdot.serves) are emulated by
intdot.py; everything else by the float kernels' algorithm below.

Same factorised weights (quant/dequant.py's parts8: q, dl, ml per 8 weights, in the kernels'
encoding: kernel_parts), same x staging (group sums Σx in the same order, q8_1 block sums), same
per-lane arithmetic (in each chunk the tile's units are dealt round-robin to the lanes; per
8-weight group s = q0·x0, then fma(q_j, x_j, s), fma(-OFF, Σx, s); acc = fma(dl, s, acc);
acc = fma(-ml, Σx or (S, 0, 0, 0), acc)), same xor-butterfly reduction, chunk size and lanes
per row (gpu_layout.py), in numba without fastmath. The GPU's
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


def kernel_parts(q, dl, ml, name: str):
    """parts8 as the kernels hold them: for AFFINE formats q' = 1/2 + (q + BIAS)/K, dl' = K·dl (both
    exact), and the offset OFF = 1/2 + BIAS/K the kernel subtracts per group; else OFF = 0."""
    if name not in L.AFFINE:
        return q, dl, ml, 0.0
    K, bias = L.AFFINE[name]
    return ((q + F32(bias)) / F32(K) + F32(0.5)).astype(F32), (dl * F32(K)).astype(F32), ml, 0.5 + bias / K


@njit(parallel=True, cache=True)
def kernel_rows(Q, DL, ML, X, SIG, SB, cw, lpr, off, uses_min, block_sum, out):
    """out[p, r] = the kernel's reduction of row r (Q, DL, ML) against x row p (X, its group sums
    SIG, its q8_1 block sums SB).

    A row gets lpr lanes of its warp (gpu_layout.lanes_per_row): in each chunk of cw weights,
    unit u (32 weights) goes to the row's lane u mod lpr; each unit adds its four 8-weight groups
    in order; then the xor butterfly over the row's lanes, its first lane's value.
    """
    R, n = Q.shape
    P = X.shape[0]
    nunits = n // 32
    upc = cw // 32
    for job in prange(P * R):
        p = job // R
        r = job % R
        acc = np.zeros(lpr, np.float32)
        for u in range(nunits):
            lane = (u - (u // upc) * upc) % lpr
            a = acc[lane]
            for g in range(4 * u, 4 * u + 4):
                e = 8 * g
                s = np.float32(Q[r, e] * X[p, e])
                for j in range(1, 8):
                    s = fmaf(Q[r, e + j], X[p, e + j], s)
                if off != 0.0:
                    s = fmaf(np.float32(-off), SIG[p, g], s)
                a = fmaf(DL[r, g], s, a)
                if uses_min:
                    if not block_sum:
                        a = fmaf(-ML[r, g], SIG[p, g], a)
                    else:
                        a = fmaf(-ML[r, g], SB[p, u] if g == 4 * u else np.float32(0.0), a)
            acc[lane] = a
        off2 = lpr // 2
        while off2 > 0:
            nxt = np.empty(lpr, np.float32)
            for lane in range(lpr):
                nxt[lane] = acc[lane] + acc[lane ^ off2]
            acc = nxt
            off2 //= 2
        out[p, r] = acc[0]


class EmulatedCudaBackend(Backend):
    name = "emulated-cuda"
    label = "emulated-cuda (no GPU: CUDA kernel algorithm on the CPU)"
    act_modes = ("f32", "q8_1")

    def _rows(self, tensor, qt, e):
        q, dl, ml = dq.parts8(np.asarray(tensor.expert(int(e))).reshape(-1, qt.nbytes), qt)
        q, dl, ml, off = kernel_parts(q, dl, ml, qt.name)
        R = tensor.n_out
        return q.reshape(R, -1), dl.reshape(R, -1), ml.reshape(R, -1), off

    def moe_matvec(self, tensor, ids, x, act="f32", nw: int = 1):
        from . import intdot                                 # (it uses this module's fmaf)
        self.check_act(act)
        qt = QTYPES[self.dispatch(tensor.type_id, tensor.name)]
        L.check_n_in(tensor, act)
        ids, xb = check_shapes(tensor, ids, x)
        T, k = ids.shape
        X = np.ascontiguousarray(xb.reshape(T * k, -1), F32)
        if intdot.serves(qt.name, act):               # the tensor-core kernels (intdot.py)
            def rows(e, sel):
                return intdot.matvec(np.asarray(tensor.expert(int(e))).reshape(tensor.n_out, -1), qt.name, X[sel])
        else:
            tcap = L.tcap_of(L.layout(ids, True)[1])
            Xq, S, mode = L.activations(X, qt, act)
            sig = group_sums(Xq)
            cw = L.chunk_weights(qt, tcap, tensor.n_in, nw)
            lpr = L.lanes_per_row(L.variant(tcap, tensor.n_in, nw))
            uses_min = qt.name in L.USES_MIN
            block_sum = mode == 1 and qt.name in L.MIN_FORMATS

            def rows(e, sel):
                Q, DL, ML, off = self._rows(tensor, qt, e)
                res = np.empty((len(sel), tensor.n_out), F32)
                kernel_rows(Q, DL, ML, np.ascontiguousarray(Xq[sel]), np.ascontiguousarray(sig[sel]),
                            np.ascontiguousarray(S[sel], F32), cw, lpr, off, uses_min, block_sum, res)
                return res
        out = np.empty((T * k, tensor.n_out), F32)
        flat = ids.reshape(-1)
        for e in np.unique(flat):
            sel = np.nonzero(flat == e)[0]
            out[sel] = rows(e, sel)
        return out.reshape(T, k, tensor.n_out)

    def moe_gate_up(self, gate, up, ids, x, kind, hp, act="f32"):
        g = self.moe_matvec(gate, ids, x, act, nw=2)
        u = self.moe_matvec(up, ids, x, act, nw=2)
        return g, u, L.act_np(kind, g, u, hp.swiglu_alpha, hp.swiglu_limit).astype(F32)
