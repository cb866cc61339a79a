"""CUDA backend on CuPy: kernels/*.cu compiled with NVRTC, dispatch from qtypes.py like the CPU's.

Per-layer streaming (streaming.py): only the byte ranges of the experts a call needs are uploaded
(from the mmap'd file); the current layer and the one being prefetched are resident, so a model
larger than GPU memory works. Out-of-memory becomes DeviceOutOfMemory naming the tensor and bytes.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import NoDevice
from ..qtypes import QTYPES
from . import gpu_layout as L
from .base import Backend, check_shapes
from .streaming import ExpertUploader

KERNEL_DIR = os.path.join(os.path.dirname(__file__), "kernels")
NVRTC_OPTIONS = ("--fmad=false", "-std=c++17")     # no FMA contraction: emulated.py reproduces every sum


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

    def __init__(self, device: int = 0):
        try:
            import cupy as cp
            cp.cuda.Device(device).use()
            props = cp.cuda.runtime.getDeviceProperties(device)
        except Exception as e:
            raise NoDevice(f"no usable CUDA device ({type(e).__name__}: {e})") from None
        self.cp = cp
        self.label = f"cuda ({props['name'].decode() if isinstance(props['name'], bytes) else props['name']})"
        src = open(os.path.join(KERNEL_DIR, "moe_matvec.cu")).read()
        self.module = cp.RawModule(code=src, options=NVRTC_OPTIONS + (f"-I{KERNEL_DIR}",))
        super().__init__()
        self.uploader = ExpertUploader(cp)

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

    def _fn(self, kind: str, qt):
        return self.module.get_function(f"{kind}_{qt.name}")

    def _launch_common(self, tensor, ids, x, act):
        self.check_act(act)
        qt = QTYPES[self.dispatch(tensor.type_id, tensor.name)]
        L.check_n_in(tensor, act)
        ids, xb = check_shapes(tensor, ids, x)
        T, k = ids.shape
        shared = np.asarray(x).ndim == 2
        X = np.asarray(x if shared else xb.reshape(T * k, -1), np.float32)
        experts, start, mx, mo = L.layout(ids, shared)
        W = self._weights(tensor, experts)
        Xq, S, mode = L.activations(X, qt, act)
        cp = self.cp
        args = dict(W=W, gexp=cp.arange(len(experts), dtype=cp.int32), gstart=cp.asarray(start),
                    mx=cp.asarray(mx), mo=cp.asarray(mo), X=cp.asarray(Xq), S=cp.asarray(S), mode=mode,
                    G=len(experts), T=T, k=k, qt=qt, tcap=L.tcap_of(start))
        return args

    def moe_matvec(self, tensor, ids, x, act="f32"):
        a = self._launch_common(tensor, ids, x, act)
        cp, R = self.cp, tensor.n_out
        out = cp.empty((a["T"] * a["k"], R), cp.float32)
        rpw = L.rows_per_warp(R, a["G"])
        grid = (-(-R // (L.WARPS * rpw)), a["G"])
        cw = L.chunk_weights(a["qt"], a["tcap"])
        self._fn("moe_matvec4" if rpw == 4 else "moe_matvec", a["qt"])(grid, (L.WARPS * 32,), (
            a["W"], np.int64(tensor.expert_bytes), np.int32(R), np.int32(tensor.row_bytes), np.int32(tensor.n_in),
            a["gexp"], a["gstart"], a["mx"], a["mo"], a["X"], a["S"], out, np.int32(a["mode"]), np.int32(cw),
            np.int32(a["tcap"])), shared_mem=L.smem_bytes(a["qt"], cw, a["tcap"]))
        return cp.asnumpy(out).reshape(a["T"], a["k"], R)

    def moe_gate_up(self, gate, up, ids, x, kind, hp, act="f32"):
        """Fused gate+up+act for the selected experts: one read of x, returns (gate, up, act)."""
        a = self._launch_common(gate, ids, x, act)
        Wu = self._weights(up, np.unique(ids))
        cp, R = self.cp, gate.n_out
        g, u, y = (cp.empty((a["T"] * a["k"], R), cp.float32) for _ in range(3))
        grid = ((R + L.WARPS - 1) // L.WARPS, a["G"])
        cw = L.chunk_weights(a["qt"], a["tcap"], nw=2)
        self._fn("moe_gate_up", a["qt"])(grid, (L.WARPS * 32,), (
            a["W"], Wu, np.int64(gate.expert_bytes), np.int32(R), np.int32(gate.row_bytes), np.int32(gate.n_in),
            a["gexp"], a["gstart"], a["mx"], a["mo"], a["X"], a["S"], g, u, y, np.int32(a["mode"]),
            np.int32(L.ACT_ID[kind]), np.float32(hp.swiglu_alpha), np.float32(hp.swiglu_limit), np.int32(cw),
            np.int32(a["tcap"])), shared_mem=L.smem_bytes(a["qt"], cw, a["tcap"], nw=2))
        shape = (a["T"], a["k"], R)
        return tuple(cp.asnumpy(v).reshape(shape) for v in (g, u, y))
