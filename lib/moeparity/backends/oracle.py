"""float64 reference: the exact dequantised values (quant/dequant.py, numpy) times x in float64.

Independent of the numba kernels by construction: different code, different precision. Also gives
the per-row magnitude Σ_j |w_ij||x_j| that error bounds are built from (compare.py).
"""
from __future__ import annotations

import numpy as np

from ..qtypes import QTYPES
from ..quant.dequant import dequantize
from .base import Backend, check_shapes


class OracleBackend(Backend):
    name = label = "oracle"
    act_modes = ("f32",)
    dtype = np.float64

    def weights(self, tensor, expert: int) -> np.ndarray:
        qt = QTYPES[self.dispatch(tensor.type_id, tensor.name)]
        return dequantize(tensor.expert(expert), qt).astype(np.float64)

    def moe_matvec(self, tensor, ids, x, act="f32", magnitude: bool = False):
        self.check_act(act)
        ids, x = check_shapes(tensor, ids, x)
        T, k = ids.shape
        y = np.empty((T, k, tensor.n_out), np.float64)
        mag = np.empty_like(y) if magnitude else None
        for e in np.unique(ids):
            W = self.weights(tensor, int(e))
            t, j = np.nonzero(ids == e)
            xe = x[t, j].astype(np.float64)
            y[t, j] = xe @ W.T
            if magnitude:
                mag[t, j] = np.abs(xe) @ np.abs(W).T
        return (y, mag) if magnitude else y

    def matvec_with_magnitude(self, tensor, x, expert: int = 0):
        x = np.asarray(x, np.float32).reshape(-1, tensor.n_in)
        ids = np.full((x.shape[0], 1), expert, np.int64)
        y, m = self.moe_matvec(tensor, ids, x, magnitude=True)
        return y[:, 0], m[:, 0]
