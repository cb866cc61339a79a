"""Exact numpy dequantisers, one function per row of qtypes.py.

Each takes blocks as uint8 (n_blocks, bytes_per_block) and returns float32 (n_blocks, block).
Arithmetic is float32 in ggml's order (dequantize_row_* in ggml-quants.c) so that the values equal
gguf-py's bit for bit; these float32 values are *the* weights every backend and the oracle use.
Layouts are written out as in ggml-common.h so a reader can check them against it.
"""
from __future__ import annotations

import numpy as np

from ..qtypes import QTYPES, QType

F32 = np.float32
IQ4_VALUES = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
# e2m1 values, doubled (ggml's kvalues_mxfp4); the e8m0 scale is taken "half" to compensate
MXFP4_VALUES = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)


def _f16(b: np.ndarray) -> np.ndarray:
    """Little-endian fp16 field(s) → float32 column(s)."""
    return np.ascontiguousarray(b).view(np.float16).astype(F32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
    """Bytes (nb, n) → (nb, 2n): all low nibbles first, then all high nibbles (ggml's 32-block order)."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1)


def _f32(b):
    return b.view(F32).reshape(b.shape[0], -1)


def _f16_blocks(b):
    return np.ascontiguousarray(b).view(np.float16).astype(F32).reshape(b.shape[0], -1)


def _bf16(b):
    return (np.ascontiguousarray(b).view(np.uint16).astype(np.uint32) << 16).view(F32).reshape(b.shape[0], -1)


# --- legacy 32-blocks ---------------------------------------------------------------------------
# block_q4_0 { half d; u8 qs[16]; }             x = d * (q - 8)
def _q4_0(b):
    q = _nibbles(b[:, 2:18]).astype(np.int8) - np.int8(8)
    return q, _f16(b[:, 0:2]), None


# block_q4_1 { half d; half m; u8 qs[16]; }      x = d * q + m
def _q4_1(b):
    return _nibbles(b[:, 4:20]), _f16(b[:, 0:2]), -_f16(b[:, 2:4])


def _fifth_bits(qh4: np.ndarray) -> np.ndarray:
    """u32 qh (as 4 bytes) → (nb, 32) bit j of element j, shifted to bit 4."""
    bits = np.unpackbits(np.ascontiguousarray(qh4), axis=1, bitorder="little")
    return bits << 4


# block_q5_0 { half d; u8 qh[4]; u8 qs[16]; }    x = d * ((q | h<<4) - 16)
def _q5_0(b):
    q = (_nibbles(b[:, 6:22]) | _fifth_bits(b[:, 2:6])).astype(np.int8) - np.int8(16)
    return q, _f16(b[:, 0:2]), None


# block_q5_1 { half d; half m; u8 qh[4]; u8 qs[16]; }   x = d * (q | h<<4) + m
def _q5_1(b):
    return _nibbles(b[:, 8:24]) | _fifth_bits(b[:, 4:8]), _f16(b[:, 0:2]), -_f16(b[:, 2:4])


# block_q8_0 { half d; i8 qs[32]; }               x = q * d
def _q8_0(b):
    return np.ascontiguousarray(b[:, 2:34]).view(np.int8), _f16(b[:, 0:2]), None


# --- K-quants: super-blocks of 256 ---------------------------------------------------------------
def kquant_scale_min(sc12: np.ndarray):
    """The 12 packed bytes of Q4_K/Q5_K → 8 six-bit scales and 8 six-bit mins (get_scale_min_k4)."""
    s = sc12.astype(np.uint8)
    lo, hi, mix = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    scales = np.concatenate([lo & 63, (mix & 0x0F) | ((lo >> 6) << 4)], axis=1)
    mins = np.concatenate([hi & 63, (mix >> 4) | ((hi >> 6) << 4)], axis=1)
    return scales, mins


def _q4_k_q(qs: np.ndarray) -> np.ndarray:
    """128 bytes → 256 quants: each 32-byte chunk gives 32 low nibbles then 32 high nibbles."""
    nb = qs.shape[0]
    c = qs.reshape(nb, 4, 1, 32)
    return np.concatenate([c & 0x0F, c >> 4], axis=2).reshape(nb, 8, 32)


# block_q4_K { half d; half dmin; u8 scales[12]; u8 qs[128]; }   x = (d*sc) * q - (dmin*m)
def _q4_k(b):
    nb = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = kquant_scale_min(b[:, 4:16])
    return _q4_k_q(b[:, 16:144]).reshape(nb, 256), d * sc.astype(F32), dmin * mn.astype(F32)


# block_q5_K { half d; half dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]; }
def _q5_k(b):
    nb = b.shape[0]
    d, dmin = _f16(b[:, 0:2]), _f16(b[:, 2:4])
    sc, mn = kquant_scale_min(b[:, 4:16])
    qh = b[:, 16:48]
    high = np.stack([(qh >> j) & 1 for j in range(8)], axis=1)   # (nb, 8 sub-blocks, 32)
    q = _q4_k_q(b[:, 48:176]) | (high << 4)
    return q.reshape(nb, 256), d * sc.astype(F32), dmin * mn.astype(F32)


# block_q6_K { u8 ql[128]; u8 qh[64]; i8 scales[16]; half d; }   x = (d*sc) * (q - 32)
def _q6_k(b):
    nb = b.shape[0]
    ql = b[:, 0:128].reshape(nb, 2, 2, 32)        # two halves of 128 weights; each 64 bytes of ql
    qh = b[:, 128:192].reshape(nb, 2, 1, 32)
    sc = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(F32)
    d = _f16(b[:, 208:210])
    lo = np.concatenate([ql & 0x0F, ql >> 4], axis=2)            # (nb, 2, 4, 32): l=0..3 quarters
    hi = np.concatenate([(qh >> s) & 3 for s in (0, 2, 4, 6)], axis=2)
    q = (lo | (hi << 4)).astype(np.int8) - np.int8(32)
    return q.reshape(nb, 256), d * sc, None


# block_q2_K { u8 scales[16]; u8 qs[64]; half d; half dmin; }   x = (d*(sc&15)) * q - (dmin*(sc>>4))
def _q2_k(b):
    nb = b.shape[0]
    sc = b[:, 0:16]
    d, dmin = _f16(b[:, 80:82]), _f16(b[:, 82:84])
    qs = b[:, 16:80].reshape(nb, 2, 1, 32)
    q = np.concatenate([(qs >> s) & 3 for s in (0, 2, 4, 6)], axis=2).reshape(nb, 256)
    return q, d * (sc & 0x0F).astype(F32), dmin * (sc >> 4).astype(F32)


def q3_k_scales(s12: np.ndarray) -> np.ndarray:
    """12 packed bytes → 16 signed six-bit scales (already minus 32)."""
    lo = np.concatenate([s12[:, 0:8] & 0x0F, s12[:, 0:8] >> 4], axis=1)
    hi = np.concatenate([(s12[:, 8:12] >> s) & 3 for s in (0, 2, 4, 6)], axis=1)
    return (lo | (hi << 4)).astype(np.int8) - np.int8(32)


# block_q3_K { u8 hmask[32]; u8 qs[64]; u8 scales[12]; half d; }  x = (d*sc) * (q2 - (hbit ? 0 : 4))
def _q3_k(b):
    nb = b.shape[0]
    hm = b[:, 0:32]
    qs = b[:, 32:96].reshape(nb, 2, 1, 32)
    sc = q3_k_scales(b[:, 96:108]).astype(F32)
    d = _f16(b[:, 108:110])
    low = np.concatenate([(qs >> s) & 3 for s in (0, 2, 4, 6)], axis=2).reshape(nb, 8, 32)
    hbit = np.stack([(hm >> j) & 1 for j in range(8)], axis=1)
    q = low.astype(np.int8) - ((hbit ^ 1) << 2).astype(np.int8)
    return q.reshape(nb, 256), d * sc, None


# --- non-linear grids --------------------------------------------------------------------------
# block_iq4_nl { half d; u8 qs[16]; }            x = d * grid[q]
def _iq4_nl(b):
    return IQ4_VALUES[_nibbles(b[:, 2:18])], _f16(b[:, 0:2]), None


# block_iq4_xs { half d; u16 scales_h; u8 scales_l[4]; u8 qs[128]; }   x = (d*(ls-32)) * grid[q]
def _iq4_xs(b):
    nb = b.shape[0]
    d = _f16(b[:, 0:2])
    sh = np.ascontiguousarray(b[:, 2:4]).view(np.uint16).reshape(nb, 1)
    sl = b[:, 4:8]
    low = np.stack([sl & 0x0F, sl >> 4], axis=2).reshape(nb, 8)
    high = ((sh >> (2 * np.arange(8, dtype=np.uint16))) & 3).astype(np.uint8)
    ls = (low | (high << 4)).astype(np.int8) - np.int8(32)
    qs = b[:, 8:136].reshape(nb, 8, 16)
    q = IQ4_VALUES[np.concatenate([qs & 0x0F, qs >> 4], axis=2)]
    return q.reshape(nb, 256), d * ls.astype(F32), None


def e8m0_half(e: np.ndarray) -> np.ndarray:
    """ggml_e8m0_to_fp32_half: 2^(e-127) / 2, exact (subnormal for e < 2)."""
    e = e.astype(np.uint32)
    bits = np.where(e < 2, np.uint32(0x00200000) << e, (e - np.uint32(1)) << np.uint32(23))
    return bits.astype(np.uint32).view(F32)


# block_mxfp4 { u8 e; u8 qs[16]; }               x = e8m0_half(e) * grid[q]
def _mxfp4(b):
    return MXFP4_VALUES[_nibbles(b[:, 1:17])], e8m0_half(b[:, 0:1]), None


FLOATS = {"F32": _f32, "F16": _f16_blocks, "BF16": _bf16}
# quantized formats as parts: (q (nb, block) small integers, dl (nb, G), ml (nb, G) or None) with
# weight = dl·q − ml per scale group of block/G weights — ggml's formula, and the factorisation the
# CUDA kernels compute with (Σ over a group of q·x, then dl·Σ − ml·Σx).
PARTS = {
    "Q4_0": _q4_0, "Q4_1": _q4_1, "Q5_0": _q5_0, "Q5_1": _q5_1, "Q8_0": _q8_0,
    "Q2_K": _q2_k, "Q3_K": _q3_k, "Q4_K": _q4_k, "Q5_K": _q5_k, "Q6_K": _q6_k,
    "IQ4_NL": _iq4_nl, "IQ4_XS": _iq4_xs, "MXFP4": _mxfp4,
}
assert set(FLOATS) | set(PARTS) == set(QTYPES), "every qtype row needs a dequantiser"


def parts8(blocks: np.ndarray, qt: QType):
    """(q, dl, ml) float32 with one dl/ml per 8 weights: (nb, block), (nb, block/8), (nb, block/8)."""
    b = blocks.reshape(-1, qt.nbytes)
    if qt.name in FLOATS:
        w = FLOATS[qt.name](b).reshape(-1, 8)
        ones = np.ones((w.shape[0], 1), F32)
        return w, ones, np.zeros_like(ones)
    q, dl, ml = PARTS[qt.name](b)
    per = qt.block // 8 // dl.shape[1]
    dl = np.repeat(dl.astype(F32), per, axis=1)
    ml = np.zeros_like(dl) if ml is None else np.repeat(ml.astype(F32), per, axis=1)
    return q.astype(F32), dl, ml


def dequantize_blocks(blocks: np.ndarray, qt: QType) -> np.ndarray:
    b = blocks.reshape(-1, qt.nbytes)
    if qt.name in FLOATS:
        return FLOATS[qt.name](b)
    q, dl, ml = PARTS[qt.name](b)
    nb, G = dl.shape
    w = dl.astype(F32)[:, :, None] * q.astype(F32).reshape(nb, G, -1)
    if ml is not None:
        w = w - ml.astype(F32)[:, :, None]
    return w.reshape(nb, qt.block)


def dequantize(data: np.ndarray, qt: QType, n_cols: int | None = None) -> np.ndarray:
    """Raw bytes of whole rows (any leading shape, last dim = bytes per row) → float32 rows."""
    raw = np.ascontiguousarray(data).view(np.uint8)
    row_bytes = raw.shape[-1] if raw.ndim > 1 else raw.size
    lead = raw.shape[:-1] if raw.ndim > 1 else ()
    out = dequantize_blocks(raw.reshape(-1, qt.nbytes), qt)
    n = row_bytes // qt.nbytes * qt.block
    return out.reshape(*lead, n)
