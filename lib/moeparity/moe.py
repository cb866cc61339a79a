"""One backend-agnostic MoE FFN layer (llama.cpp's build_moe_ffn), every stage captured.

    router_logits → gating (softmax | sigmoid | softmax over the top-k) → top-k → weights
    (renormalised / scaled as the arch says) → per selected expert: gate, up, act, down →
    weighted sum → + shared experts → ffn_out

Only `backend.moe_matvec` differs between the two sides of a comparison; the glue runs in the
backend's precision (float32 for engines, float64 for the oracle).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import BadArgument

STAGES = ("router_logits", "router_weights", "router_topk", "expert_gate", "expert_up", "expert_act",
          "expert_down", "ffn_out")
LAYER_STAGES = ("router_logits", "router_weights", "router_topk", "ffn_out")
CAPTURE_LEVELS = ("layer", "expert")


@dataclass
class LayerResult:
    """Stages of one layer for one backend. Per-expert stages are (tokens, k, …); slot j of token t is
    expert `stages['router_topk'][t, j]`."""
    layer: int
    backend: str
    stages: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def out(self) -> np.ndarray:
        return self.stages["ffn_out"]


def _softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def topk(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest per row, largest first; ties go to the lower expert id (stable)."""
    return np.argsort(-scores, axis=-1, kind="stable")[..., :k]


def activation(kind: str, gate, up, hp):
    dt = gate.dtype.type
    if kind == "silu":
        return gate * _sigmoid(gate) * up
    if kind == "gelu_tanh":
        c = dt(np.sqrt(2 / np.pi))
        return dt(0.5) * gate * (1 + np.tanh(c * (gate + dt(0.044715) * gate ** 3))) * up
    if kind == "swiglu_oai":          # gpt-oss: clamp, sigmoid(alpha·g)·g·(u + 1)
        lim, alpha = dt(hp.swiglu_limit), dt(hp.swiglu_alpha)
        g = np.minimum(gate, lim)
        u = np.clip(up, -lim, lim)
        return g * _sigmoid(alpha * g) * (u + 1)
    raise BadArgument(f"unknown activation {kind!r}")


def _bias(layer, role, ids, dt):
    t = layer.get(role)
    if t is None:
        return 0
    b = t.f32().astype(dt)                           # (n_expert, n) for expert biases, (n,) otherwise
    return b[ids] if b.ndim == 2 else b


def route(layer, x, backend, act="f32"):
    """Router stages: logits (T, E), selected ids (T, k), their weights (T, k)."""
    hp = layer.model.hparams
    dt = backend.dtype
    logits = backend.matvec(layer["router"], x, act=act).astype(dt) + _bias(layer, "router_bias", None, dt)
    k = hp.n_expert_used
    if hp.gating == "softmax":
        probs = _softmax(logits)
    elif hp.gating == "sigmoid":
        probs = _sigmoid(logits)
    elif hp.gating == "softmax_weight":
        probs = logits
    else:
        raise BadArgument(f"unknown gating {hp.gating!r}")
    select = probs + _bias(layer, "exp_probs_b", None, dt)          # deepseek's selection-only bias
    ids = topk(select, k)
    w = np.take_along_axis(probs, ids, axis=-1)
    if hp.gating == "softmax_weight":
        w = _softmax(w)
    if hp.norm_topk:
        w = w / w.sum(axis=-1, keepdims=True)
    if hp.expert_weights_scale != 1.0:
        w = w * dt(hp.expert_weights_scale)
    return logits, ids, w.astype(dt)


def _ffn(backend, gate_t, up_t, down_t, ids, x, hp, kind, dt, act, layer=None, bias=False):
    fused = getattr(backend, "moe_gate_up", None)
    whole = getattr(backend, "moe_ffn", None)
    if whole is not None and not bias and gate_t.type_id == up_t.type_id and dt == np.float32:
        # the CUDA backend: the fused branch below in one call, the act kept on the device (dt is
        # float32, so the act the down reads is the act returned)
        return tuple(v.astype(dt) for v in whole(gate_t, up_t, down_t, ids, x, kind, hp, act=act))
    if fused is not None and not bias and gate_t.type_id == up_t.type_id:
        # device backends: gate and up off one read of x, activation fused (same math as below)
        g, u, a = (v.astype(dt) for v in fused(gate_t, up_t, ids, x, kind, hp, act=act))
    else:
        g = backend.moe_matvec(gate_t, ids, x, act=act).astype(dt)
        u = backend.moe_matvec(up_t, ids, x, act=act).astype(dt)
        if bias:
            g = g + _bias(layer, "gate_exps_bias", ids, dt)
            u = u + _bias(layer, "up_exps_bias", ids, dt)
        a = activation(kind, g, u, hp).astype(dt)
    d = backend.moe_matvec(down_t, ids, a, act=act).astype(dt)
    if bias:
        d = d + _bias(layer, "down_exps_bias", ids, dt)
    return g, u, a, d


def ffn_forward(layer, x: np.ndarray, backend, capture: str = "expert", act: str = "f32") -> LayerResult:
    """Run one layer's FFN on x (tokens, n_embd) — x is the FFN input, i.e. already normed."""
    if capture not in CAPTURE_LEVELS:
        raise BadArgument(f"capture must be one of {CAPTURE_LEVELS}, not {capture!r}")
    hp = layer.model.hparams
    dt = backend.dtype
    x = np.asarray(x, np.float32).reshape(-1, hp.n_embd)
    T = x.shape[0]
    res = LayerResult(layer.index, getattr(backend, "label", backend.name))
    st = res.stages
    if not layer.is_moe:                              # dense FFN: one always-on expert
        ids = np.zeros((T, 1), np.int64)
        g, u, a, d = _ffn(backend, layer["gate"], layer["up"], layer["down"], ids, x, hp, hp.act, dt, act)
        w = np.ones((T, 1), dt)
        logits = np.zeros((T, 1), dt)
    else:
        logits, ids, w = route(layer, x, backend, act)
        g, u, a, d = _ffn(backend, layer["gate_exps"], layer["up_exps"], layer["down_exps"], ids, x, hp,
                          hp.act, dt, act, layer, bias=layer.get("gate_exps_bias") is not None)
    out = (w[..., None] * d).sum(axis=1, dtype=dt)
    if layer.get("gate_shexp") is not None:
        sid = np.zeros((T, 1), np.int64)
        _, _, _, ds = _ffn(backend, layer["gate_shexp"], layer["up_shexp"], layer["down_shexp"], sid, x, hp,
                           "silu", dt, act)
        ds = ds[:, 0]
        if hp.shared_gate and layer.get("shexp_gate") is not None:
            gw = layer["shexp_gate"].f32().astype(dt).reshape(-1)
            ds = _sigmoid(x.astype(dt) @ gw)[:, None] * ds
        out = out + ds
    st["router_logits"], st["router_weights"], st["router_topk"] = logits, w, ids
    if capture == "expert":
        st["expert_gate"], st["expert_up"], st["expert_act"], st["expert_down"] = g, u, a, d
    st["ffn_out"] = out.astype(dt)
    return res
