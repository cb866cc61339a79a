"""Layer-by-layer runs of two backends on the same model: the comparison modes of DESIGN.md.

- isolated: both backends get the same reference input at every layer (local error only). The
  reference input is synthetic, captured, or — with source="chained" — the stream propagated by
  backend A.
- chained:  each backend feeds its own output forward from the same starting residual stream
  (accumulated error: the seed's "layer 7 and after poisoned").
"""
from __future__ import annotations

import numpy as np

from . import inputs
from .errors import BadArgument
from .moe import ffn_forward

MODES = ("isolated", "chained")
SOURCES = ("synthetic", "captured", "chained")


def layer_pairs(model, a, b, layers, n_tokens=1, seed=0, mode="isolated", source="synthetic",
                captured: dict | None = None, capture="layer", act_a="f32", act_b="f32"):
    """Yield (layer, x_a, result_a, x_b, result_b) for each layer in order."""
    if mode not in MODES:
        raise BadArgument(f"mode must be one of {MODES}, not {mode!r}")
    if source not in SOURCES:
        raise BadArgument(f"input source must be one of {SOURCES}, not {source!r}")
    layers = list(layers)
    if mode == "chained":
        h0 = inputs.residual(model, n_tokens, seed)
        ga = inputs.chained(model, a, layers, n_tokens, seed, capture, act_a, h0=h0)
        gb = inputs.chained(model, b, layers, n_tokens, seed, capture, act_b, h0=h0)
        for (i, xa, ra), (_, xb, rb) in zip(ga, gb):
            yield i, xa, ra, xb, rb
        return
    if source == "chained":
        for i, x, ra in inputs.chained(model, a, layers, n_tokens, seed, capture, act_a):
            yield i, x, ra, x, ffn_forward(model.layer(i), x, b, capture, act_b)
        return
    def x_of(i):
        if source == "captured":
            if captured is None or i not in captured:
                raise BadArgument(f"captured inputs have no array for layer {i}")
            return captured[i]
        return inputs.synthetic(model, i, n_tokens, seed)

    xs = {}
    for n, i in enumerate(layers):
        x = xs.pop(i, None)
        x = x_of(i) if x is None else x
        if n + 1 < len(layers):                   # next layer's input is known: start its uploads
            nxt = layers[n + 1]
            xs[nxt] = x_of(nxt)
            for be, act in ((a, act_a), (b, act_b)):
                if hasattr(be, "prefetch_layer"):
                    be.prefetch_layer(model.layer(nxt), xs[nxt], act)
        lay = model.layer(i)
        yield i, x, ffn_forward(lay, x, a, capture, act_a), x, ffn_forward(lay, x, b, capture, act_b)


def sweep(model, backend, layers=None, n_tokens=1, seed=0, capture="layer", act="f32", chained=False):
    """One backend over layers; returns {layer: LayerResult}."""
    layers = range(model.hparams.n_layer) if layers is None else layers
    if chained:
        return {i: r for i, _, r in inputs.chained(model, backend, layers, n_tokens, seed, capture, act)}
    return {i: ffn_forward(model.layer(i), inputs.synthetic(model, i, n_tokens, seed), backend, capture, act)
            for i in layers}


def cosine(a, b) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-300)
