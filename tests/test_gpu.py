"""CUDA backend against the oracle, the CPU and its emulation. Marked `gpu`: skipped with a reason
when no CUDA device is present (CI); run on the device machine (benchmarks/device_check.sh)."""
import numpy as np
import pytest

from moeparity import backends, inputs
from moeparity.backends.cuda import cuda_available
from moeparity.gguf_model import Model, QTensor
from moeparity.moe import ffn_forward
from moeparity.qtypes import QTYPES

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not cuda_available(), reason="no CUDA device (cupy or driver or GPU absent)")]
U = 2.0 ** -24
SHAPES = [(48, 512), (512, 256), (40, 96), (96, 2048)]


@pytest.fixture(scope="module")
def gpu():
    return backends.get("cuda")


@pytest.mark.parametrize("qtype", list(QTYPES))
@pytest.mark.parametrize("ntok", [1, 4, 17])
def test_gpu_vs_oracle_cpu_and_emulation(gpu, qtype, ntok, rng):
    for n_out, n_in in SHAPES:
        if n_in % QTYPES[qtype].block:
            continue
        w = (rng.standard_t(5, size=(5, n_out, n_in)) * 0.05).astype(np.float32)
        T = QTensor.from_weights(f"blk.{ntok}.ffn_up_exps.weight", w, qtype)
        x = rng.standard_normal((ntok, n_in)).astype(np.float32)
        # one token: distinct experts (the single-member kernels moe_matvec1[n], or moe_mma2_* for Q4_K/Q6_K)
        ids = rng.choice(5, size=(1, 3), replace=False) if ntok == 1 else rng.integers(0, 5, size=(ntok, 3))
        y = gpu.moe_matvec(T, ids, x)
        yo, mag = backends.get("oracle").moe_matvec(T, ids, x, magnitude=True)
        assert (np.abs(y - yo) <= n_in * U * mag + 1e-30).all()
        yc = backends.get("cpu").moe_matvec(T, ids, x)
        assert np.sum((y - yc) ** 2) / np.sum(yc.astype(np.float64) ** 2) <= 1e-9
        ye = backends.get("emulated-cuda").moe_matvec(T, ids, x)
        assert np.array_equal(y, ye), f"emulation differs: max {np.abs(y - ye).max()}"
        if n_in % 32 == 0:
            yq = gpu.moe_matvec(T, ids, x, act="q8_1")
            yqe = backends.get("emulated-cuda").moe_matvec(T, ids, x, act="q8_1")
            assert np.array_equal(yq, yqe)


@pytest.mark.parametrize("qtype", ["F32", "BF16", "Q8_0", "Q4_0", "Q4_K", "Q6_K"])
def test_subnormals_are_kept_like_the_emulation(gpu, qtype, rng):
    """Activations of 1e-36 against weights of 1e-3: many outputs are subnormal. A kernel built with
    flush-to-zero (CuPy's own compile path appends -ftz=true) zeroes them, or their partial sums,
    where the emulation (IEEE float32 with subnormals) does not."""
    n_in = 512
    w = (rng.standard_normal((2, 32, n_in)) * 1e-3).astype(np.float32)
    T = QTensor.from_weights("blk.0.ffn_up_exps.weight", w, qtype)
    x = (rng.standard_normal((2, n_in)) * 1e-36).astype(np.float32)
    ids = np.array([[0], [1]])
    y, ye = gpu.moe_matvec(T, ids, x), backends.get("emulated-cuda").moe_matvec(T, ids, x)
    assert np.count_nonzero(ye) == ye.size and np.sum(np.abs(ye) < np.finfo(np.float32).tiny) >= 8
    assert np.array_equal(y, ye)


def test_q8_1_error_is_mmvq_sized(gpu, rng):
    """q8_1 mode quantises the activations (per 32: scale amax/127 in fp16), so its error is far
    above f32's, yet inside the bound that quantisation allows: |δx| ≤ 0.6·amax/127 per value.
    (Bounds per row from Σ|w|, not a norm ratio: a row that cancels makes a relative norm swing.)"""
    w = (rng.standard_t(5, size=(1, 64, 2048)) * 0.02).astype(np.float32)
    T = QTensor.from_weights("blk.0.ffn_gate_exps.weight", w, "Q4_K")
    x = rng.standard_normal((1, 2048)).astype(np.float32)
    yo, mag = backends.get("oracle").matvec_with_magnitude(T, x)
    amax = np.repeat(np.abs(x.reshape(-1, 32)).max(axis=1), 32)
    qbound = np.abs(T.f32()[0].astype(np.float64)) @ (amax * 0.6 / 127) + 2048 * U * mag[0]
    ef, eq = (np.abs(gpu.matvec(T, x, act=m) - yo) for m in ("f32", "q8_1"))
    assert (ef <= 2048 * U * mag).all() and (eq <= qbound).all()
    assert np.linalg.norm(eq) > 1e3 * np.linalg.norm(ef)


@pytest.mark.parametrize("preset", ["tiny", "tiny-qwen2moe", "tiny-gpt-oss", "tiny-gemma3"])
def test_layer_forward_gpu_matches_cpu(build, gpu, preset):
    m = Model.open(build(preset))
    for i in range(m.hparams.n_layer):
        x = inputs.synthetic(m, i, 3)
        a = ffn_forward(m.layer(i), x, backends.get("cpu"), capture="expert")
        b = ffn_forward(m.layer(i), x, gpu, capture="expert")
        assert np.array_equal(a.stages["router_topk"], b.stages["router_topk"])
        for s in ("expert_gate", "expert_act", "expert_down", "ffn_out"):
            nm = np.sum((a.stages[s] - b.stages[s]) ** 2) / np.sum(a.stages[s].astype(np.float64) ** 2)
            assert nm <= 1e-9, (preset, i, s, nm)
        e = ffn_forward(m.layer(i), x, backends.get("emulated-cuda"), capture="expert")
        assert np.allclose(e.out, b.out, rtol=1e-5, atol=1e-6)


def test_streaming_uploads_only_selected_experts(tiny, gpu):
    m = Model.open(tiny)
    before = gpu.uploaded_bytes
    lay = m.layer(5)
    ffn_forward(lay, inputs.synthetic(m, 5, 1), gpu, capture="layer")
    per_expert = sum(lay[r].expert_bytes for r in ("gate_exps", "up_exps", "down_exps"))
    assert gpu.uploaded_bytes - before <= m.hparams.n_expert_used * per_expert + lay["router"].nbytes


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K", "Q8_0", "Q5_0", "F16", "MXFP4"])
@pytest.mark.parametrize("ntok", [1, 2])
def test_many_experts_multi_row_warps(gpu, qtype, ntok, rng):
    """128 experts × 520 rows (a last block whose rows run past R), rows of 768 (Q6_K rows that are
    not 16-byte aligned); 1 token takes the single-member kernels (Q4_K/Q6_K: moe_mma2_*)."""
    E, R, n_in = 128, 520, 768
    w = (rng.standard_normal((E, R, n_in)) * 0.05).astype(np.float32)
    T = QTensor.from_weights("big", w, qtype)
    ids = np.tile(np.arange(E), (ntok, 1))
    x = rng.standard_normal((ntok, n_in)).astype(np.float32)
    y = gpu.moe_matvec(T, ids, x)
    assert np.array_equal(y, backends.get("emulated-cuda").moe_matvec(T, ids, x))
    yo, mag = backends.get("oracle").moe_matvec(T, ids, x, magnitude=True)
    assert (np.abs(y - yo) <= n_in * U * mag + 1e-30).all()


@pytest.mark.parametrize("qtype", list(QTYPES))
def test_dequant_kernel_is_gguf_exact(gpu, qtype, rng):
    import cupy as cp
    from moeparity.quant import dequant as dq
    qt = QTYPES[qtype]
    w = (rng.standard_t(5, size=(64, 512)) * 0.1).astype(np.float32)
    raw = np.ascontiguousarray(QTensor.from_weights("t", w, qtype).raw())        # (64, row_bytes)
    out = cp.empty((64, 512), cp.float32)
    per = 64 * 512 // 32
    gpu.module.get_function(f"dequant_{qtype}")(((per + 255) // 256,), (256,), (
        cp.asarray(raw), np.int32(raw.shape[1]), np.int32(512), np.int64(64), out))
    assert np.array_equal(cp.asnumpy(out), dq.dequantize(raw, qt))


def test_prefetch_double_buffering_gives_identical_results(tiny):
    from moeparity.run import layer_pairs
    m = Model.open(tiny)
    plain = backends.get("cuda")
    pre = backends.get("cuda")
    cpu = backends.get("cpu")
    got = {i: rb.out for i, _, _, _, rb in layer_pairs(m, cpu, pre, range(8), n_tokens=3, mode="isolated")}
    want = {i: ffn_forward(m.layer(i), inputs.synthetic(m, i, 3), plain, "layer").out for i in range(8)}
    for i in range(8):
        assert np.array_equal(got[i], want[i])
    assert pre.uploader.prefetch_hits >= 3 * 7                # gate/up/down of layers 1..7 came prefetched
    assert len(pre.uploader.resident_layers) <= 2


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_tensor_core_path_edges(gpu, qtype, rng):
    """Multi-member f32 launches of Q4_K/Q6_K take the int8 tensor-core kernels: rows past the
    last 16-row tile, an expert with more than 8 members, non-finite activations (their token's
    outputs are NaN), and gate+up — equal to emulated-cuda bit for bit."""
    from types import SimpleNamespace
    E, R, n_in, ntok = 4, 37, 512, 12
    wg, wu = ((rng.standard_t(5, size=(E, R, n_in)) * 0.05).astype(np.float32) for _ in range(2))
    G = QTensor.from_weights("blk.0.ffn_gate_exps.weight", wg, qtype)
    Up = QTensor.from_weights("blk.0.ffn_up_exps.weight", wu, qtype)
    x = rng.standard_normal((ntok, n_in)).astype(np.float32)
    x[3, 300], x[5, 10] = np.nan, np.inf
    ids = rng.integers(0, E, size=(ntok, 2))
    ids[:, 0] = 1                                              # expert 1: 12 members (two groups)
    ids[ids[:, 1] == 1, 1] = 2
    em = backends.get("emulated-cuda")
    y, ye = gpu.moe_matvec(G, ids, x), em.moe_matvec(G, ids, x)
    assert np.array_equal(y, ye, equal_nan=True)
    assert np.isnan(y[3]).all() and np.isnan(y[5]).all() and np.isfinite(np.delete(y, [3, 5], 0)).all()
    hp = SimpleNamespace(swiglu_alpha=0.0, swiglu_limit=0.0)
    g, u, a = gpu.moe_gate_up(G, Up, ids, x, "silu", hp)
    ge, ue, ae = em.moe_gate_up(G, Up, ids, x, "silu", hp)
    assert np.array_equal(g, ge, equal_nan=True) and np.array_equal(u, ue, equal_nan=True)
    assert np.allclose(a, ae, rtol=1e-6, atol=1e-7, equal_nan=True)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
@pytest.mark.parametrize("ids", [[[2, 0, 4]], [[2, 0], [2, 3], [2, 1]]])
def test_gate_up_kernels_for_few_members(gpu, qtype, ids, rng):
    """moe_mma_gu2 (one token: groups of one member) and moe_mma_gu4 (up to four) write gate and up
    equal to emulated-cuda bit for bit, and act from them; 37 rows: the last 16-row tile is partial."""
    from types import SimpleNamespace
    E, R, n_in = 5, 37, 512
    G, Up = (QTensor.from_weights(f"blk.0.ffn_{r}_exps.weight", (rng.standard_t(5, size=(E, R, n_in)) * 0.05)
                                  .astype(np.float32), qtype) for r in ("gate", "up"))
    ids = np.array(ids)                                        # expert 2: every token's first
    x = rng.standard_normal((len(ids), n_in)).astype(np.float32)
    hp = SimpleNamespace(swiglu_alpha=0.0, swiglu_limit=0.0)
    g, u, a = gpu.moe_gate_up(G, Up, ids, x, "silu", hp)
    ge, ue, ae = backends.get("emulated-cuda").moe_gate_up(G, Up, ids, x, "silu", hp)
    assert np.array_equal(g, ge) and np.array_equal(u, ue)
    assert np.allclose(a, ae, rtol=1e-6, atol=1e-7)
    assert np.allclose(a, g / (1 + np.exp(-g.astype(np.float64))) * u, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_pooled_items_equal_fixed_shares(gpu, qtype, monkeypatch):
    """Launches large enough that each warp leaves items to the pool (gpu_layout.MMA_POOL; claimed by
    the warps that finish first) give the bits of fixed shares, and shares in strided order those of
    consecutive items (gpu_layout.mma_strided): an item's sums do not depend on the warp that computes
    it. (Small launches, like the tests' above, have no pool.)"""
    from moeparity.backends import gpu_layout as L
    from moeparity.bench_gpu import FF, HIDDEN, _Case
    rng = np.random.default_rng(7)
    E, ntok = 64, 8
    ids = np.tile(np.arange(E), (ntok, 1))
    cases = [(_Case(gpu, QTYPES[qtype], E, FF, HIDDEN, seed=1, pair=True), rng.standard_normal((ntok, HIDDEN))),
             (_Case(gpu, QTYPES[qtype], E, HIDDEN, FF, seed=2), rng.standard_normal((ntok * E, FF)))]
    got = {}
    for pool, strided in ((0, False), (1, False), (3, False), (0, True), (1, True)):
        monkeypatch.setattr(L, "MMA_POOL", pool)
        monkeypatch.setattr(L, "mma_strided", lambda members, shared_x: strided)
        got[pool, strided] = []
        for case, x in cases:
            case.plan(ids, x.astype(np.float32))
            case.ours()
            got[pool, strided] += [o.get() for o in case.launch.outs]
    want = got.pop((0, False))
    assert all(np.count_nonzero(np.nan_to_num(o)) > o.size // 2 for o in want)
    for outs in got.values():
        assert all(np.array_equal(a, b, equal_nan=True) for a, b in zip(want, outs))


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
@pytest.mark.parametrize("R", [32, 64, 520])
def test_staged_x_equals_global_x(gpu, qtype, R, monkeypatch):
    """The 8-member down stages the x rows of its blocks' groups in shared memory (gpu_layout.mma_xs_bytes):
    the bits are those of the same launch reading x from global memory, and the emulation's, where a
    block's items span one or two groups or more than it stages (R = 520, 64, 32 rows of 128 experts)
    and where the pool hands a warp an item of another group."""
    from moeparity.backends import gpu_layout as L
    rng = np.random.default_rng(R)
    E, n_in, ntok = 128, 768, 8
    T = QTensor.from_weights("down", (rng.standard_normal((E, R, n_in)) * 0.05).astype(np.float32), qtype)
    ids = np.tile(np.arange(E), (ntok, 1))
    x = rng.standard_normal((ntok, E, n_in)).astype(np.float32)
    y = gpu.moe_matvec(T, ids, x)
    assert np.count_nonzero(y) > y.size // 2
    assert np.array_equal(y, backends.get("emulated-cuda").moe_matvec(T, ids, x))
    monkeypatch.setattr(L, "mma_xs_bytes", lambda *a: 0)
    assert np.array_equal(y, gpu.moe_matvec(T, ids, x))


@pytest.mark.parametrize("gu_q, down_q", [("Q4_K", "Q4_K"), ("Q6_K", "Q6_K"), ("Q4_K", "Q6_K"), ("Q6_K", "Q4_0"),
                                          ("Q8_0", "Q4_K")])
@pytest.mark.parametrize("routing", ["top2", "all"])
def test_ffn_chain_equals_separate_calls(gpu, gu_q, down_q, routing, rng):
    """moe_ffn (gate+up, then the down on the act left on the device, the two launches back to back)
    gives the bits of moe_gate_up then moe_matvec on the returned act, called twice in a row (the launches' buffers and pools reused); a down on the
    float kernels (Q4_0) takes the host's act instead. 'all': every expert for 8 tokens, 8 members a
    group, launches large enough to leave items to the pool."""
    from types import SimpleNamespace
    E, F, H = (6, 256, 512) if routing == "top2" else (48, 256, 512)
    w = lambda *s: (rng.standard_t(5, size=s) * 0.05).astype(np.float32)      # noqa: E731
    G = QTensor.from_weights("blk.0.ffn_gate_exps.weight", w(E, F, H), gu_q)
    Up = QTensor.from_weights("blk.0.ffn_up_exps.weight", w(E, F, H), gu_q)
    D = QTensor.from_weights("blk.0.ffn_down_exps.weight", w(E, H, F), down_q)
    ids = rng.integers(0, E, size=(9, 2)) if routing == "top2" else np.tile(np.arange(E), (8, 1))
    x = rng.standard_normal((len(ids), H)).astype(np.float32)
    hp = SimpleNamespace(swiglu_alpha=0.0, swiglu_limit=0.0)
    g, u, a = gpu.moe_gate_up(G, Up, ids, x, "silu", hp)
    want = (g, u, a, gpu.moe_matvec(D, ids, a))
    assert np.count_nonzero(want[3]) > want[3].size // 2
    for _ in range(2):
        got = gpu.moe_ffn(G, Up, D, ids, x, "silu", hp)
        assert all(np.array_equal(p, q) for p, q in zip(got, want))


@pytest.mark.parametrize("qtype", ["Q4_K", "Q6_K"])
def test_first_call_of_a_fresh_launch_is_complete(gpu, qtype):
    """The backend makes a Launch per call and runs it once, right after its mma_tiles copy, and the
    matvec reads that copy before its griddepcontrol.wait: so x_fixed must be an ordinary launch,
    which starts only once the copy is complete and visible. (Session 8 launched x_fixed with PDL too:
    the first call of a 128-expert down then read a partly written copy, outputs up to inf, where
    later calls did not.) The first call gives the second's bits, the down's x on the device and
    from the host; 128 experts, as the race needed a large copy to show. moe_ffn's chain, whose down
    x_fixed is launched by PDL after gate+up (legal: the down was prepared before gate+up ran), gives
    the same bits from its first call on, its x_fixed's outputs filled with all-ones bytes first
    (session 9: the matvec's loads of them, moved above its wait by ptxas, read such a buffer)."""
    from moeparity.backends.cuda import Launch
    from moeparity.bench_gpu import FF, HIDDEN, _Case
    qt, rng = QTYPES[qtype], np.random.default_rng(3)
    gu = _Case(gpu, qt, 128, FF, HIDDEN, seed=1, pair=True)
    dn = _Case(gpu, qt, 128, HIDDEN, FF, seed=2)
    for ntok in (1, 8):
        ids = np.tile(np.arange(128), (ntok, 1))
        x = rng.standard_normal((ntok, HIDDEN)).astype(np.float32)
        g = Launch(gpu, qt, gu.Ws, FF, HIDDEN, ids, x, in_place=True)
        g()
        for X in (g.outs[2], g.outs[2].get()):
            d = Launch(gpu, qt, dn.Ws, HIDDEN, FF, ids, X, in_place=True)
            d()
            first = d.outs[0].get()
            d()
            assert np.array_equal(first, d.outs[0].get(), equal_nan=True)
        # moe_ffn's chain: both prepared, then gate+up and the down, its x_fixed by PDL (Launch.follow)
        want = d.outs[0].get()
        g2 = Launch(gpu, qt, gu.Ws, FF, HIDDEN, ids, x, in_place=True)
        d2 = Launch(gpu, qt, dn.Ws, HIDDEN, FF, ids, g2.outs[2], in_place=True)
        d2.follow(g2)
        assert d2.steps[d2.xf][-1] == "pdl"
        for buf in d2.steps[d2.xf][4][4:7]:          # x_fixed's outputs: all-ones bytes (NaN σ) until it
            buf.view(np.uint8).fill(255)             # writes them (the pool may hand back the right bits)
        for _ in range(3):
            g2()
            d2()
            assert np.array_equal(want, d2.outs[0].get(), equal_nan=True)
