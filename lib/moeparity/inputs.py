"""Where each layer's FFN input comes from.

- synthetic: seeded normal residual stream → RMSNorm with the layer's own ffn_norm weight.
- captured:  a `.npz` with one array per layer, key `layer_{i}` (or `blk.{i}`), shape (tokens, n_embd),
             holding the FFN *input* (after ffn_norm) dumped from your engine. From llama.cpp: run
             `llama-eval-callback` (or a ggml eval callback) and save tensors named `ffn_norm-{i}`;
             from transformers: a forward pre-hook on `model.layers[i].mlp` saving `args[0]`.
- chained:   layer l+1's input = RMSNorm(h_l + ffn_out_l) · ffn_norm_{l+1}: errors propagate as in a
             real forward pass (attention is not modelled: the residual carries only FFN outputs).
"""
from __future__ import annotations

import os

import numpy as np

from .errors import BadArgument, ModelFileError


def rms_norm(h: np.ndarray, weight: np.ndarray | None, eps: float) -> np.ndarray:
    dt = h.dtype
    h64 = h.astype(np.float64)
    y = h64 / np.sqrt(np.mean(h64 * h64, axis=-1, keepdims=True) + eps)
    if weight is not None:
        y = y * weight
    return y.astype(dt)


def norm_weight(layer):
    t = layer.get("ffn_norm")
    return None if t is None else t.f32().reshape(-1)


def residual(model, n_tokens: int, seed: int) -> np.ndarray:
    """A seeded residual stream h (tokens, n_embd) with a realistic spread (a few large channels)."""
    if n_tokens < 1:
        raise BadArgument("tokens must be ≥ 1")
    rng = np.random.default_rng([seed, 0x5EED])
    d = model.hparams.n_embd
    h = rng.standard_normal((n_tokens, d)).astype(np.float32)
    h[:, rng.choice(d, max(1, d // 256), replace=False)] *= 20
    return h


def synthetic(model, layer: int, n_tokens: int = 1, seed: int = 0) -> np.ndarray:
    lay = model.layer(layer)
    h = residual(model, n_tokens, seed + 1000 * layer)
    return rms_norm(h, norm_weight(lay), model.hparams.rms_eps).astype(np.float32)


def save_captured(path: str, arrays: dict[int, np.ndarray]):
    np.savez(path, **{f"layer_{i}": np.asarray(a, np.float32) for i, a in arrays.items()})


def load_captured(path: str, model) -> dict[int, np.ndarray]:
    if not os.path.exists(path):
        raise ModelFileError(f"{path}: no such input file")
    try:
        z = np.load(path)
    except (OSError, ValueError) as e:
        raise ModelFileError(f"{path}: not a readable .npz ({e})") from None
    out = {}
    for k in z.files:
        for prefix in ("layer_", "blk."):
            if k.startswith(prefix) and k[len(prefix):].isdigit():
                i = int(k[len(prefix):])
                a = np.asarray(z[k], np.float32)
                if a.ndim == 1:
                    a = a[None]
                if a.ndim != 2 or a.shape[1] != model.hparams.n_embd:
                    raise BadArgument(f"{path}: {k} has shape {a.shape}, expected (tokens, {model.hparams.n_embd})")
                if not 0 <= i < model.hparams.n_layer:
                    raise BadArgument(f"{path}: {k} names a layer outside 0..{model.hparams.n_layer - 1}")
                out[i] = a
    if not out:
        raise BadArgument(f"{path}: no arrays named layer_<i> or blk.<i>")
    return out


def chained(model, backend, layers, n_tokens: int = 1, seed: int = 0, capture="layer", act="f32", h0=None):
    """Run layers in order, each fed by the previous one's output; yields (layer, x, LayerResult)."""
    from .moe import ffn_forward
    h = residual(model, n_tokens, seed) if h0 is None else np.asarray(h0, np.float32)
    for i in layers:
        lay = model.layer(i)
        x = rms_norm(h, norm_weight(lay), model.hparams.rms_eps).astype(np.float32)
        r = ffn_forward(lay, x, backend, capture=capture, act=act)
        yield i, x, r
        h = (h + r.out.astype(np.float32)).astype(np.float32)
