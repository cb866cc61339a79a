"""emulated-cuda: the CUDA kernels' algorithm on the CPU, for machines without a GPU.

Same weights (the kernels' decode8 computes exactly quant/dequant.py's float32 values: no FMA,
same operation order), same per-lane partial sums (in each chunk of CW weights lane L takes the
32-weight units L, L+32, …; each unit adds its four sequential 8-term sums in order), same q8_1 min
terms, same xor-butterfly reduction, same chunk size and activation-mode inputs (gpu_layout.py),
in numba without fastmath. Every output is labelled emulated.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from ..qtypes import QTYPES
from ..quant import dequant as dq
from . import gpu_layout as L
from .base import Backend, check_shapes

F32 = np.float32


def _split(blocks: np.ndarray, name: str):
    """Min formats in q8_1 mode: (a·q per weight, min term per 32 weights) as the kernel splits them."""
    nb = blocks.shape[0]
    if name in ("Q4_1", "Q5_1"):
        d, mn = dq._f16(blocks[:, 0:2]), dq._f16(blocks[:, 2:4])
        if name == "Q4_1":
            q = dq._nibbles(blocks[:, 4:20])
        else:
            q = dq._nibbles(blocks[:, 8:24]) | dq._fifth_bits(blocks[:, 4:8])
        return d * q.astype(F32), -mn
    d, dmin = dq._f16(blocks[:, 0:2]), dq._f16(blocks[:, 2:4])
    sc, mn = dq.kquant_scale_min(blocks[:, 4:16])
    if name == "Q4_K":
        q = dq._q4_k_q(blocks[:, 16:144])
    else:
        high = np.stack([(blocks[:, 16:48] >> j) & 1 for j in range(8)], axis=1)
        q = dq._q4_k_q(blocks[:, 48:176]) | (high << 4)
    a = (d * sc.astype(F32))[:, :, None] * q.astype(F32)
    return a.reshape(nb, 256), dmin * mn.astype(F32)


@njit(parallel=True, cache=True)
def kernel_rows(W, X, cw, M, S, split, out):
    """out[p, r] = the kernel's reduction of W[r] · X[p] (no fastmath: every float32 op in order).

    Chunks of cw weights; in a chunk lane L takes units (32 weights) L, L+32, …; per unit it adds
    its four sequential 8-term sums (the first minus M[r, u]·S[p, u] in split q8_1 mode) in order;
    lanes without a unit add 0; then the xor butterfly, lane 0's value.
    """
    R, n = W.shape
    P = X.shape[0]
    nunits = n // 32
    upc = cw // 32
    for job in prange(P * R):
        p = job // R
        r = job % R
        acc = np.zeros(32, np.float32)
        for c0 in range(0, nunits, upc):
            cu = min(upc, nunits - c0)
            for kk in range((cu + 31) // 32):
                for q in range(4):
                    for lane in range(32):
                        u = c0 + kk * 32 + lane
                        if u < c0 + cu:
                            e = u * 32 + q * 8
                            s = W[r, e] * X[p, e]
                            for j in range(1, 8):
                                s = s + W[r, e + j] * X[p, e + j]
                            if split and q == 0:
                                s = s - M[r, u] * S[p, u]
                            acc[lane] = acc[lane] + s
                        else:
                            acc[lane] = acc[lane] + np.float32(0.0)
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

    def _rows(self, tensor, qt, e, split):
        raw = np.asarray(tensor.expert(int(e)))
        blocks = raw.reshape(-1, qt.nbytes)
        if split:
            a, m = _split(blocks, qt.name)
            return a.reshape(tensor.n_out, tensor.n_in), m.reshape(tensor.n_out, -1)
        return dq.dequantize_blocks(blocks, qt).reshape(tensor.n_out, tensor.n_in), None

    def moe_matvec(self, tensor, ids, x, act="f32", nw: int = 1):
        self.check_act(act)
        qt = QTYPES[self.dispatch(tensor.type_id, tensor.name)]
        L.check_n_in(tensor, act)
        ids, xb = check_shapes(tensor, ids, x)
        T, k = ids.shape
        X = np.ascontiguousarray(xb.reshape(T * k, -1), F32)
        Xq, S, mode = L.activations(X, qt, act)
        split = mode == 1 and qt.name in L.MIN_FORMATS
        cw = L.chunk_weights(qt, L.tcap_of(L.layout(ids, True)[1]), nw)
        out = np.empty((T * k, tensor.n_out), F32)
        flat = ids.reshape(-1)
        for e in np.unique(flat):
            W, M = self._rows(tensor, qt, e, split)
            sel = np.nonzero(flat == e)[0]
            res = np.empty((len(sel), tensor.n_out), F32)
            if M is None:
                M = np.zeros((1, 1), F32)
            kernel_rows(np.ascontiguousarray(W, F32), np.ascontiguousarray(Xq[sel]), cw, M,
                        np.ascontiguousarray(S[sel], F32), split, res)
            out[sel] = res
        return out.reshape(T, k, tensor.n_out)

    def moe_gate_up(self, gate, up, ids, x, kind, hp, act="f32"):
        g = self.moe_matvec(gate, ids, x, act, nw=2)
        u = self.moe_matvec(up, ids, x, act, nw=2)
        return g, u, L.act_np(kind, g, u, hp.swiglu_alpha, hp.swiglu_limit).astype(F32)
