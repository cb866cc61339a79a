"""No GPU, no lie: explicit cuda fails with one line; `device` falls back to a labelled emulation;
GPU out-of-memory is a MoeParityError naming the tensor, layer and bytes."""
import types

import numpy as np
import pytest

from moeparity import backends
from moeparity.backends.cuda import cuda_available
from moeparity.errors import DeviceOutOfMemory, MoeParityError, NoDevice
from moeparity.gguf_model import QTensor


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_explicit_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(NoDevice) as e:
        backends.get("cuda")
    assert "\n" not in str(e.value)


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_device_falls_back_to_labelled_emulation():
    be = backends.get("device")
    assert be.name == "emulated-cuda" and "emulated" in be.label


def test_gpu_oom_names_layer_and_bytes():
    class OOM(Exception):
        pass

    def empty(*a, **k):
        raise OOM()

    cp = types.SimpleNamespace(
        uint8=np.uint8, empty=empty,
        cuda=types.SimpleNamespace(memory=types.SimpleNamespace(OutOfMemoryError=OOM),
                                   runtime=types.SimpleNamespace(memGetInfo=lambda: (1000, 80 * 2**30))))
    from moeparity.backends.streaming import ExpertUploader
    up = ExpertUploader.__new__(ExpertUploader)      # no device needed for the upload path
    up.cp, up.entries, up.last_prefetched, up.uploaded_bytes, up.pool = cp, {}, None, 0, None
    w = np.ones((4, 8, 32), np.float32)
    t = QTensor.from_weights("blk.6.ffn_down_exps.weight", w, "Q8_0")
    with pytest.raises(DeviceOutOfMemory) as e:
        up.get(t, np.array([1, 3]))
    msg = str(e.value)
    assert isinstance(e.value, MoeParityError)
    assert "blk.6.ffn_down_exps.weight" in msg and "layer 6" in msg and str(2 * t.expert_bytes) in msg


def test_gpu_oom_in_a_launch_names_layer_and_bytes(monkeypatch):
    """Out of memory for a launch's own buffers (the tensor-core layout copy of the weights is the
    largest) is the same one-line DeviceOutOfMemory as an upload's, with the bytes it needed."""
    class OOM(Exception):
        pass

    from moeparity.backends import cuda
    from moeparity.backends import gpu_layout as L
    from moeparity.backends.streaming import ExpertUploader
    from moeparity.qtypes import QTYPES
    cp = types.SimpleNamespace(cuda=types.SimpleNamespace(memory=types.SimpleNamespace(OutOfMemoryError=OOM),
                                                          runtime=types.SimpleNamespace(memGetInfo=lambda: (7, 80))))
    be = cuda.CudaBackend.__new__(cuda.CudaBackend)                 # no device: the host side only
    super(cuda.CudaBackend, be).__init__()
    be.cp, be.uploader = cp, ExpertUploader.__new__(ExpertUploader)
    be.uploader.cp = cp
    monkeypatch.setattr(be, "_weights", lambda t, e: None)

    def launch(*a, **k):
        raise OOM()
    monkeypatch.setattr(cuda, "Launch", launch)
    w = np.ones((4, 40, 256), np.float32)
    t = QTensor.from_weights("blk.3.ffn_up_exps.weight", w, "Q4_K")
    with pytest.raises(DeviceOutOfMemory) as e:
        be.moe_matvec(t, np.array([[0, 2]]), np.ones((1, 256), np.float32))
    need = 2 * L.mma_tiled_bytes(QTYPES["Q4_K"], 40, 256, 2) + 4 * 2 * 40      # 2 experts of one member: 16-row tiles
    assert need == 2 * 48 * 144 + 4 * 2 * 40
    assert str(e.value) == f"GPU out of memory computing blk.3.ffn_up_exps.weight (layer 3): {need} bytes asked, 7 of 80 free"


@pytest.mark.skipif(cuda_available(), reason="this machine has a GPU")
def test_bench_gpu_without_gpu_is_one_line_exit_2():
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "moeparity.cli", "bench", "gpu", "--quick"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and "CUDA device" in r.stderr and "Traceback" not in r.stderr


def test_pdl_launch_marshals_arguments_and_falls_back(monkeypatch):
    """backends/pdl.py: kernel arguments become the ctypes values the driver reads; without the
    driver entry point (or when it refuses) the launch is an ordinary one, with the same arguments."""
    import ctypes

    from moeparity.backends import pdl
    arr = types.SimpleNamespace(data=types.SimpleNamespace(ptr=0x7000))
    vals = [pdl._c(v) for v in (arr, np.int32(-3), np.int64(1 << 40), np.float32(0.5))]
    assert [type(v) for v in vals] == [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int64, ctypes.c_float]
    assert [v.value for v in vals] == [0x7000, -3, 1 << 40, 0.5]
    with pytest.raises(TypeError):
        pdl._c(3)                                   # a bare int has no width: refuse, don't guess
    calls = []
    fn = lambda grid, block, args, shared_mem: calls.append((grid, block, args, shared_mem))  # noqa: E731
    monkeypatch.setattr(pdl, "_state", {"fn": None})
    pdl.launch(None, fn, (5, 2), (128,), (np.int32(1),), 4096)
    refused = []

    def driver(cfg, func, params, extra):
        refused.append((tuple(cfg._obj.grid), tuple(cfg._obj.block), cfg._obj.smem, cfg._obj.attrs[0].id))
        return 1                                     # CUDA_ERROR_INVALID_VALUE
    fn.kernel = types.SimpleNamespace(ptr=0x1234)
    cp = types.SimpleNamespace(cuda=types.SimpleNamespace(get_current_stream=lambda: types.SimpleNamespace(ptr=0)))
    monkeypatch.setattr(pdl, "_state", {"fn": driver})
    pdl.launch(cp, fn, (5, 2), (128,), (np.int32(1),), 4096)
    pdl.launch(cp, fn, (5, 2), (128,), (np.int32(1),), 4096)      # refused once: no second try
    assert refused == [((5, 2, 1), (128, 1, 1), 4096, pdl.PROGRAMMATIC_STREAM_SERIALIZATION)]
    assert calls == [((5, 2), (128,), (np.int32(1),), 4096)] * 3
