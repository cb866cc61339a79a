"""One contract for every backend × qtype × role × shape × token count (DESIGN.md: one qtype table).

Results within the float32 accumulation bound of the float64 oracle; unimplemented rows raise the
same UnsupportedQType on every backend.
"""
import numpy as np
import pytest
from gguf import GGMLQuantizationType

from moeparity import backends
from moeparity.errors import UnsupportedQType
from moeparity.gguf_model import QTensor
from moeparity.qtypes import QTYPES

from moeparity.backends.cuda import cuda_available  # noqa: E402

BACKENDS = ["cpu", "emulated-cuda"] + (["cuda"] if cuda_available() else [])
# (n_out, n_in) per role; the *_odd shapes have rows that are not multiples of 256
ROLES = {"router": (16, 512), "gate": (48, 512), "up": (48, 512), "down": (512, 256),
         "gate_odd": (40, 96), "down_odd": (96, 160)}
U = 2.0 ** -24


def _cases():
    for b in BACKENDS:
        for q, qt in QTYPES.items():
            for role, (n_out, n_in) in ROLES.items():
                if n_in % qt.block:
                    continue
                yield b, q, role


@pytest.mark.parametrize("backend,qtype,role", list(_cases()))
@pytest.mark.parametrize("ntok", [1, 4, 17])
def test_within_float32_bound_of_oracle(backend, qtype, role, ntok, rng):
    n_out, n_in = ROLES[role]
    n_exp = 3
    w = (rng.standard_t(5, size=(n_exp, n_out, n_in)) * 0.05).astype(np.float32)
    T = QTensor.from_weights(f"blk.0.ffn_{role}_exps.weight", w, qtype)
    x = rng.standard_normal((ntok, n_in)).astype(np.float32)
    ids = rng.integers(0, n_exp, size=(ntok, 2))
    be = backends.get(backend)
    y = be.moe_matvec(T, ids, x)
    assert y.dtype == np.float32
    yo, mag = backends.get("oracle").moe_matvec(T, ids, x, magnitude=True)
    assert y.shape == (ntok, 2, n_out) and np.isfinite(y).all()
    bound = n_in * U * mag + 1e-30
    assert (np.abs(y - yo) <= bound).all(), f"max err/bound {(np.abs(y - yo) / bound).max():.3g}"
    # per-slot input form (down projection): x differs per (token, slot)
    xs = rng.standard_normal((ntok, 2, n_in)).astype(np.float32)
    y2 = be.moe_matvec(T, ids, xs)
    yo2, mag2 = backends.get("oracle").moe_matvec(T, ids, xs, magnitude=True)
    assert (np.abs(y2 - yo2) <= n_in * U * mag2 + 1e-30).all()


def test_the_contract_can_fail(rng):
    """A kernel reading Q4_K bytes as Q6_K would be caught: the bound is tight, not vacuous."""
    w = (rng.standard_normal((1, 32, 512)) * 0.05).astype(np.float32)
    T = QTensor.from_weights("t", w, "Q4_K")
    x = rng.standard_normal((1, 512)).astype(np.float32)
    yo, mag = backends.get("oracle").matvec_with_magnitude(T, x)
    wrong = yo * (1 + 1e-5)
    assert not (np.abs(wrong - yo) <= 512 * U * mag * 0.01).all()


UNSUPPORTED = GGMLQuantizationType.IQ2_XXS


@pytest.mark.parametrize("backend", BACKENDS + ["oracle"])
def test_unsupported_qtype_same_error_everywhere(backend):
    raw = np.zeros(66 * 2, np.uint8)
    T = QTensor("blk.6.ffn_down_exps.weight", int(UNSUPPORTED), (256, 2, 1), 0, raw.size, raw)
    with pytest.raises(UnsupportedQType) as e:
        backends.get(backend).matvec(T, np.ones((1, 256), np.float32))
    assert e.value.qtype == "IQ2_XXS" and e.value.tensor == "blk.6.ffn_down_exps.weight"
    assert set(e.value.supported) == set(QTYPES)
    assert "blk.6.ffn_down_exps.weight" in str(e.value) and "IQ2_XXS" in str(e.value)
