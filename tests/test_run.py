"""Comparison modes: isolated (same input every layer) and chained (each side feeds itself)."""
import numpy as np
import pytest

from moeparity import backends, inputs
from moeparity.errors import BadArgument
from moeparity.gguf_model import Model
from moeparity.run import cosine, layer_pairs, sweep


def test_isolated_gives_both_sides_the_same_input(tiny):
    m = Model.open(tiny)
    rows = list(layer_pairs(m, backends.get("cpu"), backends.get("oracle"), range(8), n_tokens=2, seed=3))
    assert [r[0] for r in rows] == list(range(8))
    for i, xa, a, xb, b in rows:
        assert xa is xb
        assert np.allclose(xa, inputs.synthetic(m, i, 2, 3))
        assert (cosine(a.out, b.out) > 0.99999).all()


def test_chained_lets_each_side_feed_itself(tiny):
    m = Model.open(tiny)
    rows = list(layer_pairs(m, backends.get("cpu"), backends.get("oracle"), range(8), n_tokens=2,
                            mode="chained"))
    assert np.array_equal(rows[0][1], rows[0][3])          # same starting stream
    assert not np.array_equal(rows[5][1], rows[5][3])      # inputs drift apart by rounding
    assert (cosine(rows[7][2].out, rows[7][4].out) > 0.9999).all()


def test_chained_source_feeds_b_with_a_stream(tiny):
    m = Model.open(tiny)
    cpu = backends.get("cpu")
    rows = list(layer_pairs(m, cpu, cpu, range(4), source="chained"))
    for _, xa, a, xb, b in rows:
        assert xa is xb and np.array_equal(a.out, b.out)


def test_captured_source_and_errors(tiny, tmp_path):
    m = Model.open(tiny)
    cap = {0: inputs.synthetic(m, 0, 2, 9)}
    rows = list(layer_pairs(m, backends.get("cpu"), backends.get("cpu"), [0], source="captured", captured=cap))
    assert np.array_equal(rows[0][1], cap[0])
    with pytest.raises(BadArgument, match="layer 1"):
        list(layer_pairs(m, backends.get("cpu"), backends.get("cpu"), [0, 1], source="captured", captured=cap))
    with pytest.raises(BadArgument):
        list(layer_pairs(m, backends.get("cpu"), backends.get("cpu"), [0], mode="sideways"))


def test_sweep_covers_every_layer(tiny):
    m = Model.open(tiny)
    res = sweep(m, backends.get("cpu"))
    assert sorted(res) == list(range(8)) and all(r.out.shape == (1, 256) for r in res.values())
