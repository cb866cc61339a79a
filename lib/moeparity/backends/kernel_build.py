"""Compile kernels/*.cu with NVRTC under exactly our options, cached on disk, loaded as a RawModule.

Why not `cupy.RawModule(code=...)`: CuPy's compile path appends `-ftz=true` to the caller's options
(and NVRTC honours the last occurrence), so every float operation would flush subnormal inputs and
results to zero. emulated.py reproduces IEEE float32 with subnormals, and so must the GPU for the
two to agree bit for bit (found in session 6: the device's SASS had FMUL.FTZ throughout).
"""
from __future__ import annotations

import hashlib
import os
import tempfile

from ..errors import MoeParityError


class KernelBuildError(MoeParityError):
    """NVRTC rejected the kernel sources (this machine's CUDA toolkit, or a defect of this package)."""


def cache_dir() -> str:
    return os.environ.get("MOEPARITY_KERNEL_CACHE",
                          os.path.join(os.path.expanduser("~"), ".cache", "moeparity", "kernels"))


def build(cp, kernel_dir: str, main: str, options: tuple):
    """RawModule of kernel_dir/main compiled for the current device with `options` (plus the
    architecture and the include path). The cache key covers every file of kernel_dir, the options,
    the architecture and NVRTC's version, so an edit or another card never reuses a stale binary."""
    from cupy_backends.cuda.libs import nvrtc
    cc = cp.cuda.Device().compute_capability
    cubin = hasattr(nvrtc, "getCUBIN")               # else PTX, which the driver compiles on load
    opts = tuple(options) + (f"-I{kernel_dir}", f"--gpu-architecture={'sm' if cubin else 'compute'}_{cc}")
    h = hashlib.sha256(repr((opts, nvrtc.getVersion(), cubin)).encode())
    for name in sorted(os.listdir(kernel_dir)):
        with open(os.path.join(kernel_dir, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read())
    path = os.path.join(cache_dir(), h.hexdigest()[:32] + (".cubin" if cubin else ".ptx"))
    if not os.path.exists(path):
        with open(os.path.join(kernel_dir, main)) as f:
            src = f.read()
        prog = nvrtc.createProgram(src, main, [], [])
        try:
            try:
                nvrtc.compileProgram(prog, list(opts))
            except nvrtc.NVRTCError as e:
                log = " | ".join(ln.strip() for ln in nvrtc.getProgramLog(prog).splitlines() if ln.strip())
                raise KernelBuildError(f"NVRTC could not compile {main} ({e}): {log[:2000]}") from None
            image = nvrtc.getCUBIN(prog) if cubin else nvrtc.getPTX(prog)
        finally:
            nvrtc.destroyProgram(prog)
        image = image if isinstance(image, bytes) else image.encode()
        try:
            os.makedirs(cache_dir(), exist_ok=True)
            path = _write(image, cache_dir(), path)
        except OSError:                                        # an unwritable cache: this process's copy
            path = _write(image, tempfile.gettempdir(), None)
    return cp.RawModule(path=path)


def _write(image: bytes, folder: str, path):
    """image into `path` (or a fresh file in folder) whole or not at all: concurrent first runs."""
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=os.path.splitext(path or ".cubin")[1])
    with os.fdopen(fd, "wb") as f:
        f.write(image)
    if path is None:
        return tmp
    os.replace(tmp, path)
    return path
