"""emulated-cuda's numba reduction equals an independent numpy statement of the kernel's order
(the numpy form was checked bit-for-bit against the H200; see BENCHMARKS.md)."""
import numpy as np
import pytest

from moeparity.backends import gpu_layout as L
from moeparity.backends.emulated import kernel_rows

F32 = np.float32


def reference(W, X, cw, mins=None, S=None):
    """Vectorised over lanes: products, sequential 8-sums, min term once per 32, lane-ordered adds, butterfly."""
    P, n = W.shape
    prod = (W * X).reshape(P, n // 8, 8)
    s = prod[:, :, 0].copy()
    for j in range(1, 8):
        s = s + prod[:, :, j]
    if mins is not None:
        s[:, ::4] = s[:, ::4] - (mins * S).astype(F32)
    units = s.reshape(P, -1, 4)
    per_chunk = cw // 32
    acc = np.zeros((P, 32), F32)
    for c0 in range(0, units.shape[1], per_chunk):
        chunk = units[:, c0:c0 + per_chunk]
        pad = (-chunk.shape[1]) % 32
        if pad:
            chunk = np.concatenate([chunk, np.zeros((P, pad, 4), F32)], axis=1)
        chunk = chunk.reshape(P, -1, 32, 4)
        for k in range(chunk.shape[1]):
            for q in range(4):
                acc = acc + chunk[:, k, :, q]
    lanes = np.arange(32)
    for off in (16, 8, 4, 2, 1):
        acc = acc + acc[:, lanes ^ off]
    return acc[:, 0]


@pytest.mark.parametrize("n,cw", [(96, 2048), (512, 256), (2048, 1024), (2048, 2048), (768, 512), (4096, 1024)])
@pytest.mark.parametrize("split", [False, True])
def test_numba_emulation_matches_reference_bit_for_bit(n, cw, split, rng):
    R, P = 7, 3
    W = (rng.standard_normal((R, n)) * rng.uniform(0.01, 10)).astype(F32)
    X = rng.standard_normal((P, n)).astype(F32)
    M = rng.standard_normal((R, n // 32)).astype(F32) if split else np.zeros((1, 1), F32)
    S = rng.standard_normal((P, n // 32)).astype(F32) if split else np.zeros((P, 1), F32)
    out = np.empty((P, R), F32)
    kernel_rows(W, X, cw, M, S, split, out)
    for p in range(P):
        want = reference(W, np.broadcast_to(X[p], W.shape), cw,
                         M if split else None, np.broadcast_to(S[p], M.shape) if split else None)
        assert np.array_equal(out[p], want)


def test_order_matters_so_the_test_can_fail(rng):
    """A plain float32 dot differs from the kernel order on these inputs: equality above is not vacuous."""
    W = (rng.standard_normal((16, 2048)) * 100).astype(F32)
    X = rng.standard_normal((1, 2048)).astype(F32)
    out = np.empty((1, 16), F32)
    kernel_rows(W, X, 1024, np.zeros((1, 1), F32), np.zeros((1, 1), F32), False, out)
    assert not np.array_equal(out[0], (W @ X[0]).astype(F32))
    assert L.UNIT == 32
