"""CUDA backend on CuPy: kernels/*.cu compiled with NVRTC, dispatch from qtypes.py like the CPU's.

Per-layer streaming (streaming.py): only the byte ranges of the experts a call needs are uploaded
(from the mmap'd file); the current layer and the one being prefetched are resident, so a model
larger than GPU memory works. Out-of-memory becomes DeviceOutOfMemory naming the tensor and bytes.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import BadArgument, NoDevice
from ..qtypes import QTYPES
from . import gpu_layout as L
from . import intdot, kernel_build, pdl
from .base import Backend, check_shapes
from .streaming import ExpertUploader

KERNEL_DIR = os.path.join(os.path.dirname(__file__), "kernels")
# no FMA contraction and IEEE subnormals: emulated.py reproduces every sum (kernel_build.py: why
# CuPy's own compile path is not used)
NVRTC_OPTIONS = ("--fmad=false", "--ftz=false", "-std=c++17")


def cuda_available() -> bool:
    try:
        import cupy as cp
        return cp.cuda.runtime.getDeviceCount() > 0
    except Exception:                               # no cupy, no driver, no device: all mean "no GPU"
        return False


def device_backend():
    """The real GPU if there is one, else the emulated device — labelled so everywhere."""
    if cuda_available():
        return CudaBackend()
    from .emulated import EmulatedCudaBackend
    return EmulatedCudaBackend()


class CudaBackend(Backend):
    name = "cuda"
    act_modes = ("f32", "q8_1")

    def __init__(self, device: int = 0, defines: tuple = ()):
        try:
            import cupy as cp
            cp.cuda.Device(device).use()
            props = cp.cuda.runtime.getDeviceProperties(device)
        except Exception as e:
            raise NoDevice(f"no usable CUDA device ({type(e).__name__}: {e})") from None
        self.cp = cp
        self.label = f"cuda ({props['name'].decode() if isinstance(props['name'], bytes) else props['name']})"
        self.module = kernel_build.build(cp, KERNEL_DIR, "moe_matvec.cu", NVRTC_OPTIONS + tuple(defines))
        self.sm_count = int(props["multiProcessorCount"])
        self.regs_per_sm, self.smem_per_sm = int(props["regsPerMultiprocessor"]), int(props["sharedMemPerMultiprocessor"])
        # a block's opt-in shared memory (on sm_80+ the SM's less the 1 KB the system keeps a block)
        self.smem_per_block = int(props.get("sharedMemPerBlockOptin") or self.smem_per_sm - 1024)
        super().__init__()
        self.uploader = ExpertUploader(cp)

    def occupancy(self, fn, block: int, smem: int) -> int:
        """Blocks of `fn` one SM holds at once (sizes grids that stream work per warp): the
        register, shared-memory and warp limits (registers go to warps in units of 256)."""
        from cupy.cuda import driver
        warps = block // 32
        n = getattr(fn, "num_regs", None) or driver.funcGetAttribute(4, fn.ptr)   # CU_FUNC_ATTRIBUTE_NUM_REGS
        regs = -(-n * 32 // 256) * 256 * warps
        by_smem = self.smem_per_sm // (smem + 1024) if smem else 32     # 1 KB per block is the system's
        return max(1, min(self.regs_per_sm // regs, by_smem, 64 // warps, 32))

    # ------------------------------------------------------------------ streaming
    @property
    def uploaded_bytes(self) -> int:
        return self.uploader.uploaded_bytes

    def _weights(self, tensor, experts: np.ndarray):
        """Device copy of the given experts of `tensor` (n_sel, n_out, row_bytes) as uint8."""
        return self.uploader.get(tensor, experts)

    def prefetch_layer(self, layer, x, act="f32"):
        """Route x through `layer` and start uploading its selected experts (isolated runs know the
        next layer's input in advance, so its bytes can travel while this layer computes)."""
        from ..moe import route
        if layer.is_moe:
            _, ids, _ = route(layer, x, self, act)
            roles = ("gate_exps", "up_exps", "down_exps")
        else:
            ids, roles = np.zeros((1, 1), np.int64), ("gate", "up", "down")
        experts = np.unique(ids)
        for r in roles:
            self.uploader.prefetch(layer[r], experts)

    def _prepare(self, tensors, ids, x, act, kind="silu", alpha=0.0, limit=0.0):
        """A Launch, inputs and outputs allocated, of the matvec (one tensor) or gate+up (two tensors)
        kernel. x: host activations, or (moe_ffn) a gate+up Launch's act on the device, a row a slot."""
        self.check_act(act)
        first = tensors[0]
        qt = QTYPES[self.dispatch(first.type_id, first.name)]
        L.check_n_in(first, act)
        if not hasattr(x, "__cuda_array_interface__"):
            ids, xb = check_shapes(first, ids, x)
            shared = np.ndim(x) == 2
            X = np.asarray(x if shared else xb.reshape(ids.size, -1), np.float32)
        else:
            ids, shared, X = np.asarray(ids, np.int64), False, x
        T, k = ids.shape
        experts, start = L.layout(ids, shared)[:2]
        Ws = [self._weights(t, experts) for t in tensors]
        try:
            return Launch(self, qt, Ws, first.n_out, first.n_in, ids, X, act, kind, alpha, limit)
        except self.cp.cuda.memory.OutOfMemoryError:
            # the launch's own buffers: outputs, activations and, on the tensor cores, the weights'
            # tiled copy (the largest: as many bytes as the weights, in whole tiles)
            members = L.mma_groups(len(experts), start)[2]
            tiled = len(experts) * L.mma_tiled_bytes(qt, first.n_out, first.n_in, members, len(tensors) == 2) \
                if intdot.serves(qt.name, act) else 0
            raise self.uploader._oom(first, tiled + 4 * T * k * first.n_out * (1 if len(tensors) == 1 else 3),
                                     "computing") from None

    def _host(self, launch, ids):
        T, k = np.shape(ids)
        return [self.cp.asnumpy(o).reshape(T, k, -1) for o in launch.outs]

    def _launch(self, tensors, ids, x, act, kind="silu", alpha=0.0, limit=0.0):
        """One launch of the matvec (one tensor) or gate+up (two tensors) kernel → host outputs."""
        launch = self._prepare(tensors, ids, x, act, kind, alpha, limit)
        launch()
        return self._host(launch, ids)

    def moe_matvec(self, tensor, ids, x, act="f32"):
        return self._launch([tensor], ids, x, act)[0]

    def moe_gate_up(self, gate, up, ids, x, kind, hp, act="f32"):
        """Fused gate+up+act for the selected experts: one read of x, returns (gate, up, act)."""
        return tuple(self._launch([gate, up], ids, x, act, kind, hp.swiglu_alpha, hp.swiglu_limit))

    def moe_ffn(self, gate, up, down, ids, x, kind, hp, act="f32"):
        """moe_gate_up, then the down on its act: (gate, up, act, down), the same numbers. Where the
        down runs on the tensor cores the act stays on the device and the two launches are enqueued
        back to back (no round trip of the act through the host)."""
        if down.n_in != gate.n_out:
            raise BadArgument(f"{down.name}: rows of {down.n_in} weights, but {gate.name} gives {gate.n_out}")
        gu = self._prepare([gate, up], ids, x, act, kind, hp.swiglu_alpha, hp.swiglu_limit)
        qd = QTYPES[self.dispatch(down.type_id, down.name)]
        if not intdot.serves(qd.name, act):          # the float kernels read host activations
            gu()
            g, u, a = self._host(gu, ids)
            return g, u, a, self.moe_matvec(down, ids, a, act)
        dn = self._prepare([down], ids, gu.outs[2], act)
        dn.follow(gu)
        gu()
        dn()
        return (*self._host(gu, ids), *self._host(dn, ids))


class Launch:
    """A prepared kernel launch (device inputs and outputs allocated); calling it runs the kernel.

    Ws: device weights of the experts used, (n_experts_used, R, row_bytes) each, in the order of
    gpu_layout.layout(ids)'s experts, or (in_place) whole tensors read at the experts' own ids;
    one tensor → moe_matvec*, two (gate, up) → moe_gate_up*; or, where intdot.serves (Q4_K/Q6_K,
    f32), x_fixed + moe_mma<n>_* (gate and up: moe_mma_gu<n>_*, which also writes act): `steps`, after
    `prep` (run here, once: mma_tiles copies the experts' weights into the tensor-core kernels' layout,
    as an upload would).
    The benchmark times the calls (and prep on its own); the backend makes one per call (moe_ffn: two).
    """

    def __init__(self, be, qt, Ws, R, n_in, ids, X, act="f32", kind="silu", alpha=0.0, limit=0.0, in_place=False):
        cp = self.cp = be.cp
        T, k = ids.shape
        shared = X.shape[0] == T                               # one x row per token, not per slot
        experts, start, mx, mo = L.layout(ids, shared)
        self.n_experts = len(experts)
        nw = len(Ws)
        self.outs = [cp.empty((T * k, R), cp.float32) for _ in range(1 if nw == 1 else 3)]
        o = self.outs
        hexp = experts if in_place else np.arange(len(experts))      # which weight slab each group reads
        row_bytes = n_in // qt.block * qt.nbytes
        mxo = (cp.asarray(mx), cp.asarray(mo))
        self.steps, self.prep, self.xf = [], [], None          # xf: x_fixed's step (tensor cores)
        if intdot.serves(qt.name, act):
            # tensor cores: weights into their tiled layout (once, like an upload; Q4_K copies 16-byte
            # units, so the slabs must be 16-byte aligned: the uploader's allocations are), then per call
            # activations to fixed point and one launch (gate+up: gate, up and act)
            gu = nw == 2
            gx, gs0, members = L.mma_groups(len(hexp), start)
            tile = L.mma_tile(members, gu)
            es = L.mma_tiled_bytes(qt, R, n_in, members, gu)
            src = cp.asarray(hexp, dtype=cp.int32)
            Wt = cp.empty(len(hexp) * es, cp.uint8)          # (gate+up: both tensors, tile by tile)
            tiler = be.module.get_function(f"mma_tiles_gu_{qt.name}" if gu else f"mma_tiles{tile}_{qt.name}")
            self.prep = [(tiler, (be.sm_count * 8,), (256,), 0,
                          (*Ws, src, np.int64(R * row_bytes), np.int32(R), np.int32(row_bytes), Wt,
                           np.int64(Wt.size // L.MMA_COPY[qt.name])))]
            self.run(self.prep)
            mins, S, n = qt.name in intdot.WITH_MIN, n_in // intdot.SB, X.shape[0]
            dig, sig = cp.empty(n * n_in * 4, cp.uint8), cp.empty(n * S, cp.float32)
            mxs = cp.empty(n * S * 256 // intdot.GROUP[qt.name] if mins else 1, cp.float32)   # (the min's Mx)
            fn = be.module.get_function(L.mma_kernel(qt, members, gu))
            smem = L.mma_smem(qt, members, gu)
            occ = be.occupancy(fn, 32 * L.MMA_WARPS, smem)
            xs = L.mma_xs_bytes(members, gu, shared, n_in)   # the 8-member down's staged x, where it fits and costs no block
            if xs and smem + xs <= be.smem_per_block and be.occupancy(fn, 32 * L.MMA_WARPS, smem + xs) == occ:
                smem += xs
            fn.max_dynamic_shared_size_bytes = smem
            # x_fixed: an ordinary launch, so it starts once everything before it is complete and
            # visible, the weights' tiled copy included, which the matvec reads before its wait
            # (except after moe_ffn's gate+up: follow)
            self.xf = len(self.steps)
            self.steps.append((be.module.get_function("x_fixed"), (-(-n * S // 8),), (256,), 0,
                               (cp.asarray(X, cp.float32), np.int32(n_in), np.int32(mins), np.int32(n), dig, sig, mxs)))
            n_items = (len(gs0) - 1) * -(-R // tile)
            blocks, share = L.mma_grid(n_items, be.sm_count * L.MMA_WARPS * occ)
            self.steps.append((fn, (blocks,), (32 * L.MMA_WARPS,), smem,
                               (Wt, np.int64(es), np.int32(R), np.int32(n_in),
                                cp.asarray(gx, dtype=cp.int32), cp.asarray(gs0, dtype=cp.int32), *mxo, dig, sig, mxs,
                                o[0], o[1 % len(o)], np.int32(n_items), np.int32(share),
                                o[2 % len(o)], np.int32(L.ACT_ID[kind]), np.float32(alpha), np.float32(limit),
                                cp.zeros(1, cp.uint64), np.int32(L.mma_strided(members, shared))), "pdl"))
            return
        Xq, S, mode = L.activations(X, qt, act)
        tcap = L.tcap_of(start)
        cw = L.chunk_weights(qt, tcap, n_in, nw)
        smem = L.smem_bytes(qt, cw, tcap, n_in, nw)
        fn = be.module.get_function(L.kernel_name(tcap, n_in, nw, qt))
        fn.max_dynamic_shared_size_bytes = smem
        self.steps.append((fn, (-(-R // L.rows_per_block(tcap, n_in, nw)), len(experts)), (L.WARPS * 32,), smem,
                           (Ws[0], Ws[-1], np.int64(R * row_bytes), np.int32(R), np.int32(row_bytes), np.int32(n_in),
                            cp.asarray(hexp, dtype=cp.int32), cp.asarray(start), *mxo, cp.asarray(Xq), cp.asarray(S),
                            o[0], o[1 % len(o)], o[2 % len(o)],
                            np.int32(mode), np.int32(L.ACT_ID[kind]), np.float32(alpha), np.float32(limit), np.int32(cw))))

    def follow(self, gu):
        """Launch this launch's x_fixed by PDL, for a call right after gate+up's (`gu`, whose act is this
        launch's x), as moe_ffn makes them. gate+up's matvec triggers at its start, so x_fixed's blocks
        are resident, waiting for the act, before gate+up ends, and this matvec, which follows x_fixed by
        PDL, takes each SM that gate+up leaves (session 9, H100: 2–3 µs a layer at one token).
        Legal by pdl.py's rule only because this launch's tiled copy was enqueued before gu's first
        launch, an ordinary one: prepare this launch, then call gu, then this one."""
        if self.xf is not None and len(self.steps[self.xf]) == 5:
            assert self.steps[self.xf][4][0] is gu.outs[2], "x_fixed must read gu's act"
            self.steps[self.xf] += ("pdl",)

    def __call__(self):
        self.run(self.steps)

    def run(self, steps):
        for fn, grid, block, smem, args, *how in steps:
            if how:                                  # the tensor-core matvec after x_fixed; x_fixed after gate+up
                pdl.launch(self.cp, fn, grid, block, args, smem)
            else:
                fn(grid, block, args, shared_mem=smem)
