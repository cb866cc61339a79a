"""`q8` activation mode reproduces llama.cpp CPU numerics: its error is orders of magnitude above f32's."""
import numpy as np

from moeparity import backends
from moeparity.gguf_model import QTensor
from moeparity.quant import actquant


def test_q8_error_on_q4k_row_is_orders_of_magnitude_above_f32(rng):
    w = (rng.standard_t(5, size=(1, 64, 2048)) * 0.02).astype(np.float32)
    T = QTensor.from_weights("blk.0.ffn_gate_exps.weight", w, "Q4_K")
    x = rng.standard_normal((1, 2048)).astype(np.float32)
    yo = backends.get("oracle").matvec(T, x)
    cpu = backends.get("cpu")
    rel = {m: np.linalg.norm(cpu.matvec(T, x, act=m) - yo) / np.linalg.norm(yo) for m in ("f32", "q8")}
    # measured: f32 ≈ 1e-7 (float32 accumulation), q8 ≈ 5e-3 (Q8_K activation rounding): >1e3 apart
    assert rel["f32"] < 1e-6
    assert 1e-4 < rel["q8"] < 3e-2
    assert rel["q8"] / rel["f32"] > 1e3, rel


def test_q8k_matches_llama_cpp_reference_rule(rng):
    x = rng.standard_normal(256).astype(np.float32)
    xq = actquant.q8_k(x)
    i = np.abs(x).argmax()
    iscale = np.float32(-127) / x[i]
    q = np.minimum(np.rint(iscale * x), 127)
    assert np.array_equal(xq, (np.float32(1) / iscale * q).astype(np.float32))
    assert np.unique(np.round(xq / (1 / iscale))).size <= 255


def test_q8_0_uses_fp16_scale(rng):
    x = rng.standard_normal(64).astype(np.float32)
    xq = actquant.q8_0(x).reshape(2, 32)
    for b, blk in enumerate(x.reshape(2, 32)):
        d16 = np.float32(np.float16(np.abs(blk).max() / 127))
        assert np.allclose(xq[b] / d16, np.round(xq[b] / d16), atol=1e-3)
