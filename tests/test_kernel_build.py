"""kernel_build compiles with our options only (no -ftz=true), caches per source/options/card, and
turns an NVRTC failure into one readable line. CPU test: NVRTC and CuPy are stand-ins."""
import sys
import types

import pytest

from moeparity.backends import kernel_build
from moeparity.backends.cuda import NVRTC_OPTIONS


@pytest.fixture
def fake(monkeypatch, tmp_path):
    calls = []

    class NVRTCError(Exception):
        pass

    nv = types.SimpleNamespace(NVRTCError=NVRTCError, getVersion=lambda: (13, 0), destroyProgram=lambda p: None,
                               getProgramLog=lambda p: "kern.cu(3): error: boom\n", getCUBIN=lambda p: b"CUBIN")
    nv.createProgram = lambda src, name, h, i: (src, name)

    def compile_(prog, opts):
        calls.append(opts)
        if "BAD" in prog[0]:
            raise NVRTCError("NVRTC_ERROR_COMPILATION (6)")
    nv.compileProgram = compile_
    for m in ("cupy_backends", "cupy_backends.cuda", "cupy_backends.cuda.libs"):
        monkeypatch.setitem(sys.modules, m, types.ModuleType(m))
    monkeypatch.setitem(sys.modules, "cupy_backends.cuda.libs.nvrtc", nv)
    sys.modules["cupy_backends.cuda.libs"].nvrtc = nv
    cc = {"v": "90"}
    cp = types.SimpleNamespace(cuda=types.SimpleNamespace(Device=lambda: types.SimpleNamespace(compute_capability=cc["v"])),
                               RawModule=lambda path: ("module", path, open(path, "rb").read()))
    monkeypatch.setenv("MOEPARITY_KERNEL_CACHE", str(tmp_path / "cache"))
    src = tmp_path / "k"
    src.mkdir()
    (src / "main.cu").write_text('#include "h.cuh"\nextern "C" __global__ void f() {}\n')
    (src / "h.cuh").write_text("#pragma once\n")
    return cp, src, calls, cc


def test_compiles_once_with_our_options_and_caches(fake):
    cp, src, calls, cc = fake
    m = kernel_build.build(cp, str(src), "main.cu", NVRTC_OPTIONS)
    assert m[2] == b"CUBIN" and len(calls) == 1
    opts = calls[0]
    assert "--ftz=false" in opts and not any("ftz=true" in o for o in opts) and "--fmad=false" in opts
    assert f"-I{src}" in opts and "--gpu-architecture=sm_90" in opts
    kernel_build.build(cp, str(src), "main.cu", NVRTC_OPTIONS)
    assert len(calls) == 1                                   # cached
    (src / "h.cuh").write_text("#pragma once\n// edited\n")  # a header edit, another card, other options:
    kernel_build.build(cp, str(src), "main.cu", NVRTC_OPTIONS)
    cc["v"] = "100"
    kernel_build.build(cp, str(src), "main.cu", NVRTC_OPTIONS)
    kernel_build.build(cp, str(src), "main.cu", NVRTC_OPTIONS + ("-DX=1",))
    assert len(calls) == 4 and calls[2][-1] == "--gpu-architecture=sm_100"


def test_nvrtc_failure_is_one_line(fake):
    cp, src, calls, _ = fake
    (src / "main.cu").write_text("BAD\n")
    with pytest.raises(kernel_build.KernelBuildError) as e:
        kernel_build.build(cp, str(src), "main.cu", NVRTC_OPTIONS)
    assert "boom" in str(e.value) and "\n" not in str(e.value)
    assert not list((src.parent / "cache").glob("*"))       # nothing half-written left behind


def test_unwritable_cache_still_builds(fake, monkeypatch, tmp_path):
    cp, src, calls, _ = fake
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MOEPARITY_KERNEL_CACHE", str(blocker / "cache"))   # a path under a file
    m = kernel_build.build(cp, str(src), "main.cu", NVRTC_OPTIONS)
    assert m[2] == b"CUBIN" and len(calls) == 1
