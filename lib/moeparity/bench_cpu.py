"""CPU fused matvec vs the baseline a Python user writes today: gguf.quants.dequantize + numpy matmul.

Shapes are Qwen3-30B-A3B's expert FFN: gate/up 768×2048 and down 2048×768, 8 selected experts,
1 and 8 tokens (the 8 tokens route to the same 8 experts, so each expert's bytes are read once).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import numpy as np
from gguf import quants as gq

from .backends.cpu import CpuBackend
from .bench import machine, memory_bandwidth, timeit
from .gguf_model import QTensor
from .qtypes import QTYPES

SHAPES = {"gate/up": (768, 2048), "down": (2048, 768)}
N_EXP = 8


def _tensor(qt: str, n_out: int, n_in: int, rng) -> QTensor:
    w = rng.standard_t(5, size=(N_EXP, n_out, n_in)).astype(np.float32) * np.float32(0.6 / np.sqrt(n_in))
    return QTensor.from_weights(f"bench.{qt}", w, qt)


def _baseline(T: QTensor, ids, x):
    """What one writes with gguf-py today: dequantise the selected experts, then matmul."""
    qt = QTYPES[T.qtype_name]
    out = np.empty((x.shape[0], ids.shape[1], T.n_out), np.float32)
    for j, e in enumerate(ids[0]):
        W = gq.dequantize(T.expert(int(e)), qt.ggml).reshape(T.n_out, T.n_in)
        out[:, j] = x @ W.T
    return out


_PROBE = """
import time, numpy as np
t = time.perf_counter()
from moeparity.backends.cpu import CpuBackend
from moeparity.gguf_model import QTensor
T = QTensor.from_weights("probe", np.full((1, 16, 256), 0.1, np.float32), "Q4_K")
t = time.perf_counter()
CpuBackend().matvec(T, np.ones((1, 256), np.float32))
print(time.perf_counter() - t)
"""


def compile_times() -> tuple[float, float]:
    """First kernel call in a fresh process with an empty numba cache, then in a second process
    that finds the cache the first one wrote."""
    with tempfile.TemporaryDirectory() as d:
        env = dict(os.environ, NUMBA_CACHE_DIR=d)
        lib = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env["PYTHONPATH"] = lib + os.pathsep + env.get("PYTHONPATH", "")
        out = [float(subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True,
                                    check=True).stdout.split()[-1]) for _ in range(2)]
    return out[0], out[1]


def run(quick: bool = False) -> str:
    rng = np.random.default_rng(0)
    cpu = CpuBackend()
    qnames = ["Q4_K", "Q6_K", "Q8_0", "Q5_0"] if quick else [q for q in QTYPES if q != "F32"] + ["F32"]
    # compile (or load from numba's cache) once, timed on its own
    probe = _tensor("Q4_K", 16, 256, rng)
    t = time.perf_counter()
    cpu.matvec(probe, rng.standard_normal((1, 256)).astype(np.float32))
    first_call = time.perf_counter() - t
    cold, warm = compile_times()
    bw = memory_bandwidth()
    rows = []
    for q in qnames:
        for role, (n_out, n_in) in SHAPES.items():
            if n_in % QTYPES[q].block:
                continue
            T = _tensor(q, n_out, n_in, rng)
            for ntok in (1, 8):
                x = rng.standard_normal((ntok, n_in)).astype(np.float32)
                ids = np.tile(np.arange(N_EXP), (ntok, 1))
                time.sleep(0.3)      # let the baseline's BLAS threads stop spinning on the 2 cores
                ours = timeit(lambda: cpu.moe_matvec(T, ids, x), repeat=5 if quick else 7)
                base = timeit(lambda: _baseline(T, ids, x), repeat=3, min_time=0.1)
                nbytes = N_EXP * T.expert_bytes
                rows.append((q, role, ntok, ours * 1e3, nbytes / ours / 1e9, base * 1e3, base / ours))
    lines = [
        "## CPU fused matvec (`moeparity bench cpu`, benchmarks/cpu_matvec.py)",
        "",
        f"Machine: {machine()}; numba threads: {os.environ.get('NUMBA_NUM_THREADS', os.cpu_count())}.",
        f"Host copy bandwidth measured in the same run: **{bw:.1f} GB/s** (read + write).",
        f"Numba compile time, excluded from the numbers below: first call in a fresh process with an empty "
        f"cache **{cold:.1f} s**; in a second process that finds numba's on-disk cache {warm:.2f} s "
        f"(this process: {first_call:.2f} s).",
        "Baseline: `gguf.quants.dequantize` of the 8 selected experts + numpy `x @ W.T`, same inputs, same run.",
        "GB/s counts quantized weight bytes read once; '% bw' is that over the copy bandwidth.",
        "",
        "| qtype | matrix (out×in) | experts | tokens | ours ms | ours GB/s | % bw | baseline ms | speed-up |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for q, role, ntok, ms, gbs, bms, ratio in rows:
        n_out, n_in = SHAPES[role]
        lines.append(f"| {q} | {role} {n_out}×{n_in} | {N_EXP} | {ntok} | {ms:.2f} | {gbs:.1f} | "
                     f"{100 * gbs / bw:.0f}% | {bms:.1f} | {ratio:.1f}× |")
    lines += ["", "Single token, 8 experts (the issue's target rows), worst of gate/up and down:"]
    for q in ("Q4_K", "Q6_K", "Q8_0", "Q5_0"):
        sel = [r for r in rows if r[0] == q and r[2] == 1]
        if sel:
            lines.append(f"- {q}: ≥ {min(r[6] for r in sel):.1f}× the baseline, "
                         f"{min(r[4] for r in sel):.1f}–{max(r[4] for r in sel):.1f} GB/s = "
                         f"{100 * min(r[4] for r in sel) / bw:.0f}–{100 * max(r[4] for r in sel) / bw:.0f}% "
                         f"of the measured copy bandwidth")
    return "\n".join(lines) + "\n"
