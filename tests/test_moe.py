"""The MoE engine against an independent float64 implementation written here (gguf-py dequantize +
numpy float64, not the engine's code), on one fixture per architecture."""
import numpy as np
import pytest
from gguf import quants as gq

from moeparity import backends, inputs
from moeparity.gguf_model import Model
from moeparity.moe import ffn_forward, topk

U = 2.0 ** -24
PRESETS = ["tiny", "tiny-qwen2moe", "tiny-mixtral", "tiny-olmoe", "tiny-deepseek2", "tiny-gpt-oss",
           "tiny-granitemoe", "tiny-llama", "tiny-qwen2", "tiny-qwen3", "tiny-gemma3"]


def W(t, e=None):
    """float64 weights (n_out, n_in) via gguf-py — independent of moeparity.quant."""
    raw = np.asarray(t.raw() if e is None else t.expert(e))
    v = gq.dequantize(raw, t.qtype.ggml).astype(np.float64)
    return v.reshape(-1, t.n_in) if e is not None or len(t.ne) > 1 else v.reshape(-1)


def sig(z):
    return 1 / (1 + np.exp(-z))


def act64(kind, g, u, hp):
    if kind == "silu":
        return g * sig(g) * u
    if kind == "gelu_tanh":
        return 0.5 * g * (1 + np.tanh(np.sqrt(2 / np.pi) * (g + 0.044715 * g ** 3))) * u
    g = np.minimum(g, hp.swiglu_limit)
    u = np.clip(u, -hp.swiglu_limit, hp.swiglu_limit)
    return g * sig(hp.swiglu_alpha * g) * (u + 1)


def reference(layer, x):
    """Returns ffn_out (T, n_embd) float64 and a float32-error magnitude per output element."""
    hp = layer.model.hparams
    x = x.astype(np.float64)
    T = x.shape[0]
    out = np.zeros((T, hp.n_embd))
    mag = np.zeros_like(out)
    t = layer.tensors

    def expert(gate, up, down, e, xt, kind, gb=0, ub=0, db=0):
        Wg, Wu, Wd = W(gate, e), W(up, e), W(down, e)
        g, u = Wg @ xt + gb, Wu @ xt + ub
        a = act64(kind, g, u, hp)
        # magnitude: accumulation error of down plus act error from gate/up accumulation
        amag = np.abs(Wd) @ (np.abs(a) + (np.abs(Wg) @ np.abs(xt) + np.abs(Wu) @ np.abs(xt)) * 2)
        return Wd @ a + db, amag

    for tok in range(T):
        xt = x[tok]
        if not layer.is_moe:
            y, m = expert(t["gate"], t["up"], t["down"], 0, xt, hp.act)
            out[tok], mag[tok] = y, m
            continue
        logits = W(t["router"], 0) @ xt
        if "router_bias" in t:
            logits = logits + W(t["router_bias"])
        if hp.gating == "softmax":
            p = np.exp(logits - logits.max())
            p /= p.sum()
        elif hp.gating == "sigmoid":
            p = sig(logits)
        else:
            p = logits.copy()
        sel = p + (W(t["exp_probs_b"]) if "exp_probs_b" in t else 0)
        ids = np.argsort(-sel, kind="stable")[: hp.n_expert_used]
        w = p[ids]
        if hp.gating == "softmax_weight":
            w = np.exp(w - w.max())
            w /= w.sum()
        if hp.norm_topk:
            w = w / w.sum()
        w = w * hp.expert_weights_scale
        for wi, e in zip(w, ids):
            kw = {}
            if "gate_exps_bias" in t:
                kw = dict(gb=W(t["gate_exps_bias"]).reshape(hp.n_expert, -1)[e],
                          ub=W(t["up_exps_bias"]).reshape(hp.n_expert, -1)[e],
                          db=W(t["down_exps_bias"]).reshape(hp.n_expert, -1)[e])
            y, m = expert(t["gate_exps"], t["up_exps"], t["down_exps"], e, xt, hp.act, **kw)
            out[tok] += wi * y
            mag[tok] += abs(wi) * m
        if "gate_shexp" in t:
            y, m = expert(t["gate_shexp"], t["up_shexp"], t["down_shexp"], 0, xt, "silu")
            gsh = sig(W(t["shexp_gate"]) @ xt) if "shexp_gate" in t else 1.0
            out[tok] += gsh * y
            mag[tok] += gsh * m
    return out, mag


@pytest.mark.parametrize("preset", PRESETS)
def test_cpu_engine_matches_independent_float64(build, preset, rng):
    m = Model.open(build(preset))
    cpu = backends.get("cpu")
    n_tok = 3
    for i in range(m.hparams.n_layer):
        x = inputs.synthetic(m, i, n_tok, seed=int(rng.integers(1 << 30)))
        got = ffn_forward(m.layer(i), x, cpu, capture="layer").out.astype(np.float64)
        ref, mag = reference(m.layer(i), x)
        for t in range(n_tok):
            cos = got[t] @ ref[t] / np.linalg.norm(got[t]) / np.linalg.norm(ref[t])
            assert cos >= 0.99999, (preset, i, t, cos)
        n = m.hparams.n_embd + max(m.hparams.n_ff, m.hparams.n_ff_exp, m.hparams.n_ff_shexp)
        bound = n * U * mag + 1e-6 * np.abs(ref).max()
        assert (np.abs(got - ref) <= bound).all(), (preset, i, (np.abs(got - ref) / bound).max())


def test_the_reference_can_fail(build):
    """Dropping one selected expert breaks the cosine: the comparison is not vacuous."""
    m = Model.open(build("tiny"))
    lay = m.layer(1)
    x = inputs.synthetic(m, 1, 1)
    r = ffn_forward(lay, x, backends.get("cpu"), capture="expert")
    partial = (r.stages["router_weights"][0, 1:, None] * r.stages["expert_down"][0, 1:]).sum(0)
    ref, _ = reference(lay, x)
    cos = partial @ ref[0] / np.linalg.norm(partial) / np.linalg.norm(ref[0])
    assert cos < 0.999


def test_stage_capture_levels(tiny):
    m = Model.open(tiny)
    x = inputs.synthetic(m, 0, 2)
    full = ffn_forward(m.layer(0), x, backends.get("cpu"), capture="expert").stages
    small = ffn_forward(m.layer(0), x, backends.get("cpu"), capture="layer").stages
    h = m.hparams
    assert set(small) == {"router_logits", "router_weights", "router_topk", "ffn_out"}
    assert set(full) == set(small) | {"expert_gate", "expert_up", "expert_act", "expert_down"}
    assert full["expert_gate"].shape == (2, h.n_expert_used, h.n_ff_exp)
    assert full["expert_down"].shape == (2, h.n_expert_used, h.n_embd)
    assert np.array_equal(full["ffn_out"], small["ffn_out"])
    recon = (full["router_weights"][..., None] * full["expert_down"]).sum(1)
    assert np.allclose(recon, full["ffn_out"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("preset", ["tiny", "tiny-mixtral", "tiny-deepseek2", "tiny-gpt-oss"])
def test_router_invariants(build, preset, rng):
    m = Model.open(build(preset))
    h = m.hparams
    for i in range(h.n_leading_dense, h.n_layer):
        x = inputs.synthetic(m, i, 5, seed=int(rng.integers(1 << 30)))
        st = ffn_forward(m.layer(i), x, backends.get("cpu"), capture="layer").stages
        ids, w = st["router_topk"], st["router_weights"]
        assert ids.shape == (5, h.n_expert_used)
        assert all(len(set(r)) == h.n_expert_used for r in ids)
        assert (w >= 0).all()
        if h.norm_topk or h.gating == "softmax_weight":
            assert np.allclose(w.sum(1), h.expert_weights_scale, rtol=1e-5)


def test_topk_tie_order_is_stable():
    s = np.array([[0.1, 0.5, 0.5, 0.2, 0.5]])
    assert topk(s, 3).tolist() == [[1, 2, 4]]
    assert topk(s[:, ::-1].copy(), 2).tolist() == [[0, 2]]


def test_input_dump_roundtrip(tiny, tmp_path):
    m = Model.open(tiny)
    arrays = {i: inputs.synthetic(m, i, 4, seed=i) for i in (0, 3, 7)}
    p = tmp_path / "x.npz"
    inputs.save_captured(str(p), arrays)
    back = inputs.load_captured(str(p), m)
    assert set(back) == {0, 3, 7}
    for i in back:
        assert np.array_equal(back[i], arrays[i])


def test_captured_rejects_bad_shapes(tiny, tmp_path):
    from moeparity.errors import BadArgument
    m = Model.open(tiny)
    p = tmp_path / "bad.npz"
    np.savez(p, layer_0=np.ones((2, 7), np.float32))
    with pytest.raises(BadArgument, match="expected"):
        inputs.load_captured(str(p), m)


def test_chained_propagates_own_outputs(tiny):
    m = Model.open(tiny)
    cpu = backends.get("cpu")
    steps = list(inputs.chained(m, cpu, range(4), n_tokens=2, seed=1))
    assert [s[0] for s in steps] == [0, 1, 2, 3]
    h = inputs.residual(m, 2, 1)
    for i, x, r in steps:
        want = inputs.rms_norm(h, inputs.norm_weight(m.layer(i)), m.hparams.rms_eps)
        assert np.allclose(x, want, rtol=1e-5, atol=1e-6)
        h = h + r.out


@pytest.mark.parametrize("preset", ["tiny", "tiny-gpt-oss"])
def test_backends_with_moe_ffn_get_the_whole_expert_ffn(build, preset):
    """moe._ffn hands a backend that has moe_ffn (the CUDA backend: the act stays on the device) the
    gate, up and down in one call, except where the arch adds biases between them (gpt-oss), and
    the layer's stages are those of the separate calls. A stand-in for the GPU: the emulated device
    with a moe_ffn made of its own moe_gate_up and moe_matvec."""
    from moeparity.backends.emulated import EmulatedCudaBackend

    class Whole(EmulatedCudaBackend):
        calls = 0

        def moe_ffn(self, gate, up, down, ids, x, kind, hp, act="f32"):
            Whole.calls += 1
            g, u, a = self.moe_gate_up(gate, up, ids, x, kind, hp, act=act)
            return g, u, a, self.moe_matvec(down, ids, a, act=act)

    m = Model.open(build(preset))
    plain, whole = backends.get("emulated-cuda"), Whole()
    for i in range(m.hparams.n_layer):
        if not m.layer(i).is_moe:
            continue
        x = inputs.synthetic(m, i, 3, seed=i)
        a, b = ffn_forward(m.layer(i), x, plain), ffn_forward(m.layer(i), x, whole)
        assert a.stages.keys() == b.stages.keys()
        assert all(np.array_equal(a.stages[k], b.stages[k]) for k in a.stages)
    biased = any(m.layer(i).get("gate_exps_bias") is not None for i in range(m.hparams.n_layer))
    assert biased == (preset == "tiny-gpt-oss") and (Whole.calls == 0) == biased
