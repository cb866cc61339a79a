"""GPU benchmarks on a real CUDA device (CuPy): our fused kernels vs (1) the device-to-device copy
bandwidth and (2) CuPy dequantise-to-float + cuBLAS matmul, all measured in the same run.

(a) full Qwen3-30B-A3B layer sweep: all 128 experts × gate/up/down, 1 and 8 tokens;
(b) the top-8 MoE form: 8 selected experts per token (distinct across the 8 tokens).
Weights are random *valid* blocks (finite fp16 scales) generated on the device machine; timings
use CUDA events after warm-up, median of repeats.
"""
from __future__ import annotations

import numpy as np

from .backends.cuda import Launch
from .backends.streaming import SLACK
from .errors import NoDevice
from .qtypes import QTYPES

N_EXP, HIDDEN, FF = 128, 2048, 768
SCALE_FIELDS = {"Q4_0": [0], "Q4_1": [0, 2], "Q5_0": [0], "Q5_1": [0, 2], "Q8_0": [0], "Q2_K": [80, 82],
                "Q3_K": [108], "Q4_K": [0, 2], "Q5_K": [0, 2], "Q6_K": [208], "IQ4_NL": [0], "IQ4_XS": [0]}


def random_blocks(cp, qt, n_blocks, seed):
    """Random bytes with every fp16 scale set to a small finite value (device side, fast)."""
    rs = cp.random.RandomState(seed)
    b = rs.randint(0, 256, size=(n_blocks, qt.nbytes), dtype=cp.int32).astype(cp.uint8)
    if qt.name in ("F32", "F16", "BF16"):
        f = (rs.standard_normal(n_blocks * qt.nbytes // 2, dtype=cp.float32) * 0.02).astype(cp.float16)
        if qt.name == "F32":
            f = (rs.standard_normal(n_blocks, dtype=cp.float32) * 0.02)
        elif qt.name == "BF16":
            f = (rs.standard_normal(n_blocks, dtype=cp.float32) * 0.02).view(cp.uint32) >> 16
            f = f.astype(cp.uint16)
        return f.view(cp.uint8).reshape(n_blocks, qt.nbytes)
    for off in SCALE_FIELDS.get(qt.name, []):
        h = (rs.standard_normal(n_blocks, dtype=cp.float32) * 0.001).astype(cp.float16)
        b[:, off:off + 2] = h.view(cp.uint8).reshape(n_blocks, 2)
    if qt.name == "MXFP4":
        b[:, 0] = rs.randint(115, 125, size=n_blocks).astype(cp.uint8)
    return b


def timed(cp, fn, repeat=20, warmup=3):
    for _ in range(warmup):
        fn()
    cp.cuda.Device().synchronize()
    ts = []
    for _ in range(repeat):
        a, b = cp.cuda.Event(), cp.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(cp.cuda.get_elapsed_time(a, b) * 1e-3)
    return float(np.median(ts))


def copy_bandwidth(cp, nbytes=2 << 30):
    a = cp.ones(nbytes // 4, cp.float32)
    b = cp.empty_like(a)
    t = timed(cp, lambda: cp.copyto(b, a), repeat=10)
    return 2 * nbytes / t / 1e9


class _Case:
    """One weight tensor (E experts, R rows, n_in) on the device plus launch helpers."""

    def __init__(self, be, qt, E, R, n_in, seed):
        cp = be.cp
        self.cp, self.be, self.qt, self.E, self.R, self.n_in = cp, be, qt, E, R, n_in
        self.row_bytes = n_in // qt.block * qt.nbytes
        n = E * R * self.row_bytes
        flat = cp.empty(n + SLACK, cp.uint8)
        flat[:n] = random_blocks(cp, qt, E * R * n_in // qt.block, seed).reshape(-1)
        self.W = flat[:n].reshape(E, R, self.row_bytes)
        self.fd = be.module.get_function(f"dequant_{qt.name}")

    def plan(self, ids, X):
        self.X = self.cp.asarray(X)
        self.launch = Launch(self.be, self.qt, [self.W], self.R, self.n_in, ids, X, in_place=True)
        self.ids = ids
        self.bytes = self.launch.n_experts * self.R * self.row_bytes

    def ours(self):
        self.launch()

    def baseline(self):
        """Dequantise the experts used to float32, then one batched cuBLAS matmul."""
        cp = self.cp
        used = np.unique(self.ids)
        Wsel = self.W[cp.asarray(used)] if len(used) < self.E else self.W
        n_rows = len(used) * self.R
        Wf = cp.empty((len(used), self.R, self.n_in), cp.float32)
        per = n_rows * (self.n_in // 32)
        self.fd(((per + 255) // 256,), (256,), (Wsel, np.int32(self.row_bytes), np.int32(self.n_in),
                                                np.int64(n_rows), Wf))
        T = self.ids.shape[0]
        xs = self.X.reshape(T, -1, self.n_in) if self.X.shape[0] != T else self.X[:, None, :]
        # y[t, j] = W[ids[t, j]] @ x[t or (t, j)]: batch over used experts
        pos = {int(e): i for i, e in enumerate(used)}
        idx = cp.asarray(np.vectorize(pos.get)(self.ids))
        if xs.shape[1] == 1:
            return cp.matmul(Wf, xs[:, 0].T[None])              # (E, R, T): all tokens through every expert
        return cp.matmul(Wf[idx], xs[..., None])


def run(quick: bool = False) -> str:
    from .backends.cuda import CudaBackend, cuda_available
    if not cuda_available():
        raise NoDevice("bench gpu needs a CUDA device (this machine has none); the emulated device is not timed")
    be = CudaBackend()
    cp = be.cp
    bw = copy_bandwidth(cp)
    rng = np.random.default_rng(0)
    names = ["Q4_K", "Q6_K"] if quick else [q for q in QTYPES]
    rows = []
    for q in names:
        qt = QTYPES[q]
        for role, (R, n_in) in {"gate": (FF, HIDDEN), "up": (FF, HIDDEN), "down": (HIDDEN, FF)}.items():
            if n_in % qt.block:
                continue
            case = _Case(be, qt, N_EXP, R, n_in, seed=len(rows))
            for ntok in (1, 8):
                # (a) full layer: every expert for every token
                ids = np.tile(np.arange(N_EXP), (ntok, 1))
                X = rng.standard_normal((ntok if role != "down" else ntok * N_EXP, n_in)).astype(np.float32)
                case.plan(ids, X)
                t_ours = timed(cp, case.ours)
                t_base = timed(cp, case.baseline, repeat=5)
                rows.append((q, "full", role, ntok, t_ours, case.bytes, t_base))
                # (b) top-8: 8 distinct experts per token
                ids = np.stack([rng.choice(N_EXP, 8, replace=False) for _ in range(ntok)])
                X = rng.standard_normal((ntok if role != "down" else ntok * 8, n_in)).astype(np.float32)
                case.plan(ids, X)
                rows.append((q, "top8", role, ntok, timed(cp, case.ours), case.bytes,
                             timed(cp, case.baseline, repeat=5)))
            del case
            cp.get_default_memory_pool().free_all_blocks()
    # aggregate the three roles of a layer
    agg = {}
    for q, form, role, ntok, t, nbytes, tb in rows:
        a = agg.setdefault((q, form, ntok), [0.0, 0, 0.0])
        a[0] += t
        a[1] += nbytes
        a[2] += tb
    name = be.label
    lines = [
        f"## GPU fused MoE matvec (`moeparity bench gpu`) — {name}",
        "",
        f"Device-to-device copy bandwidth in the same run: **{bw:.0f} GB/s** (bytes read + written).",
        "Ours: f32 activations, one launch per tensor (gate, up, down), expert ids on the device. One token",
        "(one member per expert): the float kernels `moe_matvec1[n]_<QTYPE>` (kernels/moe_matvec.cu); 8 tokens:",
        "`moe_matvec_<QTYPE>`, except Q4_K/Q6_K, which take the int8 tensor-core kernels `moe_mma<n>_<QTYPE>`",
        "(kernels/moe_mma.cuh: exact integer dots against block-fixed-point activations, backends/intdot.py;",
        "their time includes the activation conversion `x_fixed`).",
        "GB/s = quantized weight bytes read / time; '% copy' is that over the",
        "copy bandwidth. Baseline: our dequantise-to-float32 kernel for the experts used + CuPy/cuBLAS batched",
        "matmul, same weights and inputs, same run. CUDA events, 3 warm-ups, median of 20 (baseline 5).",
        "Layer = gate + up + down of Qwen3-30B-A3B (hidden 2048, expert FFN 768, 128 experts).",
        "",
        "| qtype | form | tokens | weight MB read | ours µs | ours GB/s | % copy | baseline µs | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (q, form, ntok), (t, nbytes, tb) in agg.items():
        gbs = nbytes / t / 1e9
        label = "full layer, 128 experts" if form == "full" else "top-8 MoE"
        lines.append(f"| {q} | {label} | {ntok} | {nbytes / 1e6:.1f} | {t * 1e6:.0f} | {gbs:.0f} | "
                     f"{100 * gbs / bw:.0f}% | {tb * 1e6:.0f} | {tb / t:.1f}× |")
    return "\n".join(lines) + "\n"
