"""What the CUDA kernels and their CPU emulation share: the work layout, the constants of the
kernel's reduction order, activation-mode inputs, and the activation functions."""
from __future__ import annotations

import numpy as np

from ..errors import BadArgument
from ..quant.actquant import q8_1_cuda
from .cpu import group_pairs

WARPS, MAXT, LANES, UNIT, XSLOT = 8, 8, 32, 32, 44   # must match kernels/moe_matvec.cu
# Kernel variants: name suffix → (rows per warp, rows per tile, ring depth, rows per lane), as
# SHAPE_* in kernels/moe_matvec.cu. A row gets 32·rows-per-lane/rows-per-tile lanes, so the
# single-member matvec has a variant for rows whose unit count (weights/32) the lanes of "1" do
# not divide (768 weights: 24 units).
SHAPES = {"1": (4, 2, 2, 2), "1n": (4, 8, 2, 2), "gu1": (2, 2, 2, 1), "": (1, 1, 4, 1), "gu": (1, 1, 4, 1)}
# formats whose kernels decode q = 1/2 + field/K and fold the offset into Σx: (K, BIAS) as in
# kernels/decode.cuh's QTYPE rows
AFFINE = {"Q4_K": (32.0, 0.0), "Q6_K": (128.0, 32.0)}
# Dynamic shared memory a block may use: fits every sm_80+ GPU's opt-in limit (sm_86/89: 99 KB).
# A constant, not a device query: the chunk size it implies fixes lane ownership, which the
# emulation (no device) must reproduce.
SMEM_LIMIT = 96 * 1024
ACT_ID = {"silu": 0, "gelu_tanh": 1, "swiglu_oai": 2}
MIN_FORMATS = ("Q4_1", "Q5_1", "Q4_K", "Q5_K")             # q8_1 mode: min term from the block sum
USES_MIN = MIN_FORMATS + ("Q2_K",)                          # ml ≠ 0: the kernels stage Σx per 8 weights


# Tensor-core kernels (kernels/moe_mma.cuh): moe_mma<n>_* serves groups of at most n members (1, 2, 3
# MMAs per weight group for n = 2, 4, 8; larger groups are split) with MMA_MT[n] 16-row tiles per work
# item; moe_mma_gu<n>_* (gate+up, with act) items of 16 rows of both tensors, two tiles. Weights in
# mma_tiles' layout, whose tiles are the kernel's items (so an item's bytes are contiguous); per
# format the depth of each warp's shared ring (MMA_NB_* there). A block is MMA_WARPS warps.
MMA_MEMBERS = (2, 4, 8)
MMA_MT = {2: 1, 4: 2, 8: 2}
MMA_RING = {"Q4_K": 3, "Q6_K": 2}
MMA_COPY = {"Q4_K": 16, "Q6_K": 2}      # bytes per unit of mma_tiles' copy (F::COPY)
MMA_WARPS = 4
# The pool (moe_mma.cuh): the items past the warps' equal fixed shares, claimed one at a time by the
# warps that finish first (some SMs run a whole launch 5-10 % slower, session 7's trace, and a fixed
# share waits for them). MMA_POOL = 1: a share is the whole items per resident warp and the remainder
# is the pool; each unit more moves one item a warp from the shares to the pool; 0: no pool.
# H100, same call, layer µs: Q4_K 8 tokens 155.6 (no pool) → 153.6 (session 7: the grid's fewest
# blocks, shares one item short) → 150.5 (session 8: every resident warp, this rule).
MMA_POOL = 1


def mma_grid(n_items: int, resident_warps: int):
    """(blocks, a warp's fixed share) of a tensor-core launch: as many warps as run at once (blocks of
    MMA_WARPS; fewer where the items are fewer), each with the same share (at least one item)."""
    share = max(1, n_items // resident_warps + 1 - MMA_POOL)
    return min(resident_warps // MMA_WARPS, -(-n_items // (MMA_WARPS * share))), share


def mma_strided(members: int, shared_x: bool) -> bool:
    """A warp's share in strided order (items w, w + warps, …: the GPU reads one window of the weights
    at a time), except where groups of 8 members each read their own x row (the down at 8 tokens):
    there a warp's consecutive items of one expert find its x in L1. H100, same process (session 10),
    layer µs, consecutive → this rule: Q4_K 128.6 → 125.9 / 148.8 → 148.0, Q6_K 181.6 → 178.9 /
    203.6 → 202.2 at 1 / 8 tokens; the 8-token down strided too: Q4_K 55.9 → 63.1, Q6_K 74.2 → 75.2."""
    return shared_x or members < 8


def mma_kernel(qt, members: int, gu: bool) -> str:
    return f"moe_mma{'_gu' if gu else ''}{members}_{qt.name}"


def mma_smem(qt, members: int, gu: bool = False) -> int:
    """Dynamic shared memory of the kernel: MMA_WARPS rings of an item's superblock (two tiles for gu)."""
    return MMA_WARPS * MMA_RING[qt.name] * 16 * (2 if gu else MMA_MT[members]) * qt.nbytes


def mma_xs_bytes(members: int, gu: bool, shared_x: bool, n_in: int) -> int:
    """Shared memory past the rings for the x rows of a block's groups (moe_mma.cuh's XStage: two groups
    of 8 member slots, a slot an x_fixed record a superblock and 64 bytes): the 8-member down only,
    whose groups each read their own x and whose warps' consecutive shares keep a block on one or two
    groups. The kernel stages what this holds (so cuda.py may give less: where it would cost a block
    per SM, none). H100, same process (session 14, five calls), 8 tokens, global x → staged: Q4_K
    down −1.2 to −2.7 µs, layer −0.2 to −3.0; Q6_K down −1.6 to −2.6, layer −1.7 to −2.5; one group
    staged was slower than none."""
    if gu or members < 8 or mma_strided(members, shared_x):
        return 0
    return 2 * 8 * (n_in // 256 * 1024 + 64)


def mma_tile(members: int, gu: bool = False) -> int:
    """Rows per tile of mma_tiles' layout for the kernel serving `members`: one work item's rows."""
    return 16 if gu else 16 * MMA_MT[members]


def mma_tiled_bytes(qt, R: int, n_in: int, members: int, gu: bool = False) -> int:
    """Bytes of one expert in mma_tiles' layout (gu: gate and up together): whole tiles (the last padded)."""
    t = mma_tile(members, gu)
    return (2 if gu else 1) * -(-R // t) * t * (n_in // qt.block) * qt.nbytes


def mma_groups(n_experts: int, start: np.ndarray):
    """The tensor-core launch's groups: (their weight slabs, starts, the kernel's member count n)."""
    gx, gs0 = member_chunks(np.arange(n_experts), start, MMA_MEMBERS[-1])
    most = np.diff(gs0).max(initial=1)
    return gx, gs0, next(m for m in MMA_MEMBERS if m >= most)


def member_chunks(gexp: np.ndarray, start: np.ndarray, most: int):
    """Groups of more than `most` members split into consecutive groups of the same expert."""
    ge, st = [], []
    for e, a, b in zip(gexp, start[:-1], start[1:]):
        for c in range(a, b, most):
            ge.append(e)
            st.append(c)
    return np.asarray(ge, np.int32), np.asarray(st + [start[-1]], np.int32)


def check_n_in(tensor, act: str):
    if tensor.n_in % UNIT:
        raise BadArgument(f"{tensor.name}: rows of {tensor.n_in} weights; the CUDA kernels need a multiple of {UNIT}")


def tcap_of(start: np.ndarray) -> int:
    """Members a block handles at once: 1 (the single-member kernels) or MAXT."""
    return 1 if np.diff(start).max(initial=1) <= 1 else MAXT


def variant(tcap: int, n_in: int, nw: int = 1) -> str:
    """Which kernel variant serves groups of up to tcap members on rows of n_in weights."""
    if nw == 2:
        return "gu1" if tcap == 1 else "gu"
    if tcap > 1:
        return ""
    return "1" if (n_in // UNIT) % lanes_per_row("1") == 0 else "1n"


def lanes_per_row(v: str) -> int:
    _, rt, _, rpl = SHAPES[v]
    return LANES * rpl // rt


def kernel_name(tcap: int, n_in: int, nw: int, qt) -> str:
    v = variant(tcap, n_in, nw)
    return f"moe_gate_up{v[2:]}_{qt.name}" if nw == 2 else f"moe_matvec{v}_{qt.name}"


def shape(tcap: int, n_in: int, nw: int = 1):
    """(rows per warp, rows per tile, ring depth, rows per lane) of the kernel of this launch."""
    return SHAPES[variant(tcap, n_in, nw)]


def row_stride(qt, cw: int) -> int:
    """Bytes per buffered row slice: a chunk plus the slack of its 16-byte-aligned copy."""
    return (cw // qt.block * qt.nbytes + 31) & ~15


def smem_bytes(qt, cw: int, tcap: int, n_in: int, nw: int = 1) -> int:
    _, rt, nbuf, _ = shape(tcap, n_in, nw)
    return tcap * (cw // UNIT) * XSLOT * 4 + WARPS * nbuf * nw * rt * row_stride(qt, cw)


def chunk_weights(qt, tcap: int, n_in: int, nw: int = 1) -> int:
    """Weights per chunk (CW): the whole row when its staging fits shared memory, else the largest
    of 4096, 2048, …, 32 (whole blocks) that does.

    It fixes which lane owns which unit, so the emulation must use the same value.
    """
    whole = -(-n_in // UNIT) * UNIT
    for cw in (whole, 4096, 2048, 1024, 512, 256, 128, 64, 32):
        if cw <= whole and cw % qt.block == 0 and smem_bytes(qt, cw, tcap, n_in, nw) <= SMEM_LIMIT:
            return cw
    raise BadArgument(f"{qt.name}: no chunk size fits shared memory")


def rows_per_block(tcap: int, n_in: int, nw: int = 1) -> int:
    rpw, rt, _, _ = shape(tcap, n_in, nw)
    return WARPS * rpw * rt


def layout(ids: np.ndarray, shared: bool):
    """Groups of (token, slot) pairs per distinct expert → (experts, start, x-row, out-row) int32."""
    T, k = ids.shape
    experts, start, order = group_pairs(ids)
    mx = order // k if shared else order
    return experts, start.astype(np.int32), mx.astype(np.int32), order.astype(np.int32)


def activations(X: np.ndarray, qt, act: str):
    """(X', S): the activations the kernel reads and the q8_1 block sums (zeros in f32 mode).

    q8_1 applies to quantized weights only: like llama.cpp, float-typed weights keep f32 activations.
    """
    if act == "q8_1" and qt.family != "float":
        xq, s = q8_1_cuda(X)
        return np.ascontiguousarray(xq, np.float32), np.ascontiguousarray(s.reshape(X.shape[0], -1), np.float32), 1
    return np.ascontiguousarray(X, np.float32), np.zeros((X.shape[0], 1), np.float32), 0


def act_np(kind: str, g: np.ndarray, u: np.ndarray, alpha: float, limit: float) -> np.ndarray:
    """The kernel's act_fn, in the same float32 operation order."""
    f = np.float32
    with np.errstate(over="ignore"):
        if kind == "silu":
            return g * (f(1) / (f(1) + np.exp(-g))) * u
        if kind == "gelu_tanh":
            c = f(0.7978845608028654)
            return f(0.5) * g * (f(1) + np.tanh(c * (g + f(0.044715) * (g * g * g)))) * u
        gc = np.minimum(g, f(limit))
        uc = np.minimum(np.maximum(u, f(-limit)), f(limit))
        s = f(1) / (f(1) + np.exp(-(f(alpha) * gc)))
        return gc * s * (uc + f(1))
