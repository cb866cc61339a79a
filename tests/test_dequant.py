"""Dequantisation is bit-for-bit gguf-py's, for all 16 rows of qtypes.py."""
import numpy as np
import pytest
from gguf import quants as gq

from moeparity.gguf_model import Model
from moeparity.qtypes import QTYPES
from moeparity.quant import dequantize, quantize


def _bits(a):
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def _random_blocks(qt, n, rng):
    """Random bytes with every fp16 scale field forced into a finite, sane range."""
    b = rng.integers(0, 256, size=(n, qt.nbytes), dtype=np.uint8)
    half_fields = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q2_K": [80, 82],
                   "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_NL": [0], "IQ4_XS": [0]}
    for off in half_fields.get(qt.name, []):
        h = (rng.standard_normal(n) * 0.01).astype(np.float16)
        b[:, off:off + 2] = h.view(np.uint8).reshape(n, 2)
    if qt.name == "F16":
        b = (rng.standard_normal(n) * 3).astype(np.float16).view(np.uint8).reshape(n, 2)
    if qt.name in ("F32", "BF16"):
        f = (rng.standard_normal(n) * 3).astype(np.float32)
        b = f.view(np.uint8).reshape(n, 4) if qt.name == "F32" else f.view(np.uint8).reshape(n, 4)[:, 2:4].copy()
    if qt.name == "MXFP4":
        b[:, 0] = rng.integers(110, 135, size=n)
    return b


@pytest.mark.parametrize("name", list(QTYPES))
def test_random_blocks_bit_exact(name, rng):
    qt = QTYPES[name]
    raw = _random_blocks(qt, 512, rng)
    ours = dequantize(raw.reshape(1, -1), qt)
    ref = gq.dequantize(raw.reshape(1, -1), qt.ggml).reshape(ours.shape)
    assert np.isfinite(ours).all()
    assert np.array_equal(_bits(ours), _bits(ref))


@pytest.mark.parametrize("name", list(QTYPES))
def test_quantiser_blocks_bit_exact(name, rng):
    qt = QTYPES[name]
    w = (rng.standard_t(5, size=(16, 512)) * 0.03).astype(np.float32)
    raw = quantize(w, qt)
    ours = dequantize(raw, qt)
    ref = gq.dequantize(raw, qt.ggml).reshape(ours.shape)
    assert np.array_equal(_bits(ours), _bits(ref))


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt-oss", "tiny-odd"])
def test_every_fixture_tensor_bit_exact(build, preset):
    m = Model.open(build(preset))
    seen = set()
    for t in m.tensors.values():
        ours = dequantize(t.raw(), t.qtype)
        ref = gq.dequantize(np.asarray(t.raw()), t.qtype.ggml).reshape(ours.shape)
        assert np.array_equal(_bits(ours), _bits(ref)), t.name
        seen.add(t.qtype_name)
    assert len(seen) >= 2


def test_a_wrong_layout_is_caught(rng):
    """The test can fail: Q4_K bytes read as Q5_K or Q6_K give different values (the seed's bug)."""
    w = (rng.standard_normal((4, 256)) * 0.02).astype(np.float32)
    raw = quantize(w, QTYPES["Q4_K"])
    good = dequantize(raw, QTYPES["Q4_K"])
    assert np.abs(good - w).max() < 0.05
    wrong = gq.dequantize(raw.reshape(-1)[: 2 * 210].reshape(2, 210), QTYPES["Q6_K"].ggml)
    assert not np.allclose(wrong.reshape(-1)[:256], good.reshape(-1)[:256], atol=1e-3)
