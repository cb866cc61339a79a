"""48-layer Qwen3-30B-A3B-dims sweep on the CPU backend (top-8, 1 token, capture=layer)."""
from __future__ import annotations

import os
import time

from . import fixtures
from .backends.cpu import CpuBackend
from .bench import machine
from .gguf_model import Model
from .run import sweep


def run(quick: bool = False) -> str:
    n_exp = 16
    t = time.perf_counter()
    path = fixtures.ensure("qwen3-30b-a3b-dims", n_expert=n_exp)
    built = time.perf_counter() - t
    m = Model.open(path)
    h = m.hparams
    cpu = CpuBackend()
    sweep(m, cpu, layers=[0, 1], capture="layer")           # compile / cache load, page-in of two layers
    times = []
    for rep in range(1 if quick else 3):
        t = time.perf_counter()
        res = sweep(m, cpu, n_tokens=1, seed=rep, capture="layer")
        times.append(time.perf_counter() - t)
    assert len(res) == h.n_layer
    q6 = sum(r["down_exps"] == "Q6_K" for r in m.qtype_map())
    return "\n".join([
        "## 48-layer MoE sweep on the CPU (`moeparity bench sweep`)",
        "",
        f"Machine: {machine()}.",
        f"Fixture: `make-fixture --preset qwen3-30b-a3b-dims --experts {n_exp}` — real Qwen3-30B-A3B FFN dims "
        f"(48 layers, hidden {h.n_embd}, expert FFN {h.n_ff_exp}, top-{h.n_expert_used}) with {n_exp} experts "
        f"instead of 128 (per-token work is the same: 8 experts × gate/up/down per layer); Q4_K_M recipe "
        f"({q6} Q6_K down layers, the rest Q4_K); {os.path.getsize(path) / 2**30:.2f} GiB"
        + (f", built in {built:.0f} s" if built > 1 else ", reused") + ".",
        "",
        "| what | tokens | capture | layers | wall s (runs) |",
        "|---|---|---|---|---|",
        f"| CPU ffn_forward, isolated synthetic inputs | 1 | layer | {h.n_layer} | "
        + ", ".join(f"{x:.2f}" for x in times) + " |",
        "",
    ])
