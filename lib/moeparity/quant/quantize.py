"""Quantisers for building fixtures. K-quants and IQ4 are ours (gguf-py only dequantises them);
legacy formats, MXFP4 and the floats use gguf-py's reference quantisers.

Ours are simple min/max (not llama.cpp's iterative search): they produce valid blocks whose
scales and mins use their full bit range, which is what the fixtures need. Each is validated by
a round trip through gguf-py's dequantize (tests/test_quant_roundtrip.py).
"""
from __future__ import annotations

import numpy as np
from gguf import quants as gq

from ..qtypes import QTYPES, QType
from .dequant import IQ4_VALUES

F32 = np.float32


def _h(x):
    """float32 column → (fp16 bytes (n, 2), the fp16 value back as float32)."""
    h = np.asarray(x, F32).astype(np.float16).reshape(-1, 1)
    return h.view(np.uint8).reshape(-1, 2), h.astype(F32)


def _safe_inv(x):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x == 0, F32(0), F32(1) / x).astype(F32)


def _rnd(x):
    return np.rint(x).astype(np.int32)


def _pack_nibbles(q):
    """(nb, 2n) of 0..15, first half → low nibbles, second half → high nibbles."""
    n = q.shape[1] // 2
    return (q[:, :n] | (q[:, n:] << 4)).astype(np.uint8)


def _affine_subblocks(x, sub, levels, sbits):
    """Asymmetric sub-block scales/mins quantised to `sbits` bits under fp16 super-scales d, dmin."""
    nb = x.shape[0]
    xs = x.reshape(nb, -1, sub)
    mn = np.minimum(xs.min(axis=2), 0).astype(F32)
    mx = xs.max(axis=2).astype(F32)
    scale = (mx - mn) / levels
    mins = -mn
    top = (1 << sbits) - 1
    dbytes, d = _h(scale.max(axis=1) / top)
    mbytes, dmin = _h(mins.max(axis=1) / top)
    sc = np.clip(_rnd(scale * _safe_inv(d)), 0, top)
    m = np.clip(_rnd(mins * _safe_inv(dmin)), 0, top)
    eff_s = (d * sc.astype(F32))[:, :, None]
    eff_m = (dmin * m.astype(F32))[:, :, None]
    q = np.clip(_rnd((xs + eff_m) * _safe_inv(eff_s)), 0, levels).reshape(nb, -1)
    return dbytes, mbytes, sc.astype(np.uint8), m.astype(np.uint8), q.astype(np.uint8)


def _pack_scale_min_k4(sc, m):
    """8 six-bit scales + 8 six-bit mins → the 12 bytes of Q4_K/Q5_K."""
    out = np.empty((sc.shape[0], 12), np.uint8)
    out[:, 0:4] = (sc[:, 0:4] & 63) | ((sc[:, 4:8] >> 4) << 6)
    out[:, 4:8] = (m[:, 0:4] & 63) | ((m[:, 4:8] >> 4) << 6)
    out[:, 8:12] = (sc[:, 4:8] & 0x0F) | ((m[:, 4:8] & 0x0F) << 4)
    return out


def _pack_q4k_qs(q):
    """(nb, 256) of 0..15 → 128 bytes: per 64 weights, 32 low nibbles then 32 high nibbles."""
    c = q.reshape(-1, 4, 2, 32)
    return (c[:, :, 0] | (c[:, :, 1] << 4)).reshape(-1, 128).astype(np.uint8)


def q4_k(x):
    d, dm, sc, m, q = _affine_subblocks(x, 32, 15, 6)
    return np.concatenate([d, dm, _pack_scale_min_k4(sc, m), _pack_q4k_qs(q)], axis=1)


def q5_k(x):
    d, dm, sc, m, q = _affine_subblocks(x, 32, 31, 6)
    qh = np.zeros((x.shape[0], 32), np.uint8)
    hi = (q >> 4).reshape(-1, 8, 32)
    for j in range(8):
        qh |= (hi[:, j] << j).astype(np.uint8)
    return np.concatenate([d, dm, _pack_scale_min_k4(sc, m), qh, _pack_q4k_qs(q & 0x0F)], axis=1)


def q2_k(x):
    d, dm, sc, m, q = _affine_subblocks(x, 16, 3, 4)
    c = q.reshape(-1, 2, 4, 32)
    qs = (c[:, :, 0] | (c[:, :, 1] << 2) | (c[:, :, 2] << 4) | (c[:, :, 3] << 6)).reshape(-1, 64)
    return np.concatenate([(sc | (m << 4)).astype(np.uint8), qs.astype(np.uint8), d, dm], axis=1)


def _symmetric_subblocks(x, sub, qmax, smax):
    """Signed sub-block scales (int, |s| <= smax) under one fp16 d; q in [-qmax-1, qmax]... see callers."""
    nb = x.shape[0]
    xs = x.reshape(nb, -1, sub)
    idx = np.abs(xs).argmax(axis=2)[..., None]
    peak = np.take_along_axis(xs, idx, axis=2)[..., 0]
    scale = (peak / -(qmax + 1)).astype(F32)             # the peak maps to the extreme negative level
    speak_i = np.abs(scale).argmax(axis=1)[:, None]
    speak = np.take_along_axis(scale, speak_i, axis=1)[:, 0]
    dbytes, d = _h(speak / -(smax + 1))
    sc = np.clip(_rnd(scale * _safe_inv(d)), -(smax + 1), smax)
    eff = (d * sc.astype(F32))[:, :, None]
    q = np.clip(_rnd(xs * _safe_inv(eff)), -(qmax + 1), qmax).reshape(nb, -1)
    return dbytes, sc, q


def q6_k(x):
    d, sc, q = _symmetric_subblocks(x, 16, 31, 127)
    u = (q + 32).astype(np.uint8).reshape(-1, 2, 4, 32)           # half, quarter, l
    ql = np.concatenate([(u[:, :, 0] & 15) | ((u[:, :, 2] & 15) << 4),
                         (u[:, :, 1] & 15) | ((u[:, :, 3] & 15) << 4)], axis=2).reshape(-1, 128)
    qh = (u[:, :, 0] >> 4) | ((u[:, :, 1] >> 4) << 2) | ((u[:, :, 2] >> 4) << 4) | ((u[:, :, 3] >> 4) << 6)
    return np.concatenate([ql, qh.reshape(-1, 64), sc.astype(np.int8).view(np.uint8), d], axis=1)


def q3_k(x):
    d, sc, q = _symmetric_subblocks(x, 16, 3, 31)
    u = (q + 4).astype(np.uint8)                                    # 0..7
    low = (u & 3).reshape(-1, 2, 4, 32)
    qs = (low[:, :, 0] | (low[:, :, 1] << 2) | (low[:, :, 2] << 4) | (low[:, :, 3] << 6)).reshape(-1, 64)
    hb = (u >> 2).reshape(-1, 8, 32)
    hm = np.zeros((x.shape[0], 32), np.uint8)
    for j in range(8):
        hm |= (hb[:, j] << j).astype(np.uint8)
    s = (sc + 32).astype(np.uint8)                                  # 16 six-bit
    s12 = np.empty((x.shape[0], 12), np.uint8)
    s12[:, 0:8] = (s[:, 0:8] & 15) | ((s[:, 8:16] & 15) << 4)
    hi = s >> 4
    s12[:, 8:12] = hi[:, 0:4] | (hi[:, 4:8] << 2) | (hi[:, 8:12] << 4) | (hi[:, 12:16] << 6)
    return np.concatenate([hm, qs.astype(np.uint8), s12, d], axis=1)


def _nearest_iq4(v):
    """Index of the nearest IQ4 grid value for each element of v (in grid units)."""
    grid = IQ4_VALUES.astype(F32)
    return np.abs(v[..., None] - grid).argmin(axis=-1).astype(np.uint8)


def iq4_nl(x):
    idx = np.abs(x).argmax(axis=1)[:, None]
    peak = np.take_along_axis(x, idx, axis=1)
    db, d = _h(peak / F32(-127))
    q = _nearest_iq4(x * _safe_inv(d))
    return np.concatenate([db, _pack_nibbles(q)], axis=1)


def iq4_xs(x):
    nb = x.shape[0]
    xs = x.reshape(nb, 8, 32)
    idx = np.abs(xs).argmax(axis=2)[..., None]
    scale = (np.take_along_axis(xs, idx, axis=2)[..., 0] / F32(-127)).astype(F32)
    sp = np.take_along_axis(scale, np.abs(scale).argmax(axis=1)[:, None], axis=1)[:, 0]
    db, d = _h(sp / F32(-32))
    ls = np.clip(_rnd(scale * _safe_inv(d)), -32, 31)
    eff = (d * ls.astype(F32))[:, :, None]
    q = _nearest_iq4(xs * _safe_inv(eff))                          # (nb, 8, 32)
    u = (ls + 32).astype(np.uint16)
    sh = np.zeros(nb, np.uint16)
    for j in range(8):
        sh |= ((u[:, j] >> 4) & 3) << (2 * j)
    sl = ((u[:, 0::2] & 15) | ((u[:, 1::2] & 15) << 4)).astype(np.uint8)
    qs = (q[:, :, :16] | (q[:, :, 16:] << 4)).reshape(nb, 128).astype(np.uint8)
    return np.concatenate([db, sh.view(np.uint8).reshape(nb, 2), sl, qs], axis=1)


OURS = {"Q2_K": q2_k, "Q3_K": q3_k, "Q4_K": q4_k, "Q5_K": q5_k, "Q6_K": q6_k,
        "IQ4_NL": iq4_nl, "IQ4_XS": iq4_xs}


def quantize(w: np.ndarray, qt: QType | str) -> np.ndarray:
    """float rows (..., n) → raw bytes (..., row_bytes) as stored in GGUF."""
    qt = QTYPES[qt] if isinstance(qt, str) else qt
    w = np.ascontiguousarray(w, dtype=F32)
    lead, n = w.shape[:-1], w.shape[-1]
    if qt.name in OURS:
        blocks = w.reshape(-1, qt.block)
        out = OURS[qt.name](blocks)
        assert out.shape[1] == qt.nbytes, (qt.name, out.shape)
        return np.ascontiguousarray(out).reshape(*lead, qt.row_bytes(n))
    if qt.name == "F32":
        return w.view(np.uint8).reshape(*lead, n * 4)
    raw = gq.quantize(w.reshape(-1, n), qt.ggml)
    return np.ascontiguousarray(raw).view(np.uint8).reshape(*lead, qt.row_bytes(n))
