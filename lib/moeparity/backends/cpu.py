"""CPU backend: numba fused dequantise-dot (backends/cpu_kernels.py), float32 like an engine.

Activation modes: `f32` (x used as given) and `q8` (x rounded the way llama.cpp's CPU backend
quantises it for the weight's vec_dot_type — Q8_K for K-quants/IQ4_XS, Q8_0 for the 32-blocks,
fp16/bf16 for half-precision weights — see quant/actquant.py).
"""
from __future__ import annotations

import numpy as np

from ..qtypes import QTYPES
from ..quant.actquant import cpu_q8
from . import cpu_kernels as K
from .base import Backend, check_shapes


def group_pairs(ids: np.ndarray):
    """(T, k) expert ids → groups of (token, slot) pairs per distinct expert, for one pass per expert."""
    flat = ids.reshape(-1)
    order = np.argsort(flat, kind="stable")
    experts, counts = np.unique(flat[order], return_counts=True)
    start = np.zeros(len(experts) + 1, np.int64)
    np.cumsum(counts, out=start[1:])
    return experts.astype(np.int64), start, order.astype(np.int64)


class CpuBackend(Backend):
    name = "cpu"
    label = "cpu (numba, float32)"
    act_modes = ("f32", "q8")

    def moe_matvec(self, tensor, ids, x, act="f32"):
        self.check_act(act)
        qt = QTYPES[self.dispatch(tensor.type_id, tensor.name)]
        ids, xb = check_shapes(tensor, ids, x)
        T, k = ids.shape
        shared = np.asarray(x).ndim == 2
        X = np.ascontiguousarray(x if shared else xb.reshape(T * k, -1), np.float32)
        if act == "q8":
            X = np.ascontiguousarray(cpu_q8(X, qt.act_q8))
        experts, start, order = group_pairs(ids)
        mx = order // k if shared else order
        out = np.empty((T * k, tensor.n_out), np.float32)
        W = np.asarray(tensor.raw()).reshape(tensor.n_expert, tensor.n_out, tensor.row_bytes)
        chunk, chunk_bytes = K.chunk_of(qt)
        K.moe_matvec(W, qt.id, chunk, chunk_bytes, tensor.n_in, experts, start, mx, order, X, out)
        return out.reshape(T, k, tensor.n_out)
