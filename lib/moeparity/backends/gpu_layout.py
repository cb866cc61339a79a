"""What the CUDA kernels and their CPU emulation share: the work layout, the constants of the
kernel's reduction order, activation-mode inputs, and the activation functions."""
from __future__ import annotations

import numpy as np

from ..errors import BadArgument
from ..quant.actquant import q8_1_cuda
from .cpu import group_pairs

WARPS, MAXT, LANES, GROUP, UNIT, XSLOT = 8, 8, 32, 8, 32, 36   # must match kernels/moe_matvec.cu
SMEM_LIMIT = 48 * 1024                                         # default dynamic shared memory per block
ACT_ID = {"silu": 0, "gelu_tanh": 1, "swiglu_oai": 2}
MIN_FORMATS = ("Q4_1", "Q5_1", "Q4_K", "Q5_K")             # min term from the q8_1 block sum


def check_n_in(tensor, act: str):
    if tensor.n_in % UNIT:
        raise BadArgument(f"{tensor.name}: rows of {tensor.n_in} weights; the CUDA kernels need a multiple of {UNIT}")


def tcap_of(start: np.ndarray) -> int:
    """Members a block handles at once: the largest group, at most MAXT."""
    return int(min(MAXT, max(1, np.diff(start).max(initial=1))))


def smem_bytes(qt, cw: int, tcap: int, nw: int = 1) -> int:
    return tcap * (cw // UNIT) * XSLOT * 4 + WARPS * 2 * nw * (cw // qt.block * qt.nbytes)   # 2: double buffer


def chunk_weights(qt, tcap: int, nw: int = 1) -> int:
    """Weights per chunk (CW): the largest of 2048/1024/512/256 whose staging fits shared memory.

    It fixes which lane owns which unit, so the emulation must use the same value.
    """
    for cw in (2048, 1024, 512, 256):
        if smem_bytes(qt, cw, tcap, nw) <= SMEM_LIMIT:
            return cw
    raise BadArgument(f"{qt.name}: no chunk size fits shared memory")


def rows_per_warp(n_rows: int, n_groups: int, sms: int = 132) -> int:
    """4 rows per warp (prefetch overlap) when that still gives every SM several blocks, else 1."""
    return 4 if n_groups * -(-n_rows // (WARPS * 4)) >= 4 * sms else 1


def layout(ids: np.ndarray, shared: bool):
    """Groups of (token, slot) pairs per distinct expert → (experts, start, x-row, out-row) int32."""
    T, k = ids.shape
    experts, start, order = group_pairs(ids)
    mx = order // k if shared else order
    return experts, start.astype(np.int32), mx.astype(np.int32), order.astype(np.int32)


def activations(X: np.ndarray, qt, act: str):
    """(X', S): the activations the kernel reads and the q8_1 block sums (zeros in f32 mode).

    q8_1 applies to quantized weights only: like llama.cpp, float-typed weights keep f32 activations.
    """
    if act == "q8_1" and qt.family != "float":
        xq, s = q8_1_cuda(X)
        return np.ascontiguousarray(xq, np.float32), np.ascontiguousarray(s.reshape(X.shape[0], -1), np.float32), 1
    return np.ascontiguousarray(X, np.float32), np.zeros((X.shape[0], 1), np.float32), 0


def act_np(kind: str, g: np.ndarray, u: np.ndarray, alpha: float, limit: float) -> np.ndarray:
    """The kernel's act_fn, in the same float32 operation order."""
    f = np.float32
    with np.errstate(over="ignore"):
        if kind == "silu":
            return g * (f(1) / (f(1) + np.exp(-g))) * u
        if kind == "gelu_tanh":
            c = f(0.7978845608028654)
            return f(0.5) * g * (f(1) + np.tanh(c * (g + f(0.044715) * (g * g * g)))) * u
        gc = np.minimum(g, f(limit))
        uc = np.minimum(np.maximum(u, f(-limit)), f(limit))
        s = f(1) / (f(1) + np.exp(-(f(alpha) * gc)))
        return gc * s * (uc + f(1))
